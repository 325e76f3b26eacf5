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
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import uuid4

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import Field, col

from core.peopleforce.models import JOINER_LEAVER_ACTIONS
from core.store.models import JiraEffect, StoreModel, UTCDateTime, dialect_insert, utc_now
from core.store.repository import MappingStore, UnsupportedDatabase

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

    - `pending`: stored, waiting to be dispatched (again, after a run that crashed or failed
      for a cause that passes, once `next_attempt_at` is due).
    - `dispatching`: a dispatcher claimed it and is handing it to Prefect (`claimed_by`, in the
      batch `claim_token`); after a failed attempt it stays in its batch until
      `claim_expires_at`, when this or any other dispatcher sends the same batch again (the
      same Prefect idempotency key: a run Prefect took but nobody recorded is found again).
    - `ignored`: an action this service does not act on (leave requests, applicants, unknown).
    - `dispatched`: a flow run was created for it (`flow_run_id`).
    - `done`, `failed`: the flow run finished; `outcome` says how. `failed` is for a permanent
      cause, or after `failed_runs` reached the dispatcher's bound of attempts.
    - `set_aside`: the dispatcher could not turn it into work (a poisoned event); `outcome`
      says why. Set aside once, never retried on its own, so it holds nothing up; `replay`
      sends it back to pending.
    - `held`: its run planned a mass change the circuit breaker holds (`core.store.breaker`);
      `outcome` says why. Kept, never retried on its own, never failed: `pf-jira-sync
      release` sends it back to pending, `pf-jira-sync drop` ends it `dropped`.
    - `dropped`: an operator dropped the held work (nothing was sent to Jira for it).
    """

    pending = "pending"
    dispatching = "dispatching"
    ignored = "ignored"
    dispatched = "dispatched"
    done = "done"
    failed = "failed"
    set_aside = "set_aside"
    held = "held"
    dropped = "dropped"


# What `close_run` may set: the end of an event's way (`requeue` starts it again).
FINAL_STATUSES = frozenset({EventStatus.ignored, EventStatus.done, EventStatus.failed})
# What `prune` removes once old enough: work done, and events this service does not act on.
# Never pending, dispatched or held events (work still to do), failed ones (someone must
# look) nor dropped ones (an operator's decision, kept as its record).
PRUNABLE_STATUSES = (EventStatus.done, EventStatus.ignored)
# What `requeue_matching` (`replay --status`) sends back to work in bulk: work that ended or
# was set aside (or dropped), and work dispatched to a run that is taking too long. Never
# `pending` or `dispatching` (already on their way), `ignored` (nothing to do) nor `held`
# (`pf-jira-sync release` lets it go, past the circuit breaker).
REQUEUABLE_STATUSES = frozenset(
    {
        EventStatus.failed,
        EventStatus.set_aside,
        EventStatus.dispatched,
        EventStatus.done,
        EventStatus.dropped,
    }
)

# Plain strings in the database, like the link's lifecycle: a new status needs no migration.
EVENT_STATUS_TYPE = sa.Enum(
    EventStatus,
    native_enum=False,
    create_constraint=False,
    length=16,
    values_callable=lambda members: [member.value for member in members],
)


class WorkResult(StrEnum):
    """What a flow run recorded for one event's employee (`record_work`), read when the run
    ends: a run that failed or crashed keeps the work it did, and its permanent failures."""

    done = "done"  # the employee's work was done
    retry = "retry"  # it failed for a cause that passes (Jira down, a lease held too long)
    permanent = "permanent"  # it failed for a cause retrying cannot change (a field refused)


# What each result replaces: an employee worked by two process flows (onboarding and field
# sync) ends as the worse of the two, whichever recorded last.
_REPLACES = {
    WorkResult.done: (),
    WorkResult.retry: (WorkResult.done,),
    WorkResult.permanent: (WorkResult.done, WorkResult.retry),
}

WORK_RESULT_TYPE = sa.Enum(
    WorkResult,
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
        # And which of them are joiners or leavers (their lane goes first).
        sa.Index("ix_webhook_event_status_urgent", "status", "urgent"),
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
    # While `dispatching`: the dispatcher holding it, until when, and the batch it went in.
    claimed_by: str | None = Field(default=None, max_length=200)
    claim_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    claim_token: str | None = Field(default=None, max_length=64)
    # Flow runs that carried it and ended without doing its work (crashed, or failed).
    failed_runs: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # What its run recorded for its employee so far (`record_work`); None: nothing yet.
    work_result: WorkResult | None = Field(default=None, sa_type=WORK_RESULT_TYPE)
    # A joiner's or leaver's event (`WebhookEnvelope.is_joiner_or_leaver`, read as it is
    # stored): its employee's work goes in the dispatcher's urgent lane.
    urgent: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})

    @property
    def ref(self) -> str:
        """The short reference (`e17`), once stored."""
        return event_ref(self.id)


_EVENTS = StoreModel.metadata.tables["webhook_event"]
_EFFECTS = StoreModel.metadata.tables["jira_effect"]
# An event of a joiner or a leaver: its work goes before a backlog of field updates.
_URGENT = _EVENTS.c.urgent == sa.true()
# An event no dispatcher holds.
_NO_CLAIM: dict[str, Any] = {"claimed_by": None, "claim_expires_at": None, "claim_token": None}


@dataclass(frozen=True)
class Settled:
    """How one event of a finished flow run ends (`settle_run`): `done` or `failed` with
    `outcome`, or back to `pending` (not before `retry_at`); `failed_run` counts the run among
    the event's failed runs."""

    status: EventStatus
    outcome: str
    retry_at: datetime | None = None
    failed_run: bool = False


