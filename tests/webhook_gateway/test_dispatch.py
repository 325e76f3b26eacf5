"""Signed webhooks -> gateway inbox -> dispatcher -> Prefect flow runs -> Jira, end to end.

The gateway runs over real HTTP with its dispatcher; the PeopleForce simulator sends the signed
webhooks; flow runs are created in the Prefect test server through its API. Only the runner is
replaced: the test executes the scheduled runs in-process (so they use the simulators' clients
held to the specs), where production serves them from `python -m deployments.serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from asgi_lifespan import LifespanManager
from loguru import logger
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
from prefect.states import Completed, Pending, Running
from pydantic import SecretStr

from core.names import WEBHOOK_PATH
from core.peopleforce.signature import SIGNATURE_HEADER, sign
from core.settings import Settings
from core.store import EventStatus, InboxRepository, MappingStore, WebhookEvent
from flows.sync import sync_employees
from sandbox.server import free_port
from tests.fixtures_flows import World, webhook_gateway
from webhook_gateway import create_app, dispatch
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
        while await self.inbox.waiting():  # pending, or being handed to Prefect
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
        while not any(e.dispatch_attempts for e in await inbox.recent(limit=100)):
            assert time.monotonic() < deadline, "dispatch never attempted"
            await asyncio.sleep(0.2)
        await asyncio.sleep(
            1
        )  # more rounds: while Prefect does not answer, only asked whether it does
        waiting = await inbox.recent(limit=100)
        assert len(waiting) == 50
        # Nothing connected: the attempted batch went back to pending, to be batched afresh.
        assert all(e.status == EventStatus.pending for e in waiting)
        assert "dispatch failed (ConnectError" in (waiting[-1].outcome or "")
    # Prefect is back: a gateway pointed at it dispatches the backlog.
    with webhook_gateway(world, SECRET, api_url, poll=0.2) as (_, dispatching):
        async with PrefectClient(api=api_url) as client:
            pipeline = Pipeline(world, "", client, deployment_id, dispatching, inbox)
            deadline = time.monotonic() + 120
            # Runs are started as they come: the dispatcher sends no more while one waits.
            while await inbox.waiting():
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


async def test_an_event_alone_goes_at_once_and_one_behind_a_run_waits_for_its_burst(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The settle (here far longer than the test) only when a run is out: with none, a woken
    dispatcher sends the event at once; with one, it lets the rest of a burst arrive first."""
    store = await MappingStore.open(f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}")
    inbox = InboxRepository(store.engine)
    dispatcher = Dispatcher(inbox, pipeline.client, settle=60, run_alone_for=timedelta(0))

    async def dispatched_within(employee_id: int, seconds: float) -> bool:
        await add_update_event(inbox, employee_id)
        dispatcher.wake()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            event = await inbox.get(f"e{employee_id}")
            if event is not None and event.flow_run_id is not None:
                return True
            await asyncio.sleep(0.05)
        return False

    looping = asyncio.create_task(dispatcher.run())
    try:
        assert await dispatched_within(1, 10)  # idle: no settle
        assert not await dispatched_within(2, 2)  # the first run is out: settling
    finally:
        looping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await looping
        await store.close()


async def add_update_event(
    inbox: InboxRepository, employee_id: int, action: str = "employee_update", key: str = ""
) -> None:
    await inbox.add(
        WebhookEvent(
            event_key=key or f"e{employee_id}",
            action=action,
            employee_id=employee_id,
            body=json.dumps({"employee": employee_id}),
        )
    )


# Priority: joiners and leavers never wait behind a backlog of field updates


@pytest.fixture
async def own_inbox(tmp_path: Path) -> AsyncIterator[InboxRepository]:
    store = await MappingStore.open(f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}")
    try:
        yield InboxRepository(store.engine)
    finally:
        await store.close()


async def runs_of(pipeline: Pipeline, inbox: InboxRepository) -> dict[str, list[WebhookEvent]]:
    """The events of each run they were dispatched to, by the run's id."""
    runs: dict[str, list[WebhookEvent]] = {}
    for event in await inbox.recent(limit=500):
        if event.flow_run_id:
            runs.setdefault(event.flow_run_id, []).append(event)
    return runs


