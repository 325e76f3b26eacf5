"""The command line as an operator runs it: a real process against the simulators on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from core import one_host
from core.peopleforce.signature import SIGNATURE_HEADER, verify
from core.settings import Settings
from core.store import EventStatus, InboxRepository, MappingStore, WebhookEvent
from core.store.models import utc_now
from sandbox.server import BackgroundServer, free_port
from sandbox.stack import WEBHOOK_SECRET, Simulators
from tests.paths import ROOT

SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def cli_env(**settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    return {**base, "PYTHONPATH": str(ROOT), "COLUMNS": "250", **settings}


def run_cli(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=cli_env(**settings),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.fixture(scope="module")
def simulators() -> Iterator[Simulators]:
    with Simulators() as running:
        yield running


def lines_by_check(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        status, _, rest = line.partition(" ")
        name = rest.strip().split(" ", 1)[0]
        found[name] = f"{status} {rest.strip()}"
    return found


def test_sandbox_command_serves_both_simulators_until_interrupted(tmp_path: Path) -> None:
    pf_port, jira_port = free_port(), free_port()
    # Started as a script's background job would be: with SIGINT ignored (Python keeps it so
    # unless the command takes it back). Ctrl-C must stop it all the same.
    process = subprocess.Popen(
        ["/bin/sh", "-c", f"trap '' INT; exec {shlex.quote(sys.executable)} -m cli sandbox"],
        env=cli_env(SANDBOX_PEOPLEFORCE_PORT=str(pf_port), SANDBOX_JIRA_PORT=str(jira_port)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            seen.append(line)
            if "Ctrl-C" in line or not line:
                break
        output = "".join(seen)
        assert f"http://127.0.0.1:{pf_port}/api/public/v3" in output, output
        people = httpx.get(
            f"http://127.0.0.1:{pf_port}/api/public/v3/employees",
            headers={"X-API-KEY": "sandbox-peopleforce-key"},
        )
        assert people.status_code == 200
        assert people.json()["data"]
        me = httpx.get(
            f"http://127.0.0.1:{jira_port}/rest/api/3/myself",
            auth=("sync-bot@example.com", "sandbox-jira-token"),
        )
        assert me.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        returncode = process.wait(timeout=20)
    assert returncode == 0


# --- `sandbox hire|update|terminate|revert|start`: the simulator's control API over HTTP ------


@dataclass
class Delivery:
    action: str
    employee_id: int
    signed: bool  # the signature verifies under the sandbox's webhook secret


@dataclass
class WebhookReceiver:
    """Stands in for the gateway: records each delivery and answers `status_code`."""

    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    status_code: int = 202

    def since(self, count: int) -> list[tuple[str, int]]:
        """(action, employee id) of the deliveries after the first `count`; all must be signed."""
        new = self.deliveries[count:]
        assert all(delivery.signed for delivery in new), new
        return [(delivery.action, delivery.employee_id) for delivery in new]


@pytest.fixture(scope="module")
def receiver(simulators: Simulators) -> Iterator[WebhookReceiver]:
    app = FastAPI()
    with BackgroundServer(app) as server:
        hooks = WebhookReceiver(url=server.url + "/hook")

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            raw = await request.body()
            payload = json.loads(raw)
            hooks.deliveries.append(
                Delivery(
                    action=payload["action"],
                    employee_id=payload["data"]["id"],
                    signed=verify(WEBHOOK_SECRET, raw, request.headers.get(SIGNATURE_HEADER)),
                )
            )
            return Response(status_code=hooks.status_code)

        simulators.peopleforce_state.set_webhook_target(hooks.url, WEBHOOK_SECRET)
        yield hooks
        simulators.peopleforce_state.set_webhook_target(None, None)


def sandbox_cli(
    simulators: Simulators, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    port = httpx.URL(simulators.peopleforce_url).port
    assert port is not None
    return run_cli("sandbox", *args, cwd=tmp_path, SANDBOX_PEOPLEFORCE_PORT=str(port))


def employee_id_in(output: str) -> int:
    found = re.search(r"^employee (\d+) ", output, re.MULTILINE)
    assert found, output
    return int(found.group(1))


def test_sandbox_hire_creates_the_employee_and_the_signed_webhooks_arrive(
    simulators: Simulators, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    before = len(receiver.deliveries)
    result = sandbox_cli(
        simulators, tmp_path,
        "hire", "Grace Brewster Hopper",
        "--department", "Engineering", "--position", "Staff Engineer", "--location", "Berlin",
        "--manager-id", "1001", "--email", "grace.hopper@example.com",
        "--employment-type", "Contractor",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    employee_id = employee_id_in(result.stdout)
    assert f"employee {employee_id} Grace Brewster Hopper" in result.stdout
    # Hired today: PeopleForce creates and starts them at once.
    assert receiver.since(before) == [
        ("employee_create", employee_id),
        ("employee_start", employee_id),
    ]
    assert f"webhook employee_create -> {receiver.url}: 202 in" in result.stdout
    assert f"webhook employee_start -> {receiver.url}: 202 in" in result.stdout
    person = simulators.peopleforce_state.get(employee_id)
    assert (person.first_name, person.middle_name, person.last_name) == (
        "Grace",
        "Brewster",
        "Hopper",
    )
    assert (person.department, person.position, person.location) == ("Engineering", "Staff Engineer", "Berlin")  # fmt: skip
    assert (person.manager_id, person.email) == (1001, "grace.hopper@example.com")
    assert person.employment_type == "Contractor"
    assert person.hired_on == simulators.peopleforce_state.today


def test_sandbox_hire_in_days_sends_only_the_creation(
    simulators: Simulators, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    before = len(receiver.deliveries)
    result = sandbox_cli(simulators, tmp_path, "hire", "Alan Turing", "--in-days", "14")
    assert result.returncode == 0, result.stdout + result.stderr
    employee_id = employee_id_in(result.stdout)
    assert receiver.since(before) == [("employee_create", employee_id)]
    expected = simulators.peopleforce_state.today + timedelta(days=14)
    assert simulators.peopleforce_state.get(employee_id).hired_on == expected
    assert f"hired on {expected.isoformat()}" in result.stdout

    fixed = sandbox_cli(simulators, tmp_path, "hire", "Edsger Dijkstra", "--hired-on", "2031-03-02")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert simulators.peopleforce_state.get(employee_id_in(fixed.stdout)).hired_on == date(
        2031, 3, 2
    )


def test_sandbox_update_terminate_revert_and_start_send_their_webhooks(
    simulators: Simulators, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    hired = sandbox_cli(simulators, tmp_path, "hire", "Barbara Liskov", "--in-days", "3")
    employee_id = employee_id_in(hired.stdout)
    steps: list[tuple[list[str], list[str]]] = [
        (["update", str(employee_id), "--position", "Principal Engineer", "--location", "Boston"], ["employee_update"]),
        (["update", str(employee_id), "--employment-type", "Part-Time"], ["employee_update"]),
        (["start", str(employee_id)], ["employee_start"]),
        (["terminate", str(employee_id), "--on", "2099-12-31"], ["employee_update"]),  # scheduled
        (["revert", str(employee_id)], ["employee_termination_revert"]),
        (["terminate", str(employee_id)], ["employee_terminate"]),  # today
    ]  # fmt: skip
    for args, actions in steps:
        before = len(receiver.deliveries)
        result = sandbox_cli(simulators, tmp_path, *args)
        assert result.returncode == 0, (args, result.stdout + result.stderr)
        assert f"employee {employee_id} Barbara Liskov" in result.stdout
        assert receiver.since(before) == [(action, employee_id) for action in actions], args
    person = simulators.peopleforce_state.get(employee_id)
    assert (person.position, person.location) == ("Principal Engineer", "Boston")
    assert person.employment_type == "Part-Time"
    assert simulators.peopleforce_state.status_of(person) == "terminated"
    assert f"leaves on {simulators.peopleforce_state.today.isoformat()}" in result.stdout


def test_sandbox_moves_a_first_day_and_deletes_a_hire(
    simulators: Simulators, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    hired = sandbox_cli(simulators, tmp_path, "hire", "Niklaus Wirth", "--in-days", "10")
    employee_id = employee_id_in(hired.stdout)
    before = len(receiver.deliveries)
    moved = sandbox_cli(
        simulators, tmp_path, "update", str(employee_id), "--hired-on", "2031-04-07"
    )
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert receiver.since(before) == [("employee_update", employee_id)]
    assert simulators.peopleforce_state.get(employee_id).hired_on == date(2031, 4, 7)
    before = len(receiver.deliveries)
    deleted = sandbox_cli(simulators, tmp_path, "delete", str(employee_id))
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert f"employee {employee_id} Niklaus Wirth" in deleted.stdout
    assert "no webhook sent: PeopleForce sends none for this change" in deleted.stdout
    assert receiver.since(before) == []
    assert employee_id in simulators.peopleforce_state.deleted


def test_sandbox_command_reports_a_refused_webhook_and_exits_non_zero(
    simulators: Simulators, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    receiver.status_code = 401
    try:
        result = sandbox_cli(simulators, tmp_path, "update", "1002", "--location", "Lisbon")
    finally:
        receiver.status_code = 202
    assert result.returncode == 1
    assert f"webhook employee_update -> {receiver.url}: FAILED 401" in result.stdout
    assert "the webhook was not accepted" in result.stderr


def test_sandbox_commands_explain_refusals_and_bad_arguments(
    simulators: Simulators, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    unknown = sandbox_cli(simulators, tmp_path, "terminate", "99999")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: the sandbox refused: no employee 99999"
    nothing_to_revert = sandbox_cli(simulators, tmp_path, "revert", "1003")
    assert nothing_to_revert.returncode == 1
    assert "has no termination to revert" in nothing_to_revert.stderr
    for args, message in [
        (["hire", "Plato"], "give a first and a last name"),
        (["hire", "Ada Lovelace", "--in-days", "2", "--hired-on", "2030-01-01"], "not both"),
        (["update", "1002"], "nothing to change"),
    ]:
        result = sandbox_cli(simulators, tmp_path, *args)
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)


def test_sandbox_hire_without_a_running_sandbox_says_how_to_start_one(tmp_path: Path) -> None:
    port = free_port()
    result = run_cli(
        "sandbox", "hire", "Ada Lovelace", cwd=tmp_path, SANDBOX_PEOPLEFORCE_PORT=str(port)
    )
    assert result.returncode == 1
    # The command as typed on the machine `make` set up: the entry point, not `uv run`.
    up = one_host.command("up", "--sandbox", cwd=tmp_path)
    assert up == f"{ROOT}/.venv/bin/pf-jira-sync up --sandbox"
    assert result.stderr.strip() == (
        f"error: no sandbox at http://127.0.0.1:{port}: start it with `make run` (or `{up}`)"
    )
    assert "Traceback" not in result.stderr


# --- `events` and `replay`: the inbox in the store ---------------------------------------------

RUN_ID = "7c0ffee0-1111-4222-8333-944445555666"


async def fill_inbox(database_url: str) -> None:
    """Four events, a minute apart: done, failed (no flow run), ignored (no employee), pending."""
    start = datetime(2031, 5, 4, 9, 0, tzinfo=UTC)
    events: list[dict[str, Any]] = [
        {"event_key": "employee_create:1041:2031-05-04T09:00:00Z", "action": "employee_create",
         "employee_id": 1041, "status": EventStatus.done, "flow_run_id": RUN_ID,
         "outcome": "Jira ENG-12; completed in flow run sync · Ada Lovelace (1041)"},
        {"event_key": "employee_update:1042:2031-05-04T09:01:00Z", "action": "employee_update",
         "employee_id": 1042, "status": EventStatus.failed, "outcome": "Jira said 400:\n bad field"},
        {"event_key": "sha256:abc123", "action": "leave_request_create", "employee_id": None,
         "status": EventStatus.ignored},
        {"event_key": "employee_terminate:1043:2031-05-04T09:03:00Z", "action": "employee_terminate",
         "employee_id": 1043, "status": EventStatus.pending},
    ]  # fmt: skip
    async with await MappingStore.open(database_url) as store:
        inbox = InboxRepository(store.engine)
        for minute, fields in enumerate(events):
            received = start + timedelta(minutes=minute)
            await inbox.add(
                WebhookEvent(**fields, body="{}", received_at=received, updated_at=received)
            )


@pytest.fixture
def inbox_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    url = f"sqlite+aiosqlite:///{data_dir / 'pf-jira-sync.db'}"
    asyncio.run(fill_inbox(url))  # its own loop: the session loop is not running here
    return data_dir


def table_rows(output: str) -> dict[str, list[str]]:
    """The `events` table by short reference: each row's cells (split on runs of 2+ spaces)."""
    rows = {}
    for line in output.splitlines()[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if re.fullmatch(r"e\d+", cells[0]) and len(cells) >= 5:
            rows[cells[0]] = cells
    return rows


# fill_inbox's events by reference (row ids in the order stored).
REFS = {
    "e1": "employee_create:1041:2031-05-04T09:00:00Z",
    "e2": "employee_update:1042:2031-05-04T09:01:00Z",
    "e3": "sha256:abc123",
    "e4": "employee_terminate:1043:2031-05-04T09:03:00Z",
}


def test_events_lists_the_inbox_newest_first(inbox_dir: Path, tmp_path: Path) -> None:
    result = run_cli("events", cwd=tmp_path, DATA_DIR=str(inbox_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header == ["ref", "received", "employee", "event", "status", "outcome"]
    rows = table_rows(result.stdout)
    assert list(rows) == ["e4", "e3", "e2", "e1"]
    assert rows["e1"][2:] == [
        "1041",
        "create",
        "done",
        "Jira ENG-12; completed in flow run sync · Ada Lovelace (1041)",
    ]
    assert rows["e3"][2:] == ["-", "leave_request_create", "ignored", "not acted on"]
    assert rows["e4"][-2:] == ["pending", "waiting to be dispatched"]
    # A multi-line outcome stays on its row.
    assert rows["e2"][-1] == "Jira said 400: bad field"
    assert "4 events, newest first" in result.stdout


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_events_and_config_fit_the_terminal_and_cut_nothing(
    columns: int, inbox_dir: Path, tmp_path: Path
) -> None:
    long_dir = inbox_dir.parent / ("a-rather-long-folder-name-for-the-store-" * 3) / "data"
    long_dir.parent.mkdir(parents=True)
    inbox_dir.rename(long_dir)
    env = {"DATA_DIR": str(long_dir), "COLUMNS": str(columns)}

    events = run_cli("events", cwd=tmp_path, **env)
    config = run_cli("config", cwd=tmp_path, **env)

    for result in (events, config):
        assert result.returncode == 0, result.stdout + result.stderr
        too_wide = [line for line in result.stdout.splitlines() if len(line) > columns]
        assert too_wide == [], f"{result.args[3:]} at {columns} columns"
    # The outcome wraps inside its column: read down it, it is all there.
    outcome_at = events.stdout.splitlines()[0].index("outcome")
    outcomes = " ".join(line[outcome_at:].strip() for line in events.stdout.splitlines()[1:])
    assert "Jira ENG-12; completed in flow run sync · Ada Lovelace (1041)" in outcomes
    # A long value is folded, never cut: the store's path is there whole.
    assert "…" not in config.stdout
    assert str(long_dir) in re.sub(r"[\s│┃]", "", config.stdout)


def test_events_without_a_store_says_where_it_looked(tmp_path: Path) -> None:
    result = run_cli("events", cwd=tmp_path, DATA_DIR=str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert f"no store at {tmp_path / 'nowhere' / 'pf-jira-sync.db'}" in result.stderr
    assert not (tmp_path / "nowhere").exists()  # looking created nothing


def test_events_shows_what_was_set_aside_and_why(inbox_dir: Path, tmp_path: Path) -> None:
    async def set_aside() -> None:
        url = f"sqlite+aiosqlite:///{inbox_dir / 'pf-jira-sync.db'}"
        async with await MappingStore.open(url) as store:
            inbox = InboxRepository(store.engine)
            await inbox.set_aside({REFS["e4"]: "set aside, not dispatched: why it could not be"})

    asyncio.run(set_aside())

    listed = run_cli("events", cwd=tmp_path, DATA_DIR=str(inbox_dir), COLUMNS="120")
    only = run_cli("events", "--status", "set_aside", cwd=tmp_path, DATA_DIR=str(inbox_dir))

    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert table_rows(listed.stdout)["e4"][-2:] == [
        "set_aside",
        "set aside, not dispatched: why it could not be",
    ]
    assert only.returncode == 0, only.stdout + only.stderr
    assert list(table_rows(only.stdout)) == ["e4"]


def stored_event(inbox_dir: Path, key: str) -> WebhookEvent | None:
    async def read() -> WebhookEvent | None:
        url = f"sqlite+aiosqlite:///{inbox_dir / 'pf-jira-sync.db'}"
        async with await MappingStore.open(url) as store:
            return await InboxRepository(store.engine).get(key)

    return asyncio.run(read())


@pytest.mark.parametrize("reference", ["e1", "E1", REFS["e1"]])
def test_replay_requeues_a_stored_event_by_reference_or_key(
    reference: str, inbox_dir: Path, tmp_path: Path
) -> None:
    result = run_cli("replay", reference, cwd=tmp_path, DATA_DIR=str(inbox_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert " ".join(result.stdout.split()).startswith(
        "requeued e1: employee_create of employee 1041, received 2031-05-04 09:00:00 "
        f"(was done, flow run {RUN_ID}). The gateway's dispatcher hands it to Prefect again"
    )
    event = stored_event(inbox_dir, REFS["e1"])
    assert event is not None
    assert (event.status, event.flow_run_id) == (EventStatus.pending, None)


def test_replay_an_employee_requeues_their_latest_event(inbox_dir: Path, tmp_path: Path) -> None:
    async def add_later_event() -> None:
        url = f"sqlite+aiosqlite:///{inbox_dir / 'pf-jira-sync.db'}"
        async with await MappingStore.open(url) as store:
            later = datetime(2031, 5, 4, 10, 0, tzinfo=UTC)
            await InboxRepository(store.engine).add(
                WebhookEvent(event_key="employee_update:1042:later", action="employee_update",
                             employee_id=1042, status=EventStatus.done, body="{}",
                             received_at=later, updated_at=later)
            )  # fmt: skip

    asyncio.run(add_later_event())
    result = run_cli("replay", "--employee", "1042", cwd=tmp_path, DATA_DIR=str(inbox_dir))

    assert result.returncode == 0, result.stdout + result.stderr
    assert " ".join(result.stdout.split()).startswith(
        "requeued e5, the latest event about employee 1042: employee_update, received "
        "2031-05-04 10:00:00 (was done)."
    )
    latest, earlier = (
        stored_event(inbox_dir, key) for key in ("employee_update:1042:later", REFS["e2"])
    )
    assert latest is not None
    assert earlier is not None
    assert (latest.status, earlier.status) == (EventStatus.pending, EventStatus.failed)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["e99"], "error: no event 'e99' in the inbox (see `pf-jira-sync events`)"),
        (["employee_create:9:nope"], "error: no event 'employee_create:9:nope' in the inbox (see `pf-jira-sync events`)"),
        (["--employee", "77"], "error: no event about employee 77 in the inbox (see `pf-jira-sync events`)"),
        (["--employee", "Ada"], "error: --employee 'Ada' is not an employee id (a number like 1041)"),
        (["e3"], "error: event 'sha256:abc123' concerns no employee: nothing to dispatch"),
        (["1041"], "error: '1041' is no event reference: references start with 'e' (e1041, as "
                   "`pf-jira-sync events` shows them); for employee 1041 use --employee 1041"),
        ([], "error: give the event's reference (e17, as `pf-jira-sync events` shows it), its "
             "full key, or --employee ID, not neither"),
        (["e1", "--employee", "1041"], "error: give the event's reference (e17, as "
         "`pf-jira-sync events` shows it), its full key, or --employee ID, not both"),
    ],
)  # fmt: skip
def test_replay_refuses_bad_input_in_one_line(
    args: list[str], error: str, inbox_dir: Path, tmp_path: Path
) -> None:
    result = run_cli("replay", *args, cwd=tmp_path, DATA_DIR=str(inbox_dir))
    assert result.returncode == 2
    assert result.stderr.strip() == error
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["events"], ["replay", "e1"], ["plan", "7"]])
def test_a_store_that_does_not_answer_is_one_line_not_a_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    url = f"postgresql+asyncpg://pfjs:store-secret-9f1@127.0.0.1:{free_port()}/pf_jira_sync"
    done = run_cli(
        *command,
        cwd=tmp_path,
        DATABASE_URL=url,
        PEOPLEFORCE_BASE_URL=f"http://127.0.0.1:{free_port()}",
        PEOPLEFORCE_API_KEY="key",
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "store-secret-9f1" not in done.stdout + done.stderr
    if command[0] != "plan":  # `plan` reads PeopleForce first: nothing answers there either
        assert "the mapping store at postgresql+asyncpg://pfjs:********@127.0.0.1" in done.stderr
        assert "does not answer" in done.stderr


# --- `replay` in bulk: by status, age and employee ---------------------------------------------

LONG_AGO = datetime(2020, 3, 2, 8, 0, tzinfo=UTC)
BULK = [
    ("employee_update:1041:old", 1041, EventStatus.failed, RUN_ID),
    ("employee_update:1042:old", 1042, EventStatus.failed, None),
    ("employee_update:1043:old", 1043, EventStatus.set_aside, None),
    ("employee_update:1044:old", 1044, EventStatus.dispatched, RUN_ID),
    ("employee_update:1045:old", 1045, EventStatus.done, RUN_ID),
    ("sha256:nobody", None, EventStatus.set_aside, None),
    ("employee_update:1046:new", 1046, EventStatus.failed, None),  # changed just now
]


@pytest.fixture
def bulk_inbox(tmp_path: Path) -> Path:
    """Events e1-e7 (BULK): all but the last last changed long ago."""
    data_dir = tmp_path / "data"
    url = f"sqlite+aiosqlite:///{data_dir / 'pf-jira-sync.db'}"

    async def fill() -> None:
        async with await MappingStore.open(url) as store:
            inbox = InboxRepository(store.engine)
            for key, employee, status, run in BULK:
                changed = utc_now() if key.endswith(":new") else LONG_AGO
                await inbox.add(
                    WebhookEvent(
                        event_key=key, action="employee_update", employee_id=employee,
                        status=status, flow_run_id=run, body="{}", outcome="it went wrong",
                        failed_runs=2, dispatch_attempts=3, received_at=changed,
                        updated_at=changed,
                    )
                )  # fmt: skip

    asyncio.run(fill())
    return data_dir


def statuses_of(data_dir: Path) -> dict[str, str]:
    async def read() -> dict[str, str]:
        url = f"sqlite+aiosqlite:///{data_dir / 'pf-jira-sync.db'}"
        async with await MappingStore.open(url) as store:
            events = await InboxRepository(store.engine).recent(limit=100)
        return {event.event_key: event.status.value for event in events}

    return asyncio.run(read())


def test_replay_by_status_and_age_requeues_each_once_and_names_them(
    bulk_inbox: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "replay", "--status", "failed", "--older-than", "1h", cwd=tmp_path, DATA_DIR=str(bulk_inbox)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " ".join(result.stdout.split()) == (
        "requeued 2 events older than 1h (2 failed): e1, e2. The gateway's dispatcher hands them "
        "to Prefect again as soon as it runs."
    )
    statuses = statuses_of(bulk_inbox)
    assert statuses["employee_update:1041:old"] == statuses["employee_update:1042:old"] == "pending"
    assert statuses["employee_update:1046:new"] == "failed"  # too recent
    first = stored_event(bulk_inbox, "employee_update:1041:old")
    assert first is not None
    assert first.outcome == f"requeued (was failed, flow run {RUN_ID})"
    assert (first.flow_run_id, first.failed_runs, first.dispatch_attempts) == (None, 0, 0)
    # Nothing left to requeue: the same command again says so.
    again = run_cli(
        "replay", "--status", "failed", "--older-than", "1h", cwd=tmp_path, DATA_DIR=str(bulk_inbox)
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip() == "no failed events older than 1h to requeue"


def test_replay_by_status_for_one_employee_and_stuck_dispatched_runs(
    bulk_inbox: Path, tmp_path: Path
) -> None:
    args = ["--status", "set_aside", "--status", "failed", "--employee", "1043"]
    result = run_cli("replay", *args, cwd=tmp_path, DATA_DIR=str(bulk_inbox))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "requeued 1 event about employee 1043 (1 set_aside): e3." in result.stdout
    stuck = run_cli(
        "replay",
        "--status",
        "dispatched",
        "--older-than",
        "2h",
        cwd=tmp_path,
        DATA_DIR=str(bulk_inbox),
    )
    assert stuck.returncode == 0, stuck.stdout + stuck.stderr
    assert "requeued 1 event older than 2h (1 dispatched): e4." in stuck.stdout
    statuses = statuses_of(bulk_inbox)
    assert [key for key, status in statuses.items() if status == "pending"] == [
        "employee_update:1044:old",
        "employee_update:1043:old",
    ]


def test_replay_all_asks_first_and_yes_goes_on(bulk_inbox: Path, tmp_path: Path) -> None:
    def replay_all(*args: str, answer: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "replay", "--all", *args],
            env=cli_env(DATA_DIR=str(bulk_inbox)),
            cwd=tmp_path,
            input=answer,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    before = statuses_of(bulk_inbox)
    declined = replay_all(answer="n\n")
    assert declined.returncode == 1
    assert "Requeue all 5 failed and set_aside events? [y/N]" in declined.stdout
    assert "nothing requeued" in declined.stdout
    unanswered = replay_all(answer="")
    assert unanswered.returncode == 2
    assert "--all would requeue 5 failed and set_aside events: add --yes" in unanswered.stderr
    assert statuses_of(bulk_inbox) == before

    done = replay_all("--yes", answer="")
    assert done.returncode == 0, done.stdout + done.stderr
    # Every failed and set-aside event about someone; the one about nobody stays set aside.
    assert "requeued 4 events (3 failed, 1 set_aside): e1, e2, e3, e7." in " ".join(
        done.stdout.split()
    )
    after = statuses_of(bulk_inbox)
    assert after["sha256:nobody"] == "set_aside"
    assert after["employee_update:1045:old"] == "done"
    assert after["employee_update:1044:old"] == "dispatched"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--status", "failed"], "error: --status failed alone selects every such event: narrow "
         "it with --older-than AGE or --employee ID, or say --all"),
        (["--status", "pending", "--all"], "error: --status pending: requeue only events "
         "dispatched, done, dropped, failed, set_aside"),
        (["--status", "lost", "--all"], "error: --status lost: requeue only events dispatched, "
         "done, dropped, failed, set_aside"),
        (["--status", "held", "--all"], "error: --status held: held events go back to work "
         "with `pf-jira-sync release` (past the circuit breaker; `pf-jira-sync held` lists "
         "them), not replay"),
        (["--status", "failed", "--older-than", "2 weeks"], "error: --older-than '2 weeks' is "
         "not an age: a number and s, m, h or d (2h)"),
        (["e1", "--status", "failed"], "error: give an event's reference, or --status / --all "
         "to requeue many, not both"),
        (["--older-than", "1h"], "error: --older-than selects events by --status: give --status "
         "too (or --all)"),
    ],
)  # fmt: skip
def test_replay_in_bulk_refuses_a_selection_it_cannot_make(
    args: list[str], error: str, bulk_inbox: Path, tmp_path: Path
) -> None:
    before = statuses_of(bulk_inbox)
    result = run_cli("replay", *args, cwd=tmp_path, DATA_DIR=str(bulk_inbox))
    assert result.returncode == 2
    assert " ".join(result.stderr.split()) == error
    assert statuses_of(bulk_inbox) == before
