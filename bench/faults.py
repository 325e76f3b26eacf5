"""The fault suite: kill, stop or disturb one part of the one-host stack mid-burst, and count.

    .venv/bin/python bench/faults.py                      # every fault, one fresh stack each
    .venv/bin/python bench/faults.py power-cut jira-429   # some of them
    .venv/bin/python bench/faults.py --events 40          # a quick look

Each fault gets a fresh `pf-jira-sync up` (no `--sandbox`) on its own data directory and free
ports, pointed at a PeopleForce and a Jira simulator that run in this process, so they outlive
any death of the stack (a power cut included). The bench drives the PeopleForce simulator as
stack_throughput.py does: hires (a week ahead) and future terminations of people it hired
earlier in the burst, at `--rate` per second; the simulator sends each signed webhook to the
gateway and records the answer, as PeopleForce does (it never retries). The fault strikes a
third of the way into the burst:

- prefect-stop: SIGSTOP of the Prefect server (its process group) for 60 s, then SIGCONT;
- prefect-kill, runner-kill, gateway-kill: kill -9 of that child of `up`;
- flow-run-kill: kill -9 of one flow-run process below the runner;
- power-cut: SIGSTOP, then kill -9, of `up` and every process below it, then `up` again on
  the same data directory (what a host reboot does);
- jira-429: 30 % of Jira API requests answered 429 or 503 with Retry-After 3;
- ambiguous-creates: 20 % of Jira POSTs (creates, bulk creates, comments, transitions) applied
  and then answered with a timeout, a reset connection or a 5xx;
- search-lag: Jira's search 5 s behind its writes;
- duplicates-3x: 100 people hired, edited and terminated; their webhooks posted once in order
  to one fresh stack, and three times each, shuffled, to another (at three times the rate, so
  in the same time); Jira must end the same.

The Jira faults stay on until the end. The nightly reconciliation is moved 12 hours away, so
that only the delivery path repairs what a fault broke. The Jira faults the simulator does not know yet are
reported as "not available". Per fault one row:

- posted / acknowledged / refused: webhooks sent, answered 2xx (202, or 200 for a repeat), and
  answered otherwise or not at all (connection refused, timeout);
- applied / lost: distinct acknowledged events whose Jira work is there (a hire's onboarding
  issue, a termination's offboarding issue, an edit's onboarding issue, each with at least the
  subtasks its rules give), and those whose work is not, `--settle` seconds after recovery;
- dup: Jira issues too many (more than one issue of a kind for one `pf-employee-<id>`, or one
  subtask summary twice under one parent);
- quiet: seconds from the end of the fault (the kill, the SIGCONT, the new `up`, the end of
  the burst for the Jira faults) to the last Jira write;
- gw back: seconds until the gateway answered again (gateway-kill, power-cut: from the new
  `up`);
- verdict, against issue 15's "Done means": 0 lost, 0 duplicates, 0 refused unless the gateway
  itself died (and then back in under 5 s), quiet within 120 s, and for duplicates-3x the same
  final Jira state as the in-order run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.stack_throughput import BREAKER_OFF, READY_LINE, ROOT, SETTING_NAMES, utc
from core.jira.adf import adf_to_text
from core.names import WEBHOOK_PATH
from core.peopleforce.signature import SIGNATURE_HEADER
from core.rules import Rules, load_rules
from deployments.stack import descendants
from sandbox.server import free_port
from sandbox.stack import Simulators

RULES_FILE = ROOT / "rules.example.toml"

# Issue 15, "Done means".
MAX_QUIET_SECONDS = 120.0
MAX_GATEWAY_BACK_SECONDS = 5.0

STOP_SECONDS = 60.0  # prefect-stop: how long the Prefect server stays stopped
STRIKE_AT = 1 / 3  # the fault strikes this far into the burst
TERMINATION_SHARE = 0.25  # of the burst's events, once there are people hired to terminate
HIRE_AHEAD_DAYS = 7
LEAVE_AHEAD_DAYS = 20
STACK_START_TIMEOUT = 300.0

PROCESS_FAULTS = {
    "prefect-stop": "Prefect server SIGSTOP 60 s, then SIGCONT",
    "prefect-kill": "Prefect server kill -9",
    "runner-kill": "runner (deployments.serve) kill -9",
    "gateway-kill": "gateway (webhook_gateway) kill -9",
    "flow-run-kill": "one flow-run process kill -9",
    "power-cut": "power cut: kill -9 of the whole tree of `up`, then `up` again",
}
# What each Jira fault PUTs to the simulator's /_sandbox/faults (seeded: the same faults each run).
JIRA_FAULTS: dict[str, dict[str, Any]] = {
    "jira-429": {
        "error_rate": 0.3,
        "error_statuses": [429, 503],
        "retry_after": "3",
        "seed": 15,
    },
    "ambiguous-creates": {
        "after_apply_rate": 0.2,
        "after_apply_outcomes": ["timeout", "reset", 500, 502, 503],
        # --hold-seconds: longer than the Jira client's 30 s read timeout by default, so that
        # a "timeout" is one to the client.
        "after_apply_hold_seconds": 35,
        "only_methods": ["POST"],
        "seed": 15,
    },
    "search-lag": {"search_lag_seconds": 5},
}
JIRA_FAULT_TITLES = {
    "jira-429": "Jira 30 % 429/503, Retry-After 3",
    "ambiguous-creates": "ambiguous creates at 20 % (applied, then timeout/reset/5xx)",
    "search-lag": "Jira search lags writes by 5 s",
}
COMPARISON = "duplicates-3x"
TITLES = {
    **PROCESS_FAULTS,
    **JIRA_FAULT_TITLES,
    COMPARISON: "every webhook 3x, shuffled, vs once in order",
}
ALL_FAULTS = list(TITLES)
# Faults in which the gateway itself dies: refusals are expected while it is down.
GATEWAY_DIES = {"gateway-kill", "power-cut"}

ISSUE_KEY = re.compile(r"\b[A-Z][A-Z0-9_]*-\d+\b")
EMPLOYEE_LABEL = re.compile(r"^pf-employee-(\d+)$")
KINDS = ("onboarding", "offboarding", "record")


STARTED = time.monotonic()


def say(line: str = "") -> None:
    print(line, flush=True)


def progress(line: str) -> None:
    """A progress line, after the minutes and seconds since the suite started."""
    elapsed = int(time.monotonic() - STARTED)
    say(f"  {elapsed // 60:2d}:{elapsed % 60:02d} {line}")


# --------------------------------------------------------------------------- pure: the counting


@dataclass
class Event:
    """One webhook PeopleForce sent (posted once or more), and the Jira work it asks for."""

    employee_id: int
    expects: str  # the kind of issue its employee must have: onboarding or offboarding
    statuses: list[int | None] = field(default_factory=list)  # one per post; None: no answer

    @property
    def acknowledged(self) -> bool:
        return any(status is not None and 200 <= status < 300 for status in self.statuses)


@dataclass
class Row:
    fault: str
    posted: int = 0
    acknowledged: int = 0
    refused: int = 0
    applied: int = 0
    lost: int = 0
    duplicates: int = 0
    quiet_seconds: float | None = None
    gateway_back_seconds: float | None = None
    state_differences: list[str] | None = None  # duplicates-3x only
    unavailable: str | None = None
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """What misses "Done means"; empty: PASS."""
        if self.unavailable:
            return []
        failed = []
        if self.lost:
            failed.append(f"{self.lost} acknowledged events lost")
        if self.duplicates:
            failed.append(f"{self.duplicates} duplicate Jira issues")
        if self.fault in GATEWAY_DIES:
            back = self.gateway_back_seconds
            if back is None or back >= MAX_GATEWAY_BACK_SECONDS:
                failed.append(
                    "the gateway was not back"
                    + (f" in under {MAX_GATEWAY_BACK_SECONDS:.0f} s" if back is not None else "")
                )
        elif self.refused:
            failed.append(f"{self.refused} webhooks refused")
        if self.quiet_seconds is None or self.quiet_seconds > MAX_QUIET_SECONDS:
            failed.append(f"not quiet within {MAX_QUIET_SECONDS:.0f} s of recovery")
        if self.state_differences:
            count = len(self.state_differences)
            failed.append(
                f"final Jira state differs for {count} {'person' if count == 1 else 'people'}"
            )
        if self.posted == 0:
            failed.append("nothing was posted")
        return failed

    @property
    def verdict(self) -> str:
        if self.unavailable:
            return "not available"
        return "FAIL" if self.failures() else "PASS"


def employee_of(labels: Iterable[str]) -> int | None:
    for label in labels:
        if match := EMPLOYEE_LABEL.match(label):
            return int(match.group(1))
    return None


def kind_of(labels: Iterable[str]) -> str | None:
    labels = set(labels)
    return next((kind for kind in KINDS if f"pf-{kind}" in labels), None)


def is_subtask(issue: dict[str, Any]) -> bool:
    return bool(issue["fields"].get("parent")) or bool(
        (issue["fields"].get("issuetype") or {}).get("subtask")
    )


def parent_issues(issues: Sequence[dict[str, Any]]) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """The service's parent issues by (employee, kind), as their labels say."""
    found: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for issue in issues:
        if is_subtask(issue):
            continue
        labels = issue["fields"].get("labels") or []
        employee, kind = employee_of(labels), kind_of(labels)
        if employee is not None and kind is not None:
            found.setdefault((employee, kind), []).append(issue)
    return found


