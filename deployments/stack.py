"""The one-host stack behind `pf-jira-sync up`: no Docker, one command, Ctrl-C stops it all.

In order: (with `--sandbox`) both simulators in this process, pointed at the gateway; the
Prefect server as a child process with its own PREFECT_HOME (its SQLite database lives there,
apart from the mapping store) and, beside it, the webhook gateway (`python -m webhook_gateway`,
which needs only the store, so webhooks are taken within seconds of a start); once the Prefect
API answers, the deployments server (`python -m deployments.serve`). Both are told where the
Prefect API is. A child that dies during this first start (bad settings, a
port taken meanwhile) is reported with the end of its log, the others are stopped and
`run_stack` returns non-zero at once.

Then it supervises. A child that dies later (exit, kill -9, crash) is restarted: one line says
which, why (exit code or signal, then the end of its log) and the how-many-th restart it is;
the first restart comes after `RESTART_FIRST_DELAY`, each next one twice as late up to
`RESTART_MAX_DELAY`, and a child that stayed up `STABLE_SECONDS` starts over at the first
delay. It never gives up: a child that keeps dying is said as an error on each restart, but
giving up would stop the gateway, and PeopleForce does not resend what was refused. Each
child restarts alone: the gateway stores webhooks in its inbox and hands them to Prefect
whenever it answers, so it keeps running while the Prefect server or the deployments server
restarts. This process holds the gateway's listening socket and hands it to each gateway it
starts (`--fd`): while one gateway is dead and the next one starts, PeopleForce's
connections wait in the socket's queue instead of being refused.

The Prefect server restarts on the same PREFECT_HOME and port (SQLite recovers its own
journal after a kill -9; the server leaves no lock or pid file in the foreground). The
deployments server restarts only once the Prefect API answers. One that outlives the Prefect
server polls the new one by itself (its client retries a lost server), and one that stops
polling for `RUNNER_POLL_TIMEOUT` while the Prefect server answers is restarted. What a dead
deployments server leaves in its process group, its flow runs, gets SIGTERM and SIGKILL after
`LEFTOVER_GRACE`, so that nothing runs on that nobody supervises. Those runs cannot report
their end to Prefect (their output went to a pipe the dead server read, and the first write
to it ends them): they stay Running until Prefect's detection of runs whose process died
finds them.

SIGINT or SIGTERM stops everything in reverse order and returns 0: the gateway first, then
the flow runs in progress are given `DRAIN_TIMEOUT` to finish before the deployments server
stops (what was not started yet stays scheduled, handed back to the next start).

Children run in sessions of their own, so a Ctrl-C in the terminal reaches only this process,
which stops them in order, and a whole process group can be signalled. A Ctrl-C under
`make run` reaches this process more than once (from the terminal, and forwarded by make and
uv, all in the terminal's foreground group): signals within `SAME_SIGNAL_SECONDS` of the first
are that same Ctrl-C; only a later one hurries the stop (SIGKILL). On Linux each child also
gets SIGTERM from the kernel if this process dies without cleaning up (SIGKILL, a crash).

With the sandbox, the stack keeps its mapping store and its Prefect database under
`DATA_DIR/sandbox/`, reset at each start: the simulators start empty and hand out the same
employee ids again, which a store kept from the last run would take for people it already
served. While it runs, `DATA_DIR/sandbox/settings.json` tells the commands typed next to it
where the sandbox is (`core.one_host`).

Child output goes to `{DATA_DIR}/logs/<child>.log` (the previous run's log is kept as
`<child>.log.1`; a restarted child appends to its log, after a line naming the restart). This
module imports no Prefect: it talks to the server over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import httpx

from core import one_host
from core.names import WEBHOOK_PATH
from core.rules import RulesError, load_rules
from core.settings import Settings, mask_url

PREFECT_HOST = "127.0.0.1"
TRY_ARGS = ("sandbox", "hire", "Ada Lovelace", "--department", "Engineering")

# Measured on the 2-core box: the Prefect server needs 20-30 s on a fresh home, a child that
# imports Prefect 5-10 s; these leave room for a slower or busier machine.
PREFECT_START_TIMEOUT = 120.0
# Prefect on SQLite, tuned for bursts of webhooks (README, "Benchmarks"); the environment can
# still set each of these. The server records each task-run event in a transaction of its own
# by default (batch size 1) and events 20 at a time: larger batches cut its CPU per task run
# from about 28 ms to 8 ms.
PREFECT_SERVER_TUNING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "2",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
}
# Prefect's client retries a 503 or an unanswered request 5 times (2 s to 32 s apart) and then
# fails the flow run, with a whole batch of employees in it; a server busy for a while (or
# restarting) should delay a batch, not fail it: 7 retries, up to 4 minutes.
FLOW_RUN_TUNING = {"PREFECT_CLIENT_MAX_RETRIES": "7"}
GATEWAY_START_TIMEOUT = 90.0
GATEWAY_BACKLOG = 2048  # uvicorn's default: connections that wait while no gateway accepts
DEPLOYMENTS_READY_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
# How long a stop waits for the flow runs in progress to finish before the deployments server
# is stopped (which cancels them); a second Ctrl-C stops waiting.
DRAIN_TIMEOUT = 60.0
# A signal this soon after the first is the same Ctrl-C, arriving again through `make` or `uv`.
SAME_SIGNAL_SECONDS = 2.0
IN_PROGRESS_RUN_STATES = ["PENDING", "RUNNING", "CANCELLING"]
POLL_SECONDS = 0.25
LOG_TAIL_LINES = 25
PREFECT_SERVER = "Prefect server"
DEPLOYMENTS_SERVER = "deployments server"
GATEWAY = "webhook gateway"

# Restarts (module docstring). 0.5 s, then 1, 2, 4 ... 30 s: a gateway killed once is back
# within about 2 s (its start imports no flows), a child in a crash loop costs little.
RESTART_FIRST_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
STABLE_SECONDS = 30.0
# This many deaths in a row, each within STABLE_SECONDS of its start: a crash loop (a setting
# changed under it, a full disk, a database gone), said as an error on each restart.
CRASH_LOOP_DEATHS = 5
# How long the flow runs a dead deployments server leaves behind get between SIGTERM and
# SIGKILL (a run that can still reach Prefect ends Crashed on SIGTERM).
LEFTOVER_GRACE = 10.0
# The deployments server polls every SERVE_POLL_SECONDS, and its Prefect client retries a lost
# server 2, 4, 8 ... s apart (7 times, FLOW_RUN_TUNING): after an outage of N s, its next poll
# can come up to about N s late. No poll for this long while the Prefect server answers: stuck.
RUNNER_POLL_TIMEOUT = 90.0
# Probes while supervising are short: a busy or stopped server must not hold up the others.
PROBE_TIMEOUT = 2.0
POLL_CHECK_EVERY = 5.0  # seconds between two looks at the deployments server's last poll
POLL_CHECK_SOON = 1.0  # the same, while a return or a restart waits to be confirmed
RESTART_TAIL_LINES = 10

# A tiny program that arms the kernel's parent-death signal, then becomes the real command
# (the setting survives exec). Arming it from `preexec_fn` instead is unsafe in a process that
# runs threads, as this one does with the simulators.
_PARENT_DEATH_LAUNCHER = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("the supervisor exited before this process started")
os.execv(sys.argv[2], sys.argv[2:])
"""


