"""Dispatch: pending inbox events become Prefect flow runs, and finished runs close their events.

Runs inside the gateway process (one Prefect client for its lifetime). Events are grouped by
employee, so a burst for one person is one piece of work, and one flow run carries many
employees (a flow run is a process of its own: see DESIGN, "Throughput"). A dispatch that
Prefect does not accept is retried with backoff, so an acknowledged event is never lost, even
while the Prefect server is down.

Joiners and leavers go first: events the gateway marked urgent (a hire, a first day, a
termination or its revert, `WebhookEvent.urgent`) are claimed before any field update, each such
employee with all of their pending events, in runs of their own (tagged `urgent`), in slots
that the backlog cannot fill, and in any slot the backlog leaves free (`Dispatcher._has_room`).

One event never holds up the others: each is read on its own, whatever its body holds (the
sender's name and action are escaped and bounded, `core.text`, before they title a run or tag
it), and an event the dispatcher cannot turn into work (a poisoned event) is set aside once,
with the reason (status `set_aside`, shown by `pf-jira-sync events`), never retried on its own.

When processes die (DESIGN, "When processes die"), nothing acknowledged is lost or done twice:

- Several gateways may share one store (PostgreSQL) and one Prefect server. Each dispatcher
  claims the events it sends, atomically, as a batch with a token (`InboxRepository.claim`);
  the batch's token and events name the run's Prefect idempotency key. A dispatcher that dies
  after claiming leaves the batch to whoever finds its claim expired (`take_over`), who sends
  the same batch under the same key: if Prefect had taken the run, the same run comes back.
- Every Prefect call is bounded (`DISPATCH_PREFECT_TIMEOUT_SECONDS`): a hung server stalls
  nothing. While Prefect cannot be reached the dispatcher says so, with the number of events
  waiting, within seconds and then every minute, and once more when it answers again.
- A run that never starts (Pending past `DISPATCH_PENDING_ORPHAN_SECONDS`: its runner died
  starting it; Scheduled past `DISPATCH_SCHEDULED_ORPHAN_SECONDS`: nothing took it) is marked
  Crashed here. A run whose process died while running is marked Crashed by Prefect, from its
  missing heartbeats (the automation in `deployments/alerts.py`), or by its runner. A run
  deleted from Prefect counts as crashed.
- A run that ends Crashed or Failed settles each event by what the flow recorded for its
  employee (`WorkResult`, written by `flows/work.py` as each employee's work ends): work done
  stays done, a permanent failure (Jira refused a field) ends `failed` with its cause at once,
  anything else goes back to pending, at most `DISPATCH_MAX_ATTEMPTS` runs in all, after
  `DISPATCH_RETRY_DELAY_SECONDS`, four times longer each next time; past the last, `failed`.
  Both are logged at ERROR, and the run's Failed or Crashed state raises Prefect's alert.
- Events whose work the circuit breaker held (`core.store.breaker`) were set `held` by their
  run, with the hold, in one transaction: no longer dispatched, they are left alone when the
  run ends, until `pf-jira-sync release` sends them back to pending (or `drop` ends them).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
from collections.abc import AsyncGenerator, Awaitable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar
from uuid import UUID, uuid4

import httpx
from fastapi import FastAPI
from loguru import logger
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_AUTH_STRING
from prefect.states import Crashed

from core.names import (
    SERVICE_TAGS,
    URGENT_TAG,
    WEBHOOK_RUNS,
    WEBHOOK_TAG,
    action_tag,
    employee_tags,
)
from core.render import (
    EVENT_OUTCOME_MAX,
    event_failed_outcome,
    event_outcome,
    event_retry_outcome,
)
from core.settings import Settings, mask_url
from core.store import EventStatus, InboxRepository, Settled, WebhookEvent, WorkResult
from core.store.models import utc_now
from core.text import NAME_LIMIT, printable
from webhook_gateway.app import event_properties
from webhook_gateway.config import require_prefect_api_url, setting_default

T = TypeVar("T")

MAX_BACKOFF_SECONDS = 60.0
NOT_STARTED_RUN_STATES = {StateType.SCHEDULED, StateType.PENDING}
START_GRACE = timedelta(minutes=2)
FINAL_RUN_STATES = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
# After each failed run an event waits four times longer than after the one before, at most this.
RETRY_GROWTH = 4
MAX_RETRY_DELAY = timedelta(hours=1)
# "cannot reach Prefect": said once Prefect has failed to answer for this long, then again
# every `UNREACHABLE_REPEAT` while it still does not.
UNREACHABLE_AFTER = 5.0
UNREACHABLE_REPEAT = 60.0


# DISPATCH_RUN_ALONE_SECONDS' default, for a dispatcher built without settings (tests).
RUN_ALONE_FOR = timedelta(seconds=setting_default("dispatch_run_alone_seconds"))


@dataclass(frozen=True)
class Recovery:
    """The dispatcher's bounds for what goes wrong, from the `DISPATCH_*` settings (their
    defaults for a dispatcher built without settings)."""

    prefect_timeout: float = setting_default("dispatch_prefect_timeout_seconds")
    claim_for: timedelta = timedelta(seconds=setting_default("dispatch_claim_seconds"))
    pending_orphan_after: timedelta = timedelta(
        seconds=setting_default("dispatch_pending_orphan_seconds")
    )
    scheduled_orphan_after: timedelta = timedelta(
        seconds=setting_default("dispatch_scheduled_orphan_seconds")
    )
    max_attempts: int = setting_default("dispatch_max_attempts")
    retry_delay: timedelta = timedelta(seconds=setting_default("dispatch_retry_delay_seconds"))

    @classmethod
    def from_settings(cls, settings: Settings) -> Recovery:
        return cls(
            prefect_timeout=settings.dispatch_prefect_timeout_seconds,
            claim_for=timedelta(seconds=settings.dispatch_claim_seconds),
            pending_orphan_after=timedelta(seconds=settings.dispatch_pending_orphan_seconds),
            scheduled_orphan_after=timedelta(seconds=settings.dispatch_scheduled_orphan_seconds),
            max_attempts=settings.dispatch_max_attempts,
            retry_delay=timedelta(seconds=settings.dispatch_retry_delay_seconds),
        )

    def retry_at(self, failed_runs: int, now: datetime) -> datetime:
        """When an event whose `failed_runs`-th run failed is worked again."""
        delay = self.retry_delay * RETRY_GROWTH ** max(failed_runs - 1, 0)
        return now + min(delay, MAX_RETRY_DELAY)


def dispatcher_name() -> str:
    """Who claims: this host and process, and a part of its own (a restarted gateway with
    the same pid is another dispatcher)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"