async def tags_of(pipeline: Pipeline, run_id: str) -> list[str]:
    return (await pipeline.client.read_flow_run(UUID(run_id))).tags


async def test_a_hire_goes_at_once_while_a_backlog_of_updates_holds_dispatch_back(
    pipeline: Pipeline, own_inbox: InboxRepository
) -> None:
    """A routine run not started yet holds back the routine lane, and the routine lane is at
    its bound: a hire, a termination and a revert arriving behind hundreds of older updates
    still go at once, each lane's events in runs of their own, the urgent one tagged."""
    dispatcher = Dispatcher(own_inbox, pipeline.client, max_in_flight=1, urgent_max_in_flight=1)
    for employee_id in range(1, 301):
        await add_update_event(own_inbox, employee_id)
    await dispatcher.close_finished()
    assert await dispatcher.dispatch_pending() == 200  # one routine run of `batch_max`
    await dispatcher.close_finished()
    assert await dispatcher.dispatch_pending() == 0  # held back: not started, and at its bound
    await add_update_event(own_inbox, 1001, "employee_create")
    await add_update_event(own_inbox, 1002, "employee_terminate")
    await add_update_event(own_inbox, 1003, "employee_termination_revert")
    await dispatcher.close_finished()
    assert await dispatcher.dispatch_pending() == 3
    runs = await runs_of(pipeline, own_inbox)
    assert len(runs) == 2
    (urgent_run,) = [run for run, events in runs.items() if len(events) == 3]
    assert {event.employee_id for event in runs[urgent_run]} == {1001, 1002, 1003}
    assert "urgent" in await tags_of(pipeline, urgent_run)
    (routine_run,) = set(runs) - {urgent_run}
    assert "urgent" not in await tags_of(pipeline, routine_run)
    # The urgent lane is full now; the next hire waits for its run, not for the backlog.
    await add_update_event(own_inbox, 1004, "employee_create")
    await dispatcher.close_finished()
    assert await dispatcher.dispatch_pending() == 0
    await pipeline.client.set_flow_run_state(UUID(urgent_run), Completed(), force=True)
    await dispatcher.close_finished()
    assert await dispatcher.dispatch_pending() == 1
    assert len(await own_inbox.pending(limit=500)) == 100  # the backlog still waits


async def test_routine_runs_never_take_the_slots_of_urgent_ones(
    pipeline: Pipeline, own_inbox: InboxRepository
) -> None:
    """Runs side by side from the start (`run_alone_for` 0), one employee each: the routine
    lane stops at `max_in_flight` however much waits, with the urgent lane empty; urgent runs
    add to it, up to their own bound, never more in all."""
    dispatcher = Dispatcher(
        own_inbox,
        pipeline.client,
        batch_max=1,
        max_in_flight=2,
        urgent_max_in_flight=2,
        run_alone_for=timedelta(0),
    )
    for employee_id in range(1, 11):
        await add_update_event(own_inbox, employee_id)
    assert await drain(dispatcher) == 2
    for employee_id in (21, 22, 23):
        await add_update_event(own_inbox, employee_id, "employee_create")
    assert await drain(dispatcher) == 2
    runs = await runs_of(pipeline, own_inbox)
    assert len(runs) == 4
    urgent = [run for run in runs if "urgent" in await tags_of(pipeline, run)]
    assert sorted(event.employee_id or 0 for run in urgent for event in runs[run]) == [21, 22]
    # Every slot is taken: the third hire waits. A routine run ends: the hire goes first, in
    # the slot it freed; the routine backlog waits on.
    assert [e.employee_id for e in await own_inbox.pending(urgent=True)] == [23]
    (routine_done, _) = sorted(set(runs) - set(urgent))
    await pipeline.client.set_flow_run_state(UUID(routine_done), Completed(), force=True)
    assert await drain(dispatcher) == 1
    assert await own_inbox.pending(urgent=True) == []
    assert len(await own_inbox.pending(urgent=False)) == 8


