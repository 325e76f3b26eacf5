"""Dispatch: pending inbox events become Prefect flow runs, and finished runs close their events.

Runs inside the gateway process (one Prefect client for its lifetime). Events are grouped by
employee, so a burst for one person is one piece of work, and one flow run carries many
employees (a flow run is a process of its own: see DESIGN, "Throughput"). A dispatch that
Prefect does not accept is retried with backoff, so an acknowledged event is never lost, even
while the Prefect server is down.

One event never holds up the others: each is read on its own, whatever its body holds (the
sender's name and action are escaped and bounded, `core.text`, before they title a run or tag
it), and an event the dispatcher cannot turn into work (a poisoned event) is set aside once,
with the reason (status `set_aside`, shown by `pf-jira-sync events`), never retried on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from uuid import UUID

from fastapi import FastAPI
from loguru import logger
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_API_AUTH_STRING

from core.names import SERVICE_TAGS, WEBHOOK_RUNS, WEBHOOK_TAG, action_tag, employee_tags
from core.render import EVENT_OUTCOME_MAX, event_outcome
from core.settings import Settings
from core.store import EventStatus, InboxRepository, WebhookEvent
from core.store.models import utc_now
from core.text import NAME_LIMIT, printable
from webhook_gateway.app import GatewayConfigError, event_properties

MAX_BACKOFF_SECONDS = 60.0
NOT_STARTED_RUN_STATES = {StateType.SCHEDULED, StateType.PENDING}
START_GRACE = timedelta(minutes=2)
# DISPATCH_RUN_ALONE_SECONDS' default, for a dispatcher built without settings (tests).
RUN_ALONE_FOR = timedelta(seconds=Settings.model_fields["dispatch_run_alone_seconds"].default)
FINAL_RUN_STATES = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


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
        settle: float = 0.3,
        poll: float = 5.0,
        busy_poll: float = 0.25,
        run_alone_for: timedelta = RUN_ALONE_FOR,
    ) -> None:
        self.inbox = inbox
        self.client = client
        self.deployment = deployment
        self.batch_max = batch_max
        # Backpressure: while a dispatched run has not started yet, or has started less than
        # `run_alone_for` ago, or this many runs are unfinished, new events wait in the inbox
        # and the next run carries them all. Each run costs a process start (seconds of CPU
        # here), so on one host runs must be few and large; a slow run (a Jira retry waiting,
        # a big backlog) lets the next start beside it. `run_alone_for` 0 (work pools): runs
        # go side by side from the start, up to `max_in_flight`.
        self.max_in_flight = max_in_flight
        self.run_alone_for = run_alone_for
        self.settle = settle  # let a burst arrive before dispatching it as one batch
        self.poll = poll
        self.busy_poll = busy_poll  # how often to look for finished runs while some are out
        self._wake = asyncio.Event()
        self._deployment_id: UUID | None = None
        self._in_flight: set[str] = set()
        # Runs not started yet, or started less than `run_alone_for` ago: they hold back dispatch.
        self._holding_back: set[str] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self.busy_poll if self._in_flight else self.poll
                )
            if self._wake.is_set():
                self._wake.clear()
                await asyncio.sleep(self.settle)
            try:
                await self.close_finished()
                while await self.dispatch_pending():
                    pass
            except Exception as error:  # the loop must outlive any one failure
                logger.exception("dispatcher: {}", error)

    async def dispatch_pending(self) -> int:
        """Turn due pending events into flow runs while the pipeline has room (see `__init__`);
        returns how many events were handed over or set aside.

        Each event is read on its own (`_work_of`): one the dispatcher cannot turn into work (a
        poisoned event) is set aside, once, with the reason, and the others go on.
        """
        if not self._has_room():
            return 0
        events = await self.inbox.pending(limit=self.batch_max * 5)
        by_employee: dict[int, list[Work]] = {}
        poisoned: list[tuple[WebhookEvent, str]] = []
        for event in events:
            try:
                work = _work_of(event)
            except Exception as error:  # whatever it is, it is this event's, not the batch's
                poisoned.append((event, _poison_reason(error)))
            else:
                by_employee.setdefault(work.employee_id, []).append(work)
        handed = await self._set_aside(poisoned)
        ordered = sorted(by_employee)
        for start in range(0, len(ordered), self.batch_max):
            if not self._has_room():
                break
            employees = ordered[start : start + self.batch_max]
            handed += await self._dispatch({e: by_employee[e] for e in employees})
        return handed

    async def _dispatch(self, works: dict[int, list[Work]]) -> int:
        """One flow run for these employees' events; returns how many events it carries (or,
        after a refusal that no retry can change, how many were set aside)."""
        employee_ids = sorted(works)
        batch = [work for employee in employee_ids for work in works[employee]]
        events = [work.event for work in batch]
        keys = [event.event_key for event in events]
        try:
            run = await self.client.create_flow_run_from_deployment(
                await self._webhook_deployment_id(),
                parameters={"employee_ids": employee_ids, "event_keys": _event_keys(batch)},
                idempotency_key=self._idempotency_key(events),
                name=_run_name(employee_ids, batch),
                tags=_run_tags(employee_ids, batch),
            )
        except UNSENDABLE as error:
            # The request could not even be written (text no encoder takes): the same
            # events fail the same way on every attempt. Halve the batch until the employee
            # whose events they are is alone (a few more runs, not one per employee), set
            # those aside, and the rest goes on.
            if len(employee_ids) > 1:
                half = len(employee_ids) // 2
                first, second = employee_ids[:half], employee_ids[half:]
                return await self._dispatch({e: works[e] for e in first}) + await self._dispatch(
                    {e: works[e] for e in second}
                )
            return await self._set_aside([(event, _poison_reason(error)) for event in events])
        except Exception as error:
            attempts = max(event.dispatch_attempts for event in events) + 1
            delay = min(2.0**attempts, MAX_BACKOFF_SECONDS)
            reason = printable(f"{type(error).__name__}: {error}", EVENT_OUTCOME_MAX)
            await self.inbox.mark_attempt_failed(
                keys, f"dispatch failed ({reason})", utc_now() + timedelta(seconds=delay)
            )
            logger.warning(
                "dispatch of {} event(s) failed, retrying in {:.0f}s: {}", len(keys), delay, reason
            )
            return 0
        await self.inbox.mark_dispatched(keys, str(run.id))
        self._in_flight.add(str(run.id))
        self._holding_back.add(str(run.id))
        logger.info(
            "dispatched {} event(s) for {} employee(s) as flow run {}",
            len(keys),
            len(employee_ids),
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
        return len(events)

    async def _set_aside(self, poisoned: list[tuple[WebhookEvent, str]]) -> int:
        """Set these pending events aside, each with its reason, once; returns how many."""
        if not poisoned:
            return 0
        count = await self.inbox.set_aside({event.event_key: why for event, why in poisoned})
        for event, reason in poisoned:
            with logger.contextualize(**event_properties(event)):
                logger.warning(
                    "webhook {} set aside (ref {}), not dispatched: {}",
                    printable(event.event_key),
                    event.ref,
                    reason,
                )
        return count

    def _has_room(self) -> bool:
        return not self._holding_back and len(self._in_flight) < self.max_in_flight

    def _idempotency_key(self, events: list[WebhookEvent]) -> str:
        """Names this set of events in this state: a dispatcher that crashed after Prefect took
        the run gets the same run back; a replayed event (state changed) gets a new run. Keys are
        scoped per flow and never expire, hence the deployment prefix."""
        parts = sorted(f"{e.event_key}@{e.updated_at.isoformat()}" for e in events)
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]
        return f"{self.deployment}:{digest}"

    async def _webhook_deployment_id(self) -> UUID:
        if self._deployment_id is None:
            deployment = await self.client.read_deployment_by_name(self.deployment)
            self._deployment_id = deployment.id
        return self._deployment_id

    async def close_finished(self) -> None:
        """Record the outcome of dispatched events whose flow run has finished."""
        # Read from the inbox each time, so runs dispatched before a restart are followed too.
        self._in_flight = set(await self.inbox.runs_in_flight())
        self._holding_back = set()
        # One request for all of them: this runs every `busy_poll` while runs are out.
        runs = (
            await self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[UUID(run_id) for run_id in self._in_flight])
                ),
                limit=len(self._in_flight),
            )
            if self._in_flight
            else []
        )
        finished = []
        for run in runs:
            run_id, state = str(run.id), run.state
            waiting = state is None or state.type in NOT_STARTED_RUN_STATES
            # A run not started yet holds back the next (its events would make it larger),
            # unless runs go side by side from the start (`run_alone_for` 0: idle workers of a
            # pool must find runs to take). A run that does not start (no runner, no free
            # slot) must not stall dispatch for good: past the grace period only
            # `max_in_flight` holds events back.
            if (
                waiting
                and self.run_alone_for
                and run.created
                and utc_now() - run.created < START_GRACE
            ):
                self._holding_back.add(run_id)
            if state is not None and state.type == StateType.RUNNING:
                started = run.start_time or state.timestamp
                if started and utc_now() - started < self.run_alone_for:
                    self._holding_back.add(run_id)
            if state is not None and state.type in FINAL_RUN_STATES:
                finished.append(run)
        for run in finished:
            await self._close(run)

    async def _close(self, run: FlowRun) -> None:
        """Record how a finished run ended on its events, with the Jira issues it changed for
        each employee (`Jira IT-1; completed in flow run sync · Ada Lovelace (1041)`)."""
        state = run.state
        assert state is not None
        jira_keys = await self.inbox.jira_keys(await self._family(run))
        outcome = partial(
            event_outcome,
            run.name,
            state=state.name or state.type.value.title(),
            message=state.message or "",
        )
        await self.inbox.close_run(
            str(run.id),
            EventStatus.done if state.type == StateType.COMPLETED else EventStatus.failed,
            outcome([]),
            per_employee={employee: outcome(keys) for employee, keys in jira_keys.items()},
        )
        self._in_flight.discard(str(run.id))

    async def _family(self, run: FlowRun) -> set[str]:
        """The run and its subflow runs: the store records each Jira effect with the flow run
        that made it, which is a process subflow (`onboarding · ...`) of the dispatched run.
        Process flows start no subflows of their own, so one level is all there is (one read
        per finished run)."""
        children = await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
            )
        )
        return {str(run.id), *(str(child.id) for child in children)}


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


def _run_tags(employee_ids: list[int], works: list[Work]) -> list[str]:
    """Filterable in the UI: the service, the source, the employees (the first few) and the
    webhook actions."""
    actions = sorted({work.action for work in works})[:5]
    return [
        *SERVICE_TAGS,
        WEBHOOK_TAG,
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
    if not settings.prefect_api_url:
        raise GatewayConfigError(
            "PREFECT_API_URL is not set: the gateway hands events to Prefect at that URL "
            "(e.g. http://127.0.0.1:4200/api)"
        )
    # PREFECT_API_AUTH_STRING: the server's PREFECT_SERVER_API_AUTH_STRING, when it has one.
    return PrefectClient(
        api=str(settings.prefect_api_url).rstrip("/"), auth_string=PREFECT_API_AUTH_STRING.value()
    )


class Dispatching:
    """The dispatcher as the gateway runs it: `on_stored=dispatching.wake`,
    `extra_lifespan=dispatching.lifespan` (started once the inbox is open)."""

    def __init__(self, settings: Settings, *, poll: float = 5.0) -> None:
        prefect_client(settings)  # refuses to go on without a Prefect API URL, before serving
        self.settings = settings
        self.poll = poll
        self.dispatcher: Dispatcher | None = None

    def wake(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def prefect_ready(self) -> bool:
        """Readiness: the Prefect API answers (`/readyz`)."""
        if self.dispatcher is None:
            return False
        error = await self.dispatcher.client.api_healthcheck()
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
                run_alone_for=timedelta(seconds=self.settings.dispatch_run_alone_seconds),
                poll=self.poll,
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
