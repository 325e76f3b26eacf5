"""Per-employee leases: never two runs acting on the same employee at the same time.

A webhook run, the reconciliation and a retry from the UI may all reach one employee; each
takes the employee's lease first and waits while another run holds it.

A lease is short (`LEASE_TTL`, a minute) and kept alive while its holder works: a run holds its
leases through a `LeaseHolder`, one background task that renews all of them in one statement
every `RENEW_EVERY`. So a live run keeps an employee however long the work takes (Jira slow,
429s), and a run whose process died (kill -9, OOM, power cut) lets go within a TTL: a replay or
the reconciliation started right after a crash finds the crash's employees free within a
minute, and a waiter waits far longer than that (`LEASE_WAIT`).

Expiry is judged by one clock, the database's: `expires_at` is written as the database's now
plus the TTL and compared with the database's now, so runs on hosts whose clocks disagree
(several workers on one PostgreSQL) agree on who holds what.

The table holds only the leases held now (a release deletes the row), plus the few a crash
left behind until someone takes them: renewing by holder scans a handful of rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import Field

from core.store.models import StoreModel, UTCDateTime, dialect_insert

# How long a lease outlives its holder's last renewal: the longest an employee stays blocked
# after their run's process died.
LEASE_TTL = timedelta(seconds=60)
# A third of the TTL: two renewals may fail (a database restart, a busy loop) before it lapses.
RENEW_EVERY = LEASE_TTL / 3
# How long a run waits for another run's employee before giving up (`LeaseTimeout`, which is
# transient: the work is tried again). Far beyond a TTL plus a renewal, so that a dead holder
# never makes a waiter give up; a live holder's work rarely takes longer.
LEASE_WAIT = 600.0
# A waiter asks again after `poll` seconds, then less and less often, up to this.
MAX_POLL = 2.0


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


class LeaseLost(Exception):
    """This run's lease lapsed while it worked (its renewals failed for a whole TTL) and its
    work for the employee was stopped, since another run may have taken them."""

    transient = True


class Leases:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def try_acquire(self, employee_id: int, holder: str, ttl: timedelta = LEASE_TTL) -> bool:
        """Take the lease if it is free, expired, or already ours (then it is extended)."""
        insert = dialect_insert(self.engine, _LEASES).values(
            employee_id=employee_id, holder=holder, expires_at=self._now(ttl)
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[_LEASES.c.employee_id],
            set_={"holder": insert.excluded.holder, "expires_at": insert.excluded.expires_at},
            where=(_LEASES.c.expires_at <= self._now()) | (_LEASES.c.holder == holder),
        )
        async with self._sessions.begin() as session:
            result = await session.execute(upsert)
        return bool(getattr(result, "rowcount", 0))

    async def renew(self, holder: str, ttl: timedelta = LEASE_TTL) -> set[int]:
        """Extend every lease `holder` still has, in one statement; returns their employees.

        A lease of ours that lapsed but nobody took is extended too: nobody else acted."""
        statement = (
            sa.update(_LEASES)
            .where(_LEASES.c.holder == holder)
            .values(expires_at=self._now(ttl))
            .returning(_LEASES.c.employee_id)
        )
        async with self._sessions.begin() as session:
            return set((await session.execute(statement)).scalars())

    async def release(self, employee_id: int, holder: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                sa.delete(_LEASES).where(
                    _LEASES.c.employee_id == employee_id, _LEASES.c.holder == holder
                )
            )

    async def release_all(self, holder: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(sa.delete(_LEASES).where(_LEASES.c.holder == holder))

    async def holder_of(self, employee_id: int) -> str | None:
        """Who holds the employee now (None: nobody, or a lease that lapsed)."""
        query = sa.select(_LEASES.c.holder).where(
            _LEASES.c.employee_id == employee_id, _LEASES.c.expires_at > self._now()
        )
        async with self._sessions() as session:
            return await session.scalar(query)

    def holding(
        self, holder: str, *, ttl: timedelta = LEASE_TTL, renew_every: timedelta | None = None
    ) -> LeaseHolder:
        """The leases of one run, renewed together while the `async with` block runs."""
        return LeaseHolder(self, holder, ttl=ttl, renew_every=renew_every or ttl / 3)

    @asynccontextmanager
    async def hold(
        self,
        employee_id: int,
        holder: str,
        *,
        ttl: timedelta = LEASE_TTL,
        wait: float = LEASE_WAIT,
        poll: float = 0.5,
    ) -> AsyncGenerator[None, None]:
        """Hold one employee's lease for the block (renewed meanwhile), waiting up to `wait`
        seconds for it. A run working many employees holds them through `holding` instead."""
        async with self.holding(holder, ttl=ttl) as held, held.hold(employee_id, wait, poll):
            yield

    def _now(self, plus: timedelta = timedelta(0)) -> sa.ColumnElement:
        """The database's clock (plus `plus`), so that every host judges expiry alike."""
        if self.engine.dialect.name == "sqlite":
            # UTC, in the text form the store's UTCDateTime writes (naive UTC): it compares
            # as text, in time order, with every stored value.
            shift = f"{plus.total_seconds():+.3f} seconds"
            return sa.func.strftime("%Y-%m-%d %H:%M:%f", "now", shift)
        return sa.func.now() + sa.literal(plus, sa.Interval())

    async def held_past_expiry(self) -> tuple[datetime, list[EmployeeLease]]:
        """The database's now, and the leases whose holder let them lapse without releasing
        them (its process died, or it lost the database), longest lapsed first. Such a lease
        blocks nobody (the next run takes it), but its employee's work may be half done."""
        query = (
            sa.select(EmployeeLease)
            .where(_LEASES.c.expires_at <= self._now())
            .order_by(_LEASES.c.expires_at, _LEASES.c.employee_id)
        )
        async with self._sessions() as session:
            now = await session.scalar(sa.select(self._now()))
            lapsed = list(await session.scalars(query))
        # PostgreSQL gives a datetime, SQLite the naive UTC text `_now` writes.
        if isinstance(now, str):
            now = datetime.fromisoformat(now)
        if now is None:
            raise ValueError("the database gave no time")
        now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
        return now, lapsed


