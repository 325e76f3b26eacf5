"""The circuit breaker on the webhook path: a mass change is held until an operator decides.

The reconciliation has its safeguard (`core.company.safeguard`). A bulk edit or a bad nightly
batch in PeopleForce arrives as webhooks instead, in many small runs, each of which would pass
any per-run check. So the webhook path counts, across all its runs, the employees whose
planned work would create an offboarding, or an onboarding or employee record (a creation),
over a sliding window (`Limits`). The one past a limit trips the breaker: their work is not
applied but held (a `BreakerHold`; their webhook events stay in the inbox, status `held`),
and so is every such work after it, whatever the window says by then, until an operator acts:

- `release`: the holds end; each released employee's next run is admitted however the breaker
  stands (once, within `RELEASE_GRANT_TTL`), and their held events go back to pending, for the
  gateway's dispatcher to send again.
- `drop`: the holds end and their events end `dropped`; nothing is sent to Jira for them.

When no hold is left open the breaker is closed, and its window starts again from that moment:
the work admitted before is not counted any more, so released work never trips it again.

Each decision is one transaction under one lock (PostgreSQL: an advisory lock; SQLite: `BEGIN
IMMEDIATE`), so concurrent runs, on one host or several, never admit one past a limit, and
held events change in the transaction of their hold: a release or drop never misses one.

Its own tables (migration 0008) in the store's database; `CircuitBreaker(store.engine)`.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import Field, col

from core.store.inbox import (
    Requeued,
    drop_held,
    held_by_employee,
    hold_dispatched,
    requeue_held,
)
from core.store.models import StoreModel, UTCDateTime, utc_now

if TYPE_CHECKING:
    from core.settings import Settings

# What the breaker counts, by the kind of issue a plan creates; each kind counts an employee
# once per window, however many of its issues the plan creates.
Counted = Literal["offboarding", "creation"]
COUNTED_AS: Mapping[str, Counted] = {
    "offboarding": "offboarding",
    "onboarding": "creation",
    "record": "creation",
}
# How each count is named in a reason, and the setting that bounds it.
COUNT_NAMES: Mapping[Counted, tuple[str, str]] = {
    "offboarding": ("offboardings", "BREAKER_MAX_OFFBOARD"),
    "creation": ("onboardings or employee records", "BREAKER_MAX_CREATE"),
}
# A released employee's next run is admitted however the breaker stands, for this long: the
# dispatcher sends their events within seconds. Past it (the gateway was down for a day), the
# work is counted like any other.
RELEASE_GRANT_TTL = timedelta(days=1)
# Any fixed 64-bit number works; this one is derived from a name so it is recognisable.
_LOCK_KEY = zlib.crc32(b"pf-jira-sync circuit breaker")


class BreakerWrite(StoreModel, table=True):
    """One employee's admitted work of one counted kind, when it was admitted: what the
    window counts. Rows older than the window are removed as decisions are made."""

    __tablename__ = "breaker_write"
    __table_args__ = (sa.Index("ix_breaker_write_counted_as_at", "counted_as", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    employee_id: int = Field(index=True)
    counted_as: str = Field(max_length=16)
    at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, nullable=False)
    flow_run_id: str | None = None
    # Admitted because an operator released it: not counted (released work must not trip the
    # breaker again), but known, so that the employee's other process runs pass too.
    released: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})


class BreakerHold(StoreModel, table=True):
    """One employee's work the breaker holds (open until `ended_at`), and how it ended."""

    __tablename__ = "breaker_hold"

    id: int | None = Field(default=None, primary_key=True)
    employee_id: int = Field(index=True)
    who: str  # `1042 Ada Lovelace`, as the run knew them
    # The issues held: offboarding, onboarding, record (each once, in the order planned).
    kinds: list[str] = Field(default_factory=list, sa_type=sa.JSON, nullable=False)
    # Why the breaker is open, and since when: the count that tripped it (every hold of one
    # trip says the same).
    reason: str = Field(sa_type=sa.Text)
    tripped_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    since: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, nullable=False)
    flow_run_id: str | None = None  # the run that held it first
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ended_how: str | None = Field(default=None, max_length=16)  # released, dropped
    # Released: the employee's next run is admitted until then (used once).
    grant_until: datetime | None = Field(default=None, sa_type=UTCDateTime)