class LocalSimulators(Protocol):
    """The PeopleForce and Jira stand-ins `up --sandbox` runs in this process (`sandbox.stack.
    Simulators`). The command line hands them over: this floor does not import the sandbox."""

    @property
    def peopleforce_url(self) -> str: ...
    @property
    def peopleforce_control_url(self) -> str: ...
    @property
    def jira_url(self) -> str: ...
    def start(self) -> object: ...
    def stop(self) -> None: ...
    def alive(self) -> bool: ...
    def environment(self) -> dict[str, str]: ...


class StackFailure(Exception):
    """Why the stack cannot start or stopped: one line, and the log lines that show it."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: stop everything, successfully."""


@dataclass(frozen=True)
class ChildSpec:
    """How one child is started, and started again after it died."""

    name: str
    log_name: str
    python_args: tuple[str, ...]
    # Environment defaults: the environment `up` runs in may still set each of them.
    defaults: Mapping[str, str] = field(default_factory=dict)
    # Answers 200 once the child is ready (None: ready once started).
    health_url: str | None = None
    start_timeout: float = GATEWAY_START_TIMEOUT
    # Restarted only once the Prefect server answers (it registers with it as it starts).
    needs_prefect: bool = False
    # What the child leaves in its group when it dies gets SIGTERM, then SIGKILL after this
    # long; 0: SIGKILL at once (nothing there worth waiting for, and the port must be free).
    leftover_grace: float = 0.0
    # Inherited file descriptors (the gateway's listening socket).
    pass_fds: tuple[int, ...] = ()


@dataclass
class Backoff:
    """The delay before each restart of one child: doubling while it dies young."""

    first: float = RESTART_FIRST_DELAY
    cap: float = RESTART_MAX_DELAY
    stable_after: float = STABLE_SECONDS
    quick_deaths: int = 0  # in a row

    def after_death(self, uptime: float) -> float:
        """The delay before restarting a child that died after `uptime` seconds."""
        if uptime >= self.stable_after:
            self.quick_deaths = 0
        delay = min(self.cap, self.first * 2 ** min(self.quick_deaths, 16))
        self.quick_deaths += 1
        return delay

    @property
    def crash_loop(self) -> bool:
        return self.quick_deaths >= CRASH_LOOP_DEATHS


def say(line: str = "") -> None:
    print(line, flush=True)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def url_host(host: str) -> str:
    """The host to connect to for a server bound to `host`: a wildcard address means loopback."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 (read, not bound)
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children in sessions of their own included), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            # `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def child_command(command: list[str]) -> list[str]:
    """`command`, started so that it gets SIGTERM when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-I", "-S", "-c", _PARENT_DEATH_LAUNCHER, str(os.getpid()), *command]