class Dispatcher:
    """Wakes on each stored event (and every `poll` seconds), then dispatches what is pending."""

    def __init__(
        self,
        inbox: InboxRepository,
        client: PrefectClient,
        *,
        deployment: str = WEBHOOK_RUNS,
        batch_max: int = 200,
        max_in_flight: int = 3,
        urgent_max_in_flight: int = 1,
        settle: float = 0.3,
        poll: float = 5.0,
        busy_poll: float = 0.25,
        run_alone_for: timedelta = RUN_ALONE_FOR,
        recovery: Recovery | None = None,
        name: str | None = None,
    ) -> None:
        self.inbox = inbox
        self.client = client
        self.deployment = deployment
        self.batch_max = batch_max
        # Backpressure: while a dispatched run has not started yet, or has started less than
        # `run_alone_for` ago, or this many runs are unfinished, new events wait in the inbox
        # and the next run carries them all. Each run costs a process and the Prefect server's
        # work for its states and subflows, so on one host runs must be few and large; a slow
        # run (a Jira retry waiting, a big backlog) lets the next start beside it.
        # `run_alone_for` 0 (work pools): runs go side by side from the start, up to
        # `max_in_flight`.
        self.max_in_flight = max_in_flight
        self.run_alone_for = run_alone_for
        # Priority: joiners and leavers (`JOINER_LEAVER_ACTIONS`) never wait behind a backlog
        # of field updates. Their events are claimed first, each such employee with all their
        # pending events, in runs of their own, in `urgent_max_in_flight` slots of their own and
        # any routine slot left free, and nothing that holds routine runs back holds them back.
        # On one host both bounds together fit in the runner's slots, so a backlog never takes
        # theirs.
        self.urgent_max_in_flight = urgent_max_in_flight
        self.settle = settle  # with a run out: let a burst arrive, to dispatch it as one batch
        self.poll = poll
        self.busy_poll = busy_poll  # how often to look for finished runs while some are out
        self.recovery = recovery or Recovery()
        self.name = name or dispatcher_name()
        self._wake = asyncio.Event()
        self._deployment_id: UUID | None = None
        self._in_flight: set[str] = set()
        self._urgent_in_flight: set[str] = set()  # of `_in_flight`, the urgent runs
        # Routine runs not started yet, or started less than `run_alone_for` ago: they hold back
        # routine dispatch.
        self._holding_back: set[str] = set()
        # Since when (monotonic) Prefect has not answered, and when that was last said.
        self._unreachable_since: float | None = None
        self._said_unreachable_at: float | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            busy = self._in_flight or self._unreachable_since is not None
            with suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self.busy_poll if busy else self.poll
                )
            if self._wake.is_set():
                self._wake.clear()
                # With a run out, let a burst arrive before dispatching it as one batch. With
                # none, an event goes at once: one alone is not kept waiting, and what follows
                # it in a burst waits for its run (backpressure) and goes as one batch after it.
                if self._in_flight:
                    await asyncio.sleep(self.settle)
            await self.round()

    async def round(self) -> None:
        """One round of the loop: close what finished, dispatch what is due; never raises
        (while Prefect does not answer, it only asks whether it does again)."""
        try:
            if self._unreachable_since is not None and not await self.prefect_answers():
                return
            await self.close_finished()
            while await self.dispatch_pending():
                pass
        except Exception as error:  # the loop must outlive any one failure
            if not _unreachable(error):  # that one is said by `_prefect`, once a minute
                logger.exception("dispatcher: {}", error)

    # Talking to Prefect: every call bounded, and an outage said

    async def _prefect(self, call: Awaitable[T]) -> T:
        """`call`, given at most `recovery.prefect_timeout` seconds; notes whether Prefect
        answered (a refusal is an answer: only no answer, or a gateway's 502-504, is not)."""
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(call, timeout=self.recovery.prefect_timeout)
        except Exception as error:
            if _unreachable(error):
                await self._not_answering(started, error)
            else:
                await self._answering()
            raise
        await self._answering()
        return result

    async def prefect_answers(self) -> bool:
        """Whether the Prefect API answers its health check now (bounded like any call)."""
        started = time.monotonic()
        try:
            # The client returns the error of a failed check rather than raising it.
            error = await asyncio.wait_for(
                self.client.api_healthcheck(), timeout=self.recovery.prefect_timeout
            )
        except TimeoutError as timeout:
            error = timeout
        if error is not None:
            await self._not_answering(started, error)
            return False
        await self._answering()
        return True

    async def _not_answering(self, started: float, error: BaseException) -> None:
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = started
        down_for = now - self._unreachable_since
        said = self._said_unreachable_at
        if down_for < UNREACHABLE_AFTER or (said is not None and now - said < UNREACHABLE_REPEAT):
            return
        self._said_unreachable_at = now
        logger.warning(
            "cannot reach Prefect at {} for {:.0f}s: {} events waiting ({}: {})",
            mask_url(str(self.client.api_url).rstrip("/")),
            down_for,
            await self.inbox.waiting(),
            type(error).__name__,
            printable(str(error), EVENT_OUTCOME_MAX) or "no answer",
        )

    async def _answering(self) -> None:
        if self._unreachable_since is None:
            return
        down_for = time.monotonic() - self._unreachable_since
        said = self._said_unreachable_at is not None
        self._unreachable_since = self._said_unreachable_at = None
        # The batches that waited for Prefect go now, not at the end of their backoff.
        await self.inbox.expedite(self.name)
        if said:
            logger.info(
                "Prefect reachable again after {:.0f}s; dispatching {} events",
                down_for,
                await self.inbox.waiting(),
            )

    # Dispatching

    async def dispatch_pending(self) -> int:
        """Turn due events into flow runs while the pipeline has room (see `__init__`); returns
        how many events were handed over or set aside.

        The urgent lane first (joiners and leavers), then the routine one, each on its own
        room. In each, first the batches whose claim expired (a dispatcher died holding them,
        or their last attempt failed and is due again), each sent again whole; then pending
        events, claimed batch by batch. Each event is read on its own (`_work_of`): one the
        dispatcher cannot turn into work (a poisoned event) is set aside, once, with the
        reason, and the others go on.
        """
        handed = await self._dispatch_lane(urgent=True)
        if self._unreachable_since is not None:  # Prefect stopped answering: ask again later
            return handed
        return handed + await self._dispatch_lane(urgent=False)

    async def _dispatch_lane(self, *, urgent: bool) -> int:
        handed = 0
        while self._has_room(urgent=urgent):
            taken = await self.inbox.take_over(
                self.name, self._claim_until(), limit=1, urgent=urgent
            )
            if not taken:
                break
            for token, events in taken.items():
                handed += await self._dispatch_batch(token, events, urgent=urgent)
        if not self._has_room(urgent=urgent):
            return handed
        events = await self.inbox.pending(limit=self.batch_max * 5, urgent=urgent)
        by_employee, poisoned = _works_of(events)
        handed += await self._set_aside(poisoned)
        ordered = sorted(by_employee)
        for start in range(0, len(ordered), self.batch_max):
            if not self._has_room(urgent=urgent):
                break
            employees = ordered[start : start + self.batch_max]
            keys = [work.event.event_key for e in employees for work in by_employee[e]]
            token, claimed = await self.inbox.claim(keys, self.name, self._claim_until())
            mine = set(claimed)  # another dispatcher may have claimed some first
            works = {
                employee: [work for work in by_employee[employee] if work.event.event_key in mine]
                for employee in employees
            }
            handed += await self._dispatch(
                {e: w for e, w in works.items() if w}, token, urgent=urgent
            )
        return handed

    async def _dispatch_batch(self, token: str, events: list[WebhookEvent], *, urgent: bool) -> int:
        """Send again a batch taken over (the same events, hence the same idempotency key)."""
        by_employee, poisoned = _works_of(events)
        handed = await self._set_aside(poisoned, claim=token)
        if by_employee:
            handed += await self._dispatch(by_employee, token, urgent=urgent)
        return handed

    async def _dispatch(self, works: dict[int, list[Work]], token: str, *, urgent: bool) -> int:
        """One flow run for these employees' events, of the batch `token` (of the urgent lane,
        or the routine one); returns how many events it carries (or, after a refusal that no
        retry can change, how many were set aside)."""
        if not works:
            return 0
        employee_ids = sorted(works)
        batch = [work for employee in employee_ids for work in works[employee]]
        events = [work.event for work in batch]
        keys = [event.event_key for event in events]
        try:
            deployment_id = await self._webhook_deployment_id()
            run = await self._prefect(
                self.client.create_flow_run_from_deployment(
                    deployment_id,
                    parameters={"employee_ids": employee_ids, "event_keys": _event_keys(batch)},
                    idempotency_key=self._idempotency_key(token, keys),
                    name=_run_name(employee_ids, batch),
                    tags=_run_tags(employee_ids, batch, urgent=urgent),
                )
            )
        except UNSENDABLE as error:
            # The request could not even be written (text no encoder takes): the same
            # events fail the same way on every attempt. Halve the batch until the employee
            # whose events they are is alone (a few more runs, not one per employee), set
            # those aside, and the rest goes on.
            if len(employee_ids) > 1:
                half = len(employee_ids) // 2
                first, second = employee_ids[:half], employee_ids[half:]
                return await self._dispatch(
                    {e: works[e] for e in first}, token, urgent=urgent
                ) + await self._dispatch({e: works[e] for e in second}, token, urgent=urgent)
            return await self._set_aside(
                [(event, _poison_reason(error)) for event in events], claim=token
            )
        except Exception as error:
            attempts = max(event.dispatch_attempts for event in events) + 1
            delay = min(2.0**attempts, MAX_BACKOFF_SECONDS)
            reason = printable(f"{type(error).__name__}: {error}", EVENT_OUTCOME_MAX)
            # Unless Prefect certainly did not take it, the batch stays together and is sent
            # again under the same key (a timeout says nothing of what the server did).
            await self.inbox.mark_attempt_failed(
                keys,
                f"dispatch failed ({reason})",
                utc_now() + timedelta(seconds=delay),
                claim=token,
                release=_not_taken(error),
            )
            if not _unreachable(error):  # an outage is said once a minute, not per batch
                logger.warning(
                    "dispatch of {} event(s) failed, retrying in {:.0f}s: {}",
                    len(keys),
                    delay,
                    reason,
                )
            return 0
        recorded = await self.inbox.mark_dispatched(keys, str(run.id), claim=token)
        self._in_flight.add(str(run.id))
        if urgent:
            self._urgent_in_flight.add(str(run.id))
        else:
            self._holding_back.add(str(run.id))
        if not recorded:  # another dispatcher took the batch over and recorded the same run
            return 0
        logger.info(
            "dispatched {} event(s) for {} employee(s) as {}flow run {}",
            recorded,
            len(employee_ids),
            "urgent " if urgent else "",
            run.id,
        )
        for event in events:  # the link from each webhook to the run that works it
            with logger.contextualize(**event_properties(event), FlowRunId=str(run.id)):
                logger.info(
                    "webhook {} handed to flow run {} ({}, ref {})",
                    printable(event.event_key),
                    printable(run.name),
                    run.id,
                    event.ref,
                )
        return recorded

    async def _set_aside(
        self, poisoned: list[tuple[WebhookEvent, str]], *, claim: str | None = None
    ) -> int:
        """Set these events aside (pending ones, or those of the batch `claim`), each with its
        reason, once; returns how many."""
        if not poisoned:
            return 0
        count = await self.inbox.set_aside(
            {event.event_key: why for event, why in poisoned}, claim=claim
        )
        for event, reason in poisoned:
            with logger.contextualize(**event_properties(event)):
                logger.warning(
                    "webhook {} set aside (ref {}), not dispatched: {}",
                    printable(event.event_key),
                    event.ref,
                    reason,
                )
        return count

    def _has_room(self, *, urgent: bool) -> bool:
        """Whether the lane may send another run. Both lanes together stay within both bounds
        (`max_in_flight + urgent_max_in_flight`, what the runner's slots hold). Urgent runs may
        take any free slot: a burst of hires alone (the nightly batch) must not go one run at
        a time while the routine slots stand idle. Routine runs never take the urgent lane's
        slots, and wait while a routine run holds them back (urgent runs hold back nothing)."""
        total = len(self._in_flight)
        if total >= self.max_in_flight + self.urgent_max_in_flight:
            return False
        if urgent:
            return True
        routine = total - len(self._urgent_in_flight)
        return not self._holding_back and routine < self.max_in_flight

    def _claim_until(self) -> datetime:
        return utc_now() + self.recovery.claim_for

    def _idempotency_key(self, token: str, event_keys: list[str]) -> str:
        """Names this batch: its token and its events. Whoever sends the batch again (this
        dispatcher after a failed attempt, another after this one died) gets the run Prefect
        created for it, if it did; a replayed event goes in a new batch, so in a new run. Keys
        are scoped per flow and never expire, hence the deployment prefix."""
        parts = [token, *sorted(event_keys)]
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]
        return f"{self.deployment}:{digest}"

    async def _webhook_deployment_id(self) -> UUID:
        if self._deployment_id is None:
            deployment = await self._prefect(self.client.read_deployment_by_name(self.deployment))
            self._deployment_id = deployment.id
        return self._deployment_id

    # Following the runs

    async def close_finished(self) -> None:
        """Record the outcome of dispatched events whose flow run has finished, and find the
        runs that never will by themselves (orphaned: see the module's docstring)."""
        # Read from the inbox each time, so runs dispatched before a restart (or by another
        # gateway on the same store) are followed too.
        in_flight = await self.inbox.runs_in_flight()
        self._in_flight = set(in_flight)
        self._urgent_in_flight = {run_id for run_id, urgent in in_flight.items() if urgent}
        self._holding_back = set()
        if not self._in_flight:
            return
        # One request for all of them: this runs every `busy_poll` while runs are out.
        runs = await self._prefect(
            self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[UUID(run_id) for run_id in self._in_flight])
                ),
                limit=len(self._in_flight),
            )
        )
        for run_id in self._in_flight - {str(run.id) for run in runs}:
            await self._vanished(run_id)
        finished = []
        now = utc_now()
        for run in runs:
            run_id, state = str(run.id), run.state
            waiting = state is None or state.type in NOT_STARTED_RUN_STATES
            if state is not None and (orphaned := self._orphaned(run, now)):
                try:
                    await self._crash(run, orphaned)
                except Exception as error:  # tried again next round; the others go on
                    if not _unreachable(error):
                        logger.warning("could not mark flow run {} Crashed: {}", run.id, error)
                continue
            # A run not started yet holds back the next (its events would make it larger),
            # unless runs go side by side from the start (`run_alone_for` 0: idle workers of a
            # pool must find runs to take). A run that does not start (no runner, no free
            # slot) must not stall dispatch for good: past the grace period only
            # `max_in_flight` holds events back.
            routine = run_id not in self._urgent_in_flight
            if (
                routine
                and waiting
                and self.run_alone_for
                and run.created
                and now - run.created < START_GRACE
            ):
                self._holding_back.add(run_id)
            if routine and state is not None and state.type == StateType.RUNNING:
                started = run.start_time or state.timestamp
                if started and now - started < self.run_alone_for:
                    self._holding_back.add(run_id)
            if state is not None and state.type in FINAL_RUN_STATES:
                finished.append(run)
        for run in finished:
            await self._close(run)

    def _orphaned(self, run: FlowRun, now: datetime) -> str | None:
        """Why this run will never start by itself, or None."""
        state = run.state
        if state is None:
            return None
        if state.type == StateType.PENDING and state.timestamp:
            pending_for = now - state.timestamp
            if pending_for > self.recovery.pending_orphan_after:
                return (
                    f"Pending for {pending_for.total_seconds():.0f}s: the runner or worker "
                    "starting it died"
                )
        if state.type == StateType.SCHEDULED:
            since = run.expected_start_time or run.created
            if since and now - since > self.recovery.scheduled_orphan_after:
                return (
                    f"Scheduled for {(now - since).total_seconds() / 60:.0f} min and not "
                    "started: no runner or worker took it (is `pf-jira-sync up` or a worker "
                    "running?)"
                )
        return None

    async def _crash(self, run: FlowRun, why: str) -> None:
        """Mark an orphaned run Crashed in Prefect (the next round settles its events, like
        any crashed run's); it says why, in the UI too."""
        message = f"pf-jira-sync dispatcher: {why}; its webhook events are worked again"
        await self._prefect(
            self.client.set_flow_run_state(run.id, Crashed(message=message), force=True)
        )
        logger.warning("flow run {} ({}) marked Crashed: {}", printable(run.name), run.id, why)

    async def _vanished(self, run_id: str) -> None:
        """A run the inbox follows that Prefect no longer knows (deleted from the UI): its
        events are worked again, as a crashed run's are."""
        try:
            await self._prefect(self.client.read_flow_run(UUID(run_id)))
        except ObjectNotFound:
            await self._settle_unfinished(
                run_id, run_id, "Deleted", "the flow run no longer exists in Prefect", {}
            )
        # Found after all: more runs than one read returns; the next round sees it.

    async def _close(self, run: FlowRun) -> None:
        """Record how a finished run ended on its events, with the Jira issues it changed for
        each employee (`Jira IT-1; completed in flow run sync · Ada Lovelace (1041)`); a run
        that crashed or failed sends back to work what it did not do (`_settle_unfinished`)."""
        state = run.state
        assert state is not None
        children = await self._children(run)
        jira_keys = await self.inbox.jira_keys({str(run.id), *(str(c.id) for c in children)})
        state_name = state.name or state.type.value.title()
        if state.type in (StateType.FAILED, StateType.CRASHED):
            await self._settle_unfinished(
                str(run.id), run.name, state_name, state.message or "", jira_keys
            )
            if state.type == StateType.CRASHED:
                await self._crash_children(run, children)
        else:
            outcome = partial(
                event_outcome, run.name, state=state_name, message=state.message or ""
            )
            closed = await self.inbox.close_run(
                str(run.id),
                EventStatus.done if state.type == StateType.COMPLETED else EventStatus.failed,
                outcome([]),
                per_employee={employee: outcome(keys) for employee, keys in jira_keys.items()},
            )
            if closed and state.type == StateType.CANCELLED:
                logger.error(
                    "flow run {} ({}) was cancelled: its {} event(s) end failed "
                    "(`pf-jira-sync replay --status failed` works them again)",
                    printable(run.name),
                    run.id,
                    closed,
                )
        self._in_flight.discard(str(run.id))
        self._urgent_in_flight.discard(str(run.id))

    async def _settle_unfinished(
        self,
        run_id: str,
        run_name: str,
        state: str,
        message: str,
        jira_keys: dict[int, list[str]],
    ) -> None:
        """The events of a run that crashed or failed, each by what the flow recorded for its
        employee: done stays done; a permanent failure ends failed now; anything else (a
        transient failure, or no record: the process died first) is worked again after a
        backoff, unless this was its last attempt."""
        events = await self.inbox.dispatched_to(run_id)
        now = utc_now()
        recovery = self.recovery
        settled: dict[str, Settled] = {}
        for event in events:
            why = event.outcome or message  # the flow's note for this employee, else the run's
            if event.work_result == WorkResult.done:
                keys = jira_keys.get(event.employee_id or 0, [])
                settled[event.event_key] = Settled(EventStatus.done, event_outcome(run_name, keys))
            elif event.work_result == WorkResult.permanent:
                settled[event.event_key] = Settled(
                    EventStatus.failed, event_failed_outcome(run_name, state, why)
                )
            elif (attempt := event.failed_runs + 1) >= recovery.max_attempts:
                settled[event.event_key] = Settled(
                    EventStatus.failed,
                    event_failed_outcome(run_name, state, why, attempts=attempt),
                    failed_run=True,
                )
            else:
                again = recovery.retry_at(attempt, now)
                settled[event.event_key] = Settled(
                    EventStatus.pending,
                    event_retry_outcome(
                        run_name, state, why, attempt, recovery.max_attempts, again
                    ),
                    retry_at=again,
                    failed_run=True,
                )
        if not await self.inbox.settle_run(run_id, settled):
            return  # settled already (another gateway on the same store was first)
        by_status: dict[EventStatus, list[WebhookEvent]] = {}
        for event in events:
            by_status.setdefault(settled[event.event_key].status, []).append(event)
        retried = by_status.get(EventStatus.pending, [])
        logger.warning(
            "flow run {} ({}) ended {}: {} event(s) worked again, {} done, {} failed",
            printable(run_name),
            run_id,
            state,
            len(retried),
            len(by_status.get(EventStatus.done, [])),
            len(by_status.get(EventStatus.failed, [])),
        )
        for event in by_status.get(EventStatus.failed, []):
            with logger.contextualize(**event_properties(event), FlowRunId=run_id):
                logger.error(
                    "webhook {} failed (ref {}): {}",
                    printable(event.event_key),
                    event.ref,
                    settled[event.event_key].outcome,
                )

    async def _children(self, run: FlowRun) -> list[FlowRun]:
        """The run's subflow runs: the store records each Jira effect with the flow run that
        made it, which is a process subflow (`onboarding · ...`) of the dispatched run.
        Process flows start no subflows of their own, so one level is all there is (one read
        per finished run)."""
        return await self._prefect(
            self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
                )
            )
        )

    async def _crash_children(self, run: FlowRun, children: list[FlowRun]) -> None:
        """Subflows of a crashed run died with its process: say so in the UI, rather than
        leave them Running for ever."""
        for child in children:
            if child.state is not None and child.state.type not in FINAL_RUN_STATES:
                message = f"pf-jira-sync dispatcher: its parent run {run.name} ({run.id}) crashed"
                with suppress(Exception):
                    await self._prefect(
                        self.client.set_flow_run_state(
                            child.id, Crashed(message=message), force=True
                        )
                    )


