"""Observability: one webhook traced from the gateway to its Jira issue in Seq and in the Prefect
UI, secrets kept out of every output, Seq down without harm, and a retry from the UI.

A local CLEF receiver stands in for Seq; the gateway, its dispatcher and the simulators run over
real HTTP; flow runs are executed in-process against the Prefect test server, except the retry,
which a real `Runner` picks up and runs in a process of its own, as `serve` does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from uuid import UUID

import pytest
from loguru import logger
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_engine import run_flow_async
from prefect.logging.handlers import APILogHandler
from prefect.runner import Runner
from prefect.settings import PREFECT_API_URL
from prefect.states import State
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.logging import (
    RedactingFilter,
    add_context_properties,
    add_seq_sink,
    clear_secrets,
    console_format,
    console_sink,
    patch_record,
    redact,
    register_secrets,
    remove_seq_sink,
    secret_values,
)
from core.seq import SeqSink
from core.settings import Settings
from core.store import EffectAction, InboxRepository
from flows.observability import artifact_key
from flows.onboarding import onboarding
from flows.sync import sync_employees
from flows.work import EmployeesFailed
from sandbox.server import BackgroundServer
from tasks.run_log import add_prefect_sink, redact_prefect_run_logs, run_ids
from tests.fixtures_flows import RULES_FILE, World, webhook_gateway
from tests.fixtures_jira import JIRA_API_TOKEN, JIRA_EMAIL
from tests.fixtures_peopleforce import PEOPLEFORCE_API_KEY
from tests.paths import ROOT

WEBHOOK_SECRET = "obs-webhook-secret-5f2c9a"
SEQ_API_KEY = "obs-seq-api-key-77d1e0"
ALERT_URL = "https://hooks.example.com/services/T000/B000/obs-alert-token-91ab"
SECRETS = [
    WEBHOOK_SECRET,
    SEQ_API_KEY,
    ALERT_URL,
    PEOPLEFORCE_API_KEY,
    JIRA_API_TOKEN,
    base64.b64encode(f"{JIRA_EMAIL}:{JIRA_API_TOKEN}".encode()).decode(),
]


# --- A local Seq: the CLEF receiver -------------------------------------------------------------


@dataclass
class ClefReceiver:
    url: str = ""
    bodies: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    api_keys: set[str | None] = field(default_factory=set)

    def app(self) -> Starlette:
        async def ingest(request: Request) -> JSONResponse:
            body = (await request.body()).decode()
            self.bodies.append(body)
            self.api_keys.add(request.headers.get("x-seq-apikey"))
            self.events += [json.loads(line) for line in body.splitlines() if line.strip()]
            return JSONResponse({"MinimumLevelAccepted": None}, status_code=201)

        return Starlette(routes=[Route("/ingest/clef", ingest, methods=["POST"])])

    def with_key(self, event_key: str) -> list[dict]:
        return [event for event in self.events if event.get("EventKey") == event_key]


@pytest.fixture
def clef() -> Iterator[ClefReceiver]:
    receiver = ClefReceiver()
    with BackgroundServer(receiver.app()) as server:
        receiver.url = server.url
        yield receiver


@dataclass
class Observed:
    clef: ClefReceiver
    seq: SeqSink


@pytest.fixture
def observed(clef: ClefReceiver) -> Iterator[Observed]:
    """The sinks `configure_logging` installs (console, Prefect run log, Seq at the receiver),
    with the test's secrets registered; removed afterwards."""
    logger.configure(patcher=patch_record)
    add_context_properties(run_ids)
    register_secrets(SECRETS)
    redact_prefect_run_logs()
    console = logger.add(console_sink, level="INFO", format=console_format)
    prefect = add_prefect_sink("INFO")
    seq_id, seq = add_seq_sink(clef.url, SEQ_API_KEY, flush_seconds=0.1)
    try:
        yield Observed(clef, seq)
    finally:
        logger.remove(console)
        logger.remove(prefect)
        remove_seq_sink(seq_id, seq)
        clear_secrets()
        logger.configure(patcher=lambda _record: None)


def assert_no_secret(texts: list[str], secrets: list[str]) -> None:
    for secret in secrets:
        leaks = [text[:200] for text in texts if secret in text]
        assert not leaks, f"secret {secret[:6]}... leaked in {leaks}"


# --- One webhook, traced -------------------------------------------------------------------------


