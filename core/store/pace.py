"""The Jira rate governor's buckets in the store: one row per endpoint class, shared by every
flow run and worker of the deployment (`core.jira.pace.TokenSource`).

Why the store and not Prefect's global concurrency limits with slot decay: the limits are
what Prefect offers for rate limiting across runs, but one acquire measured 8 ms and cost the
Prefect server 6 ms of CPU, per request; at the 80 requests a second a reorg can make, that is
half a core of the 2-core host for the Prefect server alone, and 8 ms added to every Jira call.
The store is already shared by every run on one host (SQLite) and on many (PostgreSQL): one
short locked transaction takes a batch of tokens (measured on SQLite: about 1 ms; on
PostgreSQL the row lock only serialises takers of one endpoint class), and the governor takes
a 20th of a second of the rate at a time, so at full speed a class costs about 20 store writes
a second in all, however many runs share it. SQLite has one write lock for the whole store, so
batches, not single tokens, keep the governor from crowding out the store's own writes. A
pause (a burst 429 until its X-RateLimit-Reset) and a slow-down are columns of the same row:
every run sees them at its next take.

Times are seconds since the epoch (floats): the arithmetic is the same on both backends, and
hosts sharing a PostgreSQL store keep their clocks in step (NTP) to well under a token.
Its table: migration 0009.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import replace

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import Field

from core.jira.pace import Bucket, Grant, take_tokens
from core.store.models import StoreModel, dialect_insert


class JiraRateBucket(StoreModel, table=True):
    """One endpoint class's bucket (`PUT issue/{issueIdOrKey}`): the tokens it held at `at`,
    and until when it is paused (a burst 429) or slowed (Jira said it is near its limit)."""

    __tablename__ = "jira_rate_bucket"

    endpoint_class: str = Field(primary_key=True, max_length=200)
    tokens: float
    at: float
    paused_until: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    slowed_until: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})


_BUCKETS = StoreModel.metadata.tables["jira_rate_bucket"]


class StoreTokens:
    """The governor's `TokenSource` in the store's database (`StoreTokens(store.engine)`)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def take(
        self, endpoint_class: str, rate: float, capacity: float, want: int, now: float
    ) -> Grant:
        async with self._locked(endpoint_class, fresh_tokens=capacity, now=now) as (conn, row):
            bucket, grant = take_tokens(row, rate, capacity, want, now)
            await self._write(conn, endpoint_class, bucket)
        return grant

    async def pause(self, endpoint_class: str, until: float) -> None:
        async with self._locked(endpoint_class, fresh_tokens=0.0, now=until) as (conn, row):
            await self._write(
                conn, endpoint_class, replace(row, paused_until=max(row.paused_until, until))
            )

    async def slow(self, endpoint_class: str, until: float) -> None:
        async with self._locked(endpoint_class, fresh_tokens=0.0, now=until) as (conn, row):
            await self._write(
                conn, endpoint_class, replace(row, slowed_until=max(row.slowed_until, until))
            )

    async def bucket(self, endpoint_class: str) -> Bucket | None:
        """The class's row as it stands (None: never used)."""
        async with self.engine.connect() as conn:
            found = (
                await conn.execute(
                    sa.select(_BUCKETS).where(_BUCKETS.c.endpoint_class == endpoint_class)
                )
            ).first()
        return _bucket(found) if found is not None else None

    @asynccontextmanager
    async def _locked(
        self, endpoint_class: str, *, fresh_tokens: float, now: float
    ) -> AsyncGenerator[tuple[AsyncConnection, Bucket]]:
        """A transaction holding the class's row, the row as it was. A missing row is made
        with `fresh_tokens` at `now`: full for a take; for a pause or a slow-down of a class
        never taken from, empty until its end (only that is known of it)."""
        async with self.engine.begin() as conn:
            postgres = self.engine.dialect.name == "postgresql"
            if not postgres:
                # The write lock before the read: two takers never read the same tokens.
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            insert = dialect_insert(self.engine, _BUCKETS).values(
                endpoint_class=endpoint_class, tokens=fresh_tokens, at=now
            )
            await conn.execute(insert.on_conflict_do_nothing(index_elements=["endpoint_class"]))
            query = sa.select(_BUCKETS).where(_BUCKETS.c.endpoint_class == endpoint_class)
            if postgres:
                query = query.with_for_update()
            yield conn, _bucket((await conn.execute(query)).one())

    @staticmethod
    async def _write(conn: AsyncConnection, endpoint_class: str, bucket: Bucket) -> None:
        await conn.execute(
            sa.update(_BUCKETS)
            .where(_BUCKETS.c.endpoint_class == endpoint_class)
            .values(
                tokens=bucket.tokens,
                at=bucket.at,
                paused_until=bucket.paused_until,
                slowed_until=bucket.slowed_until,
            )
        )


def _bucket(row: sa.Row) -> Bucket:
    return Bucket(
        tokens=row.tokens, at=row.at, paused_until=row.paused_until, slowed_until=row.slowed_until
    )