class LeaseHolder:
    """One run's leases, kept alive together while the run works.

    One background task per run renews every lease the run holds in one statement, every
    `renew_every` (a run of 200 employees costs one small UPDATE each 20 s, not 200). A lease
    the renewal finds gone (the renewals failed for a whole TTL, and another run may have
    taken the employee) stops that employee's work with `LeaseLost` at its next await.
    """

    def __init__(
        self, leases: Leases, holder: str, *, ttl: timedelta, renew_every: timedelta
    ) -> None:
        if renew_every >= ttl:
            raise ValueError(f"leases must be renewed more often than their TTL ({ttl})")
        self.leases = leases
        self.holder = holder
        self.ttl = ttl
        self.renew_every = renew_every
        self._held: dict[int, asyncio.Task] = {}
        self._lost: set[int] = set()
        self._renewing: asyncio.Task | None = None

    async def __aenter__(self) -> Self:
        self._renewing = asyncio.create_task(self._renew_forever(), name=f"renew {self.holder}")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        if self._held:  # a block left early (cancelled run): let go of what is left
            await self.leases.release_all(self.holder)

    @asynccontextmanager
    async def hold(
        self, employee_id: int, wait: float = LEASE_WAIT, poll: float = 0.5
    ) -> AsyncGenerator[None, None]:
        """Hold the employee's lease for the block, waiting up to `wait` seconds for it."""
        deadline = time.monotonic() + wait
        while not await self.leases.try_acquire(employee_id, self.holder, self.ttl):
            if time.monotonic() > deadline:
                holder = await self.leases.holder_of(employee_id)
                raise LeaseTimeout(f"employee {employee_id} is still being worked on by {holder}")
            await asyncio.sleep(poll)
            poll = min(poll * 1.5, MAX_POLL)
        task = asyncio.current_task()
        assert task is not None, "a lease is held by a task"
        self._held[employee_id] = task
        try:
            yield
        except asyncio.CancelledError:
            # Cancelled by `_renew_forever` alone (not also by whoever runs this task): the
            # lease was lost, and that is this employee's error, not the run's.
            if employee_id in self._lost and task.uncancel() == 0:
                raise LeaseLost(
                    f"the lease on employee {employee_id} lapsed while this run worked on them "
                    f"(renewals failed for {self.ttl.total_seconds():.0f} s): work stopped"
                ) from None
            raise
        finally:
            self._held.pop(employee_id, None)
            self._lost.discard(employee_id)
            await self.leases.release(employee_id, self.holder)

    async def _renew_forever(self) -> None:
        interval = self.renew_every.total_seconds()
        while True:
            await asyncio.sleep(interval)
            if not self._held:
                continue
            held = set(self._held)
            try:
                kept = await self.leases.renew(self.holder, self.ttl)
            except Exception as error:  # the next renewal may pass; a TTL holds two more
                logger.warning("could not renew the leases of {}: {}", self.holder, error)
                continue
            # Only leases held before the renewal began and still held after: one taken or
            # released meanwhile is not lost.
            for employee_id in sorted((held - kept) & set(self._held)):
                if employee_id in self._lost:
                    continue
                logger.error(
                    "lease on employee {} lost by {}: stopping that employee's work",
                    employee_id,
                    self.holder,
                )
                self._lost.add(employee_id)
                self._held[employee_id].cancel()