def _unreachable(error: BaseException) -> bool:
    """Whether `error` says Prefect did not answer (rather than refused): no connection, no
    answer in time, or a proxy in front of it answering for it (502, 503, 504)."""
    if isinstance(error, TimeoutError | httpx.TransportError):
        return True
    return isinstance(error, httpx.HTTPStatusError) and error.response.status_code in (
        502,
        503,
        504,
    )


def _not_taken(error: BaseException) -> bool:
    """Whether a create that raised `error` certainly created nothing: the connection was never
    made, or Prefect answered with a refusal (4xx)."""
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return True
    return isinstance(error, httpx.HTTPStatusError) and 400 <= error.response.status_code < 500


def _works_of(
    events: list[WebhookEvent],
) -> tuple[dict[int, list[Work]], list[tuple[WebhookEvent, str]]]:
    """The events as work by employee, and those that cannot be work, with why."""
    by_employee: dict[int, list[Work]] = {}
    poisoned: list[tuple[WebhookEvent, str]] = []
    for event in events:
        try:
            work = _work_of(event)
        except Exception as error:  # whatever it is, it is this event's, not the batch's
            poisoned.append((event, _poison_reason(error)))
        else:
            by_employee.setdefault(work.employee_id, []).append(work)
    return by_employee, poisoned