_WRITES = StoreModel.metadata.tables["breaker_write"]
_HOLDS = StoreModel.metadata.tables["breaker_hold"]


@dataclass(frozen=True)
class Limits:
    """How much the webhook path may create per window (`BREAKER_*` settings; 0: not counted)."""

    max_offboard: int
    max_create: int
    window: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_offboard=settings.breaker_max_offboard,
            max_create=settings.breaker_max_create,
            window=timedelta(seconds=settings.breaker_window_seconds),
        )

    def of(self, counted: Counted) -> int:
        return self.max_offboard if counted == "offboarding" else self.max_create

    @property
    def off(self) -> bool:
        return not (self.max_offboard or self.max_create)

    def counted(self, kinds: Iterable[str]) -> set[Counted]:
        """What these issue kinds count as, among the counts that are on."""
        return {
            COUNTED_AS[kind] for kind in kinds if kind in COUNTED_AS and self.of(COUNTED_AS[kind])
        }

    @property
    def window_text(self) -> str:
        seconds = self.window.total_seconds()
        return f"{seconds / 60:g} min" if seconds % 60 == 0 else f"{seconds:g} s"


@dataclass(frozen=True)
class Admission:
    """The breaker's answer for one employee's work: admitted, or held (`hold`)."""

    hold: BreakerHold | None = None
    tripped: bool = False  # this work tripped the breaker
    released: bool = False  # admitted because an operator released it
    events_held: int = 0  # webhook events held with it, in this decision

    @property
    def admitted(self) -> bool:
        return self.hold is None


@dataclass(frozen=True)
class BreakerState:
    """The breaker now: its open holds (oldest first, with their held events' count), and the
    work admitted in the current window, per count."""

    holds: list[BreakerHold]
    held_events: dict[int, int]
    counted: dict[Counted, int]
    window_start: datetime

    @property
    def open(self) -> bool:
        return bool(self.holds)

    @property
    def held_by_count(self) -> dict[Counted, int]:
        """Open holds per count (an employee held for both counts in each)."""
        found: dict[Counted, int] = {}
        for hold in self.holds:
            for counted in {COUNTED_AS[kind] for kind in hold.kinds if kind in COUNTED_AS}:
                found[counted] = found.get(counted, 0) + 1
        return found


@dataclass(frozen=True)
class HoldsEnded:
    """What a release or a drop ended: the holds, their events, and whether the breaker is
    closed now (no hold left open)."""

    holds: list[BreakerHold]
    events: list[Requeued]
    closed: bool
    still_held: int
    asked_not_held: list[int] = field(default_factory=list)


def held_outcome(hold: BreakerHold) -> str:
    """What a held event's outcome says (`pf-jira-sync events` shows it)."""
    return (
        f"held by the circuit breaker, open since {hold.tripped_at:%Y-%m-%d %H:%M:%S} UTC: "
        f"{hold.reason}; `pf-jira-sync held` lists what is held, `release` or `drop` decides"
    )