def subtasks_by_parent(issues: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    children: dict[str, list[dict[str, Any]]] = {}
    for issue in issues:
        parent = issue["fields"].get("parent")
        if parent:
            children.setdefault(parent["key"], []).append(issue)
    return children


def count_duplicates(issues: Sequence[dict[str, Any]]) -> int:
    """Issues too many: a second issue of one kind for one employee, or a subtask summary that
    appears twice under one parent."""
    extra = sum(len(group) - 1 for group in parent_issues(issues).values())
    for children in subtasks_by_parent(issues).values():
        summaries = Counter(child["fields"].get("summary") for child in children)
        extra += sum(count - 1 for count in summaries.values())
    return extra


def tally(
    fault: str,
    events: Sequence[Event],
    issues: Sequence[dict[str, Any]],
    minimum_subtasks: dict[tuple[int, str], int],
) -> Row:
    """Posted, acknowledged, refused, applied, lost and duplicates, from what was sent and what
    Jira holds. An event is applied when its employee has the issue it asks for, with at least
    `minimum_subtasks` of it (default 0)."""
    parents = parent_issues(issues)
    children = subtasks_by_parent(issues)

    def done(event: Event) -> bool:
        key = (event.employee_id, event.expects)
        return any(
            len(children.get(issue["key"], [])) >= minimum_subtasks.get(key, 0)
            for issue in parents.get(key, [])
        )

    statuses = [status for event in events for status in event.statuses]
    acknowledged = [event for event in events if event.acknowledged]
    applied = sum(1 for event in acknowledged if done(event))
    ok = sum(1 for status in statuses if status is not None and 200 <= status < 300)
    return Row(
        fault=fault,
        posted=len(statuses),
        acknowledged=ok,
        refused=len(statuses) - ok,
        applied=applied,
        lost=len(acknowledged) - applied,
        duplicates=count_duplicates(issues),
    )


def lost_events(
    events: Sequence[Event],
    issues: Sequence[dict[str, Any]],
    minimum_subtasks: dict[tuple[int, str], int],
) -> list[Event]:
    parents = parent_issues(issues)
    children = subtasks_by_parent(issues)
    lost = []
    for event in events:
        key = (event.employee_id, event.expects)
        if event.acknowledged and not any(
            len(children.get(issue["key"], [])) >= minimum_subtasks.get(key, 0)
            for issue in parents.get(key, [])
        ):
            lost.append(event)
    return lost


def _text(value: Any, names: dict[str, str]) -> Any:
    """`value` with every issue key replaced by what the key names (keys differ between runs)."""
    if isinstance(value, str):
        return ISSUE_KEY.sub(lambda match: names.get(match.group(0), "<unknown issue>"), value)
    if isinstance(value, list):
        return [_text(item, names) for item in value]
    if isinstance(value, dict):
        return {key: _text(item, names) for key, item in value.items()}
    return value


def _account(user: dict[str, Any] | None) -> str | None:
    return user.get("accountId") if user else None


def jira_state(issues: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Per employee, their issues as a person reads them: kind, project, summary, description,
    status, labels, due date, assignee, custom fields and subtasks; issue keys replaced by
    "<kind> of <employee>" so that two runs compare."""
    parents = parent_issues(issues)
    names = {
        issue["key"]: f"<{kind} of {employee}>"
        for (employee, kind), group in parents.items()
        for issue in group
    }
    children = subtasks_by_parent(issues)
    state: dict[int, list[dict[str, Any]]] = {}
    for (employee, kind), group in sorted(parents.items()):
        for issue in group:
            fields = issue["fields"]
            subtasks = sorted(
                (
                    json.dumps(
                        _text(
                            {
                                "summary": child["fields"].get("summary"),
                                "status": (child["fields"].get("status") or {}).get("name"),
                                "assignee": _account(child["fields"].get("assignee")),
                                "labels": sorted(child["fields"].get("labels") or []),
                            },
                            names,
                        ),
                        sort_keys=True,
                    )
                    for child in children.get(issue["key"], [])
                ),
            )
            state.setdefault(employee, []).append(
                _text(
                    {
                        "kind": kind,
                        "project": (fields.get("project") or {}).get("key"),
                        "summary": fields.get("summary"),
                        # As a person reads it (the tree's shape aside).
                        "description": adf_to_text(fields.get("description")),
                        "status": (fields.get("status") or {}).get("name"),
                        "labels": sorted(fields.get("labels") or []),
                        "duedate": fields.get("duedate"),
                        "assignee": _account(fields.get("assignee")),
                        "custom": {
                            name: value
                            for name, value in sorted(fields.items())
                            if name.startswith("customfield_") and value is not None
                        },
                        "subtasks": [json.loads(subtask) for subtask in subtasks],
                    },
                    names,
                )
            )
    for issues_of_one in state.values():
        issues_of_one.sort(key=lambda issue: json.dumps(issue, sort_keys=True))
    return state


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path or '.'}: {len(a)} items vs {len(b)}"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{index}]")
    shown = [json.dumps(value, sort_keys=True)[:160] for value in (a, b)]
    return f"{path or '.'}: {shown[0]} vs {shown[1]}"


def compare_states(
    reference: dict[int, list[dict[str, Any]]], other: dict[int, list[dict[str, Any]]]
) -> list[str]:
    """One line per employee whose Jira state differs, naming the first difference."""
    return [
        f"employee {employee}: {_first_difference(reference.get(employee), other.get(employee))}"
        for employee in sorted(set(reference) | set(other))
        if reference.get(employee) != other.get(employee)
    ]


def quiet_after(journal: Sequence[dict[str, Any]], fault_end: float) -> float:
    """Seconds from the end of the fault to the last Jira write (0 when none came after it)."""
    last = max((utc(entry["at"]) for entry in journal), default=fault_end)
    return max(0.0, last - fault_end)


def format_table(rows: Sequence[Row]) -> list[str]:
    header = (
        "fault",
        "posted",
        "ack",
        "refused",
        "applied",
        "lost",
        "dup",
        "quiet s",
        "gw back s",
        "verdict",
    )
    lines: list[tuple[str, ...]] = []
    for row in rows:
        if row.unavailable:
            lines.append((row.fault, *("-",) * 8, "not available"))
            continue
        lines.append(
            (
                row.fault,
                str(row.posted),
                str(row.acknowledged),
                str(row.refused),
                str(row.applied),
                str(row.lost),
                str(row.duplicates),
                "-" if row.quiet_seconds is None else f"{row.quiet_seconds:.1f}",
                "-" if row.gateway_back_seconds is None else f"{row.gateway_back_seconds:.1f}",
                row.verdict,
            )
        )
    widths = [max(len(cells[i]) for cells in (header, *lines)) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i in (0, len(cells) - 1) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [render(header), *(render(cells) for cells in lines)]


# --------------------------------------------------------------------------- the stack


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [word.decode(errors="replace") for word in raw.split(b"\0") if word]


def runs_module(pid: int, module: str) -> bool:
    words = command_line(pid)
    return any(
        word == "-m" and following == module for word, following in itertools.pairwise(words)
    )


def is_flow_run(pid: int) -> bool:
    """A flow-run process: `python -m prefect.engine`, the spawned child Prefect's runner
    starts for a served flow (multiprocessing's `spawn_main`; not its resource tracker), or a
    fork of the warm fork server (`deployments/warm_start.py`: it has the fork server's command
    line, and the fork server as its parent)."""
    return (
        runs_module(pid, "prefect.engine")
        or any("spawn_main" in word for word in command_line(pid))
        or (is_fork_server(parent_of(pid)) and not ended(pid))
    )


def ended(pid: int) -> bool:
    """Exited, not yet reaped (a zombie): a kill would do nothing."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def is_fork_server(pid: int | None) -> bool:
    return pid is not None and any(
        "multiprocessing.forkserver import main" in word for word in command_line(pid)
    )


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Stack:
    """`pf-jira-sync up` (no --sandbox) on a data directory, pointed at outside simulators."""

    def __init__(self, data_dir: Path, env: dict[str, str], gateway: str) -> None:
        self.data_dir, self.env, self.gateway = data_dir, env, gateway
        self.process: subprocess.Popen[str] | None = None
        self.output: list[tuple[float, str]] = []
        self.ready = threading.Event()
        self.starts = 0

    def launch(self) -> None:
        command = [str(Path(sys.executable).parent / "pf-jira-sync"), "up"]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready = threading.Event()
        process = self.process = subprocess.Popen(  # noqa: S603 (our own command)
            command,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.starts += 1
        ready = self.ready

        def read() -> None:
            assert process.stdout is not None
            with (self.data_dir / "up.log").open("a") as log:
                for line in process.stdout:
                    self.output.append((time.time(), line.rstrip("\n")))
                    log.write(line)
                    log.flush()
                    if READY_LINE in line:
                        ready.set()

        threading.Thread(target=read, daemon=True).start()

    def start(self, timeout: float = STACK_START_TIMEOUT) -> None:
        self.launch()
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.5):
            if not self.alive() or time.monotonic() > deadline:
                tail = "\n".join(line for _, line in self.output[-30:])
                self.kill_tree()
                raise RuntimeError(f"the stack did not start:\n{tail}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tree(self) -> set[int]:
        if self.process is None or self.process.poll() is not None:
            return set()  # its pid may be another process's by now
        return {self.process.pid, *descendants(self.process.pid)}

    def find(self, module: str) -> int | None:
        """The pid of the live process below `up` that runs `python -m module`."""
        return next((pid for pid in sorted(self.tree()) if runs_module(pid, module)), None)

    def kill_tree(self) -> None:
        """kill -9 of `up` and everything below it, frozen first so nobody reacts to a death
        (the children get SIGTERM when `up` dies; nothing may see that)."""
        stopped: set[int] = set()
        # Until no new process appears (one may be starting as the others freeze).
        while tree := self.tree() - stopped:
            for pid in tree:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= tree
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in stopped):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)

    def stop(self) -> None:
        """Quickly: the measuring is over. SIGINT, a second one to hurry, then kill -9."""
        if not self.alive():
            self.kill_leftovers()
            return
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)
        time.sleep(3)
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)  # later than 2 s: hurry (kills flow runs)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(30)
        self.kill_tree()
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """kill -9 of what this stack started and left behind (a flow run whose runner died
        is nobody's child any more), found by its data directory: the next fault's stack must
        not share the CPU with it."""
        marker = f"DATA_DIR={self.data_dir.resolve()}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environment = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environment:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def supervisor_lines(self) -> list[str]:
        words = ("restart", "killed", "exited", "died", "stopping", "error")
        return [line for _, line in self.output if any(word in line.lower() for word in words)]


