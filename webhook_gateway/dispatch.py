"""Dispatch: pending inbox events become Prefect flow runs, and finished runs close their events.

Runs inside the gateway process (one Prefect client for its lifetime). Events are grouped by
employee, so a burst for one person is one piece of work, and one flow run carries many
employees (a flow run is a process of its own: see DESIGN, "Throughput"). A dispatch that
Prefect does not accept is retried with backoff, so an acknowledged event is never lost, even
while the Prefect server is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from functools import partial
from typing import Any
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
from core.render import event_outcome
from core.settings import Settings
from core.store import EventStatus, InboxRepository, WebhookEvent
from core.store.models import utc_now
from webhook_gateway.app import GatewayConfigError, event_properties

MAX_BACKOFF_SECONDS = 60.0
NOT_STARTED_RUN_STATES = {StateType.SCHEDULED, StateType.PENDING}
START_GRACE = timedelta(minutes=2)
# DISPATCH_RUN_ALONE_SECONDS' default, for a dispatcher built without settings (tests).
RUN_ALONE_FOR = timedelta(seconds=Settings.model_fields["dispatch_run_alone_seconds"].default)
# Subflows of subflows, as deep as a dispatched run may nest them (sync -> process today).
MAX_SUBFLOW_DEPTH = 3
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
        returns how many events were handed over."""
        if not self._has_room():
            return 0
        events = await self.inbox.pending(limit=self.batch_max * 5)
        by_employee: dict[int, list[WebhookEvent]] = {}
        for event in events:
            if event.employee_id is not None:
                by_employee.setdefault(event.employee_id, []).append(event)
        handed = 0
        ordered = sorted(by_employee)
        for start in range(0, len(ordered), self.batch_max):
            if not self._has_room():
                break
            employees = ordered[start : start + self.batch_max]
            batch = [event for employee in employees for event in by_employee[employee]]
            if await self._dispatch(employees, batch):
                handed += len(batch)
        return handed

    async def _dispatch(self, employee_ids: list[int], events: list[WebhookEvent]) -> bool:
        keys = [event.event_key for event in events]
        try:
            run = await self.client.create_flow_run_from_deployment(
                await self._webhook_deployment_id(),
                parameters={"employee_ids": employee_ids, "event_keys": _event_keys(events)},
                idempotency_key=self._idempotency_key(events),
                name=_run_name(employee_ids, events),
                tags=_run_tags(employee_ids, events),
            )
        except Exception as error:
            attempts = max(event.dispatch_attempts for event in events) + 1
            delay = min(2.0**attempts, MAX_BACKOFF_SECONDS)
            await self.inbox.mark_attempt_failed(
                keys,
                f"dispatch failed ({type(error).__name__}: {error})",
                utc_now() + timedelta(seconds=delay),
            )
            logger.warning(
                "dispatch of {} event(s) failed, retrying in {:.0f}s: {}", len(keys), delay, error
            )
            return False
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
                    event.event_key,
                    run.name,
                    run.id,
                    event.ref,
                )
        return True

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
        that made it, which is a process subflow (`onboarding · ...`) of the dispatched run."""
        family, parents = {run.id}, [run.id]
        for _ in range(MAX_SUBFLOW_DEPTH):
            children = await self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents)
                )
            )
            parents = [child.id for child in children if child.id not in family]
            if not parents:
                break
            family.update(parents)
        return {str(run_id) for run_id in family}


def _event_keys(events: list[WebhookEvent]) -> dict[str, list[str]]:
    """The flow's `event_keys` parameter: each employee's events, so its lines carry them."""
    keys: dict[str, list[str]] = {}
    for event in events:
        if event.employee_id is not None:
            keys.setdefault(str(event.employee_id), []).append(event.event_key)
    return keys


def _run_tags(employee_ids: list[int], events: list[WebhookEvent]) -> list[str]:
    """Filterable in the UI: the service, the source, the employees (the first few) and the
    webhook actions."""
    actions = sorted({event.action for event in events})[:5]
    return [
        *SERVICE_TAGS,
        WEBHOOK_TAG,
        *employee_tags(employee_ids),
        *(action_tag(action) for action in actions),
    ]


def _run_name(employee_ids: list[int], events: list[WebhookEvent]) -> str:
    if len(employee_ids) == 1:
        name = _name_in(events[-1].body)
        return (
            f"sync · {name} ({employee_ids[0]})" if name else f"sync · employee {employee_ids[0]}"
        )
    return f"sync · {len(employee_ids)} employees"


def _name_in(body: str) -> str | None:
    """The employee's name as the webhook gave it (the run is renamed from PeopleForce later)."""
    try:
        attributes: dict[str, Any] = json.loads(body)["data"]["attributes"]
    except (ValueError, KeyError, TypeError):
        return None
    parts = [attributes.get("first_name"), attributes.get("last_name")]
    return " ".join(str(part) for part in parts if part) or None


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