class CircuitBreaker:
    """Decide, hold, release and drop; each call is one short transaction under the lock."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def _decision(self) -> AsyncGenerator[AsyncSession]:
        """A transaction that holds the breaker's lock from its first statement: one decision
        at a time, on every host sharing the store."""
        async with self._sessions.begin() as session:
            if self.engine.dialect.name == "postgresql":
                await session.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))
            else:
                # The write lock before the first read (a plain transaction would read first
                # and let another decision read the same count meanwhile).
                await session.execute(sa.text("BEGIN IMMEDIATE"))
            yield session

    async def admit(
        self,
        employee_id: int,
        who: str,
        kinds: Iterable[str],
        limits: Limits,
        *,
        event_keys: Iterable[str] = (),
        flow_run_ids: Iterable[str] = (),
        now: datetime | None = None,
    ) -> Admission:
        """Whether this employee's planned creates (`kinds`: offboarding, onboarding, record)
        may be applied now; held, their events with these keys still dispatched to one of
        `flow_run_ids` are held with them, in the same transaction.

        Safe to repeat (a retry after a lost answer): an employee already counted in the window
        is admitted again without counting twice, one held is held again."""
        kinds = list(dict.fromkeys(kinds))
        counted = limits.counted(kinds)
        if not counted:
            return Admission()
        at = now or utc_now()
        run_ids = list(dict.fromkeys(flow_run_ids))
        run_id = run_ids[0] if run_ids else None

        def written(counts: Iterable[Counted], *, released: bool = False) -> list[BreakerWrite]:
            return [
                BreakerWrite(
                    employee_id=employee_id,
                    counted_as=one,
                    at=at,
                    flow_run_id=run_id,
                    released=released,
                )
                for one in sorted(set(counts))
            ]

        async with self._decision() as session:
            await session.execute(sa.delete(_WRITES).where(_WRITES.c.at < at - limits.window))
            if (mine := await _open_hold(session, employee_id)) is not None:
                mine.kinds = list(dict.fromkeys([*mine.kinds, *kinds]))
                held = await _hold(session, mine, event_keys, run_ids)
                return Admission(mine, events_held=held)
            if (granted := await _use_grant(session, employee_id, at)) is not None:
                # All the released work passes: this run's, and the other process runs' of
                # the employee (a hire and leaver's offboarding after their onboarding).
                session.add_all(written(limits.counted([*kinds, *granted]), released=True))
                return Admission(released=True)
            trip = await _current_trip(session)
            start = at - limits.window
            if trip is None:  # closed: its window starts again when it closed
                start = max(start, await _last_close(session, None) or start)
            already = set(
                await session.scalars(
                    sa.select(_WRITES.c.counted_as)
                    .where(_WRITES.c.employee_id == employee_id)
                    .where(_WRITES.c.at >= start)
                )
            )
            new = counted - already
            if not new:  # counted already, in this window (a run worked again, or released)
                return Admission()
            tripped = False
            for one in sorted(new) if trip is None else ():
                planned = await _count(session, one, start) + 1
                if planned > limits.of(one):
                    what, setting = COUNT_NAMES[one]
                    reason = (
                        f"{planned} {what} planned within {limits.window_text} on the webhook "
                        f"path, more than {setting} ({limits.of(one)})"
                    )
                    trip, tripped = (reason, at), True
                    break
            if trip is not None:
                reason, tripped_at = trip
                hold = BreakerHold(
                    employee_id=employee_id,
                    who=who,
                    kinds=kinds,
                    reason=reason,
                    tripped_at=tripped_at,
                    since=at,
                    flow_run_id=run_id,
                )
                held = await _hold(session, hold, event_keys, run_ids)
                return Admission(hold, tripped=tripped, events_held=held)
            session.add_all(written(new))
        return Admission()

    async def state(self, limits: Limits, *, now: datetime | None = None) -> BreakerState:
        """The open holds, their held events, and what the current window has counted."""
        now = now or utc_now()
        async with self._sessions() as session:
            holds = await _open_holds(session, None)
            trip = await _current_trip(session)
            start = now - limits.window
            start = max(start, await _last_close(session, trip[1] if trip else None) or start)
            counted: dict[Counted, int] = {
                one: await _count(session, one, start) for one in ("offboarding", "creation")
            }
            held_events = await held_by_employee(session)
        return BreakerState(holds, held_events, counted, start)

    async def release(
        self, employee_ids: Iterable[int] | None = None, *, now: datetime | None = None
    ) -> HoldsEnded:
        """End the open holds of these employees (None: all) as released: their next run is
        admitted (once, within `RELEASE_GRANT_TTL`) and their held events go back to pending."""
        now = now or utc_now()
        outcome = f"released by an operator at {now:%Y-%m-%d %H:%M:%S} UTC: dispatched again"
        return await self._end(
            employee_ids,
            "released",
            now,
            lambda session, ids: requeue_held(session, ids, outcome),
            grant_until=now + RELEASE_GRANT_TTL,
        )

    async def drop(
        self, employee_ids: Iterable[int] | None = None, *, now: datetime | None = None
    ) -> HoldsEnded:
        """End the open holds of these employees (None: all) as dropped: their held events end
        `dropped`, and nothing is sent to Jira for them."""
        now = now or utc_now()
        outcome = f"dropped by an operator at {now:%Y-%m-%d %H:%M:%S} UTC: nothing was sent to Jira"
        return await self._end(
            employee_ids,
            "dropped",
            now,
            lambda session, ids: drop_held(session, ids, outcome),
            grant_until=None,
        )

    async def _end(
        self,
        employee_ids: Iterable[int] | None,
        how: str,
        now: datetime,
        events_of: Callable[[AsyncSession, list[int]], Awaitable[list[Requeued]]],
        *,
        grant_until: datetime | None,
    ) -> HoldsEnded:
        wanted = None if employee_ids is None else sorted(set(employee_ids))
        async with self._decision() as session:
            holds = await _open_holds(session, wanted)
            for hold in holds:
                hold.ended_at, hold.ended_how, hold.grant_until = now, how, grant_until
            ended = sorted({hold.employee_id for hold in holds})
            # Every held event of an employee ended, whether or not it came with the hold.
            events = await events_of(session, ended) if ended else []
            await session.flush()
            left = len(await _open_holds(session, None))
        return HoldsEnded(
            holds,
            events,
            closed=left == 0,
            still_held=left,
            asked_not_held=sorted(set(wanted or ()) - set(ended)),
        )

    async def open_holds(self) -> list[BreakerHold]:
        """Every open hold, oldest first."""
        async with self._sessions() as session:
            return await _open_holds(session, None)

    async def held_employees(self) -> set[int]:
        """The employees whose work is held now."""
        async with self._sessions() as session:
            rows = await session.scalars(
                sa.select(_HOLDS.c.employee_id).where(_HOLDS.c.ended_at.is_(None))
            )
            return set(rows)


async def _open_holds(session: AsyncSession, employee_ids: list[int] | None) -> list[BreakerHold]:
    query = (
        sa.select(BreakerHold)
        .where(col(BreakerHold.ended_at).is_(None))
        .order_by(col(BreakerHold.since), col(BreakerHold.id))
    )
    if employee_ids is not None:
        query = query.where(col(BreakerHold.employee_id).in_(employee_ids))
    return list(await session.scalars(query))


async def _open_hold(session: AsyncSession, employee_id: int) -> BreakerHold | None:
    held = await _open_holds(session, [employee_id])
    return held[0] if held else None


async def _hold(
    session: AsyncSession, hold: BreakerHold, event_keys: Iterable[str], run_ids: list[str]
) -> int:
    """Keep `hold`, and hold with it its employee's events dispatched to this run."""
    session.add(hold)
    await session.flush()
    return await hold_dispatched(session, event_keys, run_ids, held_outcome(hold))


