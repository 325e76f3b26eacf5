"""Signed webhooks -> gateway inbox -> dispatcher -> Prefect flow runs -> Jira, end to end.

The gateway runs over real HTTP with its dispatcher; the PeopleForce simulator sends the signed
webhooks; flow runs are created in the Prefect test server through its API. Only the runner is
replaced: the test executes the scheduled runs in-process (so they use the simulators' clients
held to the specs), where production serves them from `python -m deployments.serve`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import State, StateType
from prefect.flow_engine import run_flow_async
from prefect.settings import PREFECT_API_URL
from prefect.states import Pending, Running

from core.peopleforce.signature import SIGNATURE_HEADER, sign
from core.store import EventStatus, InboxRepository, MappingStore, WebhookEvent
from flows.sync import sync_employees
from sandbox.server import free_port
from tests.fixtures_flows import World, webhook_gateway
from webhook_gateway.dispatch import Dispatcher, Dispatching

SECRET = "dispatch-test-secret"


@dataclass
class Pipeline:
    world: World
    url: str
    client: PrefectClient
    deployment_id: UUID
    dispatching: Dispatching
    inbox: InboxRepository

    async def settle(self) -> None:
        """Until nothing is waiting to be dispatched. An event that arrived while its employee's
        run was being created waits for that run to start (the dispatcher keeps runs few and
        large): after a while, start the dispatched runs, as the served deployment would."""
        started = time.monotonic()
        while await self.inbox.pending(limit=1):
            waited = time.monotonic() - started
            assert waited < 60, "events still pending"
            if waited > 2:
                await self.run_scheduled()
            await asyncio.sleep(0.1)

    async def run_scheduled(self) -> list[str]:
        """Execute the dispatched runs, as the served deployment would; returns their names."""
        runs = await self.client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )
        for run in runs:
            await run_flow_async(
                sync_employees, flow_run=run, parameters=run.parameters, return_type="state"
            )
        return [run.name for run in runs]

    async def outcomes(self) -> dict[str, str]:
        """Close finished events (as the gateway's dispatcher does on its next round), then read them."""
        await Dispatcher(self.inbox, self.client).close_finished()
        return {event.event_key: event.status for event in await self.inbox.recent(limit=500)}


@pytest.fixture
async def pipeline(world: World) -> AsyncIterator[Pipeline]:
    api_url = PREFECT_API_URL.value()
    deployment = await sync_employees.ato_deployment(name="webhook")
    deployment_id = await deployment.aapply()
    with webhook_gateway(world, SECRET, api_url, poll=0.5) as (url, dispatching):
        async with PrefectClient(api=api_url) as client:
            yield Pipeline(
                world,
                url,
                client,
                deployment_id,
                dispatching,
                InboxRepository(world.services.store.engine),
            )


def jira_state(world: World, employee_id: int, name: str) -> list[tuple[str, str, str | None]]:
    """What Jira holds for the employee, with their name taken out (to compare two people)."""
    return sorted(
        (issue.summary.replace(name, "NAME"), issue.status, issue.duedate)
        for issue in world.issues_of(employee_id)
    )


async def test_signed_webhook_ends_in_jira_and_the_mapping(pipeline: Pipeline) -> None:
    world = pipeline.world
    person = world.hire("Ada", "Lovelace", in_days=3, department="Engineering")
    (delivery,) = world.peopleforce.state.deliveries
    assert delivery.status_code == 202
    await pipeline.settle()
    names = await pipeline.run_scheduled()
    assert names == [f"sync · Ada Lovelace ({person.id})"]
    (parent,) = world.parents_of(person.id)
    assert parent.summary.startswith("Onboarding: Ada Lovelace")
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.onboarding_issue_key == parent.key
    assert set((await pipeline.outcomes()).values()) == {EventStatus.done}
    # The outcome names the Jira issue first (recorded by the process subflow's effects).
    (event,) = await pipeline.inbox.recent()
    assert event.outcome == f"Jira {parent.key}; completed in flow run {names[0]}"
    runs = await pipeline.client.read_flow_runs()
    assert f"onboarding · Ada Lovelace ({person.id})" in {run.name for run in runs}


async def test_duplicated_shuffled_deliveries_converge_like_ordered_ones(
    pipeline: Pipeline,
) -> None:
    world, state = pipeline.world, pipeline.world.peopleforce.state
    # Ordered: each change delivered once and worked before the next.
    ordered = world.hire("Ordered", "Person", in_days=2, department="Finance")
    await pipeline.settle()
    await pipeline.run_scheduled()
    state.update(ordered.id, department="Sales")
    await pipeline.settle()
    await pipeline.run_scheduled()
    state.terminate(ordered.id, effective_on=world.days(30))
    await pipeline.settle()
    await pipeline.run_scheduled()

    # Shuffled: the same changes happen with the gateway unreachable, then every delivery
    # arrives three times, in random order, and is worked at once.
    state.set_webhook_target(f"http://127.0.0.1:{free_port()}/unreachable", SECRET)
    shuffled = world.hire("Shuffled", "Person", in_days=2, department="Finance")
    state.update(shuffled.id, department="Sales")
    state.terminate(shuffled.id, effective_on=world.days(30))
    bodies = [d.body.encode() for d in state.deliveries if d.employee_id == shuffled.id]
    assert len(bodies) == 3
    copies = bodies * 3
    random.Random(5).shuffle(copies)
    async with httpx.AsyncClient(base_url=pipeline.url) as http:
        answers = [
            (
                await http.post(
                    "/webhooks/peopleforce",
                    content=body,
                    headers={
                        SIGNATURE_HEADER: sign(SECRET, body),
                        "content-type": "application/json",
                    },
                )
            ).status_code
            for body in copies
        ]
    assert sorted(answers) == [200] * 6 + [202] * 3
    await pipeline.settle()
    # Duplicates add no work: at most one run per distinct event (fewer when they arrive
    # within one dispatch window).
    assert 1 <= len(await pipeline.run_scheduled()) <= 3
    assert jira_state(world, shuffled.id, "Shuffled Person") == jira_state(
        world, ordered.id, "Ordered Person"
    )
    assert len(world.parents_of(shuffled.id)) == 2  # onboarding and offboarding, once each


async def test_events_wait_while_prefect_is_down_and_none_is_lost(world: World) -> None:
    api_url = PREFECT_API_URL.value()
    deployment_id = await (await sync_employees.ato_deployment(name="webhook")).aapply()
    dead = f"http://127.0.0.1:{free_port()}/api"
    inbox = InboxRepository(world.services.store.engine)
    with webhook_gateway(world, SECRET, dead, poll=0.2):
        people = [
            world.hire("Down", f"Time{n}", in_days=1, department="Finance") for n in range(50)
        ]
        assert all(d.status_code == 202 for d in world.peopleforce.state.deliveries)
        deadline = time.monotonic() + 20
        while any(e.dispatch_attempts == 0 for e in await inbox.recent(limit=100)):
            assert time.monotonic() < deadline, "dispatch never attempted"
            await asyncio.sleep(0.2)
        waiting = await inbox.recent(limit=100)
        assert len(waiting) == 50
        assert all(e.status == EventStatus.pending for e in waiting)
        assert "dispatch failed" in (waiting[0].outcome or "")
    # Prefect is back: a gateway pointed at it dispatches the backlog.
    with webhook_gateway(world, SECRET, api_url, poll=0.2) as (_, dispatching):
        async with PrefectClient(api=api_url) as client:
            pipeline = Pipeline(world, "", client, deployment_id, dispatching, inbox)
            deadline = time.monotonic() + 120
            # Runs are started as they come: the dispatcher sends no more while one waits.
            while any(e.status == EventStatus.pending for e in await inbox.recent(limit=100)):
                assert time.monotonic() < deadline, "backlog not dispatched"
                await pipeline.run_scheduled()
                await asyncio.sleep(0.2)
            await pipeline.run_scheduled()
            outcomes = await pipeline.outcomes()
    assert list(outcomes.values()).count(EventStatus.done) == 50
    # The backlog goes out in a few runs of many employees, not one run per event.
    assert len({e.flow_run_id for e in await inbox.recent(limit=100)}) <= 5
    for person in people:
        assert len(world.parents_of(person.id)) == 1


async def test_a_new_run_waits_until_the_last_one_started_and_ran_alone_a_while(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Backpressure: new events wait while the dispatched run has not started, and while it has
    run for less than `run_alone_for`; a slow run lets the next start beside it."""
    store = await MappingStore.open(f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}")
    inbox = InboxRepository(store.engine)
    dispatcher = Dispatcher(inbox, pipeline.client, run_alone_for=timedelta(seconds=1))

    async def dispatched_after(state: State | None) -> int:
        if state is not None:
            await pipeline.client.set_flow_run_state(first, state, force=True)
        await dispatcher.close_finished()
        return await dispatcher.dispatch_pending()

    try:
        await add_update_event(inbox, 1)
        assert await dispatched_after(None) == 1
        stored = await inbox.get("e1")
        assert stored is not None
        assert stored.flow_run_id is not None
        first = UUID(stored.flow_run_id)
        await add_update_event(inbox, 2)
        assert await dispatched_after(None) == 0  # scheduled, not started
        assert await dispatched_after(Pending()) == 0
        assert await dispatched_after(Running()) == 0  # started a moment ago
        await asyncio.sleep(1.2)
        assert await dispatched_after(Running()) == 1  # slow: the next goes beside it
    finally:
        await store.close()


async def test_runs_go_side_by_side_from_the_start_when_none_runs_alone(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Work pools (`run_alone_for` 0): runs not started yet hold nothing back, so idle workers
    find several to take; only `max_in_flight` bounds them."""
    store = await MappingStore.open(f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}")
    inbox = InboxRepository(store.engine)
    dispatcher = Dispatcher(inbox, pipeline.client, run_alone_for=timedelta(0), max_in_flight=2)
    try:
        dispatched = []
        for employee_id in (1, 2, 3):
            await add_update_event(inbox, employee_id)
            await dispatcher.close_finished()
            dispatched.append(await dispatcher.dispatch_pending())
        assert dispatched == [1, 1, 0]  # two runs scheduled, neither started: the third waits
        events = [await inbox.get(f"e{n}") for n in (1, 2)]
        assert len({event.flow_run_id for event in events if event and event.flow_run_id}) == 2
    finally:
        await store.close()


async def add_update_event(inbox: InboxRepository, employee_id: int) -> None:
    await inbox.add(
        WebhookEvent(
            event_key=f"e{employee_id}",
            action="employee_update",
            employee_id=employee_id,
            body=json.dumps({"employee": employee_id}),
        )
    )