@dataclass
class ChildProcess:
    """One supervised child, in a session (and process group) of its own, logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # Where this process's lines begin in its log (a restarted child appends to it).
    log_offset: int = 0
    started_at: float = field(default_factory=time.monotonic)

    @classmethod
    def start(
        cls,
        name: str,
        command: list[str],
        *,
        env: dict[str, str],
        log_path: Path,
        restart: int = 0,
        pass_fds: tuple[int, ...] = (),
    ) -> ChildProcess:
        """Start `command`; its first start keeps the last run's log as `.log.1`, its
        `restart`-th start appends to the log after a line that says so."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if not restart and log_path.exists():
            log_path.replace(log_path.with_name(log_path.name + ".1"))
        with log_path.open("ab" if restart else "wb") as log:
            if restart:
                stamp = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
                log.write(f"--- {stamp}: restart {restart} of the {name} ---\n".encode())
                log.flush()
            offset = log.tell()
            process = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
                child_command(command),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        return cls(name, process, log_path, log_offset=offset)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        return self.process.poll()

    def describe_exit(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            return f"the {self.name} was killed by {signal.Signals(-code).name}"
        return f"the {self.name} exited with code {code}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last lines this process wrote to its log (read from the end: logs of a long run
        are big)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(self.log_offset, log.tell() - 64 * 1024))
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def log_lines(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The end of this process's log, as the supervisor prints it under a death."""
        tail = self.log_tail(lines)
        if not tail:
            return [f"it wrote nothing to {self.log_path}"]
        return [f"last lines of {self.log_path}:", *(f"  | {line}" for line in tail)]

    def failure(self, what: str) -> StackFailure:
        return StackFailure(what, self.log_lines())

    def group_alive(self) -> bool:
        """Whether anything is left in the child's process group (the child itself included)."""
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, signum: signal.Signals) -> None:
        # The child leads its own group: its helpers (uvicorn, flow runs) get the signal too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float, hurry: Callable[[], bool]) -> str | None:
        """SIGTERM, then SIGKILL after `timeout` (or at once when `hurry()`); how it went, or
        None when the child had already exited (its death was reported)."""
        started = time.monotonic()
        already_exited = self.exit_code() is not None
        if not already_exited:
            self.signal_group(signal.SIGTERM)
            deadline = started + timeout
            while self.exit_code() is None and time.monotonic() < deadline and not hurry():
                time.sleep(0.05)
        killed = self.exit_code() is None
        # Also reaps what the child left behind in its group.
        self.signal_group(signal.SIGKILL)
        self.process.wait()
        elapsed = time.monotonic() - started
        if already_exited:
            return None
        if killed:
            return f"killed the {self.name} (it did not stop within {elapsed:.0f} s)"
        return f"stopped the {self.name} ({elapsed:.1f} s)"


@dataclass
class Supervised:
    """One child as the supervisor keeps it: the process now (None while its restart waits),
    its restarts so far and when the next one is due."""

    spec: ChildSpec
    child: ChildProcess | None
    backoff: Backoff = field(default_factory=Backoff)
    restarts: int = 0
    restart_at: float = 0.0
    # Has answered its health URL since its last start (first starts wait for it).
    answering: bool = True
    # Asked to stop (to be restarted): SIGKILL for its group past this.
    kill_at: float | None = None
    said_waiting: bool = False


@dataclass
class PollWatch:
    """What the supervisor knows of the deployments server's polls of the Prefect server."""

    checked_at: float = 0.0  # monotonic
    # Since when the Prefect server has answered these checks (None: it did not, last time).
    reachable_since: datetime | None = None
    # A return of the Prefect server or a restart of the deployments server, and when it
    # happened: the first poll after it is said in one line.
    awaited: str | None = None
    awaited_since: datetime | None = None


