"""Recovery: the dispatcher finds again the work a crash left behind, against the Prefect test
server (and, for two gateways on one store, the local PostgreSQL).

- a run left Pending by a runner that died starting it is marked Crashed and worked again;
- a Crashed run's events go back to work, with backoff, until their last attempt;
- a Failed run keeps the work it did done and ends a permanent failure at once (a real flow run
  against the simulators);
- a run deleted from Prefect is worked again;
- a Prefect server that hangs is said within seconds and again when it answers, and the batch
  whose create hung is sent again under the same key (one run, not two);
- two dispatchers on one PostgreSQL store dispatch 200 events each once, and one dying after
  Prefect took its run (before recording it) loses nothing and doubles nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_engine import run_flow_async
from prefect.settings import PREFECT_API_URL
from prefect.states import Crashed, Pending, State

from core.render import EVENT_OUTCOME_MAX
from core.store import EventStatus, InboxRepository, MappingStore, WebhookEvent
from core.store.models import utc_now
from flows.sync import sync_employees
from sandbox.server import free_port
from tests.fixtures_flows import World
from webhook_gateway import dispatch
from webhook_gateway.dispatch import Dispatcher, Recovery

EVENTS = WebhookEvent.metadata.tables["webhook_event"]


@dataclass
class Prefect:
    client: PrefectClient
    deployment_id: UUID

    async def runs(self) -> list[FlowRun]:
        return await self.client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id]))
        )

    async def state_of(self, run_id: str) -> tuple[StateType, str]:
        run = await self.client.read_flow_run(UUID(run_id))
        assert run.state is not None
        return run.state.type, run.state.message or ""


@pytest.fixture
async def prefect(prefect_server: None) -> AsyncIterator[Prefect]:
    deployment_id = await (await sync_employees.ato_deployment(name="webhook")).aapply()
    async with PrefectClient(api=PREFECT_API_URL.value()) as client:
        prefect = Prefect(client, deployment_id)
        yield prefect
        # Nothing runs them here: runs left waiting would be found by the next test that
        # starts the deployment's scheduled runs.
        for run in await prefect.runs():
            if run.state is None or not run.state.is_final():
                await client.delete_flow_run(run.id)


@pytest.fixture
async def inbox(tmp_path: Path) -> AsyncIterator[InboxRepository]:
    async with await MappingStore.open(f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}") as store:
        yield InboxRepository(store.engine)


async def add_event(inbox: InboxRepository, employee_id: int, key: str | None = None) -> str:
    key = key or f"employee_update:{employee_id}"
    await inbox.add(
        WebhookEvent(
            event_key=key,
            action="employee_update",
            employee_id=employee_id,
            body=json.dumps({"employee": employee_id}),
        )
    )
    return key


async def stored(inbox: InboxRepository, key: str) -> WebhookEvent:
    event = await inbox.get(key)
    assert event is not None
    return event


async def time_passes(inbox: InboxRepository) -> None:
    """Every backoff is over (rather than waiting it out)."""
    async with inbox.engine.begin() as connection:
        await connection.execute(
            sa.update(EVENTS)
            .where(EVENTS.c.next_attempt_at.is_not(None))
            .values(next_attempt_at=utc_now() - timedelta(seconds=1))
        )


async def until(condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


def side_by_side(inbox: InboxRepository, client: PrefectClient, **recovery) -> Dispatcher:
    """A dispatcher whose runs go side by side at once (nothing here starts them)."""
    return Dispatcher(
        inbox,
        client,
        run_alone_for=timedelta(0),
        max_in_flight=20,
        recovery=Recovery(**recovery),
    )


async def test_a_run_left_pending_by_a_dead_runner_is_crashed_and_worked_again(
    prefect: Prefect, inbox: InboxRepository, log_lines: list[str]
) -> None:
    dispatcher = side_by_side(
        inbox,
        prefect.client,
        pending_orphan_after=timedelta(seconds=1),
        retry_delay=timedelta(0),
    )
    key = await add_event(inbox, 41)
    assert await dispatcher.dispatch_pending() == 1
    first = (await stored(inbox, key)).flow_run_id
    assert first is not None
    # A runner set it Pending and died before its process started.
    await prefect.client.set_flow_run_state(UUID(first), Pending(), force=True)
    await dispatcher.close_finished()
    assert (await stored(inbox, key)).status is EventStatus.dispatched  # not yet orphaned

    await asyncio.sleep(1.2)
    await dispatcher.close_finished()  # orphaned: marked Crashed, with why
    state, message = await prefect.state_of(first)
    assert state is StateType.CRASHED
    assert message.startswith("pf-jira-sync dispatcher: Pending for ")
    assert "the runner or worker starting it died" in message
    await dispatcher.close_finished()  # settled like any crashed run

    event = await stored(inbox, key)
    assert (event.status, event.failed_runs, event.flow_run_id) == (EventStatus.pending, 1, None)
    assert event.outcome is not None
    assert event.outcome.startswith("Crashed in flow run sync · employee 41 (attempt 1 of 5)")
    assert await dispatcher.dispatch_pending() == 1
    second = (await stored(inbox, key)).flow_run_id
    assert second not in (None, first)
    assert any("marked Crashed: Pending for" in line for line in log_lines)


async def test_a_crashed_run_is_worked_again_with_backoff_until_its_last_attempt(
    prefect: Prefect, inbox: InboxRepository, log_lines: list[str]
) -> None:
    dispatcher = side_by_side(
        inbox, prefect.client, max_attempts=3, retry_delay=timedelta(seconds=30)
    )
    key = await add_event(inbox, 42)
    runs = []
    delays = []
    for _attempt in range(3):
        assert await dispatcher.dispatch_pending() == 1
        run_id = (await stored(inbox, key)).flow_run_id
        assert run_id is not None
        runs.append(run_id)
        await prefect.client.set_flow_run_state(
            UUID(run_id), Crashed(message="Flow run process exited with code -9"), force=True
        )
        before = utc_now()
        await dispatcher.close_finished()
        event = await stored(inbox, key)
        if event.status is EventStatus.pending:
            assert event.next_attempt_at is not None
            delays.append(event.next_attempt_at - before)
            assert await dispatcher.dispatch_pending() == 0  # not before its backoff is over
            await time_passes(inbox)

    assert len(set(runs)) == 3  # each attempt a run of its own
    # 30 s after the first crash, four times longer after the second.
    assert [round(delay.total_seconds() / 10) * 10 for delay in delays] == [30, 120]
    event = await stored(inbox, key)
    assert (event.status, event.failed_runs) == (EventStatus.failed, 3)
    assert event.outcome == (
        "gave up after 3 attempts, the last Crashed in flow run sync · employee 42: "
        "Flow run process exited with code -9"
    )
    assert any(line.startswith("ERROR webhook employee_update:42 failed") for line in log_lines)
    assert await dispatcher.dispatch_pending() == 0


async def test_a_run_deleted_from_prefect_is_worked_again(
    prefect: Prefect, inbox: InboxRepository
) -> None:
    dispatcher = side_by_side(inbox, prefect.client, retry_delay=timedelta(0))
    key = await add_event(inbox, 43)
    assert await dispatcher.dispatch_pending() == 1
    run_id = (await stored(inbox, key)).flow_run_id
    assert run_id is not None
    await prefect.client.delete_flow_run(UUID(run_id))

    await dispatcher.close_finished()

    event = await stored(inbox, key)
    assert (event.status, event.failed_runs) == (EventStatus.pending, 1)
    assert "the flow run no longer exists in Prefect" in (event.outcome or "")


async def test_a_failed_run_keeps_what_it_did_and_ends_a_permanent_failure_at_once(
    world: World, prefect: Prefect, log_lines: list[str]
) -> None:
    """A real run of two hires, worked against the simulators: Jira refuses the IT project (a
    configuration error: nothing a retry changes) for the engineer; the other is done."""
    inbox = InboxRepository(world.services.store.engine)
    engineer = world.hire("Grace", "Hopper", in_days=2, department="Engineering")
    accountant = world.hire("Luca", "Pacioli", in_days=2, department="Finance")
    keys = [await add_event(inbox, person.id) for person in (engineer, accountant)]
    dispatcher = side_by_side(inbox, prefect.client)
    assert await dispatcher.dispatch_pending() == 2
    run_id = (await stored(inbox, keys[0])).flow_run_id
    assert run_id is not None
    assert (await stored(inbox, keys[1])).flow_run_id == run_id  # one run for both
    run = await prefect.client.read_flow_run(UUID(run_id))
    it_project = world.jira.state.projects.pop("IT")
    try:
        state = await run_flow_async(
            sync_employees, flow_run=run, parameters=run.parameters, return_type="state"
        )
    finally:
        world.jira.state.projects["IT"] = it_project
    assert isinstance(state, State)
    assert state.is_failed()

    await dispatcher.close_finished()

    failed, done = await stored(inbox, keys[0]), await stored(inbox, keys[1])
    assert failed.status is EventStatus.failed
    assert failed.failed_runs == 0  # not an attempt that ran out: a cause that stays
    assert failed.outcome is not None
    assert failed.outcome.startswith(
        f"failed for good (Failed in flow run {run.name}): {engineer.id} Grace Hopper: "
    )
    assert "customfield" not in failed.outcome
    assert "Jira rejected project" in failed.outcome
    # Bounded, so that `events` shows a line (how much of the advice fits depends on the
    # rules file's path, which names the entry to fix).
    assert len(failed.outcome) <= EVENT_OUTCOME_MAX
    (issue,) = world.parents_of(accountant.id)
    assert done.status is EventStatus.done
    assert done.outcome == f"Jira {issue.key}; completed in flow run {run.name}"
    assert any(line.startswith(f"ERROR webhook {keys[0]} failed") for line in log_lines)
    assert await dispatcher.dispatch_pending() == 0  # nothing goes back to work


class Proxy:
    """A TCP proxy in front of the Prefect server that can hang like a SIGSTOPped process:
    connections are accepted, nothing is forwarded, until it resumes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        for connection in self.connections:
            connection.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            await self.flowing.wait()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        except asyncio.CancelledError:
            writer.close()
        finally:
            self.connections.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                await self.flowing.wait()
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()