@dataclass(frozen=True)
class Requeued:
    """An event `requeue_matching` set back to pending, and the status it had."""

    id: int
    event_key: str
    employee_id: int | None
    was: EventStatus

    @property
    def ref(self) -> str:
        return event_ref(self.id)


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
        # A joiner's or leaver's topic is urgent however the event was made (the gateway also
        # marks a profile update that carries a termination date).
        event.urgent = event.urgent or event.action in JOINER_LEAVER_ACTIONS
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

    async def claim(
        self, event_keys: Iterable[str], holder: str, until: datetime
    ) -> tuple[str, list[str]]:
        """Claim the events with these keys that are still pending for dispatcher `holder`,
        until `until`, as one new batch: `(the batch's token, the keys claimed)`.

        Atomic: of several dispatchers claiming the same events at once (gateways sharing one
        PostgreSQL store), each event goes to one; on PostgreSQL the rows another is claiming
        are skipped rather than waited for (`FOR UPDATE SKIP LOCKED`), SQLite has one writer.
        """
        token = uuid4().hex
        now = utc_now()
        claimed: list[str] = []
        async with self._sessions.begin() as session:
            for chunk in _chunks(sorted(set(event_keys))):
                free = (
                    sa.select(_EVENTS.c.id)
                    .where(_EVENTS.c.event_key.in_(chunk))
                    .where(_EVENTS.c.status == EventStatus.pending)
                    .with_for_update(skip_locked=True)
                )
                statement = (
                    sa.update(_EVENTS)
                    .where(_EVENTS.c.id.in_(free))
                    .where(_EVENTS.c.status == EventStatus.pending)
                    .values(
                        status=EventStatus.dispatching,
                        claimed_by=holder,
                        claim_expires_at=until,
                        claim_token=token,
                        updated_at=now,
                    )
                    .returning(_EVENTS.c.event_key)
                )
                claimed += (await session.execute(statement)).scalars()
        return token, claimed

    async def take_over(
        self,
        holder: str,
        until: datetime,
        *,
        limit: int = 100,
        now: datetime | None = None,
        urgent: bool | None = None,
    ) -> dict[str, list[WebhookEvent]]:
        """Batches whose claim has expired (their dispatcher died, or their dispatch failed and
        is due again), claimed for `holder` until `until`: each batch whole, by its token, at
        most `limit` batches, oldest first; with `urgent`, only the batches that hold a joiner's
        or leaver's event (True) or only those that hold none (False).

        Whole, so that sending a batch again names the same events under the same token (the
        Prefect idempotency key): a run Prefect created for a dispatcher that died before
        recording it is found again, not created twice. Of several dispatchers taking over at
        once, one gets each batch.
        """
        now = now or utc_now()
        expired = (
            (_EVENTS.c.status == EventStatus.dispatching)
            & (_EVENTS.c.claim_expires_at <= now)
            & _EVENTS.c.claim_token.is_not(None)
        )
        oldest = (
            sa.select(_EVENTS.c.claim_token)
            .where(expired)
            .group_by(_EVENTS.c.claim_token)
            .order_by(sa.func.min(_EVENTS.c.id))
            .limit(limit)
        )
        if urgent is not None:
            holds_urgent = sa.func.max(sa.case((_URGENT, 1), else_=0))
            oldest = oldest.having(holds_urgent == (1 if urgent else 0))
        async with self._sessions() as session:
            tokens = list(await session.scalars(oldest))
        taken: dict[str, list[WebhookEvent]] = {}
        for token in tokens:
            async with self._sessions.begin() as session:
                if self.engine.dialect.name == "postgresql":
                    # One dispatcher at a time takes a batch: a lock named after its token,
                    # held to the end of this transaction; another skips the batch and finds
                    # it taken afterwards. (Locking the batch's rows instead, skipping locked
                    # ones, lets two dispatchers each lock part of it and wait on each other.)
                    mine = sa.select(sa.func.pg_try_advisory_xact_lock(sa.func.hashtext(token)))
                    if not await session.scalar(mine):
                        continue
                # SQLite: this one statement is atomic, and its first (no read before the
                # write, which a concurrent writer could make fail instead of wait).
                statement = (
                    sa.update(WebhookEvent)
                    .where(expired & (_EVENTS.c.claim_token == token))
                    .values(claimed_by=holder, claim_expires_at=until, updated_at=now)
                    .returning(WebhookEvent)
                    .execution_options(synchronize_session=False)
                )
                events = list(await session.scalars(statement))
            if events:
                taken[token] = sorted(events, key=lambda event: event.id or 0)
        return taken

    async def expedite(self, holder: str) -> int:
        """The batches `holder` waits to send again are due now (Prefect answers again)."""
        now = utc_now()
        statement = (
            sa.update(_EVENTS)
            .where(_EVENTS.c.status == EventStatus.dispatching)
            .where(_EVENTS.c.claimed_by == holder)
            .where(_EVENTS.c.claim_expires_at > now)
            .values(claim_expires_at=now)
        )
        async with self._sessions.begin() as session:
            return await _changed(session, statement)

    async def mark_dispatched(
        self, event_keys: Iterable[str], flow_run_id: str, *, claim: str | None = None
    ) -> int:
        """Events handed to flow run `flow_run_id`: those of the batch `claim` still being
        dispatched (without a claim: those pending); returns how many.

        Events no longer in that batch (dispatched meanwhile, by this or another dispatcher,
        or requeued, or ignored) are left alone.
        """
        return await self._update(
            event_keys,
            {
                "status": EventStatus.dispatched,
                "flow_run_id": flow_run_id,
                "dispatch_attempts": _EVENTS.c.dispatch_attempts + 1,
                "next_attempt_at": None,
                "outcome": None,
                "work_result": None,
                **_NO_CLAIM,
            },
            where=_in_batch(claim),
        )

    async def mark_attempt_failed(
        self,
        event_keys: Iterable[str],
        error: str,
        next_attempt_at: datetime,
        *,
        claim: str | None = None,
        release: bool = False,
    ) -> int:
        """A dispatch attempt failed: the events wait until `next_attempt_at`.

        A batch (`claim`) stays together, claimed until then, so that it is sent again as the
        same batch (Prefect may have taken the attempt: its answer may be what was lost);
        with `release` (the request certainly never reached Prefect, or Prefect refused it),
        its events go back to pending instead, to be batched afresh.
        """
        values: dict[str, Any] = {
            "dispatch_attempts": _EVENTS.c.dispatch_attempts + 1,
            "outcome": error,
        }
        if claim is None or release:
            values |= {"status": EventStatus.pending, "next_attempt_at": next_attempt_at}
            values |= _NO_CLAIM
        else:
            values["claim_expires_at"] = next_attempt_at
        return await self._update(event_keys, values, where=_in_batch(claim))

    async def set_aside(self, reasons: Mapping[str, str], *, claim: str | None = None) -> int:
        """Events the dispatcher cannot turn into work, by key, with the reason each is set
        aside for; returns how many were pending (or in the batch `claim`)."""
        changed = 0
        async with self._sessions.begin() as session:
            for event_key, reason in sorted(reasons.items()):
                values = {
                    "status": EventStatus.set_aside,
                    "outcome": reason,
                    "next_attempt_at": None,
                    **_NO_CLAIM,
                }
                changed += await _update_keys(session, [event_key], values, where=_in_batch(claim))
        return changed

    async def record_work(
        self, results: Mapping[str, tuple[WorkResult, str | None]], flow_run_ids: Iterable[str]
    ) -> int:
        """What a flow run did for the employees of these events, by event key: the result, and
        for a failure what failed (kept as the outcome until the run is closed).

        Only events still dispatched to one of `flow_run_ids` (the run and the one that started
        it) are written: a run marked Crashed while it went on writes nothing over the events
        dispatched again since. A result never replaces a worse one (`_REPLACES`).
        """
        run_ids = sorted(set(flow_run_ids))
        changed = 0
        async with self._sessions.begin() as session:
            for event_key, (result, note) in sorted(results.items()):
                result = WorkResult(result)
                values: dict[str, Any] = {"work_result": result}
                if note is not None:
                    values["outcome"] = note
                replaceable = _EVENTS.c.work_result.is_(None)
                if _REPLACES[result]:
                    replaceable = replaceable | _EVENTS.c.work_result.in_(_REPLACES[result])
                changed += await _update_keys(
                    session,
                    [event_key],
                    values,
                    where=(_EVENTS.c.status == EventStatus.dispatched)
                    & _EVENTS.c.flow_run_id.in_(run_ids)
                    & replaceable,
                )
        return changed

    async def settle_run(self, flow_run_id: str, settled: Mapping[str, Settled]) -> int:
        """End (or send back to work) the events still dispatched to the finished flow run
        `flow_run_id`, each as `settled[event_key]` says; returns how many changed.

        Only events still dispatched to that run change, so two dispatchers settling the same
        run (gateways sharing one store) settle each event once, one failed run counted once.
        """
        groups: dict[Settled, list[str]] = {}
        for event_key, how in settled.items():
            groups.setdefault(how, []).append(event_key)
        still_dispatched = (_EVENTS.c.flow_run_id == flow_run_id) & (
            _EVENTS.c.status == EventStatus.dispatched
        )
        changed = 0
        async with self._sessions.begin() as session:
            for how, keys in groups.items():
                values: dict[str, Any] = {"status": how.status, "outcome": how.outcome}
                if how.status is EventStatus.pending:
                    values |= {
                        "next_attempt_at": how.retry_at,
                        "flow_run_id": None,
                        "work_result": None,
                    }
                if how.failed_run:
                    values["failed_runs"] = _EVENTS.c.failed_runs + 1
                changed += await _update_keys(session, keys, values, where=still_dispatched)
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
                closed += await _changed(session, statement)
            statement = dispatched.values(status=final, outcome=outcome, updated_at=now)
            closed += await _changed(session, statement)
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
            event.failed_runs = 0
            event.work_result = None
            event.next_attempt_at = None
            event.claimed_by = event.claim_expires_at = event.claim_token = None
            event.updated_at = utc_now()
        return event

    async def requeue_matching(
        self,
        statuses: Iterable[EventStatus | str],
        *,
        older_than: datetime | None = None,
        employee_id: int | None = None,
    ) -> list[Requeued]:
        """Set back to pending every event in one of `statuses` (`REQUEUABLE_STATUSES`) last
        changed before `older_than`, about `employee_id`, when given (`replay --status`);
        returns them, oldest first. Events about no employee stay: nothing could run for them.

        Each starts again with a clean count of attempts; its outcome says what it was.
        """
        wanted = sorted({EventStatus(status) for status in statuses})
        if refused := [status for status in wanted if status not in REQUEUABLE_STATUSES]:
            raise ValueError(
                f"only {', '.join(sorted(REQUEUABLE_STATUSES))} events can be requeued in bulk, "
                f"not {', '.join(refused)}"
            )
        now = utc_now()
        requeued: list[Requeued] = []
        async with self._sessions.begin() as session:
            for status in wanted:
                statement = (
                    sa.update(_EVENTS)
                    .where(_EVENTS.c.status == status)
                    .where(_EVENTS.c.employee_id.is_not(None))
                    .values(
                        status=EventStatus.pending,
                        # The old values: SET reads the row as it was.
                        outcome=sa.literal(f"requeued (was {status.value}")
                        + sa.func.coalesce(sa.literal(", flow run ") + _EVENTS.c.flow_run_id, "")
                        + sa.literal(")"),
                        flow_run_id=None,
                        dispatch_attempts=0,
                        failed_runs=0,
                        work_result=None,
                        next_attempt_at=None,
                        updated_at=now,
                        **_NO_CLAIM,
                    )
                    .returning(_EVENTS.c.id, _EVENTS.c.event_key, _EVENTS.c.employee_id)
                )
                if older_than is not None:
                    statement = statement.where(_EVENTS.c.updated_at < older_than)
                if employee_id is not None:
                    statement = statement.where(_EVENTS.c.employee_id == employee_id)
                for row_id, event_key, employee in await session.execute(statement):
                    requeued.append(Requeued(row_id, event_key, employee, status))
        return sorted(requeued, key=lambda event: event.id)

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

    async def pending(
        self, limit: int = 100, *, now: datetime | None = None, urgent: bool | None = None
    ) -> list[WebhookEvent]:
        """Pending events whose next attempt is due (or that were never tried), oldest first.

        With `urgent`, one of two lanes that split them by employee: True, every due event of
        the employees who have a due joiner's or leaver's event (`WebhookEvent.urgent`), so
        that such an employee's updates go with them; False, the other employees' events."""
        now = now or utc_now()
        due = (_EVENTS.c.status == EventStatus.pending) & sa.or_(
            _EVENTS.c.next_attempt_at.is_(None), _EVENTS.c.next_attempt_at <= now
        )
        query = sa.select(WebhookEvent).where(due)
        if urgent is not None:
            urgent_employees = sa.select(_EVENTS.c.employee_id).where(due & _URGENT)
            urgent_employees = urgent_employees.where(_EVENTS.c.employee_id.is_not(None))
            lane = _EVENTS.c.employee_id.in_(urgent_employees)
            # An event about no employee is in no urgent employee's lane: the routine one.
            query = query.where(lane if urgent else sa.or_(~lane, _EVENTS.c.employee_id.is_(None)))
        query = query.order_by(col(WebhookEvent.received_at), col(WebhookEvent.id)).limit(limit)
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def dispatched_to(self, flow_run_id: str) -> list[WebhookEvent]:
        """The events still dispatched to flow run `flow_run_id`, oldest first."""
        query = (
            sa.select(WebhookEvent)
            .where(col(WebhookEvent.flow_run_id) == flow_run_id)
            .where(col(WebhookEvent.status) == EventStatus.dispatched)
            .order_by(col(WebhookEvent.id))
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def waiting(self) -> int:
        """How many events wait to be handed to Prefect (pending or being dispatched)."""
        query = sa.select(sa.func.count()).where(
            _EVENTS.c.status.in_([EventStatus.pending, EventStatus.dispatching])
        )
        async with self._sessions() as session:
            return int(await session.scalar(query) or 0)

    async def runs_in_flight(self) -> dict[str, bool]:
        """The flow runs that still carry dispatched events (their outcome is not known yet),
        each with whether it is urgent (carries a joiner's or leaver's event)."""
        query = (
            sa.select(_EVENTS.c.flow_run_id, sa.func.max(sa.case((_URGENT, 1), else_=0)))
            .where(_EVENTS.c.status == EventStatus.dispatched)
            .where(_EVENTS.c.flow_run_id.is_not(None))
            .group_by(_EVENTS.c.flow_run_id)
        )
        async with self._sessions() as session:
            rows = await session.execute(query)
            return {run_id: bool(urgent) for run_id, urgent in rows if run_id}

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
        where: sa.ColumnElement[bool] | None = None,
    ) -> int:
        """Apply `values` to the events with these keys (and `where`), in one transaction;
        rows changed."""
        async with self._sessions.begin() as session:
            return await _update_keys(session, event_keys, values, where=where)

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
                    )
                    closed += await _changed(session, statement)
        return closed

    # Reading, for `pf-jira-sync why` and `stuck`

    async def of_employee(self, employee_id: int, limit: int = 500) -> list[WebhookEvent]:
        """The latest `limit` events about the employee, oldest first."""
        query = (
            sa.select(WebhookEvent)
            .where(col(WebhookEvent.employee_id) == employee_id)
            .order_by(col(WebhookEvent.received_at).desc(), col(WebhookEvent.id).desc())
            .limit(limit)
        )
        async with self._sessions() as session:
            return list(reversed(list(await session.scalars(query))))

    async def waiting_since(self, before: datetime, limit: int = 200) -> list[WebhookEvent]:
        """Events still on their way since before `before`, oldest first: pending or being
        dispatched since they were received (a failed dispatch attempt changes `updated_at`,
        not how long the event has waited), or dispatched to a run that has said nothing of
        them since (`updated_at`: the dispatch, or the run's last word)."""
        on_the_way = col(WebhookEvent.status).in_([EventStatus.pending, EventStatus.dispatching])
        query = (
            sa.select(WebhookEvent)
            .where(
                sa.or_(
                    on_the_way & (col(WebhookEvent.received_at) <= before),
                    (col(WebhookEvent.status) == EventStatus.dispatched)
                    & (col(WebhookEvent.updated_at) <= before),
                )
            )
            .order_by(col(WebhookEvent.received_at), col(WebhookEvent.id))
            .limit(limit)
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def last_work_failed(self, limit: int = 200) -> list[WebhookEvent]:
        """Per employee, their latest event when it ended failed or was set aside (their last
        work did not get done, and nothing newer is on its way), longest failed first."""
        newer = sa.alias(_EVENTS, name="newer")
        has_newer = sa.exists(
            sa.select(newer.c.id)
            .where(newer.c.employee_id == _EVENTS.c.employee_id)
            .where(newer.c.id > _EVENTS.c.id)
        )
        query = (
            sa.select(WebhookEvent)
            .where(col(WebhookEvent.employee_id).is_not(None))
            .where(col(WebhookEvent.status).in_([EventStatus.failed, EventStatus.set_aside]))
            .where(~has_newer)
            .order_by(col(WebhookEvent.updated_at), col(WebhookEvent.id))
            .limit(limit)
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))


