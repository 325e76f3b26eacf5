"""The webhook inbox: every PeopleForce delivery the gateway accepted, until its work is done.

The gateway stores a delivery here, under a key derived from it, before answering 202; turning
pending rows into Prefect flow runs is a separate step that is retried until it succeeds, so an
acknowledged event is never lost. The unique key makes a repeated delivery a no-op.

The table lives in the mapping store's database and metadata (migration 0003), and the
repository shares the store's engine: `InboxRepository(store.engine)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import Field, col

from core.store.models import StoreModel, UTCDateTime, dialect_insert, utc_now
from core.store.repository import UnsupportedDatabase

# Derived keys are `action:id:UTC timestamp` or `sha256:<hex>`: far below this.
EVENT_KEY_MAX_LENGTH = 300
# Well under SQLite's and asyncpg's limits on bound parameters per statement.
_CHUNK = 500

# An event's short reference is its row id behind this letter (`e17`): what `events` shows,
# the gateway logs and `replay` takes. A letter, so that it is never read as an employee id
# (and no `#`, which a shell reads as a comment).
REF_PREFIX = "e"
_REF = re.compile(rf"{REF_PREFIX}(\d{{1,18}})", re.IGNORECASE)


def event_ref(event_id: int | None) -> str:
    """The short reference of the event stored as row `event_id` (`e17`)."""
    return f"{REF_PREFIX}{event_id}" if event_id is not None else "-"


def parse_ref(text: str) -> int | None:
    """The row id a short reference names (`e17`, `E17`), or None when `text` is none."""
    match = _REF.fullmatch(text.strip())
    return int(match.group(1)) if match else None


class EventStatus(StrEnum):
    """Where an inbox event is.

    - `pending`: stored, waiting to be dispatched (again, after a failed attempt, once
      `next_attempt_at` is due).
    - `ignored`: an action this service does not act on (leave requests, applicants, unknown).
    - `dispatched`: a flow run was created for it (`flow_run_id`).
    - `done`, `failed`: the flow run finished; `outcome` says how.
    - `set_aside`: the dispatcher could not turn it into work (a poisoned event); `outcome`
      says why. Set aside once, never retried on its own, so it holds nothing up; `replay`
      sends it back to pending.
    """

    pending = "pending"
    ignored = "ignored"
    dispatched = "dispatched"
    done = "done"
    failed = "failed"
    set_aside = "set_aside"


# What `close_run` may set: the end of an event's way (`requeue` starts it again).
FINAL_STATUSES = frozenset({EventStatus.ignored, EventStatus.done, EventStatus.failed})
# What `prune` removes once old enough: work done, and events this service does not act on.
# Never pending or dispatched events (work still to do) nor failed ones (someone must look).
PRUNABLE_STATUSES = (EventStatus.done, EventStatus.ignored)

# Plain strings in the database, like the link's lifecycle: a new status needs no migration.
EVENT_STATUS_TYPE = sa.Enum(
    EventStatus,
    native_enum=False,
    create_constraint=False,
    length=16,
    values_callable=lambda members: [member.value for member in members],
)


class WebhookEvent(StoreModel, table=True):
    """One accepted webhook delivery, as received, and what became of it."""

    __tablename__ = "webhook_event"
    __table_args__ = (
        # The dispatcher's question: which employees have pending events.
        sa.Index("ix_webhook_event_status_employee_id", "status", "employee_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_key: str = Field(max_length=EVENT_KEY_MAX_LENGTH, unique=True)
    action: str
    # None for events not about one employee (leave requests, applicants, unknown topics).
    employee_id: int | None = Field(default=None, index=True)
    status: EventStatus = Field(default=EventStatus.pending, sa_type=EVENT_STATUS_TYPE)
    received_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, nullable=False)
    # The JSON text as received, less a leading byte-order mark (the signature, checked
    # before storing, covers the raw bytes).
    body: str = Field(sa_type=sa.Text)
    flow_run_id: str | None = None
    # The last dispatch error, or the flow run's result summary.
    outcome: str | None = Field(default=None, sa_type=sa.Text)
    dispatch_attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # After a failed dispatch: not before this instant.
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def ref(self) -> str:
        """The short reference (`e17`), once stored."""
        return event_ref(self.id)


_EVENTS = StoreModel.metadata.tables["webhook_event"]
_EFFECTS = StoreModel.metadata.tables["jira_effect"]


class InboxRepository:
    """Async access to the inbox; every method opens its own short session.

    Built on the mapping store's engine (`InboxRepository(store.engine)`), so both share one
    connection pool and the store's SQLite tuning.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise UnsupportedDatabase(f"the inbox cannot use {engine.dialect.name!r}")
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    # Writing

    async def add(self, event: WebhookEvent) -> tuple[WebhookEvent, bool]:
        """Store `event` unless its key is already there: `(stored event, created)`.

        A duplicate, even one arriving at the same moment, is not an error: the event stored
        first is returned with `created=False`, unchanged.
        """
        event.status = EventStatus(event.status)  # refuses an unknown status before writing
        values = {column.key: getattr(event, column.key) for column in _EVENTS.columns}
        del values["id"]
        insert = (
            self._insert()
            .values(values)
            .on_conflict_do_nothing(index_elements=[_EVENTS.c.event_key])
            .returning(_EVENTS.c.id)
        )
        async with self._sessions.begin() as session:
            new_id = (await session.execute(insert)).scalar_one_or_none()
            if new_id is not None:
                event.id = new_id
                return event, True
            # The conflicting row is committed by now: both backends make the insert wait for it.
            existing = await session.scalar(_by_key(event.event_key))
        assert existing is not None, "a conflicting event key must exist"
        return existing, False

    async def mark_dispatched(self, event_keys: Iterable[str], flow_run_id: str) -> int:
        """Pending events handed to flow run `flow_run_id`; returns how many were pending.

        Events no longer pending (dispatched meanwhile, or ignored) are left alone.
        """
        return await self._update(
            event_keys,
            {
                "status": EventStatus.dispatched,
                "flow_run_id": flow_run_id,
                "dispatch_attempts": _EVENTS.c.dispatch_attempts + 1,
                "next_attempt_at": None,
                "outcome": None,
            },
            only_status=EventStatus.pending,
        )

    async def mark_attempt_failed(
        self, event_keys: Iterable[str], error: str, next_attempt_at: datetime
    ) -> int:
        """A dispatch attempt failed: the events stay pending until `next_attempt_at`."""
        return await self._update(
            event_keys,
            {
                "dispatch_attempts": _EVENTS.c.dispatch_attempts + 1,
                "next_attempt_at": next_attempt_at,
                "outcome": error,
            },
            only_status=EventStatus.pending,
        )

    async def set_aside(self, reasons: Mapping[str, str]) -> int:
        """Pending events the dispatcher cannot turn into work, by key, with the reason each
        is set aside for; returns how many were pending."""
        changed = 0
        async with self._sessions.begin() as session:
            for event_key, reason in sorted(reasons.items()):
                statement = (
                    sa.update(_EVENTS)
                    .where(_EVENTS.c.event_key == event_key)
                    .where(_EVENTS.c.status == EventStatus.pending)
                    .values(
                        status=EventStatus.set_aside,
                        outcome=reason,
                        next_attempt_at=None,
                        updated_at=utc_now(),
                    )
                )
                changed += len((await session.execute(statement.returning(_EVENTS.c.id))).all())
        return changed

    async def close_run(
        self,
        flow_run_id: str,
        status: EventStatus | str,
        outcome: str | None,
        *,
        per_employee: Mapping[int, str] | None = None,
    ) -> int:
        """Record the outcome of every event still dispatched to flow run `flow_run_id`: the
        events of an employee in `per_employee` get that text, the others `outcome`."""
        final = _final(status)
        now = utc_now()
        dispatched = (
            sa.update(_EVENTS)
            .where(_EVENTS.c.flow_run_id == flow_run_id)
            .where(_EVENTS.c.status == EventStatus.dispatched)
        )
        closed = 0
        async with self._sessions.begin() as session:
            for employee_id, text in sorted((per_employee or {}).items()):
                statement = dispatched.where(_EVENTS.c.employee_id == employee_id).values(
                    status=final, outcome=text, updated_at=now
                )
                closed += len((await session.execute(statement.returning(_EVENTS.c.id))).all())
            statement = dispatched.values(status=final, outcome=outcome, updated_at=now)
            closed += len((await session.execute(statement.returning(_EVENTS.c.id))).all())
        return closed

    async def requeue(self, event_key: str) -> WebhookEvent | None:
        """Set a stored event back to pending so it is dispatched again (`replay`).

        Returns the event as now stored, or None when the key is unknown. An event about no
        employee cannot be dispatched: `ValueError`.
        """
        async with self._sessions.begin() as session:
            event = await session.scalar(_by_key(event_key).with_for_update())
            if event is None:
                return None
            if event.employee_id is None:
                raise ValueError(f"event {event_key!r} concerns no employee: nothing to dispatch")
            previous = f"was {event.status.value}"
            if event.flow_run_id:
                previous += f", flow run {event.flow_run_id}"
            event.status = EventStatus.pending
            event.outcome = f"requeued ({previous})"
            event.flow_run_id = None
            event.dispatch_attempts = 0
            event.next_attempt_at = None
            event.updated_at = utc_now()
        return event

    async def prune(self, older_than: datetime, *, batch: int = 1000) -> dict[str, int]:
        """Remove the events done or ignored whose last change (`updated_at`) is before
        `older_than`; returns how many of each status were removed (both keys always there).

        Only `PRUNABLE_STATUSES`: nothing pending, dispatched or failed is ever removed, nor a
        status added later. Removed in transactions of `batch` rows, so the gateway's inserts
        never wait long behind it.
        """
        removed = dict.fromkeys((status.value for status in PRUNABLE_STATUSES), 0)
        oldest_first = (
            sa.select(_EVENTS.c.id)
            .where(_EVENTS.c.status.in_(PRUNABLE_STATUSES))
            .where(_EVENTS.c.updated_at < older_than)
            .order_by(_EVENTS.c.id)
            .limit(batch)
        )
        while True:
            async with self._sessions.begin() as session:
                ids = list(await session.scalars(oldest_first))
                if not ids:
                    return removed
                statement = (
                    sa.delete(_EVENTS)
                    .where(_EVENTS.c.id.in_(ids))
                    # Again here: an event requeued since the select stays.
                    .where(_EVENTS.c.status.in_(PRUNABLE_STATUSES))
                    .returning(_EVENTS.c.status)
                )
                for status in (await session.execute(statement)).scalars():
                    removed[EventStatus(status).value] += 1

    async def count_by_status(self) -> dict[str, int]:
        """How many events the inbox holds in each status (only statuses that occur)."""
        query = sa.select(_EVENTS.c.status, sa.func.count()).group_by(_EVENTS.c.status)
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return {EventStatus(status).value: count for status, count in sorted(rows)}

    async def check_writable(self) -> None:
        """Raise unless the inbox can be written now: a write that changes nothing, rolled back.

        Cheap enough for every readiness probe; a read-only or unreachable database, or a
        missing table, raises.
        """
        async with self.engine.connect() as connection, connection.begin() as transaction:
            await connection.execute(sa.update(_EVENTS).where(sa.false()).values(id=_EVENTS.c.id))
            await transaction.rollback()

    # Reading

    async def get(self, event_key: str) -> WebhookEvent | None:
        async with self._sessions() as session:
            return await session.scalar(_by_key(event_key))

    async def get_by_id(self, event_id: int) -> WebhookEvent | None:
        """The event stored as row `event_id` (its short reference, `e17`, names it)."""
        async with self._sessions() as session:
            return await session.get(WebhookEvent, event_id)

    async def latest_of(self, employee_id: int) -> WebhookEvent | None:
        """The latest event received about the employee, whatever became of it."""
        query = (
            sa.select(WebhookEvent)
            .where(col(WebhookEvent.employee_id) == employee_id)
            .order_by(col(WebhookEvent.received_at).desc(), col(WebhookEvent.id).desc())
            .limit(1)
        )
        async with self._sessions() as session:
            return await session.scalar(query)

    async def jira_keys(self, flow_run_ids: Iterable[str]) -> dict[int, list[str]]:
        """The Jira issues these flow runs changed, per employee, in the order first changed
        (from the store's audit of Jira effects: a subtask created names its parent issue)."""
        keys: dict[int, dict[str, None]] = {}
        async with self._sessions() as session:
            for chunk in _chunks(sorted(set(flow_run_ids))):
                query = (
                    sa.select(_EFFECTS.c.employee_id, _EFFECTS.c.issue_key)
                    .where(_EFFECTS.c.flow_run_id.in_(chunk))
                    .where(_EFFECTS.c.issue_key.is_not(None))
                    .order_by(_EFFECTS.c.at, _EFFECTS.c.id)
                )
                for employee_id, issue_key in await session.execute(query):
                    keys.setdefault(employee_id, {})[issue_key] = None
        return {employee_id: list(found) for employee_id, found in keys.items()}

    async def pending(self, limit: int = 100, *, now: datetime | None = None) -> list[WebhookEvent]:
        """Pending events whose next attempt is due (or that were never tried), oldest first."""
        now = now or utc_now()
        query = (
            sa.select(WebhookEvent)
            .where(col(WebhookEvent.status) == EventStatus.pending)
            .where(
                sa.or_(
                    col(WebhookEvent.next_attempt_at).is_(None),
                    col(WebhookEvent.next_attempt_at) <= now,
                )
            )
            .order_by(col(WebhookEvent.received_at), col(WebhookEvent.id))
            .limit(limit)
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def runs_in_flight(self) -> list[str]:
        """The flow runs that still carry dispatched events (their outcome is not known yet)."""
        query = (
            sa.select(_EVENTS.c.flow_run_id)
            .where(_EVENTS.c.status == EventStatus.dispatched)
            .where(_EVENTS.c.flow_run_id.is_not(None))
            .distinct()
        )
        async with self._sessions() as session:
            return [run_id for run_id in (await session.scalars(query)) if run_id]

    async def recent(
        self, limit: int = 50, status: EventStatus | str | None = None
    ) -> list[WebhookEvent]:
        """The latest events, newest first, optionally only those with `status`."""
        query = (
            sa.select(WebhookEvent)
            .order_by(col(WebhookEvent.received_at).desc(), col(WebhookEvent.id).desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(col(WebhookEvent.status) == EventStatus(status))
        async with self._sessions() as session:
            return list(await session.scalars(query))

    # Helpers

    async def _update(
        self,
        event_keys: Iterable[str],
        values: dict[str, Any],
        *,
        only_status: EventStatus | None = None,
    ) -> int:
        """Apply `values` to the events with these keys, in one transaction; rows changed."""
        changed = 0
        async with self._sessions.begin() as session:
            for chunk in _chunks(sorted(set(event_keys))):
                statement = (
                    sa.update(_EVENTS)
                    .where(_EVENTS.c.event_key.in_(chunk))
                    .values({**values, "updated_at": utc_now()})
                )
                if only_status is not None:
                    statement = statement.where(_EVENTS.c.status == only_status)
                # RETURNING counts the rows changed on both backends (and types cleanly).
                changed += len((await session.execute(statement.returning(_EVENTS.c.id))).all())
        return changed

    def _insert(self) -> sqlite.Insert | postgresql.Insert:
        return dialect_insert(self.engine, _EVENTS)

    async def close_repaired(self, outcomes: Mapping[int, str]) -> int:
        """Events whose work the reconciliation did, by row id, each with its outcome: those
        still failed or pending are done, in one transaction; returns how many.

        An event dispatched meanwhile is left to its run (which closes it), one done or
        ignored meanwhile stays as it is.
        """
        by_text: dict[str, list[int]] = {}
        for event_id, text in outcomes.items():
            by_text.setdefault(text, []).append(event_id)
        closed = 0
        now = utc_now()
        async with self._sessions.begin() as session:
            for text, event_ids in sorted(by_text.items()):
                ordered = sorted(event_ids)
                for start in range(0, len(ordered), _CHUNK):
                    statement = (
                        sa.update(_EVENTS)
                        .where(_EVENTS.c.id.in_(ordered[start : start + _CHUNK]))
                        .where(_EVENTS.c.status.in_((EventStatus.failed, EventStatus.pending)))
                        .values(
                            status=EventStatus.done,
                            outcome=text,
                            next_attempt_at=None,
                            updated_at=now,
                        )
                        .returning(_EVENTS.c.id)
                    )
                    closed += len((await session.execute(statement)).all())
        return closed


def _final(status: EventStatus | str) -> EventStatus:
    status = EventStatus(status)
    if status not in FINAL_STATUSES:
        raise ValueError(
            f"an outcome ends an event: {sorted(FINAL_STATUSES)}, not {status.value!r}"
        )
    return status


def _by_key(event_key: str) -> sa.Select[WebhookEvent]:
    return sa.select(WebhookEvent).where(col(WebhookEvent.event_key) == event_key)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