async def test_a_hung_prefect_is_said_within_seconds_and_again_when_it_answers(
    prefect: Prefect,
    inbox: InboxRepository,
    log_lines: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "UNREACHABLE_AFTER", 0.5)
    monkeypatch.setattr(dispatch, "UNREACHABLE_REPEAT", 2.0)
    api = PREFECT_API_URL.value()
    async with Proxy(int(api.split(":")[-1].split("/")[0])) as proxy:
        proxied = f"http://127.0.0.1:{proxy.port}/api"
        async with PrefectClient(api=proxied) as client:
            dispatcher = Dispatcher(
                inbox,
                client,
                run_alone_for=timedelta(0),
                max_in_flight=20,
                poll=0.2,
                busy_poll=0.1,
                settle=0.05,
                # Short for the test; a slow answer on a loaded machine may still time out.
                recovery=Recovery(prefect_timeout=2.0),
            )
            loop = asyncio.create_task(dispatcher.run())
            try:
                first = await add_event(inbox, 51)
                dispatcher.wake()
                await until(
                    lambda: inbox_status(inbox, first, EventStatus.dispatched), "not dispatched"
                )
                proxy.flowing.clear()  # SIGSTOP
                hung_at = len(log_lines)  # (a slow answer before may have been said already)
                hung = [await add_event(inbox, employee) for employee in (52, 53, 54)]
                dispatcher.wake()
                warned = f"WARNING cannot reach Prefect at {proxied} for "

                async def warnings() -> int:
                    return sum(line.startswith(warned) for line in log_lines[hung_at:])

                await until(lambda: _at_least(warnings, 1), "no warning", seconds=30)
                line = next(line for line in log_lines[hung_at:] if line.startswith(warned))
                assert "s: 3 events waiting" in line
                await until(lambda: _at_least(warnings, 2), "said only once", seconds=30)
                proxy.flowing.set()  # SIGCONT
                await until(
                    lambda: _any_line(log_lines[hung_at:], "INFO Prefect reachable again after "),
                    "recovery not said",
                    seconds=30,
                )
                back = next(line for line in log_lines[hung_at:] if "reachable again" in line)
                assert back.rstrip().endswith("s; dispatching 3 events")
                for key in hung:
                    await until(
                        lambda key=key: inbox_status(inbox, key, EventStatus.dispatched),
                        f"{key} not dispatched after Prefect came back",
                    )
            finally:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
    # The create that hung may have reached Prefect: sent again under the same key, it gave the
    # same run back. Each event is in exactly one run.
    carried = [
        key
        for run in await prefect.runs()
        for keys in (run.parameters.get("event_keys") or {}).values()
        for key in keys
        if key in (first, *hung)
    ]
    assert sorted(carried) == sorted([first, *hung])


