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

A write that is not idempotent (a create, a comment, a transition) must not simply be sent
again when its failure leaves open whether it was applied (`core.errors.may_have_applied`: a
read timeout, a dropped connection, a 5xx). Such a step gives a `confirm`: a strongly
consistent read that answers what the write produced if it did happen, None if it did not.
After such a failure nothing is sent again before `confirm` has answered None; if it cannot
answer, its error ends the step (the write is left in doubt, never repeated blindly).
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

from core.errors import is_transient, is_transient_store_error, may_have_applied, retry_delay

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` more tries after the first, waiting `delays[n]` before retry n+1 (the last
    delay repeats), each spread by +/- `jitter` of itself, only for errors `retry_on` accepts.

    `confirm_after`: the least wait, after a write that may have been applied, before reading
    whether it was: a request that timed out may still be under way in the server, and a read
    made too soon would miss it (and the write then be made twice).
    """

    retries: int
    delays: Sequence[float]
    retry_on: Callable[[BaseException], bool] = is_transient
    jitter: float = 0.0
    confirm_after: float = 0.0

    def wait_before(self, retry: int, error: BaseException) -> float:
        """How long to wait before retry number `retry` (from 0) after `error`."""
        planned = float(self.delays[min(retry, len(self.delays) - 1)]) if self.delays else 0.0
        if self.jitter and planned > 0:
            planned *= random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 (not crypto)
        return retry_delay(error, planned)

    async def call(
        self,
        what: str,
        attempt: Callable[[], Awaitable[R]],
        confirm: Callable[[], Awaitable[R | None]] | None = None,
    ) -> R:
        """`attempt()` until it succeeds, the error is not retryable, or the retries are spent.

        With `confirm` (a write): after a failure that may have been applied, `confirm()` is
        awaited before anything else; what it answers (not None) is the attempt's result, and
        only None lets the write be sent again. It must retry its own reads.
        """
        retry = 0
        while True:
            try:
                return await attempt()
            except Exception as error:
                in_doubt = confirm is not None and may_have_applied(error)
                may_retry = retry < self.retries and self.retry_on(error)
                if not (in_doubt or may_retry):
                    raise
                delay = self.wait_before(retry, error)
                if in_doubt:
                    delay = max(delay, self.confirm_after)
                    logger.warning(
                        "{} may have happened all the same ({}: {}); reading whether it did "
                        "in {:.1f}s, before anything is sent again",
                        what,
                        type(error).__name__,
                        error,
                        delay,
                    )
                else:
                    logger.warning(
                        "{} failed ({}: {}); retry {}/{} in {:.1f}s",
                        what,
                        type(error).__name__,
                        error,
                        retry + 1,
                        self.retries,
                        delay,
                    )
                await asyncio.sleep(delay)
                if confirm is not None and in_doubt:
                    done = await confirm()
                    if done is not None:
                        logger.info("{}: it had happened; not sent again", what)
                        return done
                    if not may_retry:
                        raise
                    logger.warning(
                        "{}: it had not happened; retry {}/{}", what, retry + 1, self.retries
                    )
                retry += 1

    def __call__(
        self, name: str, *, confirm: Callable[..., Awaitable[R | None]] | None = None
    ) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Decorate a coroutine function so that each call is retried by this policy; `name` is
        a template of its parameters (`"find Jira user · {who}"`) for the log lines.

        `confirm` (for a write that is not idempotent; see `call`) declares the parameters of
        the function it needs, by name, and is handed their values of the same call."""

        def decorate(
            function: Callable[P, Coroutine[Any, Any, R]],
        ) -> Callable[P, Coroutine[Any, Any, R]]:
            signature = inspect.signature(function)
            wanted = list(inspect.signature(confirm).parameters) if confirm is not None else []
            if unknown := [p for p in wanted if p not in signature.parameters]:
                raise TypeError(f"{name!r} has no parameters {unknown} to confirm with")

            @functools.wraps(function)
            async def retried(*args: P.args, **kwargs: P.kwargs) -> R:
                def confirming() -> Awaitable[R | None]:
                    assert confirm is not None
                    bound = signature.bind(*args, **kwargs)
                    bound.apply_defaults()
                    return confirm(**{p: bound.arguments[p] for p in wanted})

                return await self.call(
                    _describe(name, signature, args, kwargs),
                    lambda: function(*args, **kwargs),
                    confirming if confirm is not None else None,
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
# chance of giving up. Delays double from 0.5 s and stop growing at 10 s. A write in doubt is
# read back no sooner than 2 s after it failed.
API_CALL = RetryPolicy(
    retries=10,
    delays=[min(0.5 * 2**n, 10.0) for n in range(10)],
    jitter=0.5,
    confirm_after=2.0,
)
# One store call: the database is local; a lock or a restart passes quickly.
STORE_CALL = RetryPolicy(retries=3, delays=[0.5, 2.0, 5.0], retry_on=is_transient_store_error)
# A whole planned action whose calls each ran out of retries (a long outage) is tried again,
# later: its steps are idempotent (label guard, subtask search, the mapping row).
ACTION = RetryPolicy(retries=2, delays=[30.0, 120.0])
# A read from the terminal (`plan`, `reconcile --dry-run`): someone is waiting for it.
INTERACTIVE_READ = RetryPolicy(retries=3, delays=[0.5, 1.0, 2.0])
