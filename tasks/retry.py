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
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from core.errors import is_transient, retry_after_hint

# A step makes one API call, so with Jira refusing 30 % of calls, 10 retries leave about
# 0.3**11 (2e-6) chance of giving up. Delays double from 0.5 s and stop growing at 10 s.
RETRIES = 10
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
JITTER_FACTOR = 0.5
MAX_RETRY_AFTER_SECONDS = 300.0
RETRY_DELAYS = [
    min(BACKOFF_SECONDS * 2**attempt, MAX_BACKOFF_SECONDS) for attempt in range(RETRIES)
]


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


def api_task(name: str, task_run_name: str):
    """`@task` for a step that calls PeopleForce or Jira: retried only when transient, never cached
    (each call is a deliberate read or effect; the mapping store is the idempotency authority)."""
    return task(
        name=name,
        task_run_name=task_run_name,
        retries=RETRIES,
        retry_delay_seconds=RETRY_DELAYS,
        retry_jitter_factor=JITTER_FACTOR,
        retry_condition_fn=retry_when_transient,
        cache_policy=NO_CACHE,
    )
