"""Schema versions of the mapping store: Alembic, driven from code, upgrading in place.

The migrations ship inside the package (`core/store/migrations`), so no `alembic.ini` is needed
at run time. Every run holds a lock for its whole transaction (PostgreSQL: an advisory lock;
SQLite: `BEGIN IMMEDIATE`), so several workers starting at once upgrade the schema exactly once.
"""

from __future__ import annotations

import asyncio
import weakref
import zlib
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.database import create_engine

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: every flow run opens the store, and importing Alembic
# costs a fresh interpreter about 0.13 s; a store already at HEAD_REVISION never needs it.

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest revision in migrations/versions (a test holds it equal to Alembic's head).
HEAD_REVISION = "0009"
# Not Alembic's default `alembic_version`: the store may share a PostgreSQL database with the
# Prefect server, which keeps its own schema version there.
VERSION_TABLE = "pf_jira_sync_store_version"
# Any fixed 64-bit number works; this one is derived from a name so it is recognisable.
_ADVISORY_LOCK_KEY = zlib.crc32(b"pf-jira-sync store migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the store; with `connection`, env.py migrates through it."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema version these migrations know."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the store has no migrations"
    return head


@asynccontextmanager
async def migration_connection(database_url: str) -> AsyncGenerator[AsyncConnection]:
    """A connection inside one transaction that holds the store's migration lock.

    Committed when the block ends without error, rolled back otherwise, so a failed upgrade
    leaves the previous version in place (SQLite and PostgreSQL both have transactional DDL).
    """
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Python's sqlite3 would not open a transaction before DDL by itself; an
                # immediate one also takes the write lock before the version is read.
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            elif connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                )
            yield connection
            await connection.commit()
    finally:
        await engine.dispose()


# Alembic keeps its running context in module globals, so two migrations in one process must
# not overlap even on different databases: one lock per event loop serializes them.
_in_process_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _in_process_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _in_process_locks.get(loop)
    if lock is None:
        lock = _in_process_locks[loop] = asyncio.Lock()
    return lock


async def _run_command(database_url: str, run: Callable[[Config], None]) -> None:
    async with (
        _in_process_lock(),
        migration_connection(database_url) as connection,
    ):
        await connection.run_sync(lambda sync_connection: run(alembic_config(sync_connection)))


async def migrate(database_url: str, revision: str = "head") -> None:
    """Upgrade the store's schema in place to `revision` (the newest by default)."""
    from alembic import command

    await _run_command(database_url, lambda config: command.upgrade(config, revision))


async def downgrade(database_url: str, revision: str) -> None:
    """Step the schema back to `revision` (`base` removes the store's tables and their data)."""
    from alembic import command

    await _run_command(database_url, lambda config: command.downgrade(config, revision))


async def current_revision(database_url: str) -> str | None:
    """The schema version the database is at; None for a database the store never touched."""
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync_connection: MigrationContext.configure(
                    sync_connection, opts={"version_table": VERSION_TABLE}
                ).get_current_revision()
            )
    finally:
        await engine.dispose()


async def is_at_head(engine: AsyncEngine) -> bool:
    """Whether the store is at HEAD_REVISION, read with one query and without Alembic."""
    try:
        async with engine.connect() as connection:
            found = await connection.scalar(
                sa.select(sa.column("version_num")).select_from(sa.table(VERSION_TABLE))
            )
    except DBAPIError:  # no version table yet
        return False
    return found == HEAD_REVISION
