"""Pacing of Jira requests: the rate governor the Jira client asks before every request.

Jira Cloud limits API-token traffic per tenant by burst limits per endpoint and method, and
writes to one issue by a per-issue limit (docs/jira-api.md section 6). Every flow run and
worker of one deployment is the same tenant to Jira, so the endpoint rates are shared by all
of them; `Governor` paces, `TokenSource` is where the rates are kept: `LocalTokens` here for
one process (the command line, tests), `core.store.pace.StoreTokens` in the store's database
for every run of a deployment (wired in `tasks.services`).

What the governor does:

- a token bucket per endpoint class (`METHOD template`, as Jira counts: every issue shares
  `PUT issue/{issueIdOrKey}`), at the rate configured for its method (`JIRA_RATE_*`, below
  Jira's burst limits), holding `JIRA_RATE_BURST_SECONDS` of it;
- per-issue pacing of writes to one issue (`JIRA_ISSUE_WRITE_WINDOWS`, below Jira's 20 in 2 s
  and 100 in 30 s). Kept in the process: a run holds an employee's lease while it writes to
  their issues, so no two runs write to one issue at once;
- answers: `X-RateLimit-NearLimit: true`, or `X-RateLimit-Remaining` near zero, halve the
  class's rate for a few seconds (for everyone sharing the source); a burst 429 pauses the class
  until `X-RateLimit-Reset`, for everyone; a per-issue 429 pauses writes to that one issue. A
  429 without Jira's burst signal (a gateway's, an injected fault's) pauses nothing: that one
  request waits its Retry-After and is sent again (`core.retry`), as before. Which 429 is
  which is decided in one place, `core.errors.rate_limit_scope`.

Tokens are reserved from the source in small batches (a 20th of a second of the rate; the
bucket may go below zero, and the taker waits until they are paid for) and held by the process
for at most `HOLD_SECONDS` after that, so a shared source costs one transaction per batch, not
per request, and never a visit that comes back empty; what a process holds and does not use
in time is dropped (never sent late in a burst). A pause another process records reaches this one at its next visit to the source:
within a batch of requests or `HOLD_SECONDS`.

Nothing here knows Prefect or the store.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import httpx
from loguru import logger

from core.errors import ApiError, RateLimitedError, is_transient_store_error, rate_limit_scope

if TYPE_CHECKING:
    from core.settings import Settings

# Under this share of its bucket left (or Jira's NearLimit), an endpoint class is slowed.
NEAR_LIMIT_SHARE = 0.1
# A slowed class runs at this share of its rate, for this long after the last sign.
SLOW_FACTOR = 0.5
SLOW_SECONDS = 3.0
# Tokens a process took and has not used within this long are dropped.
HOLD_SECONDS = 1.0
# A Reset further away than this is not trusted in full (a clock far off, a garbled header).
MAX_PAUSE_SECONDS = 60.0
# A per-issue 429 with neither Reset nor Retry-After pauses the issue this long.
DEFAULT_ISSUE_PAUSE_SECONDS = 2.0


@dataclass(frozen=True)
class JiraCall:
    """One request as the governor sees it: its method, its endpoint's template (relative to
    the API root, `issue/{issueIdOrKey}`) and, for a write to one issue, that issue's key."""

    method: str
    endpoint: str
    issue_key: str | None = None

    @property
    def endpoint_class(self) -> str:
        return f"{self.method} {self.endpoint}"


class Pacer(Protocol):
    """What the Jira client asks: `before` waits until the request may go, `after` reads what
    came back (the response, or the error it was turned into)."""

    async def before(self, call: JiraCall) -> None: ...

    async def after(self, call: JiraCall, outcome: httpx.Response | ApiError) -> None: ...


