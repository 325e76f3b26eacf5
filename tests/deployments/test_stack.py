"""`pf-jira-sync up` as an operator runs it: a real process tree on free loopback ports.

The Prefect server takes 20-30 s to start here, so the module starts one stack (`stack`) and
every test that needs it shares it; `test_ctrl_c_stops_everything` stops it and must stay the
last test of the module that uses it. Tests that need a running service use `stack.env` (the
settings it runs with), `stack.cli(...)` and the URLs it printed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
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
from deployments.stack import ChildProcess, descendants
from sandbox.server import free_port
from tests.paths import ROOT

SETTING_NAMES = {name.upper() for name in Settings.model_fields}
READY_LINE = "Ctrl-C stops everything."
START_TIMEOUT = 300  # a fresh Prefect server alone takes 20-30 s on the 2-core box
URL = re.compile(r"https?://[^\s)]+")


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

    def require_running(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(
                f"`up` is no longer running (exit code {self.process.returncode}); the test "
                f"that stops it must come last. Output:\n{self.output}"
            )


def start_up(env: dict[str, str], cwd: Path) -> RunningStack:
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--sandbox"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    cwd = tmp_path_factory.mktemp("up")
    started = time.monotonic()
    running_stack = start_up(stack_env(cwd), cwd)
    while READY_LINE not in running_stack.output:
        if running_stack.process.poll() is not None or time.monotonic() - started > START_TIMEOUT:
            running_stack.process.kill()
            pytest.fail(f"`up --sandbox` did not come up:\n{running_stack.output}")
        time.sleep(0.2)
    print(f"`up --sandbox` ready after {time.monotonic() - started:.1f} s")  # shown with -s
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
    logs = Path(stack.env["DATA_DIR"]) / "logs"
    for name in ("prefect-server", "deployments", "gateway"):
        assert (logs / f"{name}.log").is_file(), sorted(logs.iterdir())
    assert (Path(stack.env["DATA_DIR"]) / "prefect" / "prefect.db").is_file()


# Keep this test the last one that uses `stack`: it stops it.
def test_a_hire_goes_end_to_end_through_the_real_stack(stack: RunningStack) -> None:
    """`sandbox hire` -> signed webhook -> gateway -> dispatcher -> served flow run (its own
    process) -> Jira simulator issue -> mapping row, all in the processes `up` started."""
    stack.require_running()
    hired = stack.cli(
        "sandbox", "hire", "Ada Lovelace", "--department", "Engineering", "--in-days", "3"
    )
    assert hired.returncode == 0, hired.stdout + hired.stderr
    found = re.search(r"employee (\d+)", hired.stdout)
    assert found, hired.stdout
    employee_id = int(found.group(1))
    label = f"pf-employee-{employee_id}"
    deadline = time.monotonic() + 240
    parents: list[dict] = []
    while time.monotonic() < deadline and not parents:
        issues = httpx.get(f"{stack.jira_url}/_sandbox/issues", timeout=10).json()
        parents = [
            issue
            for issue in issues
            if label in issue["fields"]["labels"]
            and issue["fields"]["summary"].startswith("Onboarding: Ada Lovelace")
        ]
        time.sleep(2)
    assert parents, f"no onboarding issue for {employee_id}:\n{stack.output[-3000:]}"
    events = stack.cli("events")
    assert "employee_create" in events.stdout, events.stdout
    (parent,) = parents
    assert parent["fields"]["project"]["key"] == "IT"  # routed: Engineering


def test_ctrl_c_stops_everything(stack: RunningStack) -> None:
    stack.require_running()
    children = descendants(stack.process.pid)
    assert len(children) >= 3, children  # Prefect server, deployments server, gateway
    stopped_at = time.monotonic()
    assert stop(stack.process) == 0, stack.output
    print(f"stopped in {time.monotonic() - stopped_at:.1f} s")
    assert [pid for pid in children if running(pid)] == []
    for port in ("PREFECT_SERVER_PORT", "GATEWAY_PORT", "SANDBOX_PEOPLEFORCE_PORT"):
        assert not answers(f"http://127.0.0.1:{stack.env[port]}/"), port
    assert "stopped the Prefect server" in stack.output
    assert "stopped the simulators" in stack.output


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
    # A Prefect database that is not one: the server child exits during its start.
    prefect_home = tmp_path / "data" / "prefect"
    prefect_home.mkdir(parents=True)
    (prefect_home / "prefect.db").write_text("not a SQLite database " * 20)
    env = stack_env(tmp_path)
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
    assert "file is not a database" in process.output  # the log's tail, echoed
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
