"""Latency and fault injection shared by both simulators.

Each simulator mounts `FaultInjector` as ASGI middleware and exposes its `Faults` under
`/_sandbox/faults` (GET to read, PUT to replace), so tests, the demo and benchmarks can make
an API slow or flaky over real HTTP. Paths under `/_sandbox` are never faulted.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Literal

from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

CONTROL_PREFIX = "/_sandbox"


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
    seed: int | None = None


class FaultInjector:
    """ASGI middleware: delays or fails API requests according to the current `Faults`."""

    def __init__(self, app: ASGIApp, faults: Faults | None = None) -> None:
        self.app = app
        self.faults = faults or Faults()
        self.random = random.Random(self.faults.seed)
        self.injected = 0

    def set(self, faults: Faults) -> None:
        self.faults = faults
        self.random = random.Random(faults.seed)

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
        await self.app(scope, receive, send)

    async def _fail(self, status: int, send: Send) -> None:
        faults = self.faults
        headers = [(b"content-type", b"application/json")]
        if status in (429, 503) and faults.retry_after is not None:
            headers.append((b"retry-after", faults.retry_after.encode()))
        if status == 429:
            headers.append((b"ratelimit-reason", faults.rate_limit_reason.encode()))
        body = json.dumps({"errorMessages": [f"injected fault {status}"], "errors": {}}).encode()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
