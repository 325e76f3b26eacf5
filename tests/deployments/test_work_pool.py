"""Scale-out as production runs it: a Prefect server on PostgreSQL (its API protected), the
deployments on a process work pool, two workers, the gateway and the mapping store on
PostgreSQL, all real processes; the simulators stand in for PeopleForce and Jira.

200 signed webhooks for 100 employees (a hire and a change each, sent by the PeopleForce
simulator as it would) must all be applied, none twice, and the work must be spread over both
workers. The two webhooks of one employee usually land in two flow runs, which may run at the
same moment on the two workers: the per-employee lease in the store keeps them apart and the
mapping row keeps the Jira effects exactly once.

Each flow run is a process of its own (about 2.5 CPU-s to start on the 2-core box), so the
gateway batches at most 10 employees per run here, which gives two dozen runs or so.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
from prefect.client.schemas.objects import FlowRun, StateType
from sqlalchemy.engine import make_url

from cli.running import worker_environment
from core.plan import today_in
from core.rules import load_rules
from core.settings import Settings
from core.store import EffectAction, EventStatus, InboxRepository, MappingStore
from deployments.definitions import ALL, WEBHOOK
from deployments.stack import ChildProcess
from deployments.work_pool import work_pool_deployment
from sandbox.peopleforce import PeopleForceState
from sandbox.server import free_port
from sandbox.stack import Simulators
from tests.fixtures_database import POSTGRES_ADMIN_URL
from tests.paths import ROOT

RULES_FILE = ROOT / "rules.example.toml"
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
EMPLOYEES = 100
BATCH_MAX = 20  # employees per flow run: about ten runs
WORKERS = ("worker-a", "worker-b")
AUTH_STRING = "admin:work-pool-test-" + secrets.token_hex(8)
START_TIMEOUT = 180.0  # a Prefect server migrating a fresh PostgreSQL database: 20-60 s here
WORK_TIMEOUT = 360.0
DEPARTMENTS = ("Engineering", "Finance", "Sales", "Marketing")
WORKER_COMMAND = [
    "-m",
    "cli",
    "worker",
    "--work-pool",
    "pool",
    "--limit",
    "2",
    "--with-healthcheck",
]


def postgres_url(database: str, driver: str) -> str:
    return (
        make_url(POSTGRES_ADMIN_URL)
        .set(drivername=driver, database=database)
        .render_as_string(hide_password=False)
    )


@dataclass
class Cluster:
    """The processes and what the test needs to reach them."""

    tmp: Path
    env: dict[str, str]
    api_url: str
    gateway_url: str
    store_url: str
    simulators: Simulators
    children: list[ChildProcess] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)

    def start(self, name: str, args: list[str], **env: str) -> ChildProcess:
        child = ChildProcess.start(
            name,
            [sys.executable, *args],
            env={**self.env, **env},
            log_path=self.tmp / "logs" / f"{name}.log",
        )
        self.children.append(child)
        return child

    def logs(self) -> str:
        return "\n".join(
            f"--- {child.name} (exit {child.exit_code()}):\n" + "\n".join(child.log_tail(40))
            for child in self.children
        )

    def require_running(self) -> None:
        for child in self.children:
            if child.exit_code() is not None:
                pytest.fail(f"{child.describe_exit()}\n{self.logs()}")

    def wait_for(self, url: str, what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.require_running()
            try:
                if httpx.get(url, timeout=5, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not answer {url} within {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.5)

    def prefect(self) -> PrefectClient:
        return PrefectClient(api=self.api_url, auth_string=AUTH_STRING)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time of each process so far, with the children it has reaped (a worker's flow
        runs): where the test's time goes on a small machine."""
        ticks = os.sysconf("SC_CLK_TCK")
        used = {}
        for child in self.children:
            try:
                fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used[child.name] = sum(int(value) for value in fields[11:15]) / ticks
        return used

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop(10, hurry=lambda: False)