# For the circuit breaker (`core.store.breaker`): its events change in its own transaction,
# with the hold they belong to, so that no release or drop ever misses one.


async def employee_story(
    store: MappingStore, employee_id: int
) -> tuple[list[WebhookEvent], list[JiraEffect]]:
    """One employee's webhook events and Jira effects, oldest first (what `why` shows)."""
    events = await InboxRepository(store.engine).of_employee(employee_id)
    return events, await store.effects(employee_id)


async def hold_dispatched(
    session: AsyncSession, event_keys: Iterable[str], flow_run_ids: Iterable[str], outcome: str
) -> int:
    """The events with these keys still dispatched to one of `flow_run_ids` (the run and the
    run that started it) are held, with `outcome` saying why; returns how many. They keep
    their flow run (the one that held them); its end leaves them alone (`close_run` and
    `settle_run` change only events still dispatched)."""
    run_ids = sorted(set(flow_run_ids))
    if not run_ids:
        return 0
    values = {"status": EventStatus.held, "outcome": outcome, "work_result": None}
    where = (_EVENTS.c.status == EventStatus.dispatched) & _EVENTS.c.flow_run_id.in_(run_ids)
    return await _update_keys(session, event_keys, values, where=where)


def _held_of(employee_ids: Iterable[int] | None) -> sa.ColumnElement[bool]:
    held = _EVENTS.c.status == EventStatus.held
    if employee_ids is None:
        return held
    return held & _EVENTS.c.employee_id.in_(sorted(set(employee_ids)))