def wait_for_gateway(gateway: str, since: float, timeout: float = 120.0) -> float | None:
    """Seconds from `since` until the gateway's /healthz answers, or None."""
    with httpx.Client(trust_env=False, timeout=1.0) as http:
        while time.time() - since < timeout:
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{gateway}/healthz").status_code == 200:
                    return time.time() - since
            time.sleep(0.05)
    return None


def inbox_counts(data_dir: Path) -> dict[str, int]:
    """The gateway's inbox by status, read straight from the store (diagnostics only)."""
    path = data_dir / "pf-jira-sync.db"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT status, count(*) FROM webhook_event GROUP BY status")
            return {str(status): int(count) for status, count in rows}
    except sqlite3.Error:
        return {}


# --------------------------------------------------------------------------- the faults


@dataclass
class Strike:
    """What a process fault did, for the row: when it ended and how the gateway came back."""

    ended_at: float | None = None
    gateway_back_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def strike(fault: str, stack: Stack, outcome: Strike) -> None:
    """Do the process fault now; fills `outcome`. Runs in its own thread, beside the burst."""
    try:
        strike_now(fault, stack, outcome)
    except Exception as error:  # the wait for Jira must end whatever went wrong here
        outcome.notes.append(f"the fault went wrong: {type(error).__name__}: {error}")
    finally:
        if outcome.ended_at is None:
            outcome.ended_at = time.time()


