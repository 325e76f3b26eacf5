"""Alembic environment of the mapping store.

`core.store.migrate` passes a connection that already holds the migration lock in
`config.attributes["connection"]`. Run from the command line (`uv run alembic upgrade head`,
`uv run alembic check`, with the repository's alembic.ini), it opens one itself for the URL in
`-x database_url=...`, or else the configured `DATABASE_URL`.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from core.store.migrate import VERSION_TABLE, migration_connection
from core.store.models import StoreModel


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=StoreModel.metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_command_line() -> None:
    database_url = context.get_x_argument(as_dictionary=True).get("database_url")
    if not database_url:
        from core.settings import get_settings

        database_url = get_settings().effective_database_url
    async with migration_connection(database_url) as connection:
        await connection.run_sync(run_migrations)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")

given_connection = context.config.attributes.get("connection")
if given_connection is not None:
    run_migrations(given_connection)
else:
    asyncio.run(run_from_command_line())
