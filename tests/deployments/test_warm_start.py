"""Warm starts (deployments/warm_start.py): a served flow run is a fork of the warm fork server,
does its work and reports its end; a run whose process is killed, or whose fork server dies,
is still seen to crash. Against the Prefect test harness, with Prefect's own Runner, as
`deployments.serve` serves."""

from __future__ import annotations

import asyncio
import json
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import flow, flow_engine
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.runner import Runner

from deployments import warm_start
from tests.paths import ROOT


@flow(name="warm-start-probe")
def probe(path: str, hold_seconds: float = 0.0) -> None:
    """Says where it runs: its pid, its parent, and whether the flows were imported before it."""
    facts = {
        "pid": os.getpid(),
        "parent": os.getppid(),
        "preloaded": "deployments.definitions" in sys.modules,
    }
    Path(path).write_text(json.dumps(facts))
    time.sleep(hold_seconds)


@pytest.fixture
def warm(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Warm starts installed in this process; yields the fork server's pid."""
    monkeypatch.setattr(flow_engine, "multiprocessing", flow_engine.multiprocessing)
    assert warm_start.install()
    server_pid = multiprocessing.forkserver._forkserver._forkserver_pid  # ty: ignore[missing-attribute]
    assert server_pid is not None
    yield server_pid
    multiprocessing.forkserver._forkserver._stop()  # ty: ignore[missing-attribute]


@pytest.fixture
async def served(prefect_server: None, warm: int) -> AsyncIterator[tuple[Runner, UUID]]:
    runner = Runner(query_seconds=0.2, pause_on_shutdown=False, limit=None)
    deployment_id = await runner.aadd_flow(probe, name="warm")
    serving = asyncio.create_task(runner.start())
    try:
        yield runner, deployment_id
    finally:
        await runner.astop()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving


WITHIN = 90.0  # seconds for a run to start, or to end


async def run_and_wait(
    deployment_id: UUID, parameters: dict[str, Any], until: set[StateType]
) -> StateType:
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        deadline = time.monotonic() + WITHIN
        while True:
            state = (await client.read_flow_run(run.id)).state
            if state is not None and state.type in until:
                return state.type
            assert time.monotonic() < deadline, f"run still {state and state.type} after {WITHIN}s"
            await asyncio.sleep(0.2)


def read_facts(path: Path) -> dict[str, Any] | None:
    text = path.read_text() if path.exists() else ""
    return json.loads(text) if text else None


async def facts_of(path: Path) -> dict[str, Any]:
    """What the probe run said, once it has."""
    deadline = time.monotonic() + WITHIN
    while (facts := await asyncio.to_thread(read_facts, path)) is None:
        assert time.monotonic() < deadline, "the run never started"
        await asyncio.sleep(0.1)
    return facts


async def test_a_served_run_is_forked_from_the_warm_fork_server_and_completes(
    served: tuple[Runner, UUID], warm: int, tmp_path: Path
) -> None:
    _, deployment_id = served
    facts_file = tmp_path / "facts.json"
    ended = await run_and_wait(
        deployment_id, {"path": str(facts_file)}, {StateType.COMPLETED, StateType.CRASHED}
    )
    assert ended == StateType.COMPLETED
    facts = await facts_of(facts_file)
    assert facts["parent"] == warm  # forked by the fork server, not spawned by the runner
    assert facts["preloaded"]  # the flows were imported before the run, once
    assert facts["pid"] not in (warm, os.getpid())


async def test_a_killed_run_process_is_seen_to_crash(
    served: tuple[Runner, UUID], tmp_path: Path
) -> None:
    _, deployment_id = served
    facts_file = tmp_path / "facts.json"
    parameters = {"path": str(facts_file), "hold_seconds": 120}
    ending = asyncio.create_task(
        run_and_wait(deployment_id, parameters, {StateType.COMPLETED, StateType.CRASHED})
    )
    os.kill((await facts_of(facts_file))["pid"], signal.SIGKILL)
    assert await ending == StateType.CRASHED


async def test_runs_die_with_their_fork_server_and_the_next_gets_a_new_one(
    served: tuple[Runner, UUID], warm: int, tmp_path: Path
) -> None:
    """A run must not work on unseen once the fork server that reported its end is gone."""
    _, deployment_id = served
    held = tmp_path / "held.json"
    parameters = {"path": str(held), "hold_seconds": 120}
    ending = asyncio.create_task(
        run_and_wait(deployment_id, parameters, {StateType.COMPLETED, StateType.CRASHED})
    )
    run_pid = (await facts_of(held))["pid"]
    os.kill(warm, signal.SIGKILL)
    assert await ending == StateType.CRASHED
    deadline = time.monotonic() + 10
    while _alive(run_pid):
        assert time.monotonic() < deadline, "the run outlived its fork server"
        await asyncio.sleep(0.1)

    again = tmp_path / "again.json"
    ended = await run_and_wait(
        deployment_id, {"path": str(again)}, {StateType.COMPLETED, StateType.CRASHED}
    )
    assert ended == StateType.COMPLETED
    assert (await facts_of(again))["parent"] not in (warm, os.getpid())


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped by its dead parent's heir, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_preloaded_modules_start_nothing_a_fork_would_copy_stale() -> None:
    """What the fork server imports leaves no thread (an event loop's among them), HTTP client
    or settings read behind: each forked run would inherit it, dead or out of date."""
    check = (
        "import gc, importlib, threading, httpx\n"
        "from deployments.warm_start import PRELOAD\n"
        "for name in PRELOAD: importlib.import_module(name)\n"
        "from core.settings import get_settings\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert get_settings.cache_info().currsize == 0, 'settings read at import'\n"
        "clients = [o for o in gc.get_objects() if isinstance(o, httpx.Client | httpx.AsyncClient)]\n"
        "assert not clients, clients\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
