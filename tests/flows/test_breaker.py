"""The circuit breaker on the webhook path, end to end: terminations posted by the PeopleForce
simulator, signed, to the gateway over HTTP; its dispatcher creates the flow runs in the
Prefect test server; the runs (executed in-process, as in tests/webhook_gateway/test_dispatch.py)
work against both simulators. Past BREAKER_MAX_OFFBOARD the work is held with nothing lost,
the alert and the artifact say so, and the operator's commands (`pf-jira-sync held`,
`release`, `drop`, run as processes on the same store) decide."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import PREFECT_API_URL

from core.names import BREAKER_ARTIFACT
from core.settings import Settings, get_settings
from core.store import CircuitBreaker, EventStatus, InboxRepository
from deployments.alerts import install_alerts, uninstall_alerts
from flows.reconcile import reconcile
from flows.sync import sync_employees
from sandbox.seed import SeedPerson
from tests.cli.test_cli import run_cli
from tests.deployments.test_alerts import AlertReceiver
from tests.fixtures_flows import World, webhook_gateway
from tests.webhook_gateway.test_dispatch import SECRET, Pipeline
from webhook_gateway.dispatch import Dispatcher


@pytest.fixture
def settings() -> Iterator[Settings]:
    """The process's settings (what the flow runs read) with the breaker at its defaults;
    restored afterwards."""
    settings = get_settings()
    names = ("breaker_max_offboard", "breaker_max_create", "breaker_window_seconds")
    saved = {name: getattr(settings, name) for name in names}
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for name in names:
        setattr(settings, name, getattr(defaults, name))
    yield settings
    for name, value in saved.items():
        setattr(settings, name, value)


@pytest.fixture
async def deployment_id(prefect_server: None) -> UUID:
    return await (await sync_employees.ato_deployment(name="webhook")).aapply()


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    from sandbox.server import BackgroundServer

    alerts = AlertReceiver()
    with BackgroundServer(alerts.app()) as server:
        alerts.url = f"{server.url}/hook"
        yield alerts


def colleagues(world: World, count: int) -> list[SeedPerson]:
    """People who started long ago (nothing to do for them), hired without a webhook: only
    their terminations are webhooks."""
    state = world.peopleforce.state
    target = state.target
    state.set_webhook_target(None, None)
    try:
        return [
            world.hire("Long", f"Serving{n:02d}", in_days=-400, department="Finance")
            for n in range(count)
        ]
    finally:
        state.set_webhook_target(target.url, target.secret)


async def until_settled(
    pipeline: Pipeline, keys: Iterable[str], statuses: set[EventStatus], seconds: float = 240
) -> dict[str, EventStatus]:
    """Run what the dispatcher sends, as the served deployment would, and close what finished,
    until every event with these keys is in one of `statuses`."""
    wanted = set(keys)
    closing = Dispatcher(pipeline.inbox, pipeline.client)
    deadline = time.monotonic() + seconds
    while True:
        await pipeline.run_scheduled()
        await closing.close_finished()
        found = {e.event_key: e.status for e in await pipeline.inbox.recent(limit=1000)}
        if all(found.get(key) in statuses for key in wanted):
            return {key: found[key] for key in wanted}
        assert time.monotonic() < deadline, {
            status: sum(1 for key in wanted if found.get(key) == status) for status in EventStatus
        }
        await asyncio.sleep(0.3)


def offboardings(world: World, person: SeedPerson) -> list[str]:
    return [i.key for i in world.parents_of(person.id) if i.summary.startswith("Offboarding")]


@pytest.fixture
async def pipeline(world: World, deployment_id: UUID) -> AsyncIterator[Pipeline]:
    api_url = PREFECT_API_URL.value()
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


async def test_50_terminations_in_a_minute_hold_all_past_the_limit_until_released(
    pipeline: Pipeline, settings: Settings, receiver: AlertReceiver, tmp_path: Path
) -> None:
    async with PrefectClient(api=PREFECT_API_URL.value()) as client:
        await install_alerts(receiver.url, client)
        try:
            await held_and_released(pipeline, settings, receiver, tmp_path)
        finally:
            await uninstall_alerts(client)


async def held_and_released(
    pipeline: Pipeline, settings: Settings, receiver: AlertReceiver, tmp_path: Path
) -> None:
    world, inbox = pipeline.world, pipeline.inbox
    limit = settings.breaker_max_offboard
    assert limit == 20  # the default
    people = colleagues(world, 50)

    started = time.monotonic()
    for person in people:
        world.peopleforce.state.terminate(person.id, effective_on=world.days(14))
    assert time.monotonic() - started < 60  # within a minute: one window
    # A future termination comes as `employee_update` carrying the date, as PeopleForce sends it.
    deliveries = world.peopleforce.state.deliveries
    assert [d.status_code for d in deliveries] == [202] * 50
    keys = [event.event_key for event in await inbox.recent(limit=100)]
    assert len(keys) == 50

    settled = await until_settled(pipeline, keys, {EventStatus.done, EventStatus.held})
    offboarded = [person for person in people if offboardings(world, person)]
    assert len(offboarded) == limit  # the first twenty, whichever the runs took first
    assert list(settled.values()).count(EventStatus.done) == limit
    assert list(settled.values()).count(EventStatus.held) == 50 - limit  # none lost
    breaker = CircuitBreaker(world.services.store.engine)
    held = {hold.employee_id for hold in await breaker.open_holds()}
    assert held == {person.id for person in people} - {person.id for person in offboarded}
    held_event = next(e for e in await inbox.recent(limit=100) if e.status == EventStatus.held)
    assert "held by the circuit breaker, open since" in (held_event.outcome or "")
    assert "21 offboardings planned within 10 min on the webhook path, more than " in (
        held_event.outcome or ""
    )

    # The artifact of the runs that held work lists everyone held, with why.
    artifacts = await pipeline.client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[BREAKER_ARTIFACT]))
    )
    assert artifacts
    latest = max(artifacts, key=lambda artifact: artifact.created or 0)
    markdown = str(latest.data)
    assert markdown.startswith(f"## Circuit breaker: {50 - limit} employee(s) held")
    assert "| employee | held | since | events | why |" in markdown
    assert "BREAKER_MAX_OFFBOARD (20)" in markdown
    # The alert: the automation posted the runs' ERROR line.
    await receiver.wait(1)
    alert = next(post["text"] for post in receiver.posts if "circuit breaker" in post["text"])
    assert alert.startswith("pf-jira-sync: circuit breaker open since ")
    assert "employee(s) held" in alert
    assert "`pf-jira-sync release --all`" in alert

    shown = run_cli("held", cwd=tmp_path, DATABASE_URL=world.database_url)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("circuit breaker open since ")
    assert f"{50 - limit} employee(s) held ({50 - limit} offboardings)" in shown.stdout
    for employee_id in held:
        assert f"{employee_id} Long Serving" in shown.stdout

    released = run_cli("release", "--all", "--yes", cwd=tmp_path, DATABASE_URL=world.database_url)
    assert released.returncode == 0, released.stderr
    assert f"released {50 - limit} employee(s)" in released.stdout
    assert "The circuit breaker is closed" in released.stdout
    # Back on their way (the gateway's dispatcher may have sent them already).
    on_the_way = {EventStatus.pending, EventStatus.dispatching, EventStatus.dispatched}
    statuses = [e.status for e in await inbox.recent(limit=100)]
    assert statuses.count(EventStatus.done) == limit
    assert sum(status in on_the_way for status in statuses) == 50 - limit
    pipeline.dispatching.wake()

    settled = await until_settled(pipeline, keys, {EventStatus.done})
    assert len(settled) == 50
    for person in people:
        assert len(offboardings(world, person)) == 1, person.id  # each exactly once
    assert await breaker.open_holds() == []
    closed = run_cli("held", cwd=tmp_path, DATABASE_URL=world.database_url)
    assert closed.stdout.startswith("circuit breaker closed, nothing held; ")


async def test_dropped_work_is_never_sent_and_a_release_of_one_sends_only_theirs(
    pipeline: Pipeline, settings: Settings, tmp_path: Path
) -> None:
    world, inbox = pipeline.world, pipeline.inbox
    settings.breaker_max_offboard = 2
    people = colleagues(world, 5)
    for person in people:
        world.peopleforce.state.terminate(person.id, effective_on=world.days(14))
    keys = [event.event_key for event in await inbox.recent(limit=100)]
    assert len(keys) == 5
    await until_settled(pipeline, keys, {EventStatus.done, EventStatus.held})
    breaker = CircuitBreaker(world.services.store.engine)
    held = sorted(hold.employee_id for hold in await breaker.open_holds())
    assert len(held) == 3
    first, *rest = held

    def cli(*args: str):
        return run_cli(*args, cwd=tmp_path, DATABASE_URL=world.database_url)

    refused = cli("drop", "--all")  # no terminal to ask on
    assert refused.returncode == 2
    assert "add --yes" in refused.stderr
    neither = cli("release")
    assert neither.returncode == 2
    assert "--all, or --employee ID" in neither.stderr

    one = cli("release", "--employee", str(first))
    assert one.returncode == 0, one.stderr
    assert "The circuit breaker stays open: 2 employee(s) still held." in one.stdout
    dropped = cli("drop", "--all", "--yes")
    assert dropped.returncode == 0, dropped.stderr
    assert "dropped the held work of 2 employee(s)" in dropped.stdout
    assert "2 webhook event(s) ended dropped; nothing was sent to Jira" in dropped.stdout
    assert "The circuit breaker is closed" in dropped.stdout
    pipeline.dispatching.wake()

    statuses = await until_settled(pipeline, keys, {EventStatus.done, EventStatus.dropped})
    by_employee = {e.employee_id: e for e in await inbox.recent(limit=100)}
    for employee_id in rest:
        event = by_employee[employee_id]
        assert event.status == EventStatus.dropped
        assert "dropped by an operator" in (event.outcome or "")
        assert "nothing was sent to Jira" in (event.outcome or "")
    assert list(statuses.values()).count(EventStatus.done) == 3
    made = {person.id: offboardings(world, person) for person in people}
    assert [employee for employee, keys in made.items() if not keys] == rest
    assert all(len(keys) <= 1 for keys in made.values())
    listed = cli("events", "--status", "dropped")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("dropped by an operator") == 2


async def test_the_reconciliation_leaves_held_work_to_the_operator(
    world: World, settings: Settings
) -> None:
    settings.breaker_max_offboard = 1
    first, second = colleagues(world, 2)
    for person in (first, second):
        world.peopleforce.state.terminate(person.id, effective_on=world.days(14))
    # The webhook path (a sync run, as a webhook's or a Retry's): one offboarded, one held.
    await sync_employees([first.id, second.id])
    breaker = CircuitBreaker(world.services.store.engine)
    (hold,) = await breaker.open_holds()
    admitted = first if hold.employee_id == second.id else second
    held = second if admitted is first else first
    assert len(offboardings(world, admitted)) == 1
    assert offboardings(world, held) == []

    # Nothing else to do, so the safeguard passes; the held offboarding is not applied.
    result = await reconcile()
    assert result["applied"]
    assert result["need_work"] == 0
    assert offboardings(world, held) == []
    assert [hold.employee_id for hold in await breaker.open_holds()] == [held.id]

    await breaker.release([held.id])
    await sync_employees([held.id])  # the released events' run
    assert len(offboardings(world, held)) == 1
    assert (await reconcile())["need_work"] == 0