@dataclass(frozen=True)
class Work:
    """What a pending event adds to a flow run: its employee, and the sender's text it brings,
    made safe for a run name and tags (escaped and bounded: `core.text`)."""

    event: WebhookEvent
    employee_id: int
    name: str | None
    action: str


def _work_of(event: WebhookEvent) -> Work:
    """The event as work, or an exception saying why it cannot be (it is then set aside)."""
    if event.employee_id is None:
        raise Poisoned("it concerns no employee: there is nothing to dispatch")
    event.event_key.encode()  # a key that cannot be sent fails here, not in the whole batch
    return Work(
        event=event,
        employee_id=event.employee_id,
        name=_display_name(_name_in(event.body)),
        action=printable(event.action, NAME_LIMIT),
    )


class Poisoned(Exception):
    """An event the dispatcher cannot turn into work; the text says why."""


# What a request that cannot be written raises (a lone surrogate in a JSON string cannot be
# encoded as UTF-8): the same on every attempt, unlike an unreachable or failing Prefect server,
# which is retried. Nothing else: a bug of ours must not set every event aside.
UNSENDABLE = (UnicodeError,)


def _poison_reason(error: BaseException) -> str:
    text = str(error) if isinstance(error, Poisoned) else f"{type(error).__name__}: {error}"
    return printable(f"set aside, not dispatched: {text}", EVENT_OUTCOME_MAX)