async def test_a_burst_of_hires_alone_fills_the_routine_lane_too(
    pipeline: Pipeline, own_inbox: InboxRepository
) -> None:
    """Only joiners pending (the nightly batch): urgent runs take the routine lane's free
    slots as well, instead of going one at a time while those stand idle; never more runs
    than both bounds together."""
    dispatcher = Dispatcher(
        own_inbox,
        pipeline.client,
        batch_max=1,
        max_in_flight=2,
        urgent_max_in_flight=1,
        run_alone_for=timedelta(0),
    )
    for employee_id in range(1, 6):
        await add_update_event(own_inbox, employee_id, "employee_create")
    assert await drain(dispatcher) == 3
    runs = await runs_of(pipeline, own_inbox)
    assert len(runs) == 3
    assert all(["urgent" in await tags_of(pipeline, run) for run in runs])
    assert sorted(e.employee_id or 0 for e in await own_inbox.pending()) == [4, 5]


async def test_an_employee_with_updates_and_a_hire_goes_urgent_once_and_nothing_is_lost(
    pipeline: Pipeline, own_inbox: InboxRepository
) -> None:
    """Employees with field updates and a joiner's or leaver's event go in the urgent lane with
    all their events, the others in the routine lane; each event in one run, once, and each
    employee in one run; nothing left behind."""
    dispatcher = Dispatcher(
        own_inbox, pipeline.client, batch_max=4, max_in_flight=1, urgent_max_in_flight=1
    )
    urgent_people = {3, 7, 11}
    expected = set()
    for round_ in range(3):
        for employee_id in range(1, 16):
            action = "employee_update"
            if employee_id in urgent_people and round_ == 1:
                action = "employee_terminate" if employee_id == 7 else "employee_create"
            key = f"{employee_id}-{round_}"
            await add_update_event(own_inbox, employee_id, action, key)
            expected.add(key)
    # The lanes split the due events by employee: together all of them, none in both.
    lanes = [await own_inbox.pending(500, urgent=lane) for lane in (True, False)]
    assert {e.employee_id for e in lanes[0]} == urgent_people
    assert {e.employee_id for e in lanes[1]} & urgent_people == set()
    assert sorted(e.event_key for lane in lanes for e in lane) == sorted(expected)
    await dispatcher.close_finished()
    # The urgent run, and a routine run of `batch_max` employees (their events of the oldest
    # `5 * batch_max` read: a later round takes the rest, in a later run).
    assert await dispatcher.dispatch_pending() == 9 + 8
    # Finish every run as it comes until nothing is pending.
    for _ in range(10):
        for run_id in await own_inbox.runs_in_flight():
            await pipeline.client.set_flow_run_state(UUID(run_id), Completed(), force=True)
        await dispatcher.close_finished()
        if not await dispatcher.dispatch_pending() and not await own_inbox.waiting():
            break
    await dispatcher.close_finished()
    events = await own_inbox.recent(limit=500)
    assert sorted(event.event_key for event in events) == sorted(expected)
    assert {event.status for event in events} == {EventStatus.done}
    assert {event.dispatch_attempts for event in events} == {1}
    runs = await runs_of(pipeline, own_inbox)
    employee_runs: dict[int | None, set[str]] = {}
    for run_id, run_events in runs.items():
        for event in run_events:
            employee_runs.setdefault(event.employee_id, set()).add(run_id)
    (urgent_run,) = {run for e in urgent_people for run in employee_runs[e]}
    assert {e.employee_id for e in runs[urgent_run]} == urgent_people
    assert len(runs[urgent_run]) == 9
    assert all(len(employee_runs[e]) == 1 for e in urgent_people)
    assert [run for run in runs if "urgent" in await tags_of(pipeline, run)] == [urgent_run]


# Poisoned events: whatever a signed body holds, one event never holds up the rest, nor loops