@dataclass(frozen=True)
class Rates:
    """Requests a second per endpoint class, by method (a method not named is not paced),
    how many seconds of it a bucket holds, and the per-issue write windows
    (`(writes, seconds)`: at most that many writes to one issue within any such seconds)."""

    per_method: Mapping[str, float] = field(
        default_factory=lambda: {"GET": 80.0, "POST": 80.0, "PUT": 40.0, "DELETE": 40.0}
    )
    burst_seconds: float = 0.5
    issue_windows: Sequence[tuple[int, float]] = ((15, 2.0), (80, 30.0))

    @classmethod
    def from_settings(cls, settings: Settings) -> Rates:
        return cls(
            per_method={
                "GET": settings.jira_rate_get,
                "POST": settings.jira_rate_post,
                "PUT": settings.jira_rate_put,
                "DELETE": settings.jira_rate_delete,
            },
            burst_seconds=settings.jira_rate_burst_seconds,
            issue_windows=tuple(
                (int(writes), float(seconds))
                for writes, seconds in settings.jira_issue_write_windows
            ),
        )

    def rate_of(self, method: str) -> float | None:
        rate = self.per_method.get(method)
        return rate if rate is not None and rate > 0 else None

    def capacity(self, rate: float) -> float:
        return max(1.0, rate * self.burst_seconds)

    @staticmethod
    def batch(rate: float) -> int:
        """Tokens taken from the source at a time: a 20th of a second of the rate."""
        return max(1, math.floor(rate / 20))


# --------------------------------------------------------------------------- buckets


@dataclass(frozen=True)
class Bucket:
    """One endpoint class's shared state (times in seconds since the epoch)."""

    tokens: float
    at: float
    paused_until: float = 0.0
    slowed_until: float = 0.0


@dataclass(frozen=True)
class Grant:
    """What the source gave: `tokens`, to be spent no sooner than `wait` seconds from now (0
    tokens: the class is paused, ask again after `wait`); the class's pause and slow-down as
    the source knows them."""

    tokens: int
    wait: float = 0.0
    paused_until: float = 0.0
    slowed_until: float = 0.0


def take_tokens(
    bucket: Bucket | None, rate: float, capacity: float, want: int, now: float
) -> tuple[Bucket, Grant]:
    """Refill `bucket` (None: a new, full one) to `now` and reserve `want` tokens.

    The tokens are always given (the bucket may go below zero), with the `wait` until they
    are paid for: the taker spends them no sooner. So a busy class costs one visit per batch,
    never a visit that comes back empty. Nothing is given while the class is paused (`wait`
    is then until the pause ends). A clock behind the bucket's (another host) refills nothing.
    """
    want = max(1, min(want, math.floor(capacity)))
    if bucket is None:
        bucket = Bucket(tokens=capacity, at=now)
    effective = rate * (SLOW_FACTOR if bucket.slowed_until > now else 1.0)
    tokens = min(capacity, bucket.tokens + max(0.0, now - bucket.at) * effective)
    refilled = replace(bucket, tokens=tokens, at=max(now, bucket.at))
    if bucket.paused_until > now:
        wait = bucket.paused_until - now
        return refilled, Grant(0, wait, bucket.paused_until, bucket.slowed_until)
    left = tokens - want
    wait = max(0.0, -left / effective)
    return replace(refilled, tokens=left), Grant(
        want, wait, bucket.paused_until, bucket.slowed_until
    )


class TokenSource(Protocol):
    """Where the endpoint classes' buckets are kept (one process, or the store for all)."""

    async def take(
        self, endpoint_class: str, rate: float, capacity: float, want: int, now: float
    ) -> Grant: ...

    async def pause(self, endpoint_class: str, until: float) -> None: ...

    async def slow(self, endpoint_class: str, until: float) -> None: ...


class LocalTokens:
    """The buckets in this process only: the command line, tests."""

    def __init__(self) -> None:
        self.buckets: dict[str, Bucket] = {}

    async def take(
        self, endpoint_class: str, rate: float, capacity: float, want: int, now: float
    ) -> Grant:
        bucket, grant = take_tokens(self.buckets.get(endpoint_class), rate, capacity, want, now)
        self.buckets[endpoint_class] = bucket
        return grant

    async def pause(self, endpoint_class: str, until: float) -> None:
        bucket = self.buckets.get(endpoint_class) or Bucket(tokens=0.0, at=until)
        self.buckets[endpoint_class] = replace(bucket, paused_until=max(bucket.paused_until, until))

    async def slow(self, endpoint_class: str, until: float) -> None:
        bucket = self.buckets.get(endpoint_class)
        if bucket is not None:
            self.buckets[endpoint_class] = replace(
                bucket, slowed_until=max(bucket.slowed_until, until)
            )