def _event_keys(works: list[Work]) -> dict[str, list[str]]:
    """The flow's `event_keys` parameter: each employee's events, so its lines carry them."""
    keys: dict[str, list[str]] = {}
    for work in works:
        keys.setdefault(str(work.employee_id), []).append(work.event.event_key)
    return keys


def _run_tags(employee_ids: list[int], works: list[Work], *, urgent: bool = False) -> list[str]:
    """Filterable in the UI: the service, the source, `urgent` for a run of the joiners' and
    leavers' lane, the employees (the first few) and the webhook actions."""
    actions = sorted({work.action for work in works})[:5]
    return [
        *SERVICE_TAGS,
        WEBHOOK_TAG,
        *([URGENT_TAG] if urgent else []),
        *employee_tags(employee_ids),
        *(action_tag(action) for action in actions),
    ]


def _run_name(employee_ids: list[int], works: list[Work]) -> str:
    if len(employee_ids) == 1:
        name = works[-1].name
        return (
            f"sync · {name} ({employee_ids[0]})" if name else f"sync · employee {employee_ids[0]}"
        )
    return f"sync · {len(employee_ids)} employees"


def _name_in(body: str) -> str | None:
    """The employee's name as the webhook gave it (the run is renamed from PeopleForce later):
    the string parts of `data.attributes`, whatever shape the body has, else None."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    if not isinstance(attributes, dict):
        return None
    parts = [attributes.get("first_name"), attributes.get("last_name")]
    return (
        " ".join(part.strip() for part in parts if isinstance(part, str) and part.strip()) or None
    )


def _display_name(name: str | None) -> str | None:
    """The sender's name as a run name may hold it: escaped, at most `NAME_LIMIT` characters."""
    return printable(name, NAME_LIMIT) if name else None


