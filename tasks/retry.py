"""How tasks retry: the one policy every task that calls PeopleForce or Jira uses.

What is transient is decided by `core.errors.is_transient`; this module turns it into Prefect
task options: exponential backoff with jitter, and a retry condition that also honours the
server's Retry-After (429, 503) by waiting out whatever the backoff would not cover.

Steps (one API or store call each) run either as task runs of their own or, inside an action's
task run, `inline`: the same function, retried in-process with the same options. The per-
employee work does the latter. Every task run costs the Prefect server tens of milliseconds of
CPU (it records each state change), so one task run per business action ("create the onboarding
issue for Ada") instead of one per HTTP call is what lets one host keep up with 600 events a
minute, while each call still retries on its own (a 429 never repeats the calls before it).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

from loguru import logger
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.utilities.math import clamped_poisson_interval

from core.errors import is_transient, retry_after_hint, retry_delay

# A step makes one API call, so with Jira refusing 30 % of calls, 10 retries leave about
# 0.3**11 (2e-6) chance of giving up. Delays double from 0.5 s and stop growing at 10 s.
RETRIES = 10
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
JITTER_FACTOR = 0.5
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
    planned = _planned_delay(task, max(task_run.run_count - 1, 0))
    extra = retry_delay(error, planned) - planned  # Prefect then waits the planned delay
    if extra > 0:
        logger.info(
            "{} asked to wait {:.1f}s before retrying",
            error.__class__.__name__,
            retry_after_hint(error),
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


# An action that failed although each of its calls retried (a long outage) is tried again
# whole, later: its steps are idempotent (label guard, subtask search, the mapping row).
ACTION_RETRY_DELAYS = [30.0, 120.0]

P = ParamSpec("P")
R = TypeVar("R")


def action_task(name: str, task_run_name: str):
    """`@task` for one planned action of one employee; its steps run `inline` under it."""

    def decorate(
        function: Callable[P, Coroutine[Any, Any, R]],
    ) -> Task[P, Coroutine[Any, Any, R]]:
        return task(
            name=name,
            task_run_name=task_run_name,
            retries=len(ACTION_RETRY_DELAYS),
            retry_delay_seconds=ACTION_RETRY_DELAYS,
            retry_condition_fn=retry_when_transient,
            cache_policy=NO_CACHE,
        )(function)

    return decorate


def inline(
    step: Task[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """`step` as a plain call inside the current task run, retried in-process with the step's
    own retries, delays, jitter and condition (a store step retries any error, an API step
    only transient ones, waiting at least what Retry-After asks)."""

    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        attempt = 0
        while True:
            try:
                return await step.fn(*args, **kwargs)
            except Exception as error:
                retryable = step.retry_condition_fn is None or (
                    step.retry_condition_fn is retry_when_transient and is_transient(error)
                )
                if attempt >= step.retries or not retryable:
                    raise
                delay = _planned_delay(step, attempt)
                if step.retry_jitter_factor and delay > 0:
                    delay = clamped_poisson_interval(delay, step.retry_jitter_factor)
                delay = retry_delay(error, delay)
                attempt += 1
                logger.warning(
                    "{} failed ({}: {}); retry {}/{} in {:.1f}s",
                    _step_name(step, args, kwargs),
                    type(error).__name__,
                    error,
                    attempt,
                    step.retries,
                    delay,
                )
                await asyncio.sleep(delay)

    return call


def _step_name(step: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The name the step's task run would have had, for log lines."""
    template = step.task_run_name
    if not isinstance(template, str):
        return step.name
    try:
        bound = inspect.signature(step.fn).bind(*args, **kwargs)
        return template.format(**bound.arguments)
    except (TypeError, KeyError, AttributeError, IndexError):
        return step.name