async def requeue_held(
    session: AsyncSession, employee_ids: Iterable[int] | None, outcome: str
) -> list[Requeued]:
    """The held events of these employees (None: everyone's) back to pending, each with a
    clean count of attempts and `outcome`; returns them, oldest first."""
    statement = (
        sa.update(_EVENTS)
        .where(_held_of(employee_ids))
        .values(
            status=EventStatus.pending,
            outcome=outcome,
            flow_run_id=None,
            dispatch_attempts=0,
            failed_runs=0,
            work_result=None,
            next_attempt_at=None,
            updated_at=utc_now(),
            **_NO_CLAIM,
        )
        .returning(_EVENTS.c.id, _EVENTS.c.event_key, _EVENTS.c.employee_id)
    )
    rows = await session.execute(statement)
    requeued = [Requeued(row_id, key, employee, EventStatus.held) for row_id, key, employee in rows]
    return sorted(requeued, key=lambda event: event.id)


async def drop_held(
    session: AsyncSession, employee_ids: Iterable[int] | None, outcome: str
) -> list[Requeued]:
    """The held events of these employees (None: everyone's) end `dropped`, with `outcome`;
    returns them (as they were: held), oldest first."""
    statement = (
        sa.update(_EVENTS)
        .where(_held_of(employee_ids))
        .values(status=EventStatus.dropped, outcome=outcome, updated_at=utc_now())
        .returning(_EVENTS.c.id, _EVENTS.c.event_key, _EVENTS.c.employee_id)
    )
    rows = await session.execute(statement)
    dropped = [Requeued(row_id, key, employee, EventStatus.held) for row_id, key, employee in rows]
    return sorted(dropped, key=lambda event: event.id)