@pytest.fixture
async def databases(postgres_admin: asyncpg.Connection) -> AsyncIterator[tuple[str, str]]:
    """Two fresh databases of this test's own: the Prefect server's and the mapping store's."""
    suffix = f"{os.getpid()}_{secrets.token_hex(4)}"
    names = (f"pfjs_prefect_{suffix}", f"pfjs_store_{suffix}")
    for name in names:
        await postgres_admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        for name in names:
            await postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def cluster(databases: tuple[str, str], tmp_path: Path) -> Iterator[Cluster]:
    prefect_database, store_database = databases
    rules = load_rules(RULES_FILE)
    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    simulators = Simulators(
        today=today_in(rules.zone, datetime.now(UTC)),
        webhook_url=f"{gateway_url}/webhooks/peopleforce",
    ).start()
    # Nothing of the test process's own settings or Prefect profile leaks into the processes.
    base = {
        name: value
        for name, value in os.environ.items()
        if name not in SETTING_NAMES and not name.startswith("PREFECT_")
    }
    store_url = postgres_url(store_database, "postgresql+asyncpg")
    env = {
        **base,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PREFECT_API_AUTH_STRING": AUTH_STRING,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
        # Workers poll every 10 s by default; a quicker poll keeps the test short.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        # A line per task run would only load the server (and the 2-core box).
        "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "WARNING",
        "DATABASE_URL": store_url,
        "DATA_DIR": str(tmp_path / "data"),
        "RULES_FILE": str(RULES_FILE),
        "DISPATCH_BATCH_MAX": str(BATCH_MAX),
        # As many unfinished runs as the workers run at once (2 x 2): both stay busy.
        "DISPATCH_MAX_IN_FLIGHT": "4",
        "DISPATCH_RUN_ALONE_SECONDS": "0",  # two workers: runs side by side
        # 100 hires at once are the load here, not a mass change for the circuit breaker.
        "BREAKER_MAX_CREATE": "0",
        **simulators.environment(),
    }
    running = Cluster(tmp_path, env, "", gateway_url, store_url, simulators)
    try:
        running.api_url = start_prefect_server(running, prefect_database)
        running.env["PREFECT_API_URL"] = running.api_url
        running.timings["Prefect server up"] = time.monotonic() - running.started
        running.start(
            "gateway",
            ["-m", "webhook_gateway", "--host", "127.0.0.1", "--port", str(gateway_port)],
        )
        # The first worker registers the pool and the deployments (`--deploy`, as in the
        # compose file) while the second starts: they race to create the pool, both must cope.
        health_urls = []
        for name in WORKERS:
            port = free_port()
            running.start(
                name,
                [*WORKER_COMMAND, "--name", name, *(["--deploy"] if name == WORKERS[0] else [])],
                PREFECT_HOME=str(tmp_path / name),
                PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1",
                PREFECT_WORKER_WEBSERVER_PORT=str(port),
            )
            health_urls.append(f"http://127.0.0.1:{port}/health")
        for url in health_urls:
            running.wait_for(url, "a worker")
        running.wait_for(f"{gateway_url}/readyz", "the gateway")
        running.timings["all up"] = time.monotonic() - running.started
        yield running
    finally:
        running.stop()
        simulators.stop()


def start_prefect_server(cluster: Cluster, database: str) -> str:
    """A Prefect server on `database`, its API protected; returns the API URL once it answers.

    A free port may be taken by someone else before the server binds it (its start takes a
    while): then it is tried again on another port.
    """
    for _ in range(3):
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        server = cluster.start(
            "prefect-server",
            ["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            PREFECT_HOME=str(cluster.tmp / "prefect-server"),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=postgres_url(database, "postgresql+asyncpg"),
            PREFECT_SERVER_API_AUTH_STRING=AUTH_STRING,
            PREFECT_UI_ENABLED="false",
            # Nothing here runs on a schedule: no need to fill the calendar of `reconcile`.
            PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        )
        deadline = time.monotonic() + START_TIMEOUT
        while server.exit_code() is None:
            try:
                if httpx.get(f"{api_url}/health", timeout=5, trust_env=False).status_code == 200:
                    return api_url
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the Prefect server did not answer {api_url}\n{cluster.logs()}")
            time.sleep(0.5)
        if not any("already in use" in line for line in server.log_tail()):
            pytest.fail(f"{server.describe_exit()}\n{cluster.logs()}")
        cluster.children.remove(server)
    pytest.fail(f"no port for the Prefect server in 3 tries\n{cluster.logs()}")


def check_the_api_is_protected(api_url: str) -> None:
    """Nothing without the auth string, except the health probe; every deployment on the pool."""
    with httpx.Client(base_url=api_url, trust_env=False, timeout=10) as http:
        assert http.get("/health").status_code == 200
        assert http.post("/deployments/filter", json={}).status_code == 401
        token = base64.b64encode(AUTH_STRING.encode()).decode()
        authorized = http.post(
            "/deployments/filter", json={}, headers={"Authorization": f"Basic {token}"}
        )
    assert authorized.status_code == 200
    deployments = authorized.json()
    assert sorted(d["name"] for d in deployments) == sorted(spec.name for spec in ALL)
    assert {d["work_pool_name"] for d in deployments} == {"pool"}
    # Imported by module path from the installed package: no code storage, any host can run it.
    entrypoints = {d["entrypoint"] for d in deployments}
    assert all(e.startswith("flows.") and ":" not in e for e in entrypoints), entrypoints


def send_webhooks(state: PeopleForceState) -> list[int]:
    """100 hires, then a change of department for each: 200 signed webhooks to the gateway."""
    people = [
        state.hire(
            first_name="Scale",
            last_name=f"Out{number:03d}",
            hired_on=state.today + timedelta(days=3),
            department=DEPARTMENTS[number % len(DEPARTMENTS)],
        )
        for number in range(EMPLOYEES)
    ]
    for number, person in enumerate(people):
        state.update(person.id, department=DEPARTMENTS[(number + 1) % len(DEPARTMENTS)])
    ids = {person.id for person in people}
    deliveries = [d for d in state.deliveries if d.employee_id in ids]
    assert len(deliveries) == 2 * EMPLOYEES
    assert {d.status_code for d in deliveries} == {202}, [d.error for d in deliveries][:3]
    return [person.id for person in people]


async def online_workers(client: PrefectClient) -> set[str]:
    workers = await client.read_workers_for_work_pool("pool")
    return {worker.name for worker in workers if worker.status == "ONLINE"}


async def webhook_runs(client: PrefectClient) -> list[FlowRun]:
    return await client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[WEBHOOK.name])),
        flow_run_filter=FlowRunFilter(),
        limit=200,
    )


