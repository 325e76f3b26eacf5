"""The one-host Prefect server's SQLite transactions take the write lock when they begin."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prefect.server.database.configurations import AioSqliteConfiguration
from sqlalchemy import text

from deployments.prefect_server import take_write_lock_up_front


def other_writer_gets_in(database: Path) -> bool:
    """Whether another connection can begin writing right now (no waiting)."""
    other = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as error:
        if "locked" not in str(error):
            raise
        return False
    finally:
        other.close()


async def writer_gets_in_during_a_transaction(database: Path) -> bool:
    configuration = AioSqliteConfiguration(f"sqlite+aiosqlite:///{database}")
    engine = await configuration.engine()
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE IF NOT EXISTS t (id INTEGER)"))
        session = await configuration.session(engine)
        async with session, configuration.begin_transaction(session):
            # Prefect reads first; a deferred transaction holds no lock yet.
            await session.execute(text("SELECT count(*) FROM t"))
            return other_writer_gets_in(database)
    finally:
        await engine.dispose()


async def test_transactions_begin_deferred_in_prefect_and_immediate_once_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Restored after the test: the patch is for the server process only.
    monkeypatch.setattr(
        AioSqliteConfiguration, "begin_transaction", AioSqliteConfiguration.begin_transaction
    )
    assert await writer_gets_in_during_a_transaction(tmp_path / "before.db")

    take_write_lock_up_front()
    take_write_lock_up_front()  # twice is once
    assert not await writer_gets_in_during_a_transaction(tmp_path / "after.db")
