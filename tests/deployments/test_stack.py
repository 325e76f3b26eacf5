"""`pf-jira-sync up` as an operator runs it: a real process tree on free loopback ports.

The Prefect server takes 20-30 s to start here, so the module starts one stack (`stack`) and
every test that needs it shares it; `test_one_ctrl_c_under_make_run_is_a_clean_stop` stops it
and must stay the last test of the module that uses it (the test after it starts `up` again on
the same DATA_DIR, as a second `make run` does). The stack runs as under `make run`: in a
process group of its own, below a parent that passes a SIGINT on (as make and uv do), so the
terminal's Ctrl-C can be sent to the whole group. Tests that need a running service use
`stack.env` (the settings it runs with), `stack.cli(...)`, the URLs it printed, and
`stack.typed(...)` for a command as a newcomer types it in another terminal.

The supervisor's restarts are tested on the real `Stack` too, with cheap stand-in children
(`STAND_IN`: a Prefect API that answers what `up` asks, a deployments server with one "flow
run", a gateway), so that killing and restarting them costs a fraction of a second.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from core.names import WEBHOOK_PATH
from core.settings import Settings
from deployments import stack as stack_module
from deployments.stack import Backoff, ChildProcess, Stack, descendants
from sandbox.server import free_port
from tests.paths import ROOT

SETTING_NAMES = {name.upper() for name in Settings.model_fields}
READY_LINE = "Ctrl-C stops everything."
START_TIMEOUT = 300  # a fresh Prefect server alone takes 20-30 s on the 2-core box
URL = re.compile(r"https?://[^\s)]+")
# What stands between the terminal and `up` under `make run` (make, then uv): a parent in the
# same foreground process group that passes a SIGINT on to its child.
LIKE_MAKE_RUN = """\
import signal, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda signum, _frame: child.send_signal(signum))
sys.exit(child.wait())
"""
# What the module's tests learn about the first stack and use after it stopped.
FIRST_RUN: dict[str, object] = {}


def stack_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The test process's environment without its settings, plus free ports and a fresh DATA_DIR."""
    base = {name: value for name, value in os.environ.items() if name not in SETTING_NAMES}
    return {
        **base,
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "250",
        "DATA_DIR": str(tmp_path / "data"),
        "RULES_FILE": str(ROOT / "rules.example.toml"),
        "PREFECT_SERVER_PORT": str(free_port()),
        "GATEWAY_PORT": str(free_port()),
        "SANDBOX_PEOPLEFORCE_PORT": str(free_port()),
        "SANDBOX_JIRA_PORT": str(free_port()),
        **settings,
    }


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def newcomer_env(cwd: Path) -> dict[str, str]:
    """Another terminal on the machine `make` set up: no settings at all, no uv and no virtual
    environment on PATH."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "COLUMNS": "250", "LANG": "C.UTF-8"}


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2, trust_env=False)
    except httpx.TransportError:
        return False
    return True


@dataclass
class RunningStack:
    """A `pf-jira-sync up --sandbox` process and what it printed."""

    process: subprocess.Popen[str]
    env: dict[str, str]
    cwd: Path
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def line(self, label: str) -> str:
        """The announcement line that starts with `label`, e.g. `Prefect UI:`."""
        for line in self.lines:
            if line.strip().startswith(label):
                return line.strip()
        raise AssertionError(f"no {label!r} line in:\n{self.output}")

    def url(self, label: str) -> str:
        """The first URL on the announcement line `label`."""
        found = URL.findall(self.line(label))
        assert found, self.line(label)
        return found[0]

    @property
    def urls(self) -> list[str]:
        """Every URL the announcement printed (after the progress lines)."""
        start = next(
            i for i, line in enumerate(self.lines) if line.startswith("pf-jira-sync is up")
        )
        return [url for line in self.lines[start:] for url in URL.findall(line)]

    @property
    def prefect_api_url(self) -> str:
        return self.url("Prefect API:")

    @property
    def jira_url(self) -> str:
        return self.url("Jira sandbox:")

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """`pf-jira-sync ARGS` with the settings the stack runs with (same ports, DATA_DIR)."""
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def typed(self, line: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """`line` as a newcomer types it in another terminal, in the folder `up` runs in."""
        return subprocess.run(
            shlex.split(line),
            env=newcomer_env(self.cwd),
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def printed_command(self, label: str) -> str:
        """The command the banner prints after `label` (e.g. `Try, ...:`)."""
        return self.line(label).split(": ", 1)[1]

    def require_running(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(
                f"`up` is no longer running (exit code {self.process.returncode}); the test "
                f"that stops it must come last. Output:\n{self.output}"
            )


def start_up(env: dict[str, str], cwd: Path, *, like_make_run: bool = False) -> RunningStack:
    return start_process([sys.executable, "-m", "cli", "up", "--sandbox"], env, cwd, like_make_run)


def start_process(
    command: list[str], env: dict[str, str], cwd: Path, like_make_run: bool = False
) -> RunningStack:
    """`command` (a stack) with its output collected as it comes."""
    if like_make_run:
        command = [sys.executable, "-c", LIKE_MAKE_RUN, *command]
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=like_make_run,  # its own group, as a terminal's foreground job
    )
    stack = RunningStack(process, env, cwd)

    def collect() -> None:  # keeps the pipe drained for as long as the stack runs
        assert process.stdout is not None
        for line in process.stdout:
            stack.lines.append(line)

    threading.Thread(target=collect, name="up-output", daemon=True).start()
    return stack


def stop(process: subprocess.Popen[str], timeout: float = 60) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=timeout)


def child_pid(running_stack: RunningStack, name: str) -> int:
    """The pid of the child `name` as `up` last (re)started it."""
    pids = re.findall(rf"started the {name} \(pid (\d+)", running_stack.output)
    assert pids, f"no {name} started:\n{running_stack.output}"
    return int(pids[-1])


def wait_for_line(
    running_stack: RunningStack, pattern: str, timeout: float = 60, *, since: int = 0
) -> re.Match:
    """The first line of `up`'s output (from character `since` on) that matches `pattern`,
    waiting for it."""
    deadline = time.monotonic() + timeout
    while not (found := re.search(pattern, running_stack.output[since:], flags=re.MULTILINE)):
        if running_stack.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no line matching {pattern!r} in:\n{running_stack.output[-5000:]}")
        time.sleep(0.1)
    return found


def wait_until_up(running_stack: RunningStack) -> None:
    started = time.monotonic()
    while READY_LINE not in running_stack.output:
        if running_stack.process.poll() is not None or time.monotonic() - started > START_TIMEOUT:
            running_stack.process.kill()
            pytest.fail(f"`up --sandbox` did not come up:\n{running_stack.output}")
        time.sleep(0.2)
    print(f"`up --sandbox` ready after {time.monotonic() - started:.1f} s")  # shown with -s


def onboarding_issues(jira_url: str, employee_id: int, name: str) -> list[dict]:
    """The onboarding issue(s) for the employee in the Jira simulator, waiting up to 240 s."""
    label = f"pf-employee-{employee_id}"
    deadline = time.monotonic() + 240
    while True:
        issues = httpx.get(f"{jira_url}/_sandbox/issues", timeout=10, trust_env=False).json()
        parents = [
            issue
            for issue in issues
            if label in issue["fields"]["labels"]
            and issue["fields"]["summary"].startswith(f"Onboarding: {name}")
        ]
        if parents or time.monotonic() > deadline:
            return parents
        time.sleep(2)


def hired_id(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"employee (\d+)", result.stdout)
    assert found, result.stdout
    return int(found.group(1))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    cwd = tmp_path_factory.mktemp("up")
    running_stack = start_up(stack_env(cwd), cwd, like_make_run=True)
    wait_until_up(running_stack)
    try:
        yield running_stack
    finally:
        if running_stack.process.poll() is None:
            stop(running_stack.process)


def test_up_answers_on_every_url_it_prints(stack: RunningStack) -> None:
    stack.require_running()
    env = stack.env
    prefect = f"http://127.0.0.1:{env['PREFECT_SERVER_PORT']}"
    gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    peopleforce = f"http://127.0.0.1:{env['SANDBOX_PEOPLEFORCE_PORT']}"
    jira = f"http://127.0.0.1:{env['SANDBOX_JIRA_PORT']}"
    assert stack.url("Prefect UI:") == prefect
    assert stack.prefect_api_url == f"{prefect}/api"
    assert stack.url("Webhook gateway:") == gateway + WEBHOOK_PATH
    assert stack.url("PeopleForce sandbox:") == f"{peopleforce}/api/public/v3"
    assert stack.jira_url == jira
    assert 'sandbox hire "Ada Lovelace" --department Engineering' in stack.output
    assert "uv run" not in stack.output  # no command needs uv on PATH

    with httpx.Client(timeout=10, trust_env=False) as client:
        for url in stack.urls:  # every URL answers (a GET on the webhook URL is a 405)
            assert client.get(url).status_code < 500, url
        assert client.get(prefect).status_code == 200  # the UI
        assert client.get(f"{prefect}/api/health").json() is True
        assert client.get(f"{gateway}/healthz").status_code == 200
        assert client.get(gateway + WEBHOOK_PATH).status_code == 405
        people = client.get(f"{peopleforce}/_sandbox/employees")
        assert people.status_code == 200
        assert len(people.json()) > 10  # seeded
        assert client.get(f"{jira}/_sandbox/issues").status_code == 200
        # The simulator posts its webhooks to the gateway the stack runs.
        target = client.get(f"{peopleforce}/_sandbox/webhook-target").json()
        assert target == {"url": gateway + WEBHOOK_PATH, "secret_set": True}


def test_up_serves_every_deployment(stack: RunningStack) -> None:
    from deployments.definitions import ALL

    stack.require_running()
    served = stack.line("Deployments:").removeprefix("Deployments:").split("(")[0]
    assert {name.strip() for name in served.split(",")} == {spec.full_name for spec in ALL}
    deployments = httpx.post(
        f"{stack.prefect_api_url}/deployments/filter", json={}, timeout=10, trust_env=False
    ).json()
    assert {deployment["status"] for deployment in deployments} == {"READY"}


def test_up_writes_each_child_log_under_the_data_dir(stack: RunningStack) -> None:
    stack.require_running()
    data_dir = Path(stack.env["DATA_DIR"])
    logs = data_dir / "logs"
    for name in ("prefect-server", "deployments", "gateway"):
        assert (logs / f"{name}.log").is_file(), sorted(logs.iterdir())
    # The sandbox's state is its own, apart from what a production `up` keeps in DATA_DIR.
    assert (data_dir / "sandbox" / "prefect" / "prefect.db").is_file()
    assert (data_dir / "sandbox" / "pf-jira-sync.db").is_file()
    assert not (data_dir / "pf-jira-sync.db").exists()
    assert not (data_dir / "prefect").exists()
    assert "starts empty each time" in stack.output


def test_the_try_command_works_as_typed_in_another_terminal(stack: RunningStack) -> None:
    """The banner's command, typed in a terminal with no uv, no venv and no settings: `sandbox
    hire` -> signed webhook -> gateway -> dispatcher -> served flow run (its own process) ->
    Jira simulator issue -> mapping row, all in the processes `up` started."""
    stack.require_running()
    line = stack.printed_command("Try")
    assert line.endswith('sandbox hire "Ada Lovelace" --department Engineering'), line
    hired = stack.typed(line)
    employee_id = hired_id(hired)
    assert "using the sandbox" in hired.stderr  # found through DATA_DIR/sandbox/settings.json
    parents = onboarding_issues(stack.jira_url, employee_id, "Ada Lovelace")
    assert parents, f"no onboarding issue for {employee_id}:\n{stack.output[-3000:]}"
    (parent,) = parents
    assert parent["fields"]["project"]["key"] == "IT"  # routed: Engineering
    FIRST_RUN["ada"] = employee_id
    program = shlex.split(line)[0]
    events = stack.typed(shlex.join([program, "events"]))
    # The hire's webhook, with the issue its run created.
    assert f"Jira {parent['key']}" in events.stdout, events.stdout + events.stderr
    assert " create " in events.stdout, events.stdout + events.stderr


def test_the_commands_next_to_a_running_sandbox_speak_about_it(stack: RunningStack) -> None:
    stack.require_running()
    program = shlex.split(stack.printed_command("Try"))[0]
    doctor = stack.typed(f"{program} doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "is not set" not in doctor.stdout + doctor.stderr
    (note,) = [line for line in doctor.stderr.splitlines() if "using the sandbox" in line]
    assert f"{stack.cwd}/data/sandbox/settings.json" in note.replace("\n", "")
    config = stack.typed(f"{program} config")
    assert config.returncode == 0, config.stderr
    assert stack.url("PeopleForce sandbox:") in config.stdout
    plan = stack.typed(f"{program} plan {FIRST_RUN.get('ada', 1001)}")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    dry_run = stack.typed(f"{program} reconcile --dry-run")
    assert dry_run.returncode == 0, dry_run.stdout + dry_run.stderr
    # Settings that name a real PeopleForce win: production is never silently replaced.
    real = subprocess.run(
        [program, "config"],
        env={**newcomer_env(stack.cwd), "PEOPLEFORCE_API_KEY": "a-real-key"},
        cwd=stack.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert real.returncode == 0, real.stderr
    assert "using the sandbox" not in real.stderr
    assert "app.peopleforce.io" in real.stdout


def flow_run_states(prefect_api_url: str, types: list[str]) -> list[dict]:
    return httpx.post(
        f"{prefect_api_url}/flow_runs/filter",
        json={"flow_runs": {"state": {"type": {"any_": types}}}},
        timeout=10,
        trust_env=False,
    ).json()


def test_a_gateway_killed_with_sigkill_is_back_and_takes_webhooks_again(
    stack: RunningStack,
) -> None:
    stack.require_running()
    gateway = child_pid(stack, "webhook gateway")
    others = [child_pid(stack, "Prefect server"), child_pid(stack, "deployments server")]
    os.kill(gateway, signal.SIGKILL)
    wait_for_line(stack, r"^the webhook gateway answers again at .*\(.* after restart 1\)$")
    assert re.search(
        r"^warning: the webhook gateway was killed by SIGKILL after .*; restarting it in 0.5 s "
        r"\(restart 1\)$",
        stack.output,
        flags=re.MULTILINE,
    ), stack.output[-3000:]
    assert child_pid(stack, "webhook gateway") != gateway
    assert all(running(pid) for pid in others)  # nothing else restarted with it
    hired = stack.cli("sandbox", "hire", "Katherine Johnson", "--department", "Engineering")
    employee_id = hired_id(hired)  # the simulator's webhook was acknowledged
    assert ": 202 in" in hired.stdout, hired.stdout
    # And the restarted gateway's dispatcher hands it to Prefect.
    parents = onboarding_issues(stack.jira_url, employee_id, "Katherine Johnson")
    assert parents, f"no onboarding issue for {employee_id}:\n{stack.output[-3000:]}"


def test_the_prefect_server_and_the_deployments_server_come_back_after_sigkill(
    stack: RunningStack,
) -> None:
    """The Prefect server restarts on its SQLite database and port; the deployments server
    polls it again (reconnected, or restarted); killed itself, it restarts and polls; the
    gateway stays up throughout."""
    stack.require_running()
    gateway = child_pid(stack, "webhook gateway")
    mark = len(stack.output)
    os.kill(child_pid(stack, "Prefect server"), signal.SIGKILL)
    wait_for_line(stack, r"^the Prefect server answers again at .*\(.* after restart 1\)$", 180)
    wait_for_line(stack, r"^the deployments server polls the Prefect server again", 240, since=mark)
    mark = len(stack.output)
    os.kill(child_pid(stack, "deployments server"), signal.SIGKILL)
    wait_for_line(stack, r"^restarted the deployments server \(pid \d+, restart \d+\)$", since=mark)
    wait_for_line(
        stack,
        r"^the deployments server polls the Prefect server again .* after its restart",
        240,
        since=mark,
    )
    assert child_pid(stack, "webhook gateway") == gateway
    assert running(gateway)
    hired = stack.cli("sandbox", "hire", "Dorothy Vaughan", "--department", "Engineering")
    employee_id = hired_id(hired)
    parents = onboarding_issues(stack.jira_url, employee_id, "Dorothy Vaughan")
    assert parents, f"no onboarding issue for {employee_id}:\n{stack.output[-3000:]}"


# Keep this test the last one that uses `stack`: it stops it.
def test_one_ctrl_c_under_make_run_is_a_clean_stop(stack: RunningStack) -> None:
    """The terminal sends SIGINT to the whole foreground group; the parent passes it on, so
    `up` gets it twice within milliseconds: one clean stop, the running flow run finishing."""
    stack.require_running()
    # A slow Jira keeps the hire's flow run running for a while.
    httpx.put(
        f"{stack.jira_url}/_sandbox/faults", json={"latency_ms": 700}, timeout=10
    ).raise_for_status()
    hired_id(stack.cli("sandbox", "hire", "Grace Hopper", "--department", "Engineering"))
    deadline = time.monotonic() + 120
    while not (in_progress := flow_run_states(stack.prefect_api_url, ["RUNNING"])):
        assert time.monotonic() < deadline, f"no flow run started:\n{stack.output[-3000:]}"
        time.sleep(0.1)
    run_ids = {run["id"] for run in in_progress}
    children = descendants(stack.process.pid)
    assert len(children) >= 4, children  # up, Prefect server, deployments server, gateway
    stopped_at = time.monotonic()
    os.killpg(stack.process.pid, signal.SIGINT)  # Ctrl-C
    assert stack.process.wait(timeout=120) == 0, stack.output
    print(f"stopped in {time.monotonic() - stopped_at:.1f} s")
    time.sleep(0.2)  # the reader thread takes the last lines
    output = stack.output
    assert "killed the" not in output, output[-3000:]
    assert "waiting up to" in output  # for the flow run in progress
    assert [pid for pid in children if running(pid)] == []
    for port in ("PREFECT_SERVER_PORT", "GATEWAY_PORT", "SANDBOX_PEOPLEFORCE_PORT"):
        assert not answers(f"http://127.0.0.1:{stack.env[port]}/"), port
    assert "stopped the Prefect server" in output
    assert "stopped the simulators" in output
    data_dir = Path(stack.env["DATA_DIR"])
    assert not (data_dir / "sandbox" / "settings.json").exists()  # no sandbox runs any more
    # The flow run that was running finished (or was handed back: scheduled again).
    with sqlite3.connect(data_dir / "sandbox" / "prefect" / "prefect.db") as db:
        states = dict(db.execute("SELECT id, state_type FROM flow_run").fetchall())
    for run_id in run_ids:
        assert states.get(run_id) in ("COMPLETED", "SCHEDULED"), (run_id, states)


def test_a_second_make_run_starts_empty_and_the_same_hire_works_again(
    stack: RunningStack,
) -> None:
    """The simulators start empty and hand out the same employee ids again: the second
    `up --sandbox` on the same DATA_DIR must not take the new Ada for the first one."""
    assert stack.process.poll() is not None, "the previous test stops the first stack"
    first_ada = FIRST_RUN.get("ada")
    assert first_ada is not None, "the first run's hire did not happen"
    again = start_up(stack_env(stack.cwd), stack.cwd)
    try:
        wait_until_up(again)
        hired = again.typed(again.printed_command("Try"))
        employee_id = hired_id(hired)
        assert employee_id == first_ada  # the same id as in the first run, for another person
        parents = onboarding_issues(again.jira_url, employee_id, "Ada Lovelace")
        assert parents, f"no onboarding issue for {employee_id}:\n{again.output[-3000:]}"
    finally:
        if again.process.poll() is None:
            assert stop(again.process) == 0, again.output


def test_a_second_signal_soon_after_the_first_is_the_same_ctrl_c(tmp_path: Path) -> None:
    stack = Stack(Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]
    stack.request_stop(signal.SIGINT)
    stack.request_stop(signal.SIGINT)  # forwarded by make or uv
    stack.request_stop(signal.SIGTERM)
    assert stack._stop_signal == signal.SIGINT
    assert not stack._hurry
    stack._stop_signal_at -= stack_module.SAME_SIGNAL_SECONDS + 0.1  # a deliberate second one
    stack.request_stop(signal.SIGINT)
    assert stack._hurry


class FakeSimulators:
    peopleforce_url = "http://127.0.0.1:1/api/public/v3"
    peopleforce_control_url = "http://127.0.0.1:1"
    jira_url = "http://127.0.0.1:2"

    def start(self) -> object:
        return self

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    def environment(self) -> dict[str, str]:
        return {"PEOPLEFORCE_API_KEY": "k"}


def test_the_sandbox_has_a_store_of_its_own_reset_at_each_start(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    production = Stack(settings)
    assert production.child_environment()["DATABASE_URL"].endswith(f"{tmp_path}/pf-jira-sync.db")
    assert production.prefect_home == tmp_path / "prefect"

    old = tmp_path / "sandbox" / "pf-jira-sync.db"
    old.parent.mkdir()
    old.write_text("the last run's mappings")
    sandbox = Stack(settings, simulators=FakeSimulators())
    sandbox._reset_sandbox_state()
    assert not old.exists()
    assert sandbox.child_environment()["DATABASE_URL"] == (
        f"sqlite+aiosqlite:///{tmp_path}/sandbox/pf-jira-sync.db"
    )
    assert sandbox.prefect_home == tmp_path / "sandbox" / "prefect"


def test_up_refuses_a_port_in_use_before_starting_anything(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = stack_env(tmp_path, GATEWAY_PORT=str(port))
        result = subprocess.run(
            [sys.executable, "-m", "cli", "up", "--sandbox"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 (GATEWAY_PORT) is already in use" in result.stderr
    assert "started" not in result.stdout  # refused before any child or simulator started


def test_up_reports_a_child_that_dies_and_stops_the_rest(tmp_path: Path) -> None:
    # A Prefect setting it cannot read: the server child exits during its start.
    env = stack_env(tmp_path, PREFECT_SERVER_DATABASE_TIMEOUT="soon")
    process = start_up(env, tmp_path)
    try:
        returncode = process.process.wait(timeout=180)
    finally:
        if process.process.poll() is None:
            stop(process.process)
    time.sleep(0.2)  # the reader thread takes the last lines
    assert returncode == 1, process.output
    assert "error: the Prefect server exited with code" in process.output
    assert "prefect-server.log:" in process.output
    assert "unable to parse string as a number" in process.output  # the log's tail, echoed
    assert "stopped the simulators" in process.output
    assert not answers(f"http://127.0.0.1:{env['SANDBOX_PEOPLEFORCE_PORT']}/")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_gets_sigterm_when_the_supervisor_dies_without_cleaning_up(tmp_path: Path) -> None:
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "from pathlib import Path\n"
            "from deployments.stack import ChildProcess\n"
            "child = ChildProcess.start('sleeper', [sys.executable, '-c', 'import time; time.sleep(120)'],"
            f" env=dict(os.environ), log_path=Path({str(tmp_path / 'sleeper.log')!r}))\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert supervisor.stdout is not None
    child_pid = int(supervisor.stdout.readline())
    deadline = time.monotonic() + 10
    # Until the launcher (whose code names PR_SET_PDEATHSIG) has become the sleeper.
    while "PR_SET_PDEATHSIG" in Path(f"/proc/{child_pid}/cmdline").read_text():
        assert time.monotonic() < deadline, "the launcher never ran the command"
        time.sleep(0.05)
    assert running(child_pid)
    supervisor.kill()  # SIGKILL: no `finally`, no cleanup
    supervisor.wait()
    deadline = time.monotonic() + 10
    while running(child_pid):
        assert time.monotonic() < deadline, "the child outlived its supervisor"
        time.sleep(0.05)


def test_a_child_in_its_own_session_is_stopped_with_its_whole_group(tmp_path: Path) -> None:
    # The child starts a grandchild (as `prefect server` and the runner may); stop() ends both.
    script = (
        "import subprocess, sys, time\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(grandchild.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    child = ChildProcess.start(
        "parent", [sys.executable, "-c", script], env=dict(os.environ), log_path=tmp_path / "p.log"
    )
    deadline = time.monotonic() + 15
    while not (tmp_path / "p.log").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int((tmp_path / "p.log").read_text().split()[0])
    assert os.getpgid(child.pid) == child.pid != os.getpgid(0)
    outcome = child.stop(timeout=5, hurry=lambda: False)
    assert outcome is not None
    assert outcome.startswith("stopped the parent"), outcome  # by SIGTERM, not SIGKILL
    assert not running(child.pid)
    deadline = time.monotonic() + 5
    while running(grandchild):
        assert time.monotonic() < deadline, "the grandchild outlived the group's stop"
        time.sleep(0.05)


# The supervisor's restarts, on the real `Stack` with stand-in children.

# One program for every stand-in child: `STAND_IN ROLE ARGS...`, ARGS those of the child it
# stands in for (`--port`, and the gateway's `--fd`, the listening socket `up` holds). In
# STAND_IN_DIR: a file named
# after the role makes that role exit at once (a crash loop, or a first start that fails);
# `stuck` stops the deployments server's polls; the deployments server's "flow run" notes the
# SIGTERM it gets in `terminated`; `polled` is the deployments server's last poll.
STAND_IN = """\
import json, os, signal, socket, subprocess, sys, time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

role, args = sys.argv[1], sys.argv[2:]
folder = Path(os.environ["STAND_IN_DIR"])
if (folder / role).exists():
    print(f"{role}: crashing on purpose", flush=True)
    sys.exit(3)


class Answers(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(True if self.path == "/api/health" else {"status": "ok"})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        polled = folder / "polled"
        last = (
            datetime.fromtimestamp(polled.stat().st_mtime, UTC).isoformat()
            if polled.exists() else None
        )
        self.answer({
            "/api/deployments/filter": [
                {"id": "d", "name": "stand-in", "flow_id": "f", "last_polled": last}
            ],
            "/api/flows/filter": [{"id": "f", "name": "flow"}],
        }.get(self.path, []))

    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if role == "flow-run":
    def terminated(signum, frame):
        with open(folder / "terminated", "a") as note:
            note.write(f"{os.getpid()}\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, terminated)
    print(os.getpid(), flush=True)
    while True:
        time.sleep(1)
elif role == "deployments":
    run = subprocess.Popen([sys.executable, __file__, "flow-run"], stdout=subprocess.PIPE)
    (folder / "flow-run").write_text(run.stdout.readline().decode())
    while True:
        if not (folder / "stuck").exists():
            (folder / "polled").touch()
        time.sleep(0.3)
elif "--fd" in args:
    server = ThreadingHTTPServer(("", 0), Answers, bind_and_activate=False)
    server.socket = socket.socket(fileno=int(args[args.index("--fd") + 1]))
    print(f"{role} listening on the socket it was given", flush=True)
    server.serve_forever()
else:
    server = ThreadingHTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), Answers)
    print(f"{role} listening", flush=True)
    server.serve_forever()
"""
# `up` on the stand-ins: the real Stack (preflight, first start, supervision, stop), with each
# child's command replaced and the slow thresholds made short.
STAND_IN_UP = """\
import dataclasses, sys
from deployments import stack as stack_module
from core.settings import Settings

stack_module.RUNNER_POLL_TIMEOUT = 4.0
stack_module.CRASH_LOOP_DEATHS = 3


ROLES = {
    stack_module.PREFECT_SERVER: "prefect",
    stack_module.DEPLOYMENTS_SERVER: "deployments",
    stack_module.GATEWAY: "gateway",
}


class StandIns(stack_module.Stack):
    def child_specs(self):
        return [
            dataclasses.replace(
                spec, python_args=(sys.argv[1], ROLES[spec.name], *spec.python_args)
            )
            for spec in super().child_specs()
        ]


sys.exit(StandIns(Settings(_env_file=None)).run())
"""


@pytest.fixture
def stand_ins(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The folder the stand-ins read their flags from, and the environment `up` runs in."""
    folder = tmp_path / "stand-ins"
    folder.mkdir()
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    (tmp_path / "stand_in_up.py").write_text(STAND_IN_UP)
    env = stack_env(tmp_path, WEBHOOK_SECRET="stand-in-secret", STAND_IN_DIR=str(folder))
    return folder, env


def start_stand_ins(tmp_path: Path, env: dict[str, str]) -> RunningStack:
    command = [sys.executable, str(tmp_path / "stand_in_up.py"), str(tmp_path / "stand_in.py")]
    running_stack = start_process(command, env, tmp_path)
    wait_until_up(running_stack)
    return running_stack


@pytest.fixture
def stand_in_up(tmp_path: Path, stand_ins: tuple[Path, dict[str, str]]) -> Iterator[RunningStack]:
    running_stack = start_stand_ins(tmp_path, stand_ins[1])
    try:
        yield running_stack
    finally:
        if running_stack.process.poll() is None:
            stop(running_stack.process)


def test_restart_delays_double_while_a_child_dies_young_and_start_over_once_it_stayed_up() -> None:
    backoff = Backoff()
    delays = [backoff.after_death(uptime=1.0) for _ in range(9)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.crash_loop
    assert backoff.after_death(uptime=stack_module.STABLE_SECONDS) == 0.5
    assert not backoff.crash_loop
    assert backoff.after_death(uptime=1.0) == 1
    many = Backoff(quick_deaths=10_000)
    assert many.after_death(uptime=0) == stack_module.RESTART_MAX_DELAY


def test_each_child_killed_with_sigkill_comes_back_alone(
    stand_in_up: RunningStack, stand_ins: tuple[Path, dict[str, str]]
) -> None:
    up, (folder, env) = stand_in_up, stand_ins
    prefect, deployments, gateway = (
        child_pid(up, name) for name in ("Prefect server", "deployments server", "webhook gateway")
    )
    os.kill(gateway, signal.SIGKILL)
    while running(gateway):
        time.sleep(0.01)
    # Not refused: the connection waits in the queue of the socket `up` holds, for the next one.
    healthz = f"http://127.0.0.1:{env['GATEWAY_PORT']}/healthz"
    assert httpx.get(healthz, timeout=60, trust_env=False).status_code == 200
    wait_for_line(up, r"^the webhook gateway answers again at .*/healthz \(.* after restart 1\)$")
    death = wait_for_line(up, r"^warning: the webhook gateway was killed by SIGKILL.*$")[0]
    assert re.fullmatch(
        r"warning: the webhook gateway was killed by SIGKILL after [\d.]+ s; restarting it in "
        r"0.5 s \(restart 1\)",
        death,
    ), death
    assert "gateway listening on the socket it was given" in up.output  # its log's end
    assert running(prefect)
    assert running(deployments)

    # The Prefect server: restarted on the same port; the deployments server is not restarted,
    # it polls the new one.
    mark = len(up.output)
    os.kill(prefect, signal.SIGKILL)
    wait_for_line(up, r"^the Prefect server answers again at .*/api/health", since=mark)
    wait_for_line(
        up, r"^the deployments server polls the Prefect server again .*return\)$", since=mark
    )
    assert child_pid(up, "deployments server") == deployments
    assert running(deployments)

    # The deployments server: what it left (its flow run) gets SIGTERM; it restarts and polls.
    flow_run = int((folder / "flow-run").read_text())
    mark = len(up.output)
    os.kill(deployments, signal.SIGKILL)
    wait_for_line(up, r"^restarted the deployments server \(pid \d+, restart 1\)$", since=mark)
    wait_for_line(
        up, r"^the deployments server polls the Prefect server again .*restart 1\)$", since=mark
    )
    deadline = time.monotonic() + 30
    while running(flow_run):
        assert time.monotonic() < deadline, "the dead deployments server's flow run lives on"
        time.sleep(0.1)
    assert (folder / "terminated").read_text().split() == [str(flow_run)]
    assert child_pid(up, "webhook gateway") != gateway
    assert "error:" not in up.output

    assert stop(up.process) == 0, up.output
    assert "stopped the webhook gateway" in up.output


def test_a_child_that_keeps_dying_is_restarted_ever_later_and_said_as_an_error(
    stand_in_up: RunningStack, stand_ins: tuple[Path, dict[str, str]]
) -> None:
    up, (folder, env) = stand_in_up, stand_ins
    (folder / "gateway").touch()  # from now on, every start of it fails
    os.kill(child_pid(up, "webhook gateway"), signal.SIGKILL)
    wait_for_line(up, r"restart 3\)", timeout=60)
    deaths = re.findall(
        r"^(warning|error): the webhook gateway (.*); restarting it in ([\d.]+) s \(restart (\d)\)",
        up.output,
        flags=re.MULTILINE,
    )
    assert [float(delay) for *_, delay, _ in deaths][:3] == [0.5, 1, 2]
    assert [int(count) for *_, count in deaths][:3] == [1, 2, 3]
    assert deaths[0][0] == "warning"
    assert deaths[0][1].startswith("was killed by SIGKILL after")
    assert deaths[1][1].startswith("exited with code 3 after")
    assert "gateway: crashing on purpose" in up.output  # the end of the log of each start
    # The third quick death in a row (CRASH_LOOP_DEATHS here): said as an error.
    assert re.search(
        rf"^error: .*\(restart 3\); it keeps dying \(3 times in a row, each within "
        rf"{stack_module.STABLE_SECONDS:.0f} s of its start\): see its log$",
        up.output,
        flags=re.MULTILINE,
    ), up.output[-3000:]
    assert not answers(f"http://127.0.0.1:{env['GATEWAY_PORT']}/healthz")
    (folder / "gateway").unlink()  # the cause fixed: the next restart stays up
    wait_for_line(up, r"^the webhook gateway answers again", timeout=60)
    assert up.process.poll() is None


def test_a_deployments_server_that_stops_polling_is_restarted(
    stand_in_up: RunningStack, stand_ins: tuple[Path, dict[str, str]]
) -> None:
    up, (folder, _) = stand_in_up, stand_ins
    deployments = child_pid(up, "deployments server")
    (folder / "stuck").touch()
    wait_for_line(
        up,
        r"^warning: the deployments server has not polled the Prefect server for 4 s "
        r"\(its last poll: \d\d:\d\d:\d\d\): restarting it$",
    )
    (folder / "stuck").unlink()
    wait_for_line(up, r"^restarted the deployments server \(pid \d+, restart 1\)$")
    wait_for_line(up, r"^the deployments server polls the Prefect server again .*restart 1\)$")
    assert not running(deployments)
    assert "the deployments server was killed by SIGTERM" in up.output  # asked to stop
    assert "the Prefect server answers again" not in up.output  # only it was restarted


def test_a_child_that_fails_its_first_start_still_fails_up(
    tmp_path: Path, stand_ins: tuple[Path, dict[str, str]]
) -> None:
    folder, env = stand_ins
    (folder / "deployments").touch()
    command = [sys.executable, str(tmp_path / "stand_in_up.py"), str(tmp_path / "stand_in.py")]
    up = start_process(command, env, tmp_path)
    assert up.process.wait(timeout=60) == 1
    time.sleep(0.2)  # the reader thread takes the last lines
    assert "error: the deployments server exited with code 3; stopping the rest" in up.output
    assert "deployments: crashing on purpose" in up.output
    assert "restart" not in up.output
    assert "stopped the Prefect server" in up.output
    assert not answers(f"http://127.0.0.1:{env['PREFECT_SERVER_PORT']}/api/health")


def test_ctrl_c_stops_everything_also_while_a_restart_waits(
    stand_in_up: RunningStack, stand_ins: tuple[Path, dict[str, str]]
) -> None:
    up, (folder, env) = stand_in_up, stand_ins
    children = descendants(up.process.pid)
    assert len(children) >= 4, children  # the three, and the deployments server's flow run
    (folder / "gateway").touch()
    os.kill(child_pid(up, "webhook gateway"), signal.SIGKILL)
    wait_for_line(up, r"restarting it in 1 s \(restart 2\)")  # waiting to restart
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(timeout=60) == 0, up.output
    time.sleep(0.2)  # the reader thread takes the last lines
    after_stop = up.output.split("SIGINT received", 1)[1]
    assert "restarted" not in after_stop
    assert "stopped the Prefect server" in after_stop
    assert [pid for pid in children | descendants(up.process.pid) if running(pid)] == []
    for port in ("PREFECT_SERVER_PORT", "GATEWAY_PORT"):
        assert not answers(f"http://127.0.0.1:{env[port]}/"), port