async def test_two_workers_apply_200_webhooks_for_100_employees_exactly_once(
    cluster: Cluster,
) -> None:
    started = time.monotonic()
    check_the_api_is_protected(cluster.api_url)
    refused = run_cli(
        "deploy",
        cwd=cluster.tmp,
        **{**cluster.env, "PREFECT_API_AUTH_STRING": "admin:wrong"},
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused the credentials: set PREFECT_API_AUTH_STRING" in refused.stderr
    async with cluster.prefect() as client:
        deadline = time.monotonic() + START_TIMEOUT
        while await online_workers(client) != set(WORKERS):
            cluster.require_running()
            assert time.monotonic() < deadline, f"workers not online\n{cluster.logs()}"
            await asyncio.sleep(0.5)

        # 200 signed webhooks, sent by the PeopleForce simulator as it would.
        people = await asyncio.to_thread(send_webhooks, cluster.simulators.peopleforce_state)
        sent = time.monotonic()

        # Until every event has been worked and its flow run has finished.
        async with await MappingStore.open(cluster.store_url) as store:
            inbox = InboxRepository(store.engine)
            deadline = time.monotonic() + WORK_TIMEOUT
            while True:
                cluster.require_running()
                events = await inbox.recent(limit=1000)
                statuses = Counter(event.status for event in events)
                if statuses[EventStatus.done] + statuses[EventStatus.failed] == len(events) == 200:
                    break
                assert time.monotonic() < deadline, f"{statuses}\n{cluster.logs()}"
                await asyncio.sleep(1)
            worked = time.monotonic()
            failed = [(e.event_key, e.outcome) for e in events if e.status != EventStatus.done]
            assert failed == [], cluster.logs()

            # All applied, none twice: one onboarding issue per employee, with its checklist
            # once, recorded in the store; one create of each in the audit.
            issues = cluster.simulators.jira_state.issues.values()
            for employee_id in people:
                label = f"pf-employee-{employee_id}"
                mine = [issue for issue in issues if label in issue.labels]
                parents = [issue for issue in mine if issue.parent_key is None]
                assert len(parents) == 1, [issue.summary for issue in parents]
                (parent,) = parents
                assert parent.summary.startswith("Onboarding: Scale Out")
                subtasks = [issue.summary for issue in mine if issue.parent_key == parent.key]
                assert subtasks, parent.key
                assert len(subtasks) == len(set(subtasks)), subtasks
                link = await store.get(employee_id)
                assert link is not None
                assert link.onboarding_issue_key == parent.key
                effects = await store.effects(employee_id)
                onboarding = [e for e in effects if e.action == EffectAction.create_onboarding]
                assert [e.issue_key for e in onboarding] == [parent.key]
                subtasks_created = [
                    key
                    for e in effects
                    if e.action == EffectAction.create_subtask
                    for key in e.detail["created"]
                ]
                assert len(subtasks_created) == len(set(subtasks_created)) == len(subtasks)

        # Spread over both workers: each ran some of the dispatched runs.
        runs = await webhook_runs(client)
        assert {run.state_type for run in runs} == {StateType.COMPLETED}
        by_worker = Counter(run.labels.get("prefect.worker.name") for run in runs)
        assert set(by_worker) == set(WORKERS), by_worker
        carried = sorted(employee for run in runs for employee in run.parameters["employee_ids"])
        assert set(carried) == set(people)
        assert max(len(run.parameters["employee_ids"]) for run in runs) <= BATCH_MAX
    up = ", ".join(f"{what} after {seconds:.0f} s" for what, seconds in cluster.timings.items())
    cpu = ", ".join(f"{name} {seconds:.0f}" for name, seconds in cluster.cpu_seconds().items())
    print(
        f"\n{up}; {len(runs)} flow runs ({dict(by_worker)}) carried {len(carried)} employees; "
        f"webhooks sent in {sent - started:.1f} s, all worked {worked - sent:.1f} s later; "
        f"CPU-s: {cpu}"
    )


# --- the commands' edges, without a cluster ---------------------------------------------------


def run_cli(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    base = {
        name: value
        for name, value in os.environ.items()
        if name not in SETTING_NAMES and not name.startswith("PREFECT_")
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**base, "PYTHONPATH": str(ROOT), "COLUMNS": "250", **settings},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_deploy_and_worker_need_the_prefect_api_url(tmp_path: Path) -> None:
    for command in ("deploy", "worker"):
        result = run_cli(command, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "PREFECT_API_URL is not set" in result.stderr
        assert "Traceback" not in result.stderr


def test_deploy_says_when_no_prefect_server_answers(tmp_path: Path) -> None:
    api_url = f"http://127.0.0.1:{free_port()}/api"
    result = run_cli("deploy", cwd=tmp_path, PREFECT_API_URL=api_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"no Prefect server answers at {api_url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_hands_its_settings_to_flow_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flow runs start in a temporary folder, where `.env` is not found: the worker passes on
    what it read, with paths made absolute and its interpreter first on PATH."""
    (tmp_path / ".env").write_text(
        "JIRA_EMAIL=bot@example.com\nPREFECT_API_AUTH_STRING=admin:pw\nLOG_LEVEL=DEBUG\nEMPTY=\n"
    )
    monkeypatch.chdir(tmp_path)
    settings = Settings(
        _env_file=None,
        prefect_api_url="http://prefect:4200/api/",  # type: ignore[arg-type]
        data_dir=Path("data"),
        rules_file=Path("rules.toml"),
    )
    env = worker_environment(settings, {"PATH": "/usr/bin", "LOG_LEVEL": "WARNING"})
    assert env["JIRA_EMAIL"] == "bot@example.com"
    assert env["PREFECT_API_AUTH_STRING"] == "admin:pw"
    assert env["LOG_LEVEL"] == "WARNING"  # the environment wins over .env, as in the settings
    assert "EMPTY" not in env
    assert env["DATA_DIR"] == str(tmp_path / "data")
    assert env["RULES_FILE"] == str(tmp_path / "rules.toml")
    assert env["DATABASE_URL"] == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'pf-jira-sync.db'}"
    assert env["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert env["PREFECT_SERVER_EPHEMERAL_ENABLED"] == "false"
    assert env["PATH"] == f"{Path(sys.executable).parent}:/usr/bin"


def test_work_pool_deployments_keep_the_served_names_and_import_flows_by_module() -> None:
    settings = Settings(_env_file=None)
    for spec in ALL:
        deployment = work_pool_deployment(spec, "pool", settings)
        assert (deployment.flow_name, deployment.name) == (spec.flow.name, spec.name)
        assert deployment.work_pool_name == "pool"
        module, _, name = (deployment.entrypoint or "").rpartition(".")
        assert getattr(importlib.import_module(module), name) is spec.flow
        assert deployment.job_variables == {"command": "python -m prefect.engine"}
        served = spec.options(settings)
        assert deployment.tags == served["tags"]
        assert bool(deployment.schedules) == ("schedule" in served)
    assert f"{WEBHOOK.flow.name}/{WEBHOOK.name}" == "sync-employees/webhook"  # the gateway's
