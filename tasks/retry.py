"""How tasks retry: the one policy every task that calls PeopleForce or Jira uses.

What is transient is decided by `core.errors.is_transient`; this module turns it into Prefect
task options: exponential backoff with jitter, and a retry condition that also honours the
server's Retry-After (429, 503) by waiting out whatever the backoff would not cover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from loguru import logger
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff

from core.errors import is_transient, retry_after_hint

RETRIES = 6
BACKOFF_SECONDS = 1.0
JITTER_FACTOR = 0.5
MAX_RETRY_AFTER_SECONDS = 300.0


def _planned_delay(task: Any, attempt: int) -> float:
    delays = task.retry_delay_seconds
    if isinstance(delays, Sequence) and delays:
        return float(delays[min(attempt, len(delays) - 1)])
    return float(delays or 0)


async def retry_when_transient(task: Any, task_run: TaskRun, state: State) -> bool:
    """Prefect's `retry_condition_fn`: retry transient API errors only."""
    error = await state.aresult(raise_on_failure=False)
    if not isinstance(error, BaseException) or not is_transient(error):
        return False
    wanted = retry_after_hint(error)
    if wanted:
        extra = min(wanted, MAX_RETRY_AFTER_SECONDS) - _planned_delay(
            task, max(task_run.run_count - 1, 0)
        )
        if extra > 0:
            logger.info(
                "{} asked to wait {:.1f}s before retrying", error.__class__.__name__, wanted
            )
            await asyncio.sleep(extra)
    return True


# Spread into @task(...) for every step that talks to an API.
API_RETRY_OPTIONS: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": exponential_backoff(BACKOFF_SECONDS)(RETRIES),
    "retry_jitter_factor": JITTER_FACTOR,
    "retry_condition_fn": retry_when_transient,
}