def strike_now(fault: str, stack: Stack, outcome: Strike) -> None:
    if fault == "power-cut":
        stack.kill_tree()
        ports = [int(stack.env["GATEWAY_PORT"]), int(stack.env["PREFECT_SERVER_PORT"])]
        deadline = time.monotonic() + 30
        while not all(port_free(port) for port in ports) and time.monotonic() < deadline:
            time.sleep(0.1)
        outcome.notes.append(f"power cut; `up` started again {time.strftime('%H:%M:%S')}")
        restarted = time.time()
        stack.launch()
        outcome.ended_at = restarted
        outcome.gateway_back_seconds = wait_for_gateway(stack.gateway, restarted, 300)
        if not stack.ready.wait(STACK_START_TIMEOUT):
            outcome.notes.append("the new `up` did not say it was ready")
        return
    if fault == "flow-run-kill":
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            runner = stack.find("deployments.serve")
            runs = sorted(
                pid for pid in (descendants(runner) if runner else set()) if is_flow_run(pid)
            )
            if runs:
                shown = " ".join(command_line(runs[0]))[:80]  # a killed process has none
                os.kill(runs[0], signal.SIGKILL)
                outcome.ended_at = time.time()
                outcome.notes.append(f"killed flow-run process {runs[0]} ({shown})")
                return
            time.sleep(0.2)
        outcome.notes.append("no flow-run process appeared within 90 s: nothing killed")
        outcome.ended_at = time.time()
        return
    module = {
        "prefect-stop": "deployments.prefect_server",
        "prefect-kill": "deployments.prefect_server",
        "runner-kill": "deployments.serve",
        "gateway-kill": "webhook_gateway",
    }[fault]
    pid = stack.find(module)
    if pid is None:
        outcome.notes.append(f"no process runs {module}: nothing done")
        outcome.ended_at = time.time()
        return
    if fault == "prefect-stop":
        os.killpg(pid, signal.SIGSTOP)
        time.sleep(STOP_SECONDS)
        os.killpg(pid, signal.SIGCONT)
        outcome.ended_at = time.time()
        return
    os.kill(pid, signal.SIGKILL)
    outcome.ended_at = time.time()
    outcome.notes.append(f"killed {module} (pid {pid})")
    if fault == "gateway-kill":
        outcome.gateway_back_seconds = wait_for_gateway(stack.gateway, outcome.ended_at, 60)