async def held_by_employee(session: AsyncSession) -> dict[int, int]:
    """How many events are held, per employee."""
    query = (
        sa.select(_EVENTS.c.employee_id, sa.func.count())
        .where(_EVENTS.c.status == EventStatus.held)
        .where(_EVENTS.c.employee_id.is_not(None))
        .group_by(_EVENTS.c.employee_id)
    )
    return {int(employee): int(count) for employee, count in await session.execute(query)}


def _in_batch(claim: str | None) -> sa.ColumnElement[bool]:
    """The events of the batch `claim` still being dispatched; without a claim, pending ones."""
    if claim is None:
        return _EVENTS.c.status == EventStatus.pending
    return (_EVENTS.c.status == EventStatus.dispatching) & (_EVENTS.c.claim_token == claim)


def _final(status: EventStatus | str) -> EventStatus:
    status = EventStatus(status)
    if status not in FINAL_STATUSES:
        raise ValueError(
            f"an outcome ends an event: {sorted(FINAL_STATUSES)}, not {status.value!r}"
        )
    return status


def _by_key(event_key: str) -> sa.Select[WebhookEvent]:
    return sa.select(WebhookEvent).where(col(WebhookEvent.event_key) == event_key)


async def _update_keys(
    session: AsyncSession,
    event_keys: Iterable[str],
    values: Mapping[str, Any],
    *,
    where: sa.ColumnElement[bool] | None = None,
) -> int:
    """Apply `values` (and a new `updated_at`) to the events with these keys (and `where`),
    in `session`'s transaction, a chunk of keys per statement; rows changed."""
    changed = 0
    now = utc_now()
    for chunk in _chunks(sorted(set(event_keys))):
        statement = (
            sa.update(_EVENTS)
            .where(_EVENTS.c.event_key.in_(chunk))
            .values({**values, "updated_at": now})
        )
        if where is not None:
            statement = statement.where(where)
        changed += await _changed(session, statement)
    return changed


async def _changed(session: AsyncSession, statement: sa.Update) -> int:
    """Execute the update; how many rows it changed (RETURNING counts them on both backends,
    and types cleanly)."""
    return len((await session.execute(statement.returning(_EVENTS.c.id))).all())


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
