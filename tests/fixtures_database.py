"""Database fixtures: one fresh, empty database per test, on SQLite and on PostgreSQL.

PostgreSQL tests run in a database created for the test run on the server named by
PF_JIRA_SYNC_TEST_POSTGRES_URL (default: the local server as `postgres`), emptied before each
test and dropped at the end. They are skipped when no server answers, unless
PF_JIRA_SYNC_TEST_REQUIRE_POSTGRES is set (CI sets it).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.database import create_engine
from core.store import MappingStore

POSTGRES_ADMIN_URL = os.environ.get(
    "PF_JIRA_SYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
async def postgres_admin() -> AsyncIterator[asyncpg.Connection]:
    admin_url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql")
    try:
        connection = await asyncpg.connect(
            admin_url.render_as_string(hide_password=False), timeout=3
        )
    except (TimeoutError, OSError, asyncpg.CannotConnectNowError) as error:
        reason = f"no PostgreSQL server answers at {admin_url} ({error}); set PF_JIRA_SYNC_TEST_POSTGRES_URL"
        if os.environ.get("PF_JIRA_SYNC_TEST_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="session")
async def postgresql_database(
    postgres_admin: asyncpg.Connection,
) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A database of this test run's own (so parallel runs never meet), dropped at the end."""
    name = f"pfjs_test_{os.getpid()}_{secrets.token_hex(4)}"
    url = make_url(POSTGRES_ADMIN_URL).set(database=name)
    await postgres_admin.execute(f'CREATE DATABASE "{name}"')
    try:
        connection = await asyncpg.connect(
            url.set(drivername="postgresql").render_as_string(hide_password=False)
        )
        try:
            yield (
                url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False),
                connection,
            )
        finally:
            await connection.close()
    finally:
        await postgres_admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def postgresql_database_url(postgresql_database: tuple[str, asyncpg.Connection]) -> str:
    url, connection = postgresql_database
    # Empty for every test, and much cheaper than a new database each time.
    await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return url


@pytest.fixture
def sqlite_database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"


# Synchronous on purpose: pytest-asyncio cannot resolve an async fixture by name from inside
# another async fixture, and only the PostgreSQL runs should need (and maybe skip on) a server.
@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_database_url")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[MappingStore]:
    async with await MappingStore.open(database_url) as opened:
        yield opened


async def table_names(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync_connection: set(sa.inspect(sync_connection).get_table_names())
            )
    finally:
        await engine.dispose()