def put_jira_faults(http: httpx.Client, jira: str, faults: dict[str, Any]) -> str | None:
    """Set the Jira simulator's faults; why not, when it does not know them (None: set)."""
    response = http.put(f"{jira}/_sandbox/faults", json=faults)
    if response.status_code == 422:
        problems = response.json().get("detail") or []
        unknown = [
            str(problem.get("loc", ["", "?"])[-1])
            for problem in problems
            if problem.get("type") == "extra_forbidden"
        ]
        if unknown and len(unknown) == len(problems):
            return f"the Jira simulator does not know {', '.join(unknown)}"
        # It knows the fields but refuses a value: the bench is wrong, not the simulator.
        raise RuntimeError(f"the Jira simulator refuses these faults: {response.text[:300]}")
    response.raise_for_status()
    # A simulator whose Faults ignore unknown fields answers 200 without them.
    missing = sorted(name for name in faults if name not in response.json())
    if missing:
        return f"the Jira simulator does not know {', '.join(missing)}"
    return None


# --------------------------------------------------------------------------- one run


@dataclass
class Person:
    employee_id: int
    department: str
    hired_at: float


@dataclass
class Deployment:
    """A fresh stack next to fresh simulators, on a data directory of its own."""

    data_dir: Path
    simulators: Simulators
    stack: Stack
    http: httpx.Client
    journal_read: int = 0
    journal: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def create(
        cls, data_dir: Path, settings: dict[str, str], *, deliver_webhooks: bool
    ) -> Deployment:
        gateway_port, prefect_port = free_port(), free_port()
        gateway = f"http://127.0.0.1:{gateway_port}"
        # Webhooks go to the gateway, or (to be posted by the bench) to a port nobody serves.
        target = gateway + WEBHOOK_PATH if deliver_webhooks else f"http://127.0.0.1:{free_port()}/"
        simulators = Simulators(webhook_url=target).start()
        env = {
            **{k: v for k, v in os.environ.items() if k not in SETTING_NAMES},
            "PYTHONPATH": str(ROOT),
            "DATA_DIR": str(data_dir),
            "RULES_FILE": str(RULES_FILE),
            "PREFECT_SERVER_PORT": str(prefect_port),
            "GATEWAY_PORT": str(gateway_port),
            **simulators.environment(),
            **settings,
        }
        http = httpx.Client(
            trust_env=False, timeout=60, limits=httpx.Limits(max_connections=32, keepalive_expiry=2)
        )
        return cls(data_dir, simulators, Stack(data_dir, env, gateway), http)

    @property
    def control(self) -> str:
        return self.simulators.peopleforce_control_url + "/_sandbox"

    @property
    def jira(self) -> str:
        return self.simulators.jira_url

    def hire(self, first_name: str, last_name: str, department: str, hired_on: date) -> int:
        """Hire someone in the PeopleForce simulator (which sends its webhook); their id."""
        answer = self.http.post(
            f"{self.control}/employees",
            json={
                "first_name": first_name,
                "last_name": last_name,
                "department": department,
                "hired_on": str(hired_on),
            },
        )
        answer.raise_for_status()
        return answer.json()["id"]

    def today(self) -> date:
        return date.fromisoformat(self.http.get(f"{self.control}/clock").json()["today"])

    def poll_journal(self) -> None:
        entries = self.http.get(
            f"{self.jira}/_sandbox/journal", params={"since": self.journal_read}
        ).json()
        self.journal_read += len(entries)
        self.journal.extend(entries)

    def skip_journal(self) -> None:
        self.poll_journal()
        self.journal.clear()

    def issues(self) -> list[dict[str, Any]]:
        return self.http.get(f"{self.jira}/_sandbox/issues").json()

    def deliveries(self) -> list[dict[str, Any]]:
        return self.http.get(f"{self.control}/webhooks").json()

    def close(self) -> None:
        try:
            self.stack.stop()
        finally:
            self.simulators.stop()
            self.http.close()


