"""`check_writable`, the database line of `doctor`: passes every time, leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from core.database import PROBE_TABLE, check_writable, create_engine
from core.store import MappingStore
from tests.fixtures_database import table_names


async def test_the_check_passes_twice_in_a_row_and_leaves_no_table(database_url: str) -> None:
    await check_writable(database_url)
    await check_writable(database_url)
    assert await table_names(database_url) == set()


async def test_the_check_leaves_a_migrated_store_as_it_was(database_url: str) -> None:
    async with await MappingStore.open(database_url):
        pass
    before = await table_names(database_url)
    await check_writable(database_url)
    await check_writable(database_url)
    assert await table_names(database_url) == before


async def test_the_probe_table_an_earlier_doctor_left_is_dropped(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(sa.text(f"CREATE TABLE {PROBE_TABLE} (id INTEGER)"))
    finally:
        await engine.dispose()
    await check_writable(database_url)
    assert PROBE_TABLE not in await table_names(database_url)


async def test_a_read_only_sqlite_database_fails_the_check(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await check_writable(f"sqlite+aiosqlite:///{path}")  # creates the file
    with pytest.raises(OperationalError, match="readonly"):
        await check_writable(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
