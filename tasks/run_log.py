"""This service's log lines in the Prefect UI: a line logged inside a flow or task run also goes
to that run's log, and carries `FlowRunId` and `TaskRunId` (in Seq too).

`core.logging` configures the console and Seq for every process and knows nothing of Prefect;
a flow-run process adds this on top (`tasks.services.open_services` calls `send_to_run_logs`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from loguru import logger
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

from core.logging import TRACEBACK, add_context_properties, mask_standard_loggers

if TYPE_CHECKING:
    from loguru import Message

# Prefect's loggers that send their records to the run logs in the Prefect API themselves.
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.extra")

_sink_id: int | None = None
_api_handler: APILogHandler | None = None


def run_ids() -> dict[str, str]:
    """`FlowRunId` (and `TaskRunId`) of the Prefect run this code runs in, if any."""
    task = TaskRunContext.get()
    if task is not None and task.task_run is not None:
        ids = {"TaskRunId": str(task.task_run.id)}
        if task.task_run.flow_run_id:
            ids["FlowRunId"] = str(task.task_run.flow_run_id)
        return ids
    flow = FlowRunContext.get()
    if flow is not None and flow.flow_run is not None:
        return {"FlowRunId": str(flow.flow_run.id)}
    return {}


def prefect_run_sink(message: Message) -> None:
    """The line, in the log of the Prefect flow or task run it was logged in (else nowhere).

    Only this service's own lines go there. Lines of libraries reach loguru through
    `InterceptHandler` (they carry `Logger`) and are skipped: Prefect's own already go to the
    run log (they would show twice), and others (alembic, httpx) are noise there; worse, a
    library logging from a thread while Prefect's log worker starts would deadlock on it.
    """
    global _api_handler
    record = message.record
    if "Logger" in record["extra"]:
        return
    if (TaskRunContext.get() or FlowRunContext.get()) is None:
        return
    text = record["message"]
    if TRACEBACK in record["extra"]:
        text += "\n" + record["extra"][TRACEBACK]
    line = logging.LogRecord(
        name=record["name"] or "pf-jira-sync",
        level=record["level"].no,
        pathname=record["file"].path,
        lineno=record["line"],
        msg=text,
        args=None,
        exc_info=None,
        func=record["function"],
    )
    line.created = record["time"].timestamp()
    _api_handler = _api_handler or APILogHandler()
    _api_handler.handle(line)


def add_prefect_sink(level: str = "INFO") -> int:
    """Send lines logged inside Prefect runs to their run log; returns the loguru handler id."""
    return logger.add(prefect_run_sink, level=level, format="{message}")


def redact_prefect_run_logs() -> None:
    """Mask secrets in what Prefect's own loggers send to the run logs (its handlers are set up
    before this process's code runs, when Prefect configures logging)."""
    mask_standard_loggers(PREFECT_RUN_LOGGERS)


def send_to_run_logs(level: str = "INFO") -> None:
    """Idempotent: lines logged in runs go to their run logs, with the run ids, masked."""
    global _sink_id
    add_context_properties(run_ids)
    redact_prefect_run_logs()
    if _sink_id is None:
        _sink_id = add_prefect_sink(level)
