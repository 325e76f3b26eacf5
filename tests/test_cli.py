"""The command line as an operator runs it: a real process against the simulators on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from sandbox.server import free_port
from sandbox.stack import Simulators

ROOT = Path(__file__).resolve().parents[1]
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def cli_env(**settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    return {**base, "PYTHONPATH": str(ROOT), "COLUMNS": "250", **settings}


def run_cli(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
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


def test_doctor_passes_against_the_simulators(simulators: Simulators, tmp_path: Path) -> None:
    result = run_cli(
        "doctor", cwd=tmp_path, **simulators.environment(), DATA_DIR=str(tmp_path / "data")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines_by_check(result.stdout)
    assert set(checks) == {"settings", "peopleforce", "jira", "database"}
    assert all(line.startswith("ok") for line in checks.values()), result.stdout
    assert "signed in as pf-jira-sync (service account)" in checks["jira"]


def test_doctor_explains_rejected_credentials(simulators: Simulators, tmp_path: Path) -> None:
    env = {
        **simulators.environment(),
        "PEOPLEFORCE_API_KEY": "wrong-key-0042",
        "JIRA_API_TOKEN": "wrong-token-0042",
    }
    result = run_cli("doctor", cwd=tmp_path, **env, DATA_DIR=str(tmp_path / "data"))
    assert result.returncode == 1
    checks = lines_by_check(result.stdout)
    assert checks["peopleforce"].startswith("FAIL")
    assert "PEOPLEFORCE_API_KEY" in checks["peopleforce"]
    assert checks["jira"].startswith("FAIL")
    assert "JIRA_API_TOKEN" in checks["jira"]
    assert checks["database"].startswith("ok")
    assert "wrong-key-0042" not in result.stdout + result.stderr
    assert "wrong-token-0042" not in result.stdout + result.stderr


def test_doctor_reports_missing_settings_and_unreachable_services(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    result = run_cli(
        "doctor",
        cwd=tmp_path,
        PEOPLEFORCE_BASE_URL=dead,
        PEOPLEFORCE_API_KEY="k-123",
        DATABASE_URL=f"sqlite+aiosqlite:///{blocked}/x.db",
    )
    assert result.returncode == 1
    checks = lines_by_check(result.stdout)
    assert checks["settings"].startswith("ok")
    assert checks["peopleforce"].startswith("FAIL")
    assert "no answer" in checks["peopleforce"]
    assert "JIRA_EMAIL is not set" in checks["jira"]
    assert checks["database"].startswith("FAIL")


def test_doctor_reports_invalid_settings_as_a_failed_check(tmp_path: Path) -> None:
    result = run_cli("doctor", cwd=tmp_path, JIRA_BASE_URL="nope")
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL settings")
    assert "JIRA_BASE_URL" in result.stdout
    assert "Traceback" not in result.stderr


def test_sandbox_command_serves_both_simulators_until_interrupted(tmp_path: Path) -> None:
    pf_port, jira_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "sandbox"],
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
