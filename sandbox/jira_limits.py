"""Jira Cloud's rate limits, as the Jira simulator enforces them (off unless enabled).

Jira limits API-token traffic in two ways (Atlassian's "Rate limiting" page; notes in
docs/jira-api.md section 6): a burst limit per tenant, endpoint and method (a token bucket: `rate` requests
a second, up to `rate * burst_seconds` at once), and a per-issue limit on writes to one issue
(20 writes in 2 s and 100 in 30 s, as third parties transcribe it; Atlassian publishes no
numbers). Every API answer carries `X-RateLimit-Limit` and `X-RateLimit-Remaining` of its
endpoint's bucket (and `X-RateLimit-NearLimit: true` under 20 % left, when `near_limit` is on:
Jira sends it only where cost-based limits apply); a refused request is answered 429 with
`Retry-After` (whole seconds), `X-RateLimit-Reset` (ISO-8601, when a request would pass) and
`RateLimit-Reason` (`jira-burst-based` or `jira-per-issue-on-write`). Refused requests never
reach the API.

The endpoint is the route's template (`PUT /rest/api/3/issue/{issueIdOrKey}`), so every issue
shares one bucket per method, as in Jira. `RateLimiter` is ASGI middleware; `/_sandbox` paths
pass untouched. Control: `GET|PUT /_sandbox/rate-limits` (the whole `RateLimits`).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import BURST_REASON, PER_ISSUE_REASON
from sandbox.faults import CONTROL_PREFIX, send_api_error

# Under this share of its bucket left, an answer says X-RateLimit-NearLimit: true.
NEAR_LIMIT_SHARE = 0.2


class IssueWindow(BaseModel):
    """At most `writes` writes to one issue within any `seconds`."""

    writes: int = Field(ge=1)
    seconds: float = Field(gt=0)


class RateLimits(BaseModel):
    """What the simulator limits, per tenant (the simulator is one tenant)."""

    enabled: bool = False
    per_method: dict[str, float] = Field(
        default={"GET": 100, "POST": 100, "PUT": 50, "DELETE": 50},
        description="requests a second per endpoint, by method (the published third-party "
        "figures); a method not named is not limited",
    )
    per_endpoint: dict[str, float] = Field(
        default={},
        description="rates for single endpoints, over `per_method`: "
        '`{"PUT /rest/api/3/issue/{issueIdOrKey}": 5}`',
    )
    burst_seconds: float = Field(
        1.0, gt=0, description="a bucket holds this many seconds of its rate (at least one)"
    )
    per_issue_writes: list[IssueWindow] = Field(
        default=[IssueWindow(writes=20, seconds=2), IssueWindow(writes=100, seconds=30)],
        description="writes to one issue (edit, comment, transition, property)",
    )
    near_limit: bool = Field(
        False, description="send X-RateLimit-NearLimit: true under 20 % of a bucket left"
    )

    def rate_of(self, endpoint: str) -> float | None:
        """Requests a second for `endpoint` ("METHOD /template"); None: not limited."""
        if endpoint in self.per_endpoint:
            return self.per_endpoint[endpoint]
        return self.per_method.get(endpoint.split(" ", 1)[0])


@dataclass
class Bucket:
    rate: float
    capacity: float
    tokens: float
    at: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now


@dataclass(frozen=True)
class Verdict:
    """What the limiter says of one request: its bucket's headers, and the refusal if any."""

    limit: int | None = None
    remaining: int | None = None
    refused_for: float | None = None  # seconds until it would pass
    reason: str | None = None


# Classifies a request: its endpoint ("METHOD /template") and, for a write to one issue, the
# issue (its current key); None for a request that is not limited at all.
Classifier = Callable[[Scope], tuple[str, str | None] | None]