async def test_one_webhook_is_traced_from_the_gateway_to_its_jira_issue(
    world: World, observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    api_url = PREFECT_API_URL.value()
    await (await sync_employees.ato_deployment(name="webhook")).aapply()
    inbox = InboxRepository(world.services.store.engine)
    with webhook_gateway(world, WEBHOOK_SECRET, api_url, poll=0.3):
        person = world.hire("Grace", "Hopper", in_days=2, department="Engineering")
        (delivery,) = world.peopleforce.state.deliveries
        assert delivery.status_code == 202
        deadline = time.monotonic() + 30
        while not (events := await inbox.recent(limit=5)) or not events[0].flow_run_id:
            assert time.monotonic() < deadline, "the webhook was not dispatched"
            await asyncio.sleep(0.1)
    (event,) = events
    key = event.event_key
    assert event.flow_run_id is not None

    async with PrefectClient(api=api_url) as client:
        run = await client.read_flow_run(UUID(event.flow_run_id))
        # The run knows which webhook caused each employee's work.
        assert run.parameters["event_keys"] == {str(person.id): [key]}
        assert {f"employee:{person.id}", f"action:{delivery.action}"} <= set(run.tags)
        state = await run_flow_async(
            sync_employees, flow_run=run, parameters=run.parameters, return_type="state"
        )
        assert isinstance(state, State)
        assert state.is_completed()
        await APILogHandler.aflush()
        assert observed.seq.flush()
        (parent,) = world.parents_of(person.id)

        # The process subflow is found in the UI by the employee and the process.
        (sub,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[f"employee:{person.id}", "onboarding"]),
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id]),
            )
        )
        assert sub.name == f"onboarding · Grace Hopper ({person.id})"
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id, sub.id]))
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[sub.id]))
        )

    # Seq: the gateway's line, the dispatcher's and the flows' share the event key.
    clef = observed.clef
    assert clef.api_keys == {SEQ_API_KEY}
    traced = clef.with_key(key)
    (accepted,) = [e for e in traced if e["@m"].startswith(f"webhook {key} accepted")]
    assert accepted["EmployeeId"] == person.id
    assert accepted["Action"] == delivery.action
    assert accepted["@l"] == "Information"
    (handed,) = [e for e in traced if "handed to flow run" in e["@m"]]
    assert handed["FlowRunId"] == str(run.id)
    in_runs = [e for e in traced if e.get("FlowRunId") in {str(run.id), str(sub.id)}]
    assert {e.get("EmployeeId") for e in in_runs} == {person.id}
    (created,) = [e for e in traced if e.get("JiraKey") == parent.key]
    assert created["Action"] == "create_issue"
    assert created["FlowRunId"] == str(sub.id)
    assert created["@m"] == (
        f"{person.id} Grace Hopper: created onboarding {parent.key} (starts {parent.duedate})"
    )

    # The Prefect UI: the same line in the run's log, a link to the issue.
    assert created["@m"] in {log.message for log in logs if log.flow_run_id == sub.id}
    # (Prefect stores a link artifact as markdown: `[text](link)`.)
    (link,) = [artifact for artifact in artifacts if artifact.key == artifact_key(parent.key)]
    assert link.data == f"[{parent.key}]({world.jira.url}/browse/{parent.key})"
    # ...and `why`'s timeline of the employee: the webhook, the plan's reason, the issue made,
    # and this run, linked to its page in the UI.
    (story,) = [a for a in artifacts if a.key == f"why-employee-{person.id}"]
    timeline = str(story.data)
    assert f"webhook {event.ref}" in timeline
    assert "within the pre-hire lead time" in timeline
    assert f"Jira {parent.key}" in timeline
    assert f"/runs/flow-run/{sub.id})" in timeline

    # No secret anywhere: console, Seq, run logs, parameters, artifacts.
    signature = delivery.signature or ""
    assert signature.startswith("sha256=")
    outputs = [
        capsys.readouterr().err,
        *clef.bodies,
        *(log.message for log in logs),
        json.dumps(run.parameters),
        json.dumps(sub.parameters),
        *(str(artifact.data) + str(artifact.description) for artifact in artifacts),
    ]
    assert created["@m"] in outputs[0]  # the console did get the lines
    assert_no_secret(outputs, [*SECRETS, signature, signature.removeprefix("sha256=")])


