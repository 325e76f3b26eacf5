"""Warm starts for served flow runs: each run is a fork of a process that has imported Prefect
and the flows already, instead of a freshly spawned interpreter.

Prefect's runner starts a served flow run with `prefect.flow_engine.run_flow_in_subprocess`,
which takes a "spawn" multiprocessing context: a new interpreter per run that imports prefect
and the flows first, about 2.5 CPU-s on the 2-core host, most of a single event's latency.
`install()` gives that function a "forkserver" context instead: multiprocessing starts one
server process that imports `PRELOAD` once, and each run is forked from it (milliseconds,
its memory shared copy-on-write). Nothing else changes: still one process per run, with its
own pid, exit code, heartbeats and control channel, so the runner's join, kill and
cancellation, and crash detection, work as they did. Importing `PRELOAD` starts no thread,
event loop or client and reads no settings (tests/deployments/test_warm_start.py checks), so
nothing a fork copies is stale; each run still builds its settings from its environment.

The fork server is the deployments server's child (same process group, so what a dead
deployments server leaves is ended with it, `deployments.stack`); it exits when the
deployments server dies, and a fork server that died is started again by the next run.
Each run dies with the fork server (PR_SET_PDEATHSIG): a run left behind would work on while
its runner, which saw its process end, already has it marked Crashed and worked again.
"""

from __future__ import annotations

import ctypes
import inspect
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
from typing import Any

from loguru import logger
from prefect import flow_engine

FORKSERVER = "forkserver"
# Imported once by the fork server: everything a flow run imports anyway (the engine, the
# client, the flows and their tasks), so a forked run imports (almost) nothing.
PRELOAD = [
    "deployments.warm_start",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.client.orchestration",
    "deployments.definitions",
    # ... and what they import only once running: the store's database drivers, the graph
    # helpers a subflow call looks at, anyio's event loop backend.
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "prefect.utilities.visualization",
    "prefect.utilities.schema_tools",
    "anyio._backends._asyncio",
    # A forked run runs the deployments server's module again, as `__mp_main__` (multiprocessing
    # prepares each child so): its imports, loaded here, make that cost nothing. (Not the module
    # itself: run again once imported, runpy warns in every run.)
    "prefect.runner",
    "deployments.alerts",
    "core.logging",
]
# The line of Prefect 3.9's `run_flow_in_subprocess` this replaces the context of: another
# Prefect may start runs otherwise, and then the runs start cold (said once, at install).
SPAWN_CALL = 'multiprocessing.get_context("spawn")'
PR_SET_PDEATHSIG = 1


class _ForkServerMultiprocessing:
    """`multiprocessing` as `prefect.flow_engine` sees it: the same module, except that the
    context it asks for (only `run_flow_in_subprocess` asks, for "spawn") is the fork server."""

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)

    @staticmethod
    def get_context(method: str | None = None) -> multiprocessing.context.BaseContext:
        return multiprocessing.get_context(FORKSERVER)


def install() -> bool:
    """Start served flow runs by fork from a warm fork server (started now, so that the first
    run does not wait for its imports); returns whether it could. Call once, before serving."""
    if not sys.platform.startswith("linux"):  # PR_SET_PDEATHSIG is Linux's
        logger.info(
            "flow runs start in a new interpreter each (no fork server on {})", sys.platform
        )
        return False
    if SPAWN_CALL not in inspect.getsource(flow_engine.run_flow_in_subprocess):
        logger.warning(
            "this Prefect starts flow runs otherwise than Prefect 3.9 did: they start in a new "
            "interpreter each, not by fork from a warm one (deployments/warm_start.py)"
        )
        return False
    multiprocessing.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    flow_engine.multiprocessing = _ForkServerMultiprocessing()  # ty: ignore[invalid-assignment]
    return True


_forking_parent = 0  # the pid of the process forking, noted just before each fork


def _note_forking_parent() -> None:
    global _forking_parent
    _forking_parent = os.getpid()


def _die_with_fork_server() -> None:
    """In each forked run: be killed when the fork server dies, rather than outlive it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _forking_parent:  # it died before the line above: as if just after
        os.kill(os.getpid(), signal.SIGKILL)


# Registered wherever this module is imported, but meant for the fork server (PRELOAD's
# first), whose forks are the flow runs: the deployments server never forks (its children are
# exec'd, which runs no at-fork hook).
if sys.platform.startswith("linux"):
    os.register_at_fork(before=_note_forking_parent, after_in_child=_die_with_fork_server)