def minimum_subtasks(rules: Rules, people: Iterable[Person]) -> dict[tuple[int, str], int]:
    """The checklist subtasks the rules give each person's onboarding and offboarding."""
    minimum: dict[tuple[int, str], int] = {}
    for person in people:
        route = rules.route_for(department=person.department, division=None, location=None)
        minimum[(person.employee_id, "onboarding")] = len(rules.onboarding.checklist) + (
            len(route.onboarding_checklist) if route else 0
        )
        minimum[(person.employee_id, "offboarding")] = len(rules.offboarding.checklist) + (
            len(route.offboarding_checklist) if route else 0
        )
    return minimum


def events_from(
    deliveries: Sequence[dict[str, Any]], actions: dict[int, list[str]], *, answered: bool = True
) -> list[Event]:
    """Events from PeopleForce's deliveries, matched to what the bench did to each employee, in
    order (one webhook per change: a hire a week ahead, a future termination, an edit); with
    `answered`, each with the gateway's answer to PeopleForce's own delivery."""
    seen: Counter[int] = Counter()
    events = []
    for delivery in sorted(deliveries, key=lambda d: d["id"]):
        employee = delivery["employee_id"]
        done = actions.get(employee, [])
        action = done[seen[employee]] if seen[employee] < len(done) else "edit"
        seen[employee] += 1
        events.append(
            Event(
                employee,
                "offboarding" if action == "terminate" else "onboarding",
                [delivery["status_code"]] if answered else [],
            )
        )
    return events


def burst(
    deployment: Deployment,
    count: int,
    rate: float,
    rng: random.Random,
    on_strike: Callable[[], None] | None,
) -> tuple[list[Person], dict[int, list[str]], float]:
    """`count` changes in PeopleForce at `rate` per second (each sends its webhook); `on_strike`
    runs a third of the way in. Returns the people hired, what was done to whom, the end."""
    control = deployment.control
    today = deployment.today()
    people: list[Person] = []
    actions: dict[int, list[str]] = {}
    terminated: set[int] = set()
    lock = threading.Lock()
    http = deployment.http

    def hire(n: int, department: str) -> None:
        employee = deployment.hire(
            f"Fault{n}", "Burst", department, today + timedelta(days=HIRE_AHEAD_DAYS)
        )
        with lock:
            people.append(Person(employee, department, time.time()))
            actions.setdefault(employee, []).append("hire")

    def terminate(employee: int) -> None:
        with lock:
            actions.setdefault(employee, []).append("terminate")
        http.post(
            f"{control}/employees/{employee}/terminate",
            json={"effective_on": str(today + timedelta(days=LEAVE_AHEAD_DAYS))},
        ).raise_for_status()

    calls: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        started = time.time()
        for n in range(count):
            if on_strike is not None and n == int(count * STRIKE_AT):
                threading.Thread(target=on_strike, daemon=True).start()
            with lock:
                ready = [
                    p.employee_id
                    for p in people
                    if time.time() - p.hired_at > 5 and p.employee_id not in terminated
                ]
            if ready and rng.random() < TERMINATION_SHARE:
                employee = rng.choice(ready)
                terminated.add(employee)
                calls.append(pool.submit(terminate, employee))
            else:
                department = rng.choice(["Engineering", "Sales", "Marketing", "IT"])
                calls.append(pool.submit(hire, n, department))
            time.sleep(max(0.0, started + (n + 1) / rate - time.time()))
        for call in calls:
            call.result()
    return people, actions, time.time()


def wait_until_quiet(
    deployment: Deployment,
    missing: Callable[[], int],
    since: Callable[[], float | None],
    settle: float,
    quiet: float,
) -> str:
    """Until nothing is `missing` (counted as the row counts it) and Jira has been quiet for
    `quiet` seconds, or `settle` seconds after the fault ended, or quiet with `up` dead (then
    nothing more can come). Says which."""
    checked_at = 0.0
    while True:
        deployment.poll_journal()
        ended = since()
        now = time.time()
        last = max((utc(e["at"]) for e in deployment.journal[-1:]), default=0.0)
        if ended is not None:
            silent = now - max(last, ended)
            if silent >= quiet and now - checked_at >= quiet / 2:
                checked_at = now
                left = missing()
                if not left:
                    return f"all acknowledged work in Jira, then {quiet:.0f} s without a write"
                if not deployment.stack.alive():
                    return f"`up` is gone and Jira quiet for {quiet:.0f} s ({left} events missing)"
            if now > ended + settle:
                return f"--settle {settle:.0f} s passed ({missing()} events missing)"
        time.sleep(1.0)