class RateLimiter:
    """ASGI middleware: Jira's burst and per-issue write limits over `classify`'s endpoints."""

    def __init__(self, app: ASGIApp, limits: RateLimits, classify: Classifier) -> None:
        self.app = app
        self.classify = classify
        self.limits = limits
        self.clock: Callable[[], float] = time.monotonic
        self.refused: Counter[str] = Counter()  # by reason
        self.refused_by_endpoint: Counter[str] = Counter()
        self._buckets: dict[str, Bucket] = {}
        self._issue_writes: dict[str, deque[float]] = {}

    def set(self, limits: RateLimits) -> None:
        """New limits: every bucket starts full, no write is remembered."""
        self.limits = limits
        self._buckets.clear()
        self._issue_writes.clear()

    def reset_counts(self) -> None:
        self.refused.clear()
        self.refused_by_endpoint.clear()

    def judge(self, endpoint: str, issue: str | None) -> Verdict:
        """Take the request's token (and its issue's write) or say how long until it would pass."""
        now = self.clock()
        rate = self.limits.rate_of(endpoint)
        bucket = None
        if rate is not None and rate > 0:
            bucket = self._buckets.get(endpoint)
            if bucket is None:  # `set` forgets the buckets: a new rate starts a new one
                capacity = max(1.0, rate * self.limits.burst_seconds)
                bucket = self._buckets[endpoint] = Bucket(rate, capacity, capacity, now)
            bucket.refill(now)
            if bucket.tokens < 1:
                return Verdict(
                    limit=math.floor(bucket.capacity),
                    remaining=0,
                    refused_for=(1 - bucket.tokens) / bucket.rate,
                    reason=BURST_REASON,
                )
        if issue is not None and self.limits.per_issue_writes:
            writes = self._issue_writes.setdefault(issue, deque())
            longest = max(window.seconds for window in self.limits.per_issue_writes)
            while writes and writes[0] <= now - longest:
                writes.popleft()
            for window in self.limits.per_issue_writes:
                recent = [at for at in writes if at > now - window.seconds]
                if len(recent) >= window.writes:
                    # Passes once the oldest write counted leaves the window.
                    until = recent[len(recent) - window.writes] + window.seconds
                    return Verdict(
                        limit=window.writes,
                        remaining=0,
                        refused_for=max(until - now, 0.001),
                        reason=PER_ISSUE_REASON,
                    )
            writes.append(now)
        if bucket is None:
            return Verdict()
        bucket.tokens -= 1
        return Verdict(limit=math.floor(bucket.capacity), remaining=math.floor(bucket.tokens))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self.limits.enabled
            or scope["type"] != "http"
            or scope["path"].startswith(CONTROL_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        classified = self.classify(scope)
        if classified is None:
            await self.app(scope, receive, send)
            return
        endpoint, issue = classified
        verdict = self.judge(endpoint, issue)
        headers = self._headers(verdict)
        if verdict.refused_for is not None:
            reason = verdict.reason or BURST_REASON
            self.refused[reason] += 1
            self.refused_by_endpoint[endpoint] += 1
            await _refuse(send, verdict.refused_for, reason, headers)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        await self.app(scope, receive, with_headers)

    def _headers(self, verdict: Verdict) -> list[tuple[bytes, bytes]]:
        if verdict.limit is None or verdict.remaining is None:
            return []
        headers = [
            (b"x-ratelimit-limit", str(verdict.limit).encode()),
            (b"x-ratelimit-remaining", str(verdict.remaining).encode()),
        ]
        if self.limits.near_limit and verdict.remaining < NEAR_LIMIT_SHARE * verdict.limit:
            headers.append((b"x-ratelimit-nearlimit", b"true"))
        return headers

    def stats(self) -> Mapping[str, object]:
        return {
            "rate_limited": self.refused.total(),
            "rate_limited_by_reason": dict(sorted(self.refused.items())),
            "rate_limited_by_endpoint": dict(sorted(self.refused_by_endpoint.items())),
        }


def reset_header(seconds: float) -> str:
    """X-RateLimit-Reset: when a request would pass, ISO-8601 in UTC (milliseconds)."""
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _refuse(
    send: Send, seconds: float, reason: str, headers: list[tuple[bytes, bytes]]
) -> None:
    await send_api_error(
        send,
        429,
        "Rate limit exceeded.",
        [
            # Whole seconds, as Jira sends it; the reset says when, to the millisecond.
            (b"retry-after", str(max(1, math.ceil(seconds))).encode()),
            (b"x-ratelimit-reset", reset_header(seconds).encode()),
            (b"ratelimit-reason", reason.encode()),
            *headers,
        ],
    )


def route_template(routes: list[BaseRoute], scope: Scope) -> tuple[str, dict[str, str]] | None:
    """The template of the route `scope` goes to, and its path parameters (None: no route)."""
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", scope["path"]), child.get("path_params", {})
    return None