@dataclass
class SignedInbox:
    """The real gateway over ASGI on its own inbox, and a Prefect client on the test server."""

    http: httpx.AsyncClient
    inbox: InboxRepository
    client: PrefectClient

    async def deliver(self, employee_id: int, attributes: object) -> str:
        body = json.dumps(
            {
                "action": "employee_update",
                "data": {
                    "id": employee_id,
                    "attributes": attributes,
                    "meta": {"updated_at": "2026-05-01T10:00:00+03:00"},
                },
            }
        ).encode()  # ASCII: a lone surrogate travels as the JSON escape `\ud800`
        response = await self.http.post(
            WEBHOOK_PATH,
            content=body,
            headers={SIGNATURE_HEADER: sign(SECRET, body), "content-type": "application/json"},
        )
        assert (response.status_code, response.json()["status"]) == (202, "pending")
        return response.json()["event_key"]

    async def events(self) -> dict[int | None, WebhookEvent]:
        return {event.employee_id: event for event in await self.inbox.recent(limit=100)}

    async def run_names(self) -> dict[int | None, str]:
        names = {}
        for employee_id, event in (await self.events()).items():
            if event.flow_run_id:
                names[employee_id] = (await self.client.read_flow_run(UUID(event.flow_run_id))).name
        return names


@pytest.fixture
async def signed_inbox(prefect_server: None, tmp_path: Path) -> AsyncIterator[SignedInbox]:
    await (await sync_employees.ato_deployment(name="webhook")).aapply()
    settings = Settings(_env_file=None, webhook_secret=SecretStr(SECRET))
    app = create_app(settings, store_url=f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}")
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway"
        ) as http,
        PrefectClient(api=PREFECT_API_URL.value()) as client,
    ):
        yield SignedInbox(http, app.state.inbox, client)


async def drain(dispatcher: Dispatcher) -> int:
    """Dispatch until nothing is left to hand over; how many events were handed or set aside."""
    handed = 0
    for _ in range(20):
        await dispatcher.close_finished()
        if not (count := await dispatcher.dispatch_pending()):
            return handed
        handed += count
    raise AssertionError("the dispatcher never ran out of work")


def one_run_each(signed_inbox: SignedInbox) -> Dispatcher:
    """A dispatcher that gives every employee a run of their own, so each run name shows."""
    return Dispatcher(
        signed_inbox.inbox,
        signed_inbox.client,
        batch_max=1,
        max_in_flight=20,
        run_alone_for=timedelta(0),
    )


async def test_a_future_termination_in_a_profile_update_goes_in_the_urgent_lane(
    signed_inbox: SignedInbox,
) -> None:
    """PeopleForce announces a future termination as `employee_update` with its date: the
    gateway marks it urgent as it stores it; a plain update stays routine."""
    leaving = await signed_inbox.deliver(31, {"termination_effective_date": "2027-01-31"})
    moving = await signed_inbox.deliver(32, {"first_name": "Moved", "last_name": "Dept"})
    stored = {key: await signed_inbox.inbox.get(key) for key in (leaving, moving)}
    assert {key: event.urgent for key, event in stored.items() if event} == {
        leaving: True,
        moving: False,
    }
    assert [e.event_key for e in await signed_inbox.inbox.pending(urgent=True)] == [leaving]
    assert [e.event_key for e in await signed_inbox.inbox.pending(urgent=False)] == [moving]


async def test_a_signed_event_in_any_shape_becomes_work_once_beside_the_others(
    signed_inbox: SignedInbox,
) -> None:
    """`attributes` a list or a string, a lone surrogate in a name, a 900 KB name: each is
    dispatched once like any other event (the flow reads the employee from PeopleForce; the
    webhook's name only titles the run), and none holds up the event beside it."""
    await signed_inbox.deliver(701, ["Eve", "Adams"])
    await signed_inbox.deliver(702, "Eve Adams")
    await signed_inbox.deliver(703, {"first_name": "Eve\ud800", "last_name": "Adams"})
    await signed_inbox.deliver(704, {"first_name": "E" * 900_000})
    await signed_inbox.deliver(705, {"first_name": "Ada", "last_name": "Lovelace"})

    assert await drain(one_run_each(signed_inbox)) == 5

    events = await signed_inbox.events()
    assert {e: (ev.status, ev.dispatch_attempts) for e, ev in events.items()} == dict.fromkeys(
        (701, 702, 703, 704, 705), (EventStatus.dispatched, 1)
    )
    names = await signed_inbox.run_names()
    assert names[701] == "sync · employee 701"
    assert names[702] == "sync · employee 702"
    assert names[703] == "sync · Eve\\ud800 Adams (703)"  # escaped: it can be sent, and read
    assert names[705] == "sync · Ada Lovelace (705)"
    # Nothing left to retry: the next rounds find no work.
    assert await signed_inbox.inbox.pending() == []