def run_burst_fault(fault: str, args: argparse.Namespace, data_dir: Path) -> Row:
    rng = random.Random(args.seed)
    deployment = Deployment.create(data_dir, settings(args), deliver_webhooks=True)
    try:
        if fault in JIRA_FAULTS:
            # Before the stack starts: a fault the simulator lacks costs no stack.
            wanted = dict(JIRA_FAULTS[fault])
            if "after_apply_hold_seconds" in wanted:
                wanted["after_apply_hold_seconds"] = args.hold_seconds
            why = put_jira_faults(deployment.http, deployment.jira, wanted)
            if why:
                return Row(fault, unavailable=why, notes=[why])
        deployment.stack.start()
        progress(f"stack up; {TITLES[fault]}; {args.events} webhooks at {args.rate:g}/s")
        deployment.skip_journal()
        first_delivery = len(deployment.deliveries())
        outcome = Strike()
        striker: threading.Thread | None = None
        if fault in PROCESS_FAULTS:
            striker = threading.Thread(target=strike, args=(fault, deployment.stack, outcome))
        people, actions, burst_end = burst(
            deployment, args.events, args.rate, rng, striker.start if striker else None
        )
        if striker is None:
            outcome.ended_at = burst_end
        progress(f"burst sent; waiting for Jira to settle (up to {args.settle:.0f} s)")
        deliveries = deployment.deliveries()[first_delivery:]
        events = events_from(deliveries, actions)
        minimum = minimum_subtasks(load_rules(RULES_FILE), people)
        why = wait_until_quiet(
            deployment,
            lambda: len(lost_events(events, deployment.issues(), minimum)),
            lambda: outcome.ended_at,
            args.settle,
            args.quiet,
        )
        progress(f"counting: {why}")
        if striker is not None:
            striker.join(timeout=STACK_START_TIMEOUT)
        issues = deployment.issues()
        row = tally(fault, events, issues, minimum)
        if outcome.ended_at is not None:
            row.quiet_seconds = quiet_after(deployment.journal, outcome.ended_at)
        row.gateway_back_seconds = outcome.gateway_back_seconds
        row.notes += outcome.notes
        unanswered = Counter(
            delivery.get("error") or f"HTTP {delivery.get('status_code')}"
            for delivery in deliveries
            if not 200 <= (delivery.get("status_code") or 0) < 300
        )
        if unanswered:
            row.notes.append(
                "not acknowledged: "
                + "; ".join(f"{count}x {why}" for why, count in unanswered.most_common(3))
            )
        if fault in JIRA_FAULTS:
            stats = deployment.http.get(f"{deployment.jira}/_sandbox/stats").json()
            row.notes.append(
                f"Jira: {stats.get('writes')} writes, {stats.get('reads')} reads reached the "
                f"API; faults injected: {stats.get('faults_injected')}"
            )
        lost = lost_events(events, issues, minimum)
        if lost:
            row.notes.append(
                "lost: " + ", ".join(f"{e.expects} of {e.employee_id}" for e in lost[:8])
            )
        describe_stack(row, deployment)
        return row
    finally:
        deployment.close()


def describe_stack(row: Row, deployment: Deployment) -> None:
    stack = deployment.stack
    row.notes.append(f"inbox: {inbox_counts(deployment.data_dir) or 'unreadable'}")
    if not stack.alive():
        code = stack.process.returncode if stack.process else None
        row.notes.append(f"`up` was not running at the end (exit code {code})")
    row.notes += [f"up: {line.strip()}" for line in stack.supervisor_lines()[:6]]


def settings(args: argparse.Namespace) -> dict[str, str]:
    """The stack's settings. The nightly reconciliation and inbox pruning are moved 12 hours
    away: a reconciliation that happened to run mid-fault would repair what the fault broke,
    and the suite measures what the delivery path does alone. The circuit breaker is off: its
    bursts of hires and terminations are the load, not a mistake to hold (`--setting
    BREAKER_MAX_OFFBOARD=20` puts it back)."""
    away = datetime.now(UTC) + timedelta(hours=12)
    return {
        "LOG_LEVEL": args.log_level,
        "RECONCILE_CRON": f"{away.minute} {away.hour} * * *",
        "RECONCILE_TIMEZONE": "UTC",
        "INBOX_PRUNE_CRON": f"{away.minute} {away.hour} * * *",
        **BREAKER_OFF,
        **dict(item.split("=", 1) for item in args.setting),
    }


# --------------------------------------------------------------------------- 3x vs once


@dataclass
class Pass:
    events: list[Event]
    issues: list[dict[str, Any]]
    hires: list[int]
    row: Row