async def _current_trip(session: AsyncSession) -> tuple[str, datetime] | None:
    """Why the breaker is open and since when (its oldest open hold's trip), or None: closed."""
    query = (
        sa.select(_HOLDS.c.reason, _HOLDS.c.tripped_at)
        .where(_HOLDS.c.ended_at.is_(None))
        .order_by(_HOLDS.c.tripped_at, _HOLDS.c.id)
        .limit(1)
    )
    row = (await session.execute(query)).first()
    return (row[0], row[1]) if row else None


async def _last_close(session: AsyncSession, tripped_at: datetime | None) -> datetime | None:
    """When the breaker last closed (None: never): the end of the last hold of the trips
    before the one open since `tripped_at` (None: it is closed, every hold counts). Its window
    starts there."""
    query = sa.select(sa.func.max(_HOLDS.c.ended_at))
    if tripped_at is not None:
        query = query.where(_HOLDS.c.tripped_at < tripped_at)
    return await session.scalar(query)


async def _use_grant(session: AsyncSession, employee_id: int, now: datetime) -> list[str] | None:
    """The issue kinds an operator released for this employee and no run has admitted since
    (used now), or None: nothing released."""
    statement = (
        sa.update(_HOLDS)
        .where(_HOLDS.c.employee_id == employee_id)
        .where(_HOLDS.c.grant_until > now)
        .values(grant_until=None)
        .returning(_HOLDS.c.kinds)
    )
    rows = (await session.execute(statement)).all()
    return [kind for (kinds,) in rows for kind in kinds] if rows else None


async def _count(session: AsyncSession, counted: Counted, start: datetime) -> int:
    """Employees admitted for this count since `start`."""
    query = (
        sa.select(sa.func.count(sa.distinct(_WRITES.c.employee_id)))
        .where(_WRITES.c.counted_as == counted)
        .where(_WRITES.c.at >= start)
        .where(~_WRITES.c.released)
    )
    return int(await session.scalar(query) or 0)
