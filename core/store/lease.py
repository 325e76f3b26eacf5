"""Per-employee leases: never two runs acting on the same employee at the same time.

A webhook run, the reconciliation and a retry from the UI may all reach one employee; each
takes the employee's lease first and waits while another run holds it. A lease expires on its
own (a crashed run must not block an employee for ever), so work under it must be shorter
than its time to live.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import Field, col

from core.store.models import StoreModel, UTCDateTime, dialect_insert, utc_now

DEFAULT_TTL = timedelta(minutes=15)


class EmployeeLease(StoreModel, table=True):
    __tablename__ = "employee_lease"

    employee_id: int = Field(
        primary_key=True, sa_type=sa.Integer, sa_column_kwargs={"autoincrement": False}
    )
    holder: str = Field(max_length=200)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


_LEASES = StoreModel.metadata.tables["employee_lease"]


class LeaseTimeout(Exception):
    """Another run kept the employee for longer than this run was willing to wait."""

    transient = True


class Leases:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def try_acquire(
        self, employee_id: int, holder: str, ttl: timedelta = DEFAULT_TTL
    ) -> bool:
        """Take the lease if it is free, expired, or already ours (then it is extended)."""
        now = utc_now()
        insert = dialect_insert(self.engine, _LEASES).values(
            employee_id=employee_id, holder=holder, expires_at=now + ttl
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[_LEASES.c.employee_id],
            set_={"holder": insert.excluded.holder, "expires_at": insert.excluded.expires_at},
            where=(_LEASES.c.expires_at < now) | (_LEASES.c.holder == holder),
        )
        async with self._sessions.begin() as session:
            result = await session.execute(upsert)
        return bool(getattr(result, "rowcount", 0))

    async def release(self, employee_id: int, holder: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                sa.delete(EmployeeLease).where(
                    col(EmployeeLease.employee_id) == employee_id,
                    col(EmployeeLease.holder) == holder,
                )
            )

    async def holder_of(self, employee_id: int) -> str | None:
        async with self._sessions() as session:
            lease = await session.get(EmployeeLease, employee_id)
        return lease.holder if lease and lease.expires_at > utc_now() else None

    @asynccontextmanager
    async def hold(
        self,
        employee_id: int,
        holder: str,
        *,
        ttl: timedelta = DEFAULT_TTL,
        wait: float = 600.0,
        poll: float = 0.5,
    ) -> AsyncGenerator[None, None]:
        """Hold the employee's lease for the block, waiting up to `wait` seconds for it."""
        deadline = time.monotonic() + wait
        while not await self.try_acquire(employee_id, holder, ttl):
            if time.monotonic() > deadline:
                raise LeaseTimeout(
                    f"employee {employee_id} is still being worked on by {await self.holder_of(employee_id)}"
                )
            await asyncio.sleep(poll)
        try:
            yield
        finally:
            await self.release(employee_id, holder)