async def inbox_status(inbox: InboxRepository, key: str, status: EventStatus) -> bool:
    event = await inbox.get(key)
    return event is not None and event.status is status


async def _at_least(count: Callable[[], Awaitable[int]], wanted: int) -> bool:
    return await count() >= wanted


async def _any_line(lines: list[str], start: str) -> bool:
    return any(line.startswith(start) for line in lines)


async def test_two_dispatchers_on_one_postgresql_store_dispatch_each_event_once(
    prefect: Prefect, postgresql_database_url: str
) -> None:
    """Two gateways behind a load balancer: 200 events arrive while both dispatch; one dies
    just after Prefect took a run of its, before recording it. The other takes its batch over
    when the claim expires and gets that same run back (the same idempotency key)."""
    async with (
        await MappingStore.open(postgresql_database_url) as store_a,
        await MappingStore.open(postgresql_database_url) as store_b,
    ):
        inbox_a, inbox_b = InboxRepository(store_a.engine), InboxRepository(store_b.engine)
        recovery = Recovery(claim_for=timedelta(seconds=2))

        def gateway(inbox: InboxRepository, name: str) -> Dispatcher:
            return Dispatcher(
                inbox,
                prefect.client,
                batch_max=5,
                max_in_flight=200,
                run_alone_for=timedelta(0),
                poll=0.2,
                busy_poll=0.2,
                settle=0.05,
                recovery=recovery,
                name=name,
            )

        a, b = gateway(inbox_a, "gateway-a"), gateway(inbox_b, "gateway-b")
        created_by_b: list[str] = []
        real_create = prefect.client.create_flow_run_from_deployment

        class Died(BaseException):
            """kill -9, as far as the dying dispatcher's loop can tell."""

        async def create_then_die(*args, **kwargs):
            run = await real_create(*args, **kwargs)
            created_by_b.append(str(run.id))
            if len(created_by_b) == 3:
                raise Died  # Prefect took the run; B never records it
            return run

        b_client = PrefectClient(api=PREFECT_API_URL.value())
        async with b_client:
            b.client = b_client
            b_client.create_flow_run_from_deployment = create_then_die  # type: ignore[method-assign]
            loops = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
            keys = []
            for n in range(200):
                inbox = (inbox_a, inbox_b)[n % 2]  # the load balancer alternates
                keys.append(await add_event(inbox, 3000 + n % 120, key=f"ha:{n}"))
                (a, b)[n % 2].wake()
                if n % 20 == 0:
                    await asyncio.sleep(0.05)
            try:
                with contextlib.suppress(Died):
                    await asyncio.wait_for(asyncio.shield(loops[1]), timeout=60)
                assert loops[1].done(), "B never died"

                async def all_dispatched() -> bool:
                    a.wake()
                    counts = await inbox_a.count_by_status()
                    return counts.get("dispatched", 0) == 200

                await until(all_dispatched, "not every event was dispatched", seconds=120)
            finally:
                for loop in loops:
                    loop.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Died):
                        await loop

        events = {key: await stored(inbox_a, key) for key in keys}
        runs = await prefect.runs()
        carried = [
            key
            for run in runs
            for employee_keys in (run.parameters.get("event_keys") or {}).values()
            for key in employee_keys
            if key.startswith("ha:")
        ]
    # Each event in exactly one run, and recorded with that run.
    assert sorted(carried) == sorted(keys)
    run_of = {
        key: str(run.id)
        for run in runs
        for employee_keys in (run.parameters.get("event_keys") or {}).values()
        for key in employee_keys
    }
    assert all(events[key].flow_run_id == run_of[key] for key in keys)
    # B's last run, which it never recorded, is the one A recorded for those events.
    orphan = created_by_b[-1]
    assert any(event.flow_run_id == orphan for event in events.values())
    assert len(created_by_b) == 3
    # Both gateways dispatched.
    assert {run.id for run in runs if str(run.id) in created_by_b}
    assert len({event.flow_run_id for event in events.values()}) > 3


