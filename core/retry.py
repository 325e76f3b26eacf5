"""How the service tries again: the one retry engine, used by every step, action and read.

What is worth retrying is decided in `core.errors` (`is_transient` for the APIs,
`is_transient_store_error` for the database); this module decides how often and how long to
wait: exponential backoff with jitter, and never less than the server's Retry-After.

Why not Prefect's task retries: every task run costs the Prefect server about 8 ms of CPU (it
records each state change; README, "Benchmarks"), and one planned action makes 3 to 10 API and
store calls. A task run per call would cost the one-host stack more CPU than it has at 600
events a minute. So Prefect task runs mark the business actions ("create onboarding issue · Ada
Lovelace (1042)", `flows/actions.py`), each with `retries=0`, and every retry, of one call
(a 429 never repeats the calls before it) or of a whole action after a long outage, is made
here, in-process, and logged. No Prefect is imported: the command line retries the same way.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from loguru import logger

from core.errors import is_transient, is_transient_store_error, retry_delay

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` more tries after the first, waiting `delays[n]` before retry n+1 (the last
    delay repeats), each spread by +/- `jitter` of itself, only for errors `retry_on` accepts."""

    retries: int
    delays: Sequence[float]
    retry_on: Callable[[BaseException], bool] = is_transient
    jitter: float = 0.0

    def wait_before(self, retry: int, error: BaseException) -> float:
        """How long to wait before retry number `retry` (from 0) after `error`."""
        planned = float(self.delays[min(retry, len(self.delays) - 1)]) if self.delays else 0.0
        if self.jitter and planned > 0:
            planned *= random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 (not crypto)
        return retry_delay(error, planned)

    async def call(self, what: str, attempt: Callable[[], Awaitable[R]]) -> R:
        """`attempt()` until it succeeds, the error is not retryable, or the retries are spent."""
        retry = 0
        while True:
            try:
                return await attempt()
            except Exception as error:
                if retry >= self.retries or not self.retry_on(error):
                    raise
                delay = self.wait_before(retry, error)
                retry += 1
                logger.warning(
                    "{} failed ({}: {}); retry {}/{} in {:.1f}s",
                    what,
                    type(error).__name__,
                    error,
                    retry,
                    self.retries,
                    delay,
                )
                await asyncio.sleep(delay)

    def __call__(
        self, name: str
    ) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Decorate a coroutine function so that each call is retried by this policy; `name` is
        a template of its parameters (`"find Jira user · {who}"`) for the log lines."""

        def decorate(
            function: Callable[P, Coroutine[Any, Any, R]],
        ) -> Callable[P, Coroutine[Any, Any, R]]:
            signature = inspect.signature(function)

            @functools.wraps(function)
            async def retried(*args: P.args, **kwargs: P.kwargs) -> R:
                return await self.call(
                    _describe(name, signature, args, kwargs), lambda: function(*args, **kwargs)
                )

            return retried

        return decorate


def _describe(
    template: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    try:
        return template.format(**signature.bind(*args, **kwargs).arguments)
    except (TypeError, KeyError, AttributeError, IndexError):
        return template


# One API call (a step): with Jira refusing 30 % of calls, 10 retries leave about 0.3**11 (2e-6)
# chance of giving up. Delays double from 0.5 s and stop growing at 10 s.
API_CALL = RetryPolicy(retries=10, delays=[min(0.5 * 2**n, 10.0) for n in range(10)], jitter=0.5)
# One store call: the database is local; a lock or a restart passes quickly.
STORE_CALL = RetryPolicy(retries=3, delays=[0.5, 2.0, 5.0], retry_on=is_transient_store_error)
# A whole planned action whose calls each ran out of retries (a long outage) is tried again,
# later: its steps are idempotent (label guard, subtask search, the mapping row).
ACTION = RetryPolicy(retries=2, delays=[30.0, 120.0])
# A read from the terminal (`plan`, `reconcile --dry-run`): someone is waiting for it.
INTERACTIVE_READ = RetryPolicy(retries=3, delays=[0.5, 1.0, 2.0])
