"""The gateway process loads the ground floor only: an import error in any flow or task, or the
time it takes to import them, can never stop it from acknowledging webhooks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.names import WEBHOOK_PATH
from core.peopleforce.signature import SIGNATURE_HEADER, sign
from core.settings import Settings
from sandbox.server import free_port
from tests.paths import PEOPLEFORCE_FIXTURES, ROOT

SECRET = "gateway-process-secret"
PROCESS_LAYERS = {"flows", "tasks", "deployments", "sandbox", "cli"}
# `python -X importtime` writes one line per module imported: "import time: self | cumulative | name".
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| (\s*)(\S+)$", re.M)


def test_the_gateway_process_imports_no_flow_task_deployment_or_cli(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k.upper() not in Settings.model_fields},
        "PYTHONPATH": str(ROOT),
        "DATA_DIR": str(tmp_path / "data"),
        "WEBHOOK_SECRET": SECRET,
        # Nothing listens there: the dispatcher keeps the event pending and backs off.
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
    }
    log = tmp_path / "gateway.log"
    with log.open("w") as stderr:
        gateway = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "webhook_gateway", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, trust_env=False, timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert gateway.poll() is None, "the gateway exited"
                assert time.monotonic() < deadline, "the gateway did not answer /healthz"
                time.sleep(0.2)
            # A whole delivery, dispatch attempt included: what it imports lazily counts too.
            body = (PEOPLEFORCE_FIXTURES / "webhook_employee_create.json").read_bytes()
            answer = client.post(
                WEBHOOK_PATH, content=body, headers={SIGNATURE_HEADER: sign(SECRET, body)}
            )
            assert answer.status_code == 202, answer.text
            time.sleep(2)
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)

    modules = {name for _indent, name in IMPORTED.findall(log.read_text())}
    assert {"webhook_gateway.app", "core.store"} <= modules  # the report is real
    loaded = {name for name in modules if name.split(".")[0] in PROCESS_LAYERS}
    assert loaded == set()
