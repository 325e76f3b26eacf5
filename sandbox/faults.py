"""Latency and fault injection shared by both simulators.

Each simulator mounts `FaultInjector` as ASGI middleware and exposes its `Faults` under
`/_sandbox/faults` (GET to read, PUT to replace), so tests, the demo and benchmarks can make
an API slow or flaky over real HTTP. Paths under `/_sandbox` are never faulted.

Two kinds of failure: `error_rate` answers an error *before* the API sees the request (Jira
refused it: nothing happened), `after_apply_rate` lets the API apply a write and then loses
its answer (a timeout, a reset connection, a 5xx from a gateway): the caller cannot tell
whether it happened, which is what an exactly-once writer has to cope with.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.server import ABORT_CONNECTION

CONTROL_PREFIX = "/_sandbox"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# How long an aborted connection may take to be seen closed by the server (no timing relies on it).
_CLOSE_WAIT_SECONDS = 2.0

AfterApplyOutcome = Literal["timeout", "reset", 500, 502, 503]


class Faults(BaseModel):
    """What the simulator does to each API request."""

    latency_ms: float = Field(0, ge=0, description="added to every request")
    error_rate: float = Field(0, ge=0, le=1, description="share of requests answered with an error")
    error_statuses: list[Literal[429, 500, 502, 503, 504]] = Field(
        default=[429], description="picked at random for each failed request"
    )
    retry_after: str | None = Field("1", description="Retry-After sent with 429 and 503")
    rate_limit_reason: str = "jira-burst-based"
    slow_rate: float = Field(0, ge=0, le=1, description="share of requests that are slow")
    slow_ms: float = Field(0, ge=0)
    only_methods: list[str] | None = Field(
        None, description="fault only these methods (upper case)"
    )
    after_apply_rate: float = Field(
        0,
        ge=0,
        le=1,
        description="share of writes (POST, PUT, DELETE to the API; never a search) that are "
        "applied and then lose their answer",
    )
    after_apply_outcomes: list[AfterApplyOutcome] = Field(
        default=["timeout", "reset", 500, 502, 503],
        min_length=1,
        description="picked at random for each write that loses its answer: `timeout` holds "
        "the answer, then drops the connection; `reset` drops it at once (TCP RST, no HTTP "
        "answer); a status answers that error instead of the real answer",
    )
    after_apply_hold_seconds: float = Field(
        40,
        ge=0,
        description="how long `timeout` holds the answer before dropping the connection "
        "(longer than the client's 30 s read timeout, core.http.DEFAULT_TIMEOUT); released "
        "early when the client gives up",
    )
    search_lag_seconds: float = Field(
        0,
        ge=0,
        description="search sees each issue as it was this many seconds ago (created or "
        "changed since: not yet visible), except the issues named in `reconcileIssues`; reads "
        "by key, comments and transitions stay current, as in Jira",
    )
    seed: int | None = None


class FaultInjector:
    """ASGI middleware: delays or fails API requests according to the current `Faults`.

    `is_write` tells which requests change something (default: POST, PUT, PATCH, DELETE); only
    those can be applied and then lose their answer. Counts: `injected` (failed before the API
    saw them) and `applied_then_failed` (by outcome).
    """

    def __init__(
        self,
        app: ASGIApp,
        faults: Faults | None = None,
        *,
        is_write: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.app = app
        self.faults = faults or Faults()
        self.random = random.Random(self.faults.seed)
        self.is_write = is_write or (lambda scope: scope["method"] in WRITE_METHODS)
        self.injected = 0
        self.applied_then_failed: Counter[str] = Counter()

    def set(self, faults: Faults) -> None:
        self.faults = faults
        self.random = random.Random(faults.seed)

    def reset_counts(self) -> None:
        self.injected = 0
        self.applied_then_failed.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        faults = self.faults
        if faults.only_methods and scope["method"] not in faults.only_methods:
            await self.app(scope, receive, send)
            return
        delay = faults.latency_ms
        if faults.slow_rate and self.random.random() < faults.slow_rate:
            delay += faults.slow_ms
        if delay:
            await asyncio.sleep(delay / 1000)
        if faults.error_rate and self.random.random() < faults.error_rate:
            self.injected += 1
            await self._fail(self.random.choice(faults.error_statuses), send)
            return
        if (
            faults.after_apply_rate
            and self.is_write(scope)
            and self.random.random() < faults.after_apply_rate
        ):
            await self._apply_then_fail(
                self.random.choice(faults.after_apply_outcomes), scope, receive, send
            )
            return
        await self.app(scope, receive, send)

    async def _apply_then_fail(
        self, outcome: AfterApplyOutcome, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Let the API apply the request, then lose its answer as `outcome` says.

        An answer that is not a success (the API refused the request, so nothing was applied)
        is passed on as it is."""
        answer: list[Message] = []

        async def keep(message: Message) -> None:
            answer.append(message)

        await self.app(scope, receive, keep)
        status = next((m["status"] for m in answer if m["type"] == "http.response.start"), 500)
        if status >= 300:
            for message in answer:
                await send(message)
            return
        self.applied_then_failed[str(outcome)] += 1
        if isinstance(outcome, int):
            await self._fail(outcome, send)
            return
        abort = _abort_of(scope)
        if outcome == "timeout":
            await _until_disconnected(receive, self.faults.after_apply_hold_seconds)
        abort()
        # Wait until the server has seen the connection go, so it does not answer 500 for us.
        await _until_disconnected(receive, _CLOSE_WAIT_SECONDS)

    async def _fail(self, status: int, send: Send) -> None:
        faults = self.faults
        headers: list[tuple[bytes, bytes]] = []
        if status in (429, 503) and faults.retry_after is not None:
            headers.append((b"retry-after", faults.retry_after.encode()))
        if status == 429:
            headers.append((b"ratelimit-reason", faults.rate_limit_reason.encode()))
        await send_api_error(send, status, f"injected fault {status}", headers)


async def send_api_error(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """Answer as the simulated API answers an error: JSON `errorMessages`, and `headers`."""
    body = json.dumps({"errorMessages": [message], "errors": {}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _abort_of(scope: Scope) -> Callable[[], Any]:
    abort = scope.get("extensions", {}).get(ABORT_CONNECTION)
    if abort is None:
        raise RuntimeError(
            "this server cannot drop a connection: run the simulator with sandbox.server"
        )
    return abort


async def _until_disconnected(receive: Receive, at_most: float) -> None:
    """Wait until the client's connection is gone, or `at_most` seconds."""
    try:
        async with asyncio.timeout(at_most):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        pass