async def test_a_prefect_that_refuses_connections_is_said_once_a_while_not_per_event(
    inbox: InboxRepository, log_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "UNREACHABLE_AFTER", 0.3)
    dead = f"http://127.0.0.1:{free_port()}/api"
    async with PrefectClient(api=dead) as client:
        dispatcher = Dispatcher(
            inbox, client, poll=0.05, settle=0.01, recovery=Recovery(prefect_timeout=10.0)
        )
        keys = [await add_event(inbox, employee) for employee in (61, 62)]
        started = time.monotonic()
        # Rounds for a few seconds (Prefect's client tries a refused connection for 1.5 s).
        while time.monotonic() - started < 4:
            await dispatcher.round()

    warnings = [line for line in log_lines if line.startswith("WARNING cannot reach Prefect")]
    assert len(warnings) == 1  # then once a minute
    assert warnings[0].startswith(f"WARNING cannot reach Prefect at {dead} for ")
    assert "s: 2 events waiting (ConnectError: " in warnings[0]
    assert not any("reachable again" in line for line in log_lines)
    assert not any("dispatch of" in line for line in log_lines)  # no line per batch
    for key in keys:  # nothing reached Prefect: back to pending, to be batched afresh
        event = await stored(inbox, key)
        assert (event.status, event.claim_token) == (EventStatus.pending, None)
