"""No command prints a secret.

Every command an operator may type runs as a real process with settings that hold a distinct
secret in each place one can be (API keys and tokens, and the passwords and tokens inside
DATABASE_URL, PREFECT_API_URL, SEQ_URL, the proxies ...), and nothing it prints, on stdout or
stderr, may hold one of them. The commands mostly fail (every service is a closed local port):
what matters is what they say while failing, which is where URLs get quoted.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from core.settings import Settings
from deployments.stack import Stack
from sandbox.server import free_port
from tests.paths import ROOT, RULES_EXAMPLE

SETTING_NAMES = {name.upper() for name in Settings.model_fields}
# What the children must not inherit from the developer's shell (it would change what they do).
INHERITED = {
    *SETTING_NAMES,
    *(name for name in os.environ if name.upper().endswith("_PROXY")),
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
}

DB_PASSWORD = "db%2Fpw-sweep-Q7x2"  # as written in the URL; decoded it is "db/pw-sweep-Q7x2"
PREFECT_PASSWORD = "prefect-pw-sweep-8d1c"
SEQ_PASSWORD = "seq-pw-sweep-4e7b"
SEQ_TOKEN = "seq-token-sweep-2a9f"
HTTPS_PROXY_PASSWORD = "https-proxy-pw-sweep-6b3d"
HTTP_PROXY_PASSWORD = "http-proxy-pw-sweep-1f8e"
SANDBOX_HOOK_PASSWORD = "sandbox-hook-pw-sweep-4d2a"
JIRA_EMAIL = "bot@example.com"
JIRA_API_TOKEN = "jira-token-sweep-3b7f"
PREFECT_AUTH_STRING = "admin:prefect-auth-sweep-7e3a"
ALERT_PATH = "alert-path-sweep-0d6c"


def closed_port() -> int:
    """A local port nothing listens on (it was free a moment ago): every call there is refused."""
    return free_port()


@dataclass(frozen=True)
class Sweep:
    env: dict[str, str]
    secrets: list[str]
    cwd: Path


@pytest.fixture
def sweep(tmp_path: Path) -> Sweep:
    port = closed_port()
    local = f"127.0.0.1:{port}"
    settings = {
        "DATA_DIR": str(tmp_path / "data"),
        "RULES_FILE": str(RULES_EXAMPLE),
        "PEOPLEFORCE_BASE_URL": f"http://{local}/api/public/v3",
        "PEOPLEFORCE_API_KEY": "pf-key-sweep-5c2e",
        "WEBHOOK_SECRET": "webhook-secret-sweep-9a4d",
        "JIRA_BASE_URL": f"http://{local}",
        "JIRA_EMAIL": JIRA_EMAIL,
        "JIRA_API_TOKEN": JIRA_API_TOKEN,
        "DATABASE_URL": f"postgresql+asyncpg://pfjs:{DB_PASSWORD}@{local}/pf_jira_sync",
        "PREFECT_API_URL": f"http://prefect:{PREFECT_PASSWORD}@{local}/api",
        "PREFECT_API_KEY": "prefect-key-sweep-2c5b",
        "PREFECT_API_AUTH_STRING": PREFECT_AUTH_STRING,
        "SEQ_URL": f"http://seq:{SEQ_PASSWORD}@{local}/?token={SEQ_TOKEN}",
        "SEQ_API_KEY": "seq-key-sweep-8e1a",
        "ALERT_WEBHOOK_URL": f"http://{local}/hooks/{ALERT_PATH}",
        "HTTPS_PROXY": f"http://proxy:{HTTPS_PROXY_PASSWORD}@{local}",
        "HTTP_PROXY": f"http://proxy:{HTTP_PROXY_PASSWORD}@{local}",
        "SANDBOX_WEBHOOK_URL": f"http://hook:{SANDBOX_HOOK_PASSWORD}@{local}/webhooks/peopleforce",
        # The simulators the `sandbox` subcommands drive: nothing there either.
        "SANDBOX_PEOPLEFORCE_PORT": str(port),
        "SANDBOX_JIRA_PORT": str(port),
    }
    secrets = [
        settings[name]
        for name in (
            "PEOPLEFORCE_API_KEY",
            "WEBHOOK_SECRET",
            "JIRA_API_TOKEN",
            "PREFECT_API_KEY",
            "SEQ_API_KEY",
        )
    ]
    secrets += [
        DB_PASSWORD,
        unquote(DB_PASSWORD),
        PREFECT_PASSWORD,
        SEQ_PASSWORD,
        SEQ_TOKEN,
        HTTPS_PROXY_PASSWORD,
        HTTP_PROXY_PASSWORD,
        SANDBOX_HOOK_PASSWORD,
        PREFECT_AUTH_STRING.split(":", 1)[1],
        ALERT_PATH,
        base64.b64encode(f"{JIRA_EMAIL}:{JIRA_API_TOKEN}".encode()).decode(),
        base64.b64encode(PREFECT_AUTH_STRING.encode()).decode(),
    ]
    base = {name: value for name, value in os.environ.items() if name not in INHERITED}
    env = {
        **base,
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "250",
        "NO_COLOR": "1",
        # Prefect's own client gives up at once on a refused connection.
        "PREFECT_CLIENT_MAX_RETRIES": "0",
        **settings,
    }
    return Sweep(env, secrets, tmp_path)


# Every command as a user may type it (`python -m cli --help`, and each group's --help).
COMMANDS = [
    ["config"],
    ["doctor"],
    ["events"],
    ["replay", "e1"],
    ["plan", "7"],
    ["reconcile", "--dry-run"],
    ["reconcile"],
    ["deploy"],
    ["worker", "--deploy"],
    ["alerts", "install"],
    ["alerts", "remove"],
    ["alerts", "test"],
    ["up"],
    ["up", "--sandbox"],
    ["sandbox", "hire", "Eve Example"],
    ["sandbox", "update", "7", "--department", "Sales"],
    ["sandbox", "terminate", "7"],
    ["sandbox", "revert", "7"],
    ["sandbox", "start", "7"],
]


@dataclass(frozen=True)
class Printed:
    command: list[str]
    returncode: int
    output: str


def run(command: list[str], sweep: Sweep, **env: str) -> Printed:
    result = subprocess.run(
        [sys.executable, "-m", "cli", *command],
        env={**sweep.env, **env},
        cwd=sweep.cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    return Printed(command, result.returncode, result.stdout + result.stderr)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something listens on: `up` stops at its checks, after saying what it ignores."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def run_sandbox(sweep: Sweep) -> Printed:
    """`sandbox` alone runs the simulators until Ctrl-C: until its banner is out, then SIGINT."""
    env = {
        **sweep.env,
        "SANDBOX_PEOPLEFORCE_PORT": str(free_port()),
        "SANDBOX_JIRA_PORT": str(free_port()),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "sandbox"],
        env=env,
        cwd=sweep.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops them" in line:
            process.send_signal(signal.SIGINT)
            break
    try:
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    return Printed(["sandbox"], process.returncode, "".join(lines) + stdout + stderr)


def leaks(printed: Printed, secrets: list[str]) -> list[str]:
    return [secret for secret in secrets if secret in printed.output]


def test_no_command_prints_a_secret(sweep: Sweep, busy_port: int) -> None:
    def one(command: list[str]) -> Printed:
        if command[0] == "up":
            return run(command, sweep, GATEWAY_PORT=str(busy_port))
        return run(command, sweep)

    with ThreadPoolExecutor(max_workers=4) as pool:
        sandbox = pool.submit(run_sandbox, sweep)
        printed = [*pool.map(one, COMMANDS), sandbox.result()]
    found = {
        " ".join(result.command): (found, result.output)
        for result in printed
        if (found := leaks(result, sweep.secrets))
    }
    assert not found, "\n\n".join(
        f"$ pf-jira-sync {command}\nprints {secrets}:\n{output}"
        for command, (secrets, output) in found.items()
    )
    by_command = {" ".join(result.command): result for result in printed}
    # The commands ran and said something about where they looked, masked.
    config = by_command["config"].output
    assert by_command["config"].returncode == 0, config
    assert f"postgresql+asyncpg://pfjs:********@{sweep.env['DATABASE_URL'].split('@')[1]}" in config
    assert "?token=********" in config
    assert "HTTPS_PROXY (environment)" in config
    assert "http://proxy:********@" in config
    assert "PREFECT_API_URL=http://prefect:********@" in by_command["up"].output
    assert "Webhooks go to:        http://hook:********@" in by_command["sandbox"].output
    assert "no Prefect server answers at http://prefect:********@" in by_command["deploy"].output


def test_the_stack_banner_masks_the_urls(capsys: pytest.CaptureFixture[str]) -> None:
    """`up`'s banner, said once everything answers (too slow to start here: shown alone)."""
    settings = Settings(
        seq_url=f"http://seq:{SEQ_PASSWORD}@127.0.0.1:5341/?apikey={SEQ_TOKEN}",  # type: ignore[arg-type]
        webhook_secret="webhook-secret-sweep-9a4d",  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    stack = Stack(settings)
    try:
        stack._announce()
    finally:
        stack._http.close()
    out = capsys.readouterr().out
    assert "Seq (structured):    http://seq:********@127.0.0.1:5341/?apikey=********" in out
    assert SEQ_PASSWORD not in out
    assert SEQ_TOKEN not in out
