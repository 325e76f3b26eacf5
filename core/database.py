"""The database engine: SQLite (WAL, busy timeout, foreign keys) by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine.url import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine; for SQLite the file's folder is created and each connection tuned."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _tune_sqlite(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        # The busy timeout turns lock contention into waiting instead of "database is locked"
        # errors; set it first, so that switching a new file to WAL also waits for the lock.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL lets the gateway write while flows read. Only switch when needed: the switch
        # takes an exclusive lock, which many connections opening at once would fight over.
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


# The table `check_writable` creates and rolls back. Before the probe ran in a transaction of its
# own, SQLite kept it (see below): such a leftover is dropped on the next check.
PROBE_TABLE = "pf_jira_sync_doctor_probe"


async def check_writable(database_url: str) -> None:
    """Raise unless a table can be created and written in the database; nothing stays behind.

    The probe table is created and filled inside a transaction that is then rolled back, so
    the check proves what migrations and the service need (CREATE and INSERT) and passes every
    time. SQLite's Python driver opens a transaction only before INSERT, UPDATE and DELETE and
    runs DDL in autocommit, which would keep the table: there the transaction is opened by hand.
    """
    probe = sa.Table(PROBE_TABLE, sa.MetaData(), sa.Column("id", sa.Integer))
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            if await connection.run_sync(lambda sync: sa.inspect(sync).has_table(PROBE_TABLE)):
                await connection.run_sync(probe.drop)
                await connection.commit()
            if engine.dialect.name == "sqlite":
                await connection.exec_driver_sql("BEGIN")
            await connection.run_sync(probe.create)
            await connection.execute(probe.insert().values(id=1))
            await connection.rollback()
    finally:
        await engine.dispose()