# --------------------------------------------------------------------------- the governor


@dataclass
class _Held:
    """One endpoint class as this process sees it: tokens it holds, and what it last heard."""

    tokens: int = 0
    expires: float = 0.0
    not_before: float = 0.0
    paused_until: float = 0.0
    slowed_until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _IssueWrites:
    times: deque[float] = field(default_factory=deque)
    paused_until: float = 0.0


class Governor:
    """The `Pacer` of one process: endpoint classes through `source`, issues in-process.

    `clock` is wall time (seconds since the epoch): buckets are shared between processes and
    hosts, and Jira's X-RateLimit-Reset is a point in time."""

    def __init__(
        self,
        rates: Rates | None = None,
        source: TokenSource | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.rates = rates or Rates()
        self.source: TokenSource = source or LocalTokens()
        self.clock = clock
        self.sleep = sleep
        self._classes: dict[str, _Held] = {}
        self._issues: dict[str, _IssueWrites] = {}
        self._alone = LocalTokens()  # while the source cannot answer

    async def before(self, call: JiraCall) -> None:
        rate = self.rates.rate_of(call.method)
        issue = call.issue_key if self.rates.issue_windows else None
        while True:
            # The issue's turn is awaited first and counted last, once the class's token is
            # taken: a write counted and then held back for a token could reach Jira together
            # with later ones, more in one window than counted.
            if issue is not None:
                await self.sleep(self._issue_wait(issue))
            if rate is not None:
                await self._class_token(call.endpoint_class, rate)
            if issue is None or self._issue_counted(issue):
                return
            # Another write to the issue took the turn meanwhile: wait for the next (the
            # class's token goes unused, which only ever slows the class).

    async def after(self, call: JiraCall, outcome: httpx.Response | ApiError) -> None:
        now = self.clock()
        if isinstance(outcome, RateLimitedError):
            scope = rate_limit_scope(outcome)
            if scope == "endpoint":
                until = min(_until(outcome, now, 1.0), now + MAX_PAUSE_SECONDS)
                held = self._held(call.endpoint_class)
                held.paused_until = max(held.paused_until, until)
                held.tokens = 0  # what it holds would be refused as well
                await self._tell("pause", self.source.pause, call.endpoint_class, until)
            elif scope == "issue" and call.issue_key is not None:
                until = min(
                    _until(outcome, now, DEFAULT_ISSUE_PAUSE_SECONDS), now + MAX_PAUSE_SECONDS
                )
                issue = self._issues.setdefault(call.issue_key, _IssueWrites())
                issue.paused_until = max(issue.paused_until, until)
            return
        if isinstance(outcome, httpx.Response) and near_limit(outcome.headers):
            held = self._held(call.endpoint_class)
            # Told once per half slow-down: not a write to the source per answer.
            if held.slowed_until < now + SLOW_SECONDS / 2:
                held.slowed_until = now + SLOW_SECONDS
                await self._tell(
                    "slow-down", self.source.slow, call.endpoint_class, held.slowed_until
                )

    async def _take(self, endpoint_class: str, rate: float, now: float) -> Grant:
        """A batch from the source; while the source cannot answer (the store locked beyond
        its busy timeout, or restarting), from this process's own bucket: paced alone at the
        same rate, the Jira call is not failed for the governor's sake."""
        capacity, batch = self.rates.capacity(rate), self.rates.batch(rate)
        try:
            return await self.source.take(endpoint_class, rate, capacity, batch, now)
        except Exception as error:
            if not is_transient_store_error(error):
                raise
            logger.warning(
                "Jira rate governor: the shared buckets cannot be read ({}: {}); pacing {} "
                "in this process alone meanwhile",
                type(error).__name__,
                error,
                endpoint_class,
            )
            return await self._alone.take(endpoint_class, rate, capacity, batch, now)

    async def _tell(
        self,
        what: str,
        tell: Callable[[str, float], Awaitable[None]],
        endpoint_class: str,
        until: float,
    ) -> None:
        """Tell the source (every run) of a pause or slow-down; this process keeps it anyway."""
        try:
            await tell(endpoint_class, until)
        except Exception as error:
            if not is_transient_store_error(error):
                raise
            logger.warning(
                "Jira rate governor: could not share the {} of {} ({}: {})",
                what,
                endpoint_class,
                type(error).__name__,
                error,
            )

    def paused_until(self, endpoint_class: str) -> float:
        """When this process last heard the class's pause ends (0: never paused)."""
        return self._held(endpoint_class).paused_until

    def _held(self, endpoint_class: str) -> _Held:
        held = self._classes.get(endpoint_class)
        if held is None:
            held = self._classes[endpoint_class] = _Held()
        return held

    async def _class_token(self, endpoint_class: str, rate: float) -> None:
        held = self._held(endpoint_class)
        while True:
            now = self.clock()
            if held.paused_until > now:
                await self.sleep(held.paused_until - now)
                continue
            if held.tokens > 0 and held.expires > now:
                if held.not_before > now:  # reserved, not yet paid for
                    await self.sleep(held.not_before - now)
                    continue
                held.tokens -= 1
                return
            async with held.lock:
                now = self.clock()
                if (held.tokens > 0 and held.expires > now) or held.paused_until > now:
                    continue  # another request of this process took a batch, or heard a pause
                grant = await self._take(endpoint_class, rate, now)
                held.paused_until = max(held.paused_until, grant.paused_until)
                held.slowed_until = max(held.slowed_until, grant.slowed_until)
                held.tokens = grant.tokens
                held.not_before = now + grant.wait
                held.expires = held.not_before + HOLD_SECONDS

    def _issue_wait(self, issue_key: str) -> float:
        """Seconds until a write to the issue fits its windows (and its pause is over)."""
        now = self.clock()
        issue = self._issues.setdefault(issue_key, _IssueWrites())
        longest = max(seconds for _, seconds in self.rates.issue_windows)
        while issue.times and issue.times[0] <= now - longest:
            issue.times.popleft()
        wait = issue.paused_until - now
        for writes, seconds in self.rates.issue_windows:
            recent = [at for at in issue.times if at > now - seconds]
            if len(recent) >= writes:
                # Its turn comes when the oldest write counted leaves the window.
                wait = max(wait, recent[len(recent) - writes] + seconds - now)
        return max(0.0, wait)

    def _issue_counted(self, issue_key: str) -> bool:
        """Count a write to the issue now, if it fits (no await between check and count)."""
        if self._issue_wait(issue_key) > 0:
            return False
        now = self.clock()
        self._issues[issue_key].times.append(now)
        self._forget_quiet_issues(now - max(seconds for _, seconds in self.rates.issue_windows))
        return True

    def _forget_quiet_issues(self, before: float) -> None:
        if len(self._issues) < 1000:
            return
        for key in [
            key
            for key, issue in self._issues.items()
            if (not issue.times or issue.times[-1] <= before) and issue.paused_until <= before
        ]:
            del self._issues[key]


def near_limit(headers: httpx.Headers) -> bool:
    """Whether an answer says its bucket is nearly empty: NearLimit, or Remaining under
    `NEAR_LIMIT_SHARE` of Limit."""
    if headers.get("x-ratelimit-nearlimit", "").strip().lower() == "true":
        return True
    try:
        remaining = int(headers["x-ratelimit-remaining"])
        limit = int(headers["x-ratelimit-limit"])
    except (KeyError, ValueError):
        return False
    return limit > 0 and remaining < NEAR_LIMIT_SHARE * limit


def _until(error: RateLimitedError, now: float, default: float) -> float:
    """When a refused request would pass: X-RateLimit-Reset, else Retry-After, else `default`."""
    if error.reset_at is not None:
        return error.reset_at
    return now + (error.retry_after if error.retry_after is not None else default)
