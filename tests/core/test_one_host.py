"""`core.one_host`: the command as a newcomer types it, and the running sandbox's settings file."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from core import one_host
from core.settings import Settings
from tests.paths import ROOT


def test_the_command_is_the_entry_point_next_to_the_interpreter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "executable", str(ROOT / ".venv" / "bin" / "python"))
    line = one_host.command("sandbox", "hire", "Ada Lovelace", cwd=ROOT)
    assert line == '.venv/bin/pf-jira-sync sandbox hire "Ada Lovelace"'
    # Elsewhere, the absolute path: it works from any folder.
    assert one_host.command("doctor", cwd=tmp_path) == f"{ROOT}/.venv/bin/pf-jira-sync doctor"


def test_the_command_runs_as_typed_without_uv_or_the_venv_on_path(tmp_path: Path) -> None:
    line = one_host.command("--help", cwd=tmp_path)
    assert not line.startswith("uv ")
    result = subprocess.run(
        shlex.split(line),
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "100"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Keep Jira in step with PeopleForce" in result.stdout


def test_a_running_sandbox_is_found_only_while_its_process_lives(tmp_path: Path) -> None:
    assert one_host.running_sandbox(tmp_path) is None
    path = one_host.write_sandbox_settings(tmp_path, {"PEOPLEFORCE_API_KEY": "k"})
    assert path == tmp_path.resolve() / "sandbox" / "settings.json"
    found = one_host.running_sandbox(tmp_path)
    assert found is not None
    assert (found.pid, found.settings) == (os.getpid(), {"PEOPLEFORCE_API_KEY": "k"})

    # A stack killed without cleaning up leaves the file: its process is gone.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, "pid": int(dead.stdout), "start_time": None}))
    assert one_host.running_sandbox(tmp_path) is None
    # A pid reused by another process: its start time differs.
    path.write_text(json.dumps({**body, "start_time": "1"}))
    assert one_host.running_sandbox(tmp_path) is None
    path.write_text("not json")
    assert one_host.running_sandbox(tmp_path) is None
    one_host.remove_sandbox_settings(tmp_path)
    assert not path.exists()


def test_settings_that_name_a_real_service_win_over_a_sandbox() -> None:
    assert not one_host.names_real_services(Settings(_env_file=None))  # type: ignore[call-arg]
    assert one_host.names_real_services(
        Settings(_env_file=None, peopleforce_api_key="real-key")  # type: ignore[call-arg]
    )