def prefect_client(settings: Settings) -> PrefectClient:
    """The gateway's one Prefect client: the configured API, never a silent temporary server."""
    api_url = require_prefect_api_url(settings)
    # PREFECT_API_AUTH_STRING: the server's PREFECT_SERVER_API_AUTH_STRING, when it has one.
    return PrefectClient(api=api_url, auth_string=PREFECT_API_AUTH_STRING.value())


class Dispatching:
    """The dispatcher as the gateway runs it: `on_stored=dispatching.wake`,
    `extra_lifespan=dispatching.lifespan` (started once the inbox is open)."""

    def __init__(self, settings: Settings, *, poll: float = 5.0) -> None:
        require_prefect_api_url(settings)  # refused before serving; the client is made once served
        self.settings = settings
        self.poll = poll
        self.dispatcher: Dispatcher | None = None

    def wake(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def prefect_ready(self) -> bool:
        """Readiness: the Prefect API answers (`/readyz`), within the dispatcher's bound."""
        if self.dispatcher is None:
            return False
        error = await asyncio.wait_for(
            self.dispatcher.client.api_healthcheck(),
            timeout=self.dispatcher.recovery.prefect_timeout,
        )
        if error is not None:
            raise error
        return True

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncGenerator[None, None]:
        async with prefect_client(self.settings) as client:
            self.dispatcher = Dispatcher(
                app.state.inbox,
                client,
                batch_max=self.settings.dispatch_batch_max,
                max_in_flight=self.settings.dispatch_max_in_flight,
                urgent_max_in_flight=self.settings.dispatch_urgent_max_in_flight,
                run_alone_for=timedelta(seconds=self.settings.dispatch_run_alone_seconds),
                poll=self.poll,
                recovery=Recovery.from_settings(self.settings),
            )
            task = asyncio.create_task(self.dispatcher.run(), name="dispatcher")
            self.dispatcher.wake()  # events stored while the gateway was down
            try:
                yield
            finally:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
                self.dispatcher = None
