"""What the one-host stack (`pf-jira-sync up`) shares with the commands typed next to it.

- How to spell this program's command so that it works as typed on the machine `make` set up
  (no uv on PATH, no activated virtual environment): the entry point next to this interpreter.
- Where `up --sandbox` keeps its state (`DATA_DIR/sandbox/`: its mapping store and its Prefect
  database, reset at each start, since the simulators start empty), and the settings file it
  leaves there while it runs, so that `doctor`, `plan`, `events` or `config` in another
  terminal speak about the running sandbox instead of production.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

PROGRAM = "pf-jira-sync"
SANDBOX_DIR = "sandbox"
SANDBOX_SETTINGS_FILE = "settings.json"
# Any of these set (environment or .env) means the operator points the commands at real
# services: a running sandbox then never takes their place.
REAL_SERVICE_SETTINGS = ("peopleforce_api_key", "jira_base_url", "jira_cloud_id", "jira_api_token")


def command(*args: str, cwd: Path | None = None) -> str:
    """`pf-jira-sync ARGS` as the operator should type it here.

    The entry point `make sync` (uv) installs next to this interpreter, `.venv/bin/pf-jira-sync`,
    exists whether or not uv or the virtual environment is on PATH (under `make run` or `uv run`,
    this process's PATH has them, the operator's other terminal has not). Relative to the
    working directory when it lies below it, absolute otherwise; without an entry point there,
    this interpreter running the package.
    """
    entry_point = Path(sys.executable).parent / PROGRAM
    if entry_point.is_file():
        base = Path(cwd or Path.cwd()).absolute()
        try:
            program = str(entry_point.absolute().relative_to(base))
        except ValueError:
            program = str(entry_point.absolute())
        words = [program]
    else:
        words = [sys.executable, "-m", "cli"]
    return " ".join(quote(word) for word in [*words, *args])


def quote(word: str) -> str:
    """A shell word as a person writes it: bare, "in double quotes" when only spaces need
    quoting, else shell-quoted."""
    if shlex.quote(word) == word:
        return word
    if word and not any(char in word for char in '"$`\\!'):
        return f'"{word}"'
    return shlex.quote(word)


def sandbox_dir(data_dir: Path) -> Path:
    """Where `up --sandbox` keeps its store and its Prefect database (reset at each start)."""
    return data_dir.resolve() / SANDBOX_DIR


def sandbox_settings_path(data_dir: Path) -> Path:
    return sandbox_dir(data_dir) / SANDBOX_SETTINGS_FILE


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a live process from a reused pid), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    if start_time is None or not Path("/proc").is_dir():
        return True
    return process_start_time(pid) == start_time


@dataclass(frozen=True)
class RunningSandbox:
    """A running `up --sandbox`: its pid and the settings that point a command at it."""

    pid: int
    settings: dict[str, str]
    path: Path


def write_sandbox_settings(data_dir: Path, settings: dict[str, str]) -> Path:
    """Record this process as the running sandbox, with `settings` (environment names)."""
    path = sandbox_settings_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    body = {"pid": pid, "start_time": process_start_time(pid), "settings": settings}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(body, indent=2) + "\n")
    temporary.replace(path)
    return path


def remove_sandbox_settings(data_dir: Path) -> None:
    sandbox_settings_path(data_dir).unlink(missing_ok=True)


def running_sandbox(data_dir: Path) -> RunningSandbox | None:
    """The sandbox `up --sandbox` runs on `data_dir`, or None (no file, or its process is gone:
    a stack killed without cleaning up leaves the file behind)."""
    path = sandbox_settings_path(data_dir)
    try:
        body = json.loads(path.read_text())
        pid = int(body["pid"])
        settings = {str(name): str(value) for name, value in body["settings"].items()}
        start_time = body.get("start_time")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not process_alive(pid, start_time):
        return None
    return RunningSandbox(pid, settings, path)


def names_real_services(settings: Settings) -> bool:
    """Whether the settings point at a real PeopleForce or Jira (then no sandbox replaces them)."""
    return any(getattr(settings, name) is not None for name in REAL_SERVICE_SETTINGS)