def test_secrets_logged_by_mistake_are_masked_in_every_sink(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    signature = "sha256=" + "ab" * 32
    logger.bind(Token=JIRA_API_TOKEN, Nested={"key": [PEOPLEFORCE_API_KEY]}).warning(
        "calling {} with X-API-KEY: {} and Authorization: Basic {} ({})",
        ALERT_URL,
        "some-unregistered-key",
        SECRETS[-1],
        signature,
    )
    try:
        raise RuntimeError(f"rejected {WEBHOOK_SECRET}")
    except RuntimeError:
        logger.exception("failed with {}", SEQ_API_KEY)
    assert observed.seq.flush()
    console = capsys.readouterr().err
    outputs = [console, *observed.clef.bodies]
    assert_no_secret(outputs, [*SECRETS, signature, "some-unregistered-key"])
    assert "X-API-KEY: ********" in console
    assert "RuntimeError: rejected ********" in console  # the traceback, masked
    (warning,) = [e for e in observed.clef.events if e["@l"] == "Warning"]
    (error,) = [e for e in observed.clef.events if e["@l"] == "Error"]
    assert warning["Token"] == "********"
    assert warning["Nested"] == {"key": ["********"]}
    assert "RuntimeError: rejected ********" in error["@x"]
    # Prefect's own run-log records are masked too.
    record = logging.LogRecord(
        "prefect.flow_runs", logging.ERROR, __file__, 1, "failed: %s", (WEBHOOK_SECRET,), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "failed: ********"


def test_passwords_and_tokens_in_urls_are_masked_in_every_line(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any URL's password and credential query values, registered or not; the user is kept."""
    logger.bind(Store="postgresql+asyncpg://pfjs:db-pw-unregistered@db:5432/x").warning(
        "proxy http://proxy:proxy-pw-unregistered@proxy:3128 refused "
        "https://hooks.example.com/x?access_token=tok-unregistered&page=2 "
        "(next: /search/jql?nextPageToken=cursor-42)"
    )
    assert observed.seq.flush()
    console = capsys.readouterr().err
    outputs = [console, *observed.clef.bodies]
    assert_no_secret(outputs, ["db-pw-unregistered", "proxy-pw-unregistered", "tok-unregistered"])
    assert "http://proxy:********@proxy:3128 refused" in console
    assert "?access_token=********&page=2" in console
    assert "nextPageToken=cursor-42" in console  # a pagination cursor, not a credential
    (event,) = [e for e in observed.clef.events if e["@l"] == "Warning"]
    assert event["Store"] == "postgresql+asyncpg://pfjs:********@db:5432/x"


def test_the_secrets_inside_url_settings_and_proxies_are_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also where no pattern would find them: a password quoted alone, decoded or not."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:https-proxy-pw@proxy:3128")
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql://p:prefect-db-pw@db/p")
    settings = Settings(
        database_url="postgresql+asyncpg://pfjs:db%40pw-1@db:5432/pf_jira_sync",
        prefect_api_url="http://admin:prefect-pw-2@prefect:4200/api",  # type: ignore[arg-type]
        seq_url="http://seq:5341/?apikey=seq-query-key-3",  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    values = secret_values(settings)
    for secret in (
        "db%40pw-1",
        "db@pw-1",
        "prefect-pw-2",
        "seq-query-key-3",
        "https-proxy-pw",
        "prefect-db-pw",
    ):
        assert secret in values
    register_secrets(values)
    try:
        assert redact("the password is db@pw-1, or prefect-pw-2") == (
            "the password is ********, or ********"
        )
    finally:
        clear_secrets()


def test_a_process_configured_from_settings_ships_to_seq_and_flushes_at_exit(
    clef: ClefReceiver,
) -> None:
    program = (
        "from loguru import logger\n"
        "from core.logging import configure_logging\n"
        "from core.settings import get_settings\n"
        "configure_logging(get_settings(), component='probe')\n"
        "logger.bind(EventKey='employee_create:7:x').info('probe uses {}', "
        f"{PEOPLEFORCE_API_KEY!r})\n"
    )
    env = {
        **os.environ,
        "SEQ_URL": clef.url,
        "SEQ_API_KEY": SEQ_API_KEY,
        "PEOPLEFORCE_API_KEY": PEOPLEFORCE_API_KEY,
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    (event,) = [e for e in clef.events if e.get("Component") == "probe"]
    assert event["EventKey"] == "employee_create:7:x"
    assert event["Application"] == "pf-jira-sync"
    assert event["@m"] == "probe uses ********"  # a secret setting is masked
    assert clef.api_keys == {SEQ_API_KEY}
    assert "probe uses ********" in done.stderr


# --- Seq down ------------------------------------------------------------------------------------


async def test_seq_that_never_answers_blocks_nothing_and_drops_are_counted(world: World) -> None:
    # A Seq that accepts connections and never answers: every post waits for its timeout.
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(100)
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        handler_id, sink = add_seq_sink(url, max_queue=50, timeout=1.0, attempts=1)
        try:
            person = world.hire("Seq", "Down", in_days=1, department="Finance")
            (outcome,) = await asyncio.wait_for(onboarding([person.id]), timeout=60)
            assert outcome.error is None
            assert len(world.parents_of(person.id)) == 1
            started = time.perf_counter()
            for n in range(2000):
                logger.info("burst line {}", n)
            assert time.perf_counter() - started < 2.0  # no line waited for Seq
            assert sink.dropped >= 1500
            assert sink.sent == 0
        finally:
            remove_seq_sink(handler_id, sink)


# --- Retry from the Prefect UI ---------------------------------------------------------------------


async def test_retry_from_the_ui_completes_a_failed_run_without_duplicates(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_url = PREFECT_API_URL.value()
    deployment = await onboarding.ato_deployment(name="manual", tags=["pf-jira-sync"])
    deployment_id = await deployment.aapply()
    done = world.hire("Ada", "Done", in_days=1, department="Sales")
    crashed = world.hire("Bob", "Crashed", in_days=1, department="Sales")

    # First attempt: Bob's issue is created, then the process dies before recording it.
    original = world.services.store.record_effect

    async def crash_for_bob(employee_id: int, *args, **kwargs):
        if employee_id == crashed.id:
            raise RuntimeError("process killed before the store write")
        return await original(employee_id, *args, **kwargs)

    async with PrefectClient(api=api_url) as client:
        run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"employee_ids": [done.id, crashed.id]}
        )
        with monkeypatch.context() as patched:
            patched.setattr(world.services.store, "record_effect", crash_for_bob)
            state = await run_flow_async(
                onboarding, flow_run=run, parameters=run.parameters, return_type="state"
            )
        assert isinstance(state, State)
        assert state.is_failed()
        with pytest.raises(EmployeesFailed):
            await state.aresult()
        assert len(world.parents_of(done.id)) == len(world.parents_of(crashed.id)) == 1

        # "Retry" in the UI: the run goes back to Scheduled, forced, and a runner picks it up.
        await client.set_flow_run_state(
            run.id,
            State(type=StateType.SCHEDULED, name="AwaitingRetry", message="Retry from the UI"),
            force=True,
        )
        # The runner's flow-run process reads the service's settings from its environment.
        for name, value in {
            "PEOPLEFORCE_BASE_URL": world.peopleforce.base_url,
            "PEOPLEFORCE_API_KEY": PEOPLEFORCE_API_KEY,
            "JIRA_BASE_URL": world.jira.url,
            "JIRA_EMAIL": JIRA_EMAIL,
            "JIRA_API_TOKEN": JIRA_API_TOKEN,
            "DATABASE_URL": world.database_url,
            "RULES_FILE": str(RULES_FILE),
        }.items():
            monkeypatch.setenv(name, value)
        runner = Runner(query_seconds=1, pause_on_shutdown=False, limit=1)
        await runner.aadd_deployment(deployment)
        await asyncio.wait_for(runner.start(run_once=True), timeout=300)
        retried = await client.read_flow_run(run.id)
        # The flow-run process configured its logging from the settings: its loguru lines are
        # in the run's log in the UI.
        (adopted,) = world.parents_of(crashed.id)
        wanted = (
            f"{crashed.id} Bob Crashed: created onboarding {adopted.key} (starts {adopted.duedate})"
        )
        deadline = time.monotonic() + 30
        while wanted not in {
            log.message
            for log in await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )
        }:
            assert time.monotonic() < deadline, f"{wanted!r} is not in the run's log"
            await asyncio.sleep(0.5)

    assert retried.state is not None
    assert retried.state.type == StateType.COMPLETED, retried.state.message
    assert retried.run_count == 2
    for person in (done, crashed):
        (parent,) = world.parents_of(person.id)  # no duplicate issue
        subtasks = [i for i in world.issues_of(person.id) if i.parent_key == parent.key]
        assert len(subtasks) == 3
        link = await world.services.store.get(person.id)
        assert link is not None
        assert link.onboarding_issue_key == parent.key
    effects = [effect.action for effect in await world.services.store.effects(crashed.id)]
    assert effects[0] == EffectAction.adopt_existing  # found by its label, not created again
