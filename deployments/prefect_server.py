"""`prefect server start` for one host, with its SQLite writers queueing instead of failing.

Prefect begins its SQLite transactions DEFERRED: the write lock is taken at the first write.
A transaction that reads and then writes, while another connection commits in between, fails
at once with "database is locked" (SQLITE_BUSY_SNAPSHOT: no busy timeout waits that out), the
API answers 503, and the client backs off 2 s, 4 s, 8 s ... Under a steady stream of webhooks
that stalled a subflow's creation for 6 s now and then (PrefectHQ/prefect#18934).

Here every transaction Prefect begins takes the write lock up front (BEGIN IMMEDIATE), so
writers wait their turn on the server's 60 s busy timeout. Reads outside transactions are
untouched (WAL). PostgreSQL, as work pools use, is unaffected.

    python -m deployments.prefect_server start --host 127.0.0.1 --port 4200
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from prefect.server.database.configurations import AioSqliteConfiguration


def take_write_lock_up_front() -> None:
    """Make every SQLite transaction of the Prefect server begin IMMEDIATE."""
    begin = AioSqliteConfiguration.begin_transaction
    if begin.__name__ == "begin_immediate":
        return  # taken already

    @asynccontextmanager
    async def begin_immediate(
        self: AioSqliteConfiguration, session, with_for_update: bool = False
    ) -> AsyncGenerator:
        # `with_for_update` only chooses the BEGIN mode on SQLite.
        async with begin(self, session, with_for_update=True) as transaction:
            yield transaction

    AioSqliteConfiguration.begin_transaction = begin_immediate


def main() -> None:
    take_write_lock_up_front()
    from prefect.cli import app

    sys.argv = ["prefect", "server", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