def format_duration(seconds: float) -> str:
    """`0.4 s`, `12 s`, `3 min 5 s`, `2 h 10 min`: how long a child was up."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class Stack:
    """One run of the stack; `run()` returns the process exit code."""

    def __init__(self, settings: Settings, *, simulators: LocalSimulators | None = None) -> None:
        self.settings = settings
        self.sandbox = simulators is not None
        self.data_dir = settings.data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        # The sandbox's state lives and dies with its simulators (see the module's docstring).
        self.state_dir = one_host.sandbox_dir(self.data_dir) if self.sandbox else self.data_dir
        self.prefect_home = self.state_dir / "prefect"
        self.database_url = (
            f"sqlite+aiosqlite:///{self.state_dir / 'pf-jira-sync.db'}"
            if self.sandbox
            else settings.effective_database_url
        )
        self.prefect_url = f"http://{PREFECT_HOST}:{settings.prefect_server_port}"
        self.gateway_url = gateway_url(settings)
        self.webhook_url = self.gateway_url + WEBHOOK_PATH
        self._simulators = simulators
        self.simulators: LocalSimulators | None = None  # once started
        # Every child by name, in start order (the stop goes the other way).
        self.slots: dict[str, Supervised] = {}
        # Groups of dead children with processes still in them, and when they get SIGKILL.
        self._leftovers: list[tuple[ChildProcess, float]] = []
        self._polls = PollWatch()
        self.deployment_names: list[str] = []
        self._served_ids: list[str] = []  # the deployments the deployments server serves
        self._gateway_socket: socket.socket | None = None  # held across the gateway's restarts
        self._stop_signal: int | None = None
        self._stop_signal_at = 0.0
        self._serve_started_at: datetime | None = None
        self._hurry = False
        self._wrote_sandbox_settings = False
        self._http = httpx.Client(timeout=5.0, trust_env=False)  # no proxy for loopback calls

    # The run

    def run(self) -> int:
        with self._signals_handled():
            try:
                self._preflight()
                self._start()
                self._record_sandbox()
                self._announce()
                self._supervise()
            except StopRequested:
                return 0
            except StackFailure as failure:
                warn(f"error: {failure.message}")
                for line in failure.details:
                    warn(line)
                return 1
            finally:
                self._stop_all()
                self._http.close()
                if self._wrote_sandbox_settings:
                    one_host.remove_sandbox_settings(self.data_dir)
        return 0

    def _preflight(self) -> None:
        """Refuse at once what would fail later, after a long wait for the Prefect server."""
        settings = self.settings
        # First, so that it is said also when a check below stops `up`.
        if settings.prefect_api_url and str(settings.prefect_api_url).rstrip("/") != self.api_url:
            warn(
                f"note: PREFECT_API_URL={mask_url(settings.prefect_api_url)} is ignored: "
                "`up` runs its own server"
            )
        runs = settings.dispatch_max_in_flight + settings.dispatch_urgent_max_in_flight
        if runs > settings.serve_limit:
            warn(
                f"note: DISPATCH_MAX_IN_FLIGHT + DISPATCH_URGENT_MAX_IN_FLIGHT ({runs}) is more "
                f"than SERVE_LIMIT ({settings.serve_limit}): a backlog of field updates can take "
                "the runner slots that hires and terminations need"
            )
        if (
            not self.sandbox
            and not settings.webhook_secret
            and not settings.allow_unsigned_webhooks
        ):
            raise StackFailure(
                "WEBHOOK_SECRET is not set, so the gateway would refuse to start: set it to the "
                f"secret configured in PeopleForce (or try `{one_host.command('up', '--sandbox')}`)"
            )
        ports = [
            ("PREFECT_SERVER_PORT", PREFECT_HOST, settings.prefect_server_port),
            ("GATEWAY_PORT", settings.gateway_host, settings.gateway_port),
        ]
        if self.sandbox:
            ports += [
                (
                    "SANDBOX_PEOPLEFORCE_PORT",
                    settings.sandbox_host,
                    settings.sandbox_peopleforce_port,
                ),
                ("SANDBOX_JIRA_PORT", settings.sandbox_host, settings.sandbox_jira_port),
            ]
        seen: dict[int, str] = {}
        for name, host, port in ports:
            if port in seen:
                raise StackFailure(
                    f"{seen[port]} and {name} are both {port}: give each its own port"
                )
            seen[port] = name
            if not port_is_free(host, port):
                raise StackFailure(
                    f"port {port} on {host} ({name}) is already in use: stop what listens there "
                    f"(another `pf-jira-sync up`?) or set {name} to a free port"
                )
        try:
            # Every flow run reads the rules: a bad file would fail each of them, much later.
            load_rules(settings.rules_file)
        except RulesError as error:
            raise StackFailure(str(error)) from None
        if self.sandbox:
            self._reset_sandbox_state()
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.prefect_home.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StackFailure(f"cannot use DATA_DIR {self.data_dir}: {error}") from None

    def _reset_sandbox_state(self) -> None:
        """An empty store and Prefect database for the simulators, which start empty."""
        other = one_host.running_sandbox(self.data_dir)
        if other is not None and other.pid != os.getpid():
            raise StackFailure(
                f"another `up --sandbox` (pid {other.pid}) runs on DATA_DIR {self.data_dir}: "
                "stop it first, or give this one another DATA_DIR"
            )
        if self.settings.database_url:
            warn(
                "note: DATABASE_URL is not used with --sandbox: the sandbox has a store of its "
                f"own under {self.state_dir}"
            )
        try:
            if self.state_dir.exists():
                shutil.rmtree(self.state_dir)
            self.state_dir.mkdir(parents=True)
        except OSError as error:
            raise StackFailure(
                f"cannot reset the sandbox's state {self.state_dir}: {error}"
            ) from None

    def sandbox_settings(self) -> dict[str, str]:
        """What points a command at this sandbox: the simulators, its store, this stack."""
        assert self.simulators is not None
        return {
            **self.simulators.environment(),
            "DATABASE_URL": self.database_url,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_PORT": str(self.settings.prefect_server_port),
            "GATEWAY_HOST": self.settings.gateway_host,
            "GATEWAY_PORT": str(self.settings.gateway_port),
            "SANDBOX_HOST": self.settings.sandbox_host,
            "SANDBOX_PEOPLEFORCE_PORT": str(self.settings.sandbox_peopleforce_port),
            "SANDBOX_JIRA_PORT": str(self.settings.sandbox_jira_port),
            "RULES_FILE": str(self.settings.rules_file.resolve()),
        }

    def _record_sandbox(self) -> None:
        if self.simulators is None:
            return
        try:
            one_host.write_sandbox_settings(self.data_dir, self.sandbox_settings())
        except OSError as error:
            warn(f"warning: the other commands will not find this sandbox: {error}")
            return
        self._wrote_sandbox_settings = True

    def child_specs(self) -> list[ChildSpec]:
        """The children: the Prefect server, the deployments server that needs it, and the gateway
        (started beside the Prefect server: it needs only the store)."""
        gateway_fd = None if self._gateway_socket is None else self._gateway_socket.fileno()
        return [
            ChildSpec(
                PREFECT_SERVER,
                "prefect-server",
                (
                    "-m",
                    "deployments.prefect_server",
                    "start",
                    "--host",
                    PREFECT_HOST,
                    "--port",
                    str(self.settings.prefect_server_port),
                ),
                PREFECT_SERVER_TUNING,
                health_url=f"{self.api_url}/health",
                start_timeout=PREFECT_START_TIMEOUT,
            ),
            ChildSpec(
                DEPLOYMENTS_SERVER,
                "deployments",
                ("-m", "deployments.serve"),
                FLOW_RUN_TUNING,
                needs_prefect=True,
                leftover_grace=LEFTOVER_GRACE,
            ),
            ChildSpec(
                GATEWAY,
                "gateway",
                (
                    "-m",
                    "webhook_gateway",
                    "--host",
                    self.settings.gateway_host,
                    "--port",
                    str(self.settings.gateway_port),
                    *(() if gateway_fd is None else ("--fd", str(gateway_fd))),
                ),
                health_url=f"{self.gateway_url}/healthz",
                start_timeout=GATEWAY_START_TIMEOUT,
                pass_fds=() if gateway_fd is None else (gateway_fd,),
            ),
        ]

    def _listen_for_gateway(self) -> None:
        """Bind the gateway's address here, for every gateway this stack starts (see the
        module's docstring)."""
        host, port = self.settings.gateway_host, self.settings.gateway_port
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            # SO_REUSEADDR (create_server sets it) as uvicorn binds; only the gateways get it
            # (`pass_fds`: every other child starts with no inherited descriptor).
            self._gateway_socket = socket.create_server(
                (host, port), family=family, backlog=GATEWAY_BACKLOG
            )
        except OSError as error:
            raise StackFailure(
                f"cannot listen on {host}:{port} (GATEWAY_PORT) for the gateway: {error}"
            ) from None

    def _close_gateway_socket(self) -> None:
        """From now on, only the running gateway holds it: once it stops, connections are
        refused (rather than left waiting for a gateway that never comes)."""
        if self._gateway_socket is not None:
            self._gateway_socket.close()
            self._gateway_socket = None

    def _start(self) -> None:
        """The first start: any child that dies or does not answer in time stops it all."""
        if self.sandbox:
            say("starting the PeopleForce and Jira simulators")
            self._start_simulators()
        self._listen_for_gateway()
        specs = {spec.name: spec for spec in self.child_specs()}
        prefect = self._start_child(specs[PREFECT_SERVER])
        # The gateway needs only the store: it starts beside the Prefect server, so that after
        # a power cut webhooks are taken again within seconds, not once Prefect is up (its
        # dispatcher hands the events over when Prefect answers).
        gateway = self._start_child(specs[GATEWAY])
        self._wait_until_healthy(gateway, specs[GATEWAY])
        self._wait_until_healthy(prefect, specs[PREFECT_SERVER])
        serve_started_at = self._serve_started_at = datetime.now(UTC)
        self._start_child(specs[DEPLOYMENTS_SERVER])
        self._wait_for_deployments(serve_started_at)

    def _announce(self) -> None:
        say()
        say(f"pf-jira-sync is up{' with the sandbox' if self.sandbox else ''}:")
        say(f"  Prefect UI:          {self.prefect_url}")
        say(f"  Prefect API:         {self.api_url}  (health: {self.api_url}/health)")
        say(f"  Webhook gateway:     {self.webhook_url}  (health: {self.gateway_url}/healthz)")
        if self.simulators is not None:
            peopleforce = self.simulators.peopleforce_control_url
            say(
                f"  PeopleForce sandbox: {self.simulators.peopleforce_url}  (control: {peopleforce}/_sandbox/employees)"
            )
            say(
                f"  Jira sandbox:        {self.simulators.jira_url}  (issues: {self.simulators.jira_url}/_sandbox/issues)"
            )
        if self.deployment_names:
            say(
                f"  Deployments:         {', '.join(self.deployment_names)} (served, at most {self.settings.serve_limit} runs at once)"
            )
        say(f"  Logs:                {self.log_dir}")
        if self.settings.seq_url:
            say(f"  Seq (structured):    {mask_url(self.settings.seq_url)}")
        if self.settings.alert_webhook_url:
            say("  Alerts:              failed runs are posted to ALERT_WEBHOOK_URL")
        say()
        if self.sandbox:
            say(
                f"The sandbox starts empty each time: its store and its Prefect runs live in {self.state_dir},"
            )
            say("reset at each start.")
            say()
            say(f"Try, in another terminal in this folder: {try_command()}")
            say(
                f"     then watch the run in {self.prefect_url}/runs and the issue in the Jira sandbox."
            )
            say(
                f"While this runs, `{one_host.command('doctor')}`, `plan ID`, `reconcile --dry-run`, `events` and"
            )
            say(
                "`config` in this folder use the sandbox (its settings: DATA_DIR/sandbox/settings.json)."
            )
        else:
            say(
                f"Point PeopleForce's webhook (Settings -> Webhooks) at the public address of {self.webhook_url}."
            )
            say(f"Check the credentials with: {one_host.command('doctor')}")
        say("Ctrl-C stops everything.")

    def _supervise(self) -> None:
        """Restart what dies, until a signal (StopRequested) or the simulators stop (they live
        in this process: StackFailure)."""
        while True:
            self._check_stop()
            now = time.monotonic()
            for slot in self.slots.values():
                self._tend(slot, now)
            self._end_leftovers(now)
            self._watch_deployments_server(now)
            time.sleep(POLL_SECONDS)

    def _tend(self, slot: Supervised, now: float) -> None:
        """One look at one child: note its death, restart it when due, probe a restarted one."""
        child = slot.child
        if child is None:
            if now >= slot.restart_at:
                self._restart(slot)
        elif child.exit_code() is not None:
            self._restart_later(slot, now)
        elif slot.kill_at is not None and now >= slot.kill_at:
            child.signal_group(signal.SIGKILL)  # asked to stop, and did not
        elif not slot.answering:
            self._probe(slot, now)

    def _restart_later(self, slot: Supervised, now: float) -> None:
        """Say that the child died, end what it left behind, schedule its restart."""
        child = slot.child
        assert child is not None
        uptime = now - child.started_at
        delay = slot.backoff.after_death(uptime)
        slot.restarts += 1
        slot.child = None
        slot.restart_at = now + delay
        slot.said_waiting = False
        line = (
            f"{child.describe_exit()} after {format_duration(uptime)}; restarting it in "
            f"{delay:g} s (restart {slot.restarts})"
        )
        if slot.backoff.crash_loop:
            warn(
                f"error: {line}; it keeps dying ({slot.backoff.quick_deaths} times in a row, "
                f"each within {STABLE_SECONDS:.0f} s of its start): see its log"
            )
        else:
            warn(f"warning: {line}")
        for detail in child.log_lines(RESTART_TAIL_LINES):
            warn(detail)
        if slot.spec.leftover_grace > 0 and child.group_alive():
            child.signal_group(signal.SIGTERM)
            self._leftovers.append((child, now + slot.spec.leftover_grace))
        else:
            child.signal_group(signal.SIGKILL)
        if slot.spec.name == PREFECT_SERVER:
            self._polls.reachable_since = None

    def _restart(self, slot: Supervised) -> None:
        spec = slot.spec
        if spec.needs_prefect and not self._prefect_answers():
            if not slot.said_waiting:
                say(f"the {spec.name} restarts once the Prefect server answers again")
                slot.said_waiting = True
            return
        child = self._launch(spec, restart=slot.restarts)
        slot.child = child
        slot.answering = spec.health_url is None
        slot.kill_at = None
        say(f"restarted the {spec.name} (pid {child.pid}, restart {slot.restarts})")
        if spec.name == DEPLOYMENTS_SERVER:
            self._await_poll(f"its restart {slot.restarts}")

    def _probe(self, slot: Supervised, now: float) -> None:
        """Whether a restarted child answers yet; one that takes too long is killed (and so
        restarted later)."""
        spec, child = slot.spec, slot.child
        assert child is not None
        assert spec.health_url is not None
        if self._answers(spec.health_url):
            slot.answering = True
            say(
                f"the {spec.name} answers again at {spec.health_url} "
                f"({now - child.started_at:.1f} s after restart {slot.restarts})"
            )
            if spec.name == PREFECT_SERVER:
                self._await_poll("the Prefect server's return")
        elif now - child.started_at > spec.start_timeout:
            warn(
                f"warning: the {spec.name} did not answer {spec.health_url} within "
                f"{spec.start_timeout:.0f} s of restart {slot.restarts}: killing it"
            )
            child.signal_group(signal.SIGKILL)

    def _answers(self, url: str) -> bool:
        try:
            return self._http.get(url, timeout=PROBE_TIMEOUT).status_code == 200
        except httpx.HTTPError:
            return False

    def _prefect_answers(self) -> bool:
        prefect = self.slots.get(PREFECT_SERVER)
        return prefect is not None and prefect.child is not None and prefect.answering

    def _end_leftovers(self, now: float) -> None:
        for leftover in [item for item in self._leftovers if item[1] <= now]:
            leftover[0].signal_group(signal.SIGKILL)
            self._leftovers.remove(leftover)

    def _await_poll(self, after: str) -> None:
        self._polls.awaited = after
        self._polls.awaited_since = datetime.now(UTC)

    def _watch_deployments_server(self, now: float) -> None:
        """Say when the deployments server polls again after a restart (its own or the Prefect
        server's); restart it when it has not polled for RUNNER_POLL_TIMEOUT while the Prefect
        server answers (counted from the latest of its last poll, its start and the Prefect
        server's return, so that an outage of the Prefect server is never held against it)."""
        polls = self._polls
        deployments = self.slots.get(DEPLOYMENTS_SERVER)
        if deployments is None or deployments.child is None or deployments.kill_at is not None:
            return  # not started yet, waiting for its restart, or being restarted
        every = POLL_CHECK_SOON if polls.awaited else POLL_CHECK_EVERY
        if now - polls.checked_at < every:
            return
        polls.checked_at = now
        if not self._prefect_answers():
            polls.reachable_since = None
            return
        try:
            last_poll = self._last_poll()
        except (httpx.HTTPError, ValueError):
            polls.reachable_since = None  # hung or busy: not the deployments server's fault
            return
        wall_now = datetime.now(UTC)
        if polls.reachable_since is None:
            polls.reachable_since = wall_now
        if polls.awaited and polls.awaited_since and last_poll and last_poll >= polls.awaited_since:
            say(
                f"the deployments server polls the Prefect server again "
                f"({(wall_now - polls.awaited_since).total_seconds():.1f} s after {polls.awaited})"
            )
            polls.awaited = None
        child = deployments.child
        started = wall_now - timedelta(seconds=now - child.started_at)
        quiet_since = max(filter(None, (last_poll, polls.reachable_since, started)))
        if (wall_now - quiet_since).total_seconds() > RUNNER_POLL_TIMEOUT:
            last = last_poll.astimezone().strftime("%H:%M:%S") if last_poll else "none yet"
            warn(
                f"warning: the deployments server has not polled the Prefect server for "
                f"{RUNNER_POLL_TIMEOUT:.0f} s (its last poll: {last}): restarting it"
            )
            polls.awaited = None
            child.signal_group(signal.SIGTERM)
            deployments.kill_at = now + STOP_TIMEOUT

    def _last_poll(self) -> datetime | None:
        """When the deployments server (or any runner, before it was first seen) last polled
        its deployments for runs (None: never)."""
        body: dict[str, Any] = {"limit": 200}
        if self._served_ids:
            body["deployments"] = {"id": {"any_": self._served_ids}}
        deployments = self._post_json("/deployments/filter", body, PROBE_TIMEOUT)
        polls = [
            datetime.fromisoformat(d["last_polled"]) for d in deployments if d.get("last_polled")
        ]
        return max(polls, default=None)

    # Children and simulators

    @property
    def api_url(self) -> str:
        return f"{self.prefect_url}/api"

    def _start_simulators(self) -> None:
        assert self._simulators is not None
        try:
            self._simulators.start()
        except RuntimeError as error:
            raise StackFailure(f"the simulators did not start: {error}") from None
        self.simulators = self._simulators

    def child_environment(self) -> dict[str, str]:
        """This process's environment, pointed at the stack's Prefect server and data."""
        env = dict(os.environ)
        # The Prefect server keeps its SQLite database under its own PREFECT_HOME, never in the
        # mapping store's database (both names are read by Prefect 3).
        for name in (
            "PREFECT_SERVER_DATABASE_CONNECTION_URL",
            "PREFECT_API_DATABASE_CONNECTION_URL",
        ):
            env.pop(name, None)
        env.update(
            {
                "PREFECT_HOME": str(self.prefect_home),
                "PREFECT_API_URL": self.api_url,
                # Fail fast instead of a silent temporary server when the API is unreachable.
                "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DATA_DIR": str(self.data_dir),
                "DATABASE_URL": self.database_url,
                "RULES_FILE": str(self.settings.rules_file.resolve()),
                "PYTHONUNBUFFERED": "1",  # the log tail shown on a failure must be complete
            }
        )
        if self.simulators is not None:
            env.update(self.simulators.environment())
        return env

    @property
    def children(self) -> list[ChildProcess]:
        """The children running now (or dead and not restarted yet), in start order."""
        return [slot.child for slot in self.slots.values() if slot.child is not None]

    def _launch(self, spec: ChildSpec, *, restart: int = 0) -> ChildProcess:
        """Start `spec` on this stack's environment; its defaults apply unless the environment
        sets them."""
        env = {**spec.defaults, **self.child_environment()}
        return ChildProcess.start(
            spec.name,
            [sys.executable, *spec.python_args],
            env=env,
            log_path=self.log_dir / f"{spec.log_name}.log",
            restart=restart,
            pass_fds=spec.pass_fds,
        )

    def _start_child(self, spec: ChildSpec) -> ChildProcess:
        """The first start of a child (supervised from then on)."""
        self._check()
        child = self._launch(spec)
        self.slots[spec.name] = Supervised(spec, child)
        say(f"started the {spec.name} (pid {child.pid}, log {child.log_path})")
        return child

    def _check_stop(self) -> None:
        """Raise StopRequested after a signal, StackFailure when the simulators stopped."""
        if self._stop_signal is not None:
            raise StopRequested
        if self.simulators is not None and not self.simulators.alive():
            raise StackFailure("a sandbox simulator stopped; stopping the rest")

    def _check(self) -> None:
        """During the first start: `_check_stop`, and StackFailure when any child died."""
        self._check_stop()
        for child in self.children:
            if child.exit_code() is not None:
                raise child.failure(f"{child.describe_exit()}; stopping the rest")

    def _wait_until_healthy(self, child: ChildProcess, spec: ChildSpec) -> None:
        url, timeout = spec.health_url, spec.start_timeout
        assert url is not None
        started = time.monotonic()
        while True:
            self._check()
            try:
                if self._http.get(url).status_code == 200:
                    say(f"the {child.name} answers at {url} ({time.monotonic() - started:.1f} s)")
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() - started > timeout:
                raise child.failure(f"the {child.name} did not answer {url} within {timeout:.0f} s")
            time.sleep(POLL_SECONDS)

    def _wait_for_deployments(self, since: datetime) -> None:
        """Until the deployments server has registered its deployments and polled for runs.

        The server marks a deployment READY when a runner polls it; `last_polled` after this
        run's start tells this run's deployments from ones an earlier run left in the database.
        """
        started = time.monotonic()
        while time.monotonic() - started < DEPLOYMENTS_READY_TIMEOUT:
            self._check()
            with contextlib.suppress(httpx.HTTPError, ValueError):
                polled = self._polled_deployments(since)
                if polled:
                    self.deployment_names = self._full_names(polled)
                    self._served_ids = sorted(deployment["id"] for deployment in polled)
                    say(
                        f"the deployments server serves {len(polled)} deployments ({time.monotonic() - started:.1f} s)"
                    )
                    return
            time.sleep(POLL_SECONDS * 2)
        warn(
            f"warning: the deployments server has not polled the Prefect server within "
            f"{DEPLOYMENTS_READY_TIMEOUT:.0f} s; runs wait until it does (see {self.log_dir / 'deployments.log'})"
        )

    def _polled_deployments(self, since: datetime) -> list[dict[str, Any]]:
        """The deployments a runner polled for runs after `since`."""
        return [
            deployment
            for deployment in self._post_json("/deployments/filter", {"limit": 200})
            if deployment.get("last_polled")
            and datetime.fromisoformat(deployment["last_polled"]) >= since
        ]

    def _full_names(self, deployments: list[dict[str, Any]]) -> list[str]:
        """`flow/deployment`, as the UI and `run_deployment` name them."""
        flow_ids = sorted({deployment["flow_id"] for deployment in deployments})
        flows = self._post_json("/flows/filter", {"flows": {"id": {"any_": flow_ids}}})
        flow_names = {flow["id"]: flow["name"] for flow in flows}
        return sorted(f"{flow_names.get(d['flow_id'], '?')}/{d['name']}" for d in deployments)

    def _post_json(
        self, path: str, body: dict[str, Any], timeout: float | None = None
    ) -> list[dict[str, Any]]:
        response = self._http.post(
            self.api_url + path, json=body, timeout=timeout or self._http.timeout
        )
        response.raise_for_status()
        return response.json()

    def _stop_all(self) -> None:
        """Newest first: the gateway stops taking work before the server it hands work to, and
        the flow runs in progress finish before the deployments server that runs them stops."""
        if self._stop_signal is not None:
            say(
                f"{signal.Signals(self._stop_signal).name} received: stopping "
                "(Ctrl-C again, a moment later, hurries: it kills the flow runs in progress)"
            )
        self._close_gateway_socket()
        for child in reversed(self.children):
            if child.name == DEPLOYMENTS_SERVER and self._stop_signal is not None:
                self._drain_flow_runs(child)
            if outcome := child.stop(STOP_TIMEOUT, hurry=lambda: self._hurry):
                say(outcome)
        for leftover, _ in self._leftovers:
            leftover.signal_group(signal.SIGKILL)
        self._leftovers.clear()
        if self.simulators is not None:
            self.simulators.stop()
            say("stopped the simulators")

    def _drain_flow_runs(self, deployments: ChildProcess) -> None:
        """Until no flow run is in progress (or DRAIN_TIMEOUT, or a hurry); runs not started yet
        stay scheduled for the next start."""
        prefect = self.slots[PREFECT_SERVER].child if PREFECT_SERVER in self.slots else None
        started = time.monotonic()
        announced: set[str] = set()
        while not self._hurry and time.monotonic() - started < DRAIN_TIMEOUT:
            if (
                deployments.exit_code() is not None
                or prefect is None
                or prefect.exit_code() is not None
            ):
                return
            try:
                runs = self._post_json(
                    "/flow_runs/filter",
                    {
                        "flow_runs": {"state": {"type": {"any_": IN_PROGRESS_RUN_STATES}}},
                        "limit": 50,
                    },
                )
            except (httpx.HTTPError, ValueError):
                return  # no answer: nothing to wait for that we could see
            # Runs a previous stack left "running" when it died have no process to wait for.
            runs = [run for run in runs if self._started_by_this_stack(run)]
            if not runs:
                if announced:
                    say(f"the flow runs in progress finished ({time.monotonic() - started:.1f} s)")
                return
            names = {run["name"] for run in runs} - announced
            if names:
                say(
                    f"waiting up to {DRAIN_TIMEOUT:.0f} s for the flow runs in progress to finish: "
                    f"{', '.join(sorted(names))}"
                )
                announced |= names
            time.sleep(POLL_SECONDS)
        if not self._hurry:
            warn(
                f"warning: flow runs still in progress after {DRAIN_TIMEOUT:.0f} s are cancelled; "
                "the nightly reconciliation (or a retry in the Prefect UI) catches up"
            )

    def _started_by_this_stack(self, run: dict[str, Any]) -> bool:
        if not run.get("start_time") or self._serve_started_at is None:
            return True
        return datetime.fromisoformat(run["start_time"]) >= self._serve_started_at

    # Signals

    def request_stop(self, signum: int) -> None:
        """What a SIGINT or SIGTERM does (see `_signals_handled`)."""
        now = time.monotonic()
        if self._stop_signal is None:
            self._stop_signal = signum
            self._stop_signal_at = now
        elif now - self._stop_signal_at > SAME_SIGNAL_SECONDS and not self._hurry:
            self._hurry = True  # no print here: a handler may interrupt a print

    @contextlib.contextmanager
    def _signals_handled(self) -> Generator[None]:
        """SIGINT and SIGTERM ask for a clean stop; a second one, later than
        SAME_SIGNAL_SECONDS after the first, hurries it (SIGKILL). Sooner, it is the same
        Ctrl-C: the terminal signals its whole foreground group (make, uv and this process),
        and make or uv pass it on."""
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may set handlers (tests may call `run` elsewhere)
            return

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            self.request_stop(signum)

        previous = {
            signum: signal.signal(signum, request_stop)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on `host:port` now (SO_REUSEADDR, as uvicorn binds)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        raise StackFailure(f"{host!r} is not a host name or address this machine knows") from None
    try:
        with socket.create_server((host, port), family=family):
            return True
    except OSError:
        return False


def gateway_url(settings: Settings) -> str:
    return f"http://{url_host(settings.gateway_host)}:{settings.gateway_port}"


def webhook_url(settings: Settings) -> str:
    """Where the stack's gateway takes PeopleForce webhooks (the sandbox sends them there)."""
    return gateway_url(settings) + WEBHOOK_PATH


def try_command() -> str:
    """The command the sandbox's banner (and the README) tells a newcomer to try."""
    return one_host.command(*TRY_ARGS)


def run_stack(settings: Settings, *, simulators: LocalSimulators | None = None) -> int:
    """Run the one-host stack until a signal (exit code 0) or a failure (non-zero); with
    `simulators` (not started yet), next to them and pointed at them."""
    return Stack(settings, simulators=simulators).run()