async def test_a_900_kb_name_becomes_a_bounded_run_name_and_log_line(
    signed_inbox: SignedInbox,
) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message} {extra}")
    try:
        await signed_inbox.deliver(704, {"first_name": "E" * 900_000, "last_name": "Long"})
        await signed_inbox.deliver(706, {"first_name": "Eve\n12:00:00.000 ERROR   forged"})
        assert await drain(one_run_each(signed_inbox)) == 2
    finally:
        logger.remove(sink)
    # A newline in a name forges no line of the dispatcher's either.
    assert not any("\n" in line.rstrip("\n") for line in lines)
    assert "sync · Eve\\n12:00:00.000 ERROR   forged (706)" in "".join(lines)

    event = (await signed_inbox.events())[704]
    assert event.flow_run_id is not None
    run = await signed_inbox.client.read_flow_run(UUID(event.flow_run_id))
    assert run.name.startswith("sync · EEEE")
    assert run.name.endswith("… (704)")
    assert len(run.name) <= 120
    assert all(len(tag) <= 120 for tag in run.tags)
    assert lines
    assert max(len(line) for line in lines) < 2_000


async def test_an_event_that_cannot_be_work_is_set_aside_once_with_its_reason(
    signed_inbox: SignedInbox,
) -> None:
    """A pending event about nobody (an older gateway, a hand-edited row) sat at the head of the
    queue forever; it is set aside, with the reason, and the event behind it goes on."""
    await signed_inbox.inbox.add(
        WebhookEvent(event_key="orphan", action="employee_update", employee_id=None, body="{}")
    )
    await signed_inbox.deliver(705, {"first_name": "Ada", "last_name": "Lovelace"})
    dispatcher = one_run_each(signed_inbox)

    assert await drain(dispatcher) == 2

    events = await signed_inbox.events()
    orphan = events[None]
    assert orphan.status == EventStatus.set_aside
    assert "concerns no employee" in (orphan.outcome or "")
    assert orphan.dispatch_attempts == 0  # set aside, not tried and failed
    assert events[705].status == EventStatus.dispatched
    # Once: the next rounds leave it where it is, and `events --status set_aside` lists it.
    assert await drain(dispatcher) == 0
    assert [e.event_key for e in await signed_inbox.inbox.recent(status="set_aside")] == ["orphan"]


async def test_a_request_that_cannot_be_sent_sets_aside_only_its_employees_events(
    signed_inbox: SignedInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's failure, whatever the field it comes from next time: sender text that reaches
    the request unescaped (here the names, as before `core.text`, and in a run of several
    employees) makes Prefect's client raise UnicodeEncodeError on every attempt. The batch is
    halved until that employee is alone: their events are set aside once, with the reason;
    everyone else's work goes on."""
    monkeypatch.setattr(dispatch, "_display_name", lambda name: name)
    monkeypatch.setattr(
        dispatch, "_run_name", lambda _, works: "sync · " + ", ".join(w.name or "" for w in works)
    )
    for employee_id in (801, 802, 803):
        await signed_inbox.deliver(employee_id, {"first_name": f"Person{employee_id}"})
    await signed_inbox.deliver(804, {"first_name": "Eve\ud800"})
    dispatcher = Dispatcher(signed_inbox.inbox, signed_inbox.client)  # one batch of all four

    assert await drain(dispatcher) == 4

    events = await signed_inbox.events()
    assert events[804].status == EventStatus.set_aside
    assert "UnicodeEncodeError" in (events[804].outcome or "")
    assert {events[e].status for e in (801, 802, 803)} == {EventStatus.dispatched}
    assert await drain(dispatcher) == 0  # never retried on its own