def script(
    deployment: Deployment, people: int, rng: random.Random
) -> tuple[list[Person], dict[int, list[str]]]:
    """Hires, edits and terminations in PeopleForce, webhooks recorded (sent nowhere)."""
    http, control = deployment.http, deployment.control
    today = deployment.today()
    hired: list[Person] = []
    actions: dict[int, list[str]] = {}
    for n in range(people):
        department = rng.choice(["Engineering", "Sales", "Marketing", "IT"])
        employee = deployment.hire(
            f"Same{n}", "Person", department, today + timedelta(days=HIRE_AHEAD_DAYS + n % 5)
        )
        hired.append(Person(employee, department, time.time()))
        actions[employee] = ["hire"]
    for person in rng.sample(hired, k=people * 3 // 5):
        change: dict[str, str] = rng.choice(
            [
                {"position": "Senior Software Engineer"},
                {"location": rng.choice(["Kyiv Office", "Warsaw Office", "Lisbon Office"])},
                {"department": rng.choice(["Engineering", "Sales", "Marketing", "IT"])},
            ]
        )
        http.patch(f"{control}/employees/{person.employee_id}", json=change).raise_for_status()
        actions[person.employee_id].append("edit")
        person.department = change.get("department", person.department)
    for person in rng.sample(hired, k=people * 3 // 10):
        http.post(
            f"{control}/employees/{person.employee_id}/terminate",
            json={
                "effective_on": str(today + timedelta(days=LEAVE_AHEAD_DAYS + rng.randrange(10)))
            },
        ).raise_for_status()
        actions[person.employee_id].append("terminate")
    return hired, actions


def post_deliveries(
    http: httpx.Client, gateway: str, deliveries: Sequence[dict[str, Any]], rate: float
) -> list[int | None]:
    """Each delivery's exact body and signature, at `rate` per second; the answers."""
    answers: list[int | None] = []
    started = time.time()
    for n, delivery in enumerate(deliveries):
        try:
            response = http.post(
                gateway + WEBHOOK_PATH,
                content=delivery["body"].encode(),
                headers={
                    "content-type": "application/json",
                    SIGNATURE_HEADER: delivery["signature"],
                },
                timeout=10,
            )
            answers.append(response.status_code)
        except httpx.HTTPError:
            answers.append(None)
        time.sleep(max(0.0, started + (n + 1) / rate - time.time()))
    return answers


def one_pass(args: argparse.Namespace, data_dir: Path, copies: int) -> Pass:
    deployment = Deployment.create(data_dir, settings(args), deliver_webhooks=False)
    try:
        deployment.stack.start()
        first = len(deployment.deliveries())
        people, actions = script(deployment, args.people, random.Random(args.seed))
        deliveries = deployment.deliveries()[first:]
        events = events_from(deliveries, actions, answered=False)
        order = [(n, copy) for n in range(len(deliveries)) for copy in range(copies)]
        if copies > 1:
            random.Random(args.seed + 1).shuffle(order)
        # The copies go out in the time the single delivery takes: the same load of distinct
        # events, and repeats arriving close together (and in any order).
        rate = args.rate * copies
        progress(
            f"stack up; posting {len(order)} webhooks ({len(deliveries)} x {copies}"
            f"{', shuffled' if copies > 1 else ', in order'}) at {rate:g}/s"
        )
        deployment.skip_journal()
        answers = post_deliveries(
            deployment.http, deployment.stack.gateway, [deliveries[n] for n, _ in order], rate
        )
        posted_at = time.time()
        for (n, _), answer in zip(order, answers, strict=True):
            events[n].statuses.append(answer)
        minimum = minimum_subtasks(load_rules(RULES_FILE), people)
        why = wait_until_quiet(
            deployment,
            lambda: len(lost_events(events, deployment.issues(), minimum)),
            lambda: posted_at,
            args.settle,
            args.quiet,
        )
        progress(f"counting: {why}")
        issues = deployment.issues()
        row = tally(COMPARISON, events, issues, minimum)
        row.quiet_seconds = quiet_after(deployment.journal, posted_at)
        describe_stack(row, deployment)
        return Pass(events, issues, [p.employee_id for p in people], row)
    finally:
        deployment.close()


def run_comparison(args: argparse.Namespace, data_dir: Path) -> Row:
    progress("in order, once:")
    reference = one_pass(args, data_dir / "once", copies=1)
    progress("3x, shuffled:")
    tripled = one_pass(args, data_dir / "thrice", copies=3)
    row = tripled.row
    if reference.hires != tripled.hires:
        row.state_differences = ["the two runs hired different employee ids: not comparable"]
    else:
        row.state_differences = compare_states(
            jira_state(reference.issues), jira_state(tripled.issues)
        )
    people = len(reference.hires)
    row.notes.insert(
        0,
        f"final Jira state: {people - len(row.state_differences)} of {people} people identical",
    )
    row.notes += [f"differs: {line}" for line in row.state_differences[:5]]
    ref = reference.row
    row.notes.append(
        f"in-order run: posted {ref.posted}, ack {ref.acknowledged}, applied {ref.applied}, "
        f"lost {ref.lost}, dup {ref.duplicates}, quiet {ref.quiet_seconds or 0:.1f} s"
    )
    # The reference must itself be right, or "identical" means nothing.
    row.lost += ref.lost
    row.duplicates += ref.duplicates
    return row


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "faults", nargs="*", metavar="fault", help=f"default: all ({', '.join(ALL_FAULTS)})"
    )
    parser.add_argument("--events", type=int, default=300, help="webhooks per burst (300)")
    parser.add_argument("--rate", type=float, default=8.0, help="webhooks per second (8)")
    parser.add_argument("--people", type=int, default=100, help=f"{COMPARISON}: people (100)")
    parser.add_argument(
        "--settle",
        type=float,
        default=180.0,
        help="seconds after the fault ends to wait for Jira before counting (180)",
    )
    parser.add_argument(
        "--quiet", type=float, default=20.0, help="seconds without a Jira write that end a wait"
    )
    parser.add_argument(
        "--hold-seconds",
        type=float,
        default=35.0,
        help="ambiguous-creates: how long Jira holds an answer it then drops (35)",
    )
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--keep", type=Path, help="keep each fault's data directory (logs) here")
    parser.add_argument("--log-level", default="WARNING", help="the stack's LOG_LEVEL")
    parser.add_argument(
        "--setting", action="append", default=[], help="NAME=VALUE for the stack (repeatable)"
    )
    args = parser.parse_args()
    unknown = [name for name in args.faults if name not in TITLES]
    if unknown:
        parser.error(f"unknown fault {', '.join(unknown)}; known: {', '.join(ALL_FAULTS)}")
    chosen = args.faults or ALL_FAULTS
    rows: list[Row] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="pf-faults-") as tmp:
        for fault in chosen:
            data_dir = (args.keep or Path(tmp)) / fault
            say(f"\n{fault}: {TITLES[fault]}")
            began = time.time()
            try:
                if fault == COMPARISON:
                    row = run_comparison(args, data_dir)
                else:
                    row = run_burst_fault(fault, args, data_dir)
            except Exception as error:  # one fault that cannot run must not stop the rest
                row = Row(
                    fault, notes=[f"the bench could not run it: {type(error).__name__}: {error}"]
                )
            rows.append(row)
            failures = row.failures()
            progress(
                f"{row.verdict} in {time.time() - began:.0f} s"
                + (": " + "; ".join(failures) if failures else "")
            )
            for note in row.notes:
                say(f"    {note}")
    say()
    for line in format_table(rows):
        say(line)
    say(
        f"\n({len(rows)} faults in {(time.time() - started) / 60:.1f} min, "
        f"{args.events} webhooks per burst at {args.rate:g}/s, measured "
        f"{datetime.now(UTC):%Y-%m-%d} on {os.cpu_count()} cores)"
    )
    sys.exit(1 if any(row.verdict == "FAIL" for row in rows) else 0)


if __name__ == "__main__":
    main()
