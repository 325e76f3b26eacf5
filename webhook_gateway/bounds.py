"""What the gateway bounds, so that no client can hold it, flood it or fill its log.

- A request's head (request line and headers) must arrive within the header timeout of the
  connection opening, or of its first byte on a kept-alive connection (`bounded_protocol`,
  uvicorn's h11 protocol with a timer: uvicorn itself waits forever for a head); the body
  within the body timeout after the head (`BodyDeadline`, around the app). Either answers 408
  and closes the connection. An answered request whose body is still coming closes it too.
- Idle kept-alive connections close after the keep-alive timeout, and past the connection cap
  a request is answered 503 (uvicorn's `timeout_keep_alive` and `limit_concurrency`, set by
  `webhook_gateway.server`).
- `Rejections` counts refusals per client: a client refused `limit` times within `window`
  seconds is answered 429 with Retry-After, before its request is read (`RejectGate`), until
  the window lets it in again. Its log is counted, not one line per refusal: the first line,
  then one per `log_every` refusals (or the first after a quiet minute), with counts by status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter, deque
from typing import Any, ClassVar

import h11
from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from webhook_gateway.errors import Rejection

# Statuses that count as a refusal of the client (not 404/405: those say nothing of intent).
REFUSALS = frozenset({400, 401, 408, 413, 422})
TOO_MANY = 429
# A line about refusals at least this often while they keep coming, whatever `log_every` says.
LOG_INTERVAL_SECONDS = 60.0
# Clients remembered at once; beyond, those with no refusal left in the window are forgotten,
# then the oldest (a flood from many addresses cannot grow the table without bound).
MAX_CLIENTS = 10_000


def client_host(scope: Scope) -> str:
    """The client's address (uvicorn has put the trusted proxy's X-Forwarded-For there)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class Rejections:
    """Refusals per client within a sliding window, and their counted log."""

    def __init__(
        self,
        limit: int,
        window: float,
        log_every: int,
        *,
        clock: Any = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.log_every = log_every
        self._clock = clock
        self._times: dict[str, deque[float]] = {}
        self._unlogged: Counter[int] = Counter()
        self._last_line = -math.inf
        self.total: Counter[int] = Counter()

    def retry_after(self, host: str) -> float | None:
        """Seconds until `host` may be heard again, or None when it is not limited."""
        if self.limit <= 0:
            return None
        times = self._times.get(host)
        if times is None or len(times) < self.limit:
            return None
        wait = times[0] + self.window - self._clock()
        if wait <= 0:
            return None
        return wait

    def refused(self, host: str, status: int, reason: str) -> None:
        """Count a refusal of `host` (and limit it once it has `limit` in the window)."""
        now = self._clock()
        if status in REFUSALS and self.limit > 0:
            times = self._times.pop(host, None) or deque(maxlen=self.limit)
            while times and times[0] <= now - self.window:
                times.popleft()
            times.append(now)
            self._times[host] = times  # most recently refused last: the last to be forgotten
            if len(times) == self.limit:
                logger.warning(
                    "client {} refused {} times within {:g} s: answered {} until the window "
                    "lets it in again",
                    host,
                    self.limit,
                    self.window,
                    TOO_MANY,
                )
            if len(self._times) > MAX_CLIENTS:
                self._forget(now)
        self._count(now, host, status, reason)

    def _count(self, now: float, host: str, status: int, reason: str) -> None:
        self.total[status] += 1
        self._unlogged[status] += 1
        pending = sum(self._unlogged.values())
        if pending < self.log_every and now - self._last_line < LOG_INTERVAL_SECONDS:
            return
        statuses = ", ".join(f"{code} x {n}" for code, n in sorted(self._unlogged.items()))
        logger.warning(
            "webhook requests refused: {} since the last such line ({}); the latest from {}: {} {}"
            " (refusals are logged one line per {})",
            pending,
            statuses,
            host,
            status,
            reason,
            self.log_every,
        )
        self._unlogged.clear()
        self._last_line = now

    def _forget(self, now: float) -> None:
        """Down to 90 % of `MAX_CLIENTS`, so that a flood from many addresses sweeps the table
        once per thousand new ones, not on every refusal."""
        for host in [h for h, times in self._times.items() if times[-1] <= now - self.window]:
            del self._times[host]
        keep = MAX_CLIENTS * 9 // 10
        while len(self._times) > keep:
            del self._times[next(iter(self._times))]


def _json_answer(status: int, detail: str, headers: dict[str, str]) -> tuple[Message, Message]:
    body = json.dumps({"detail": detail}).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((name.encode(), value.encode()) for name, value in headers.items()),
    ]
    return (
        {"type": "http.response.start", "status": status, "headers": raw_headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    )


class RejectGate:
    """Answers 429 with Retry-After, reading nothing, to a client `Rejections` limits."""

    def __init__(self, app: ASGIApp, rejections: Rejections) -> None:
        self.app = app
        self.rejections = rejections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = client_host(scope)
        wait = self.rejections.retry_after(host)
        if wait is None:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        reason = f"too many refused requests; try again in {retry_after} s"
        self.rejections.refused(host, TOO_MANY, reason)
        for message in _json_answer(TOO_MANY, reason, {"retry-after": str(retry_after)}):
            await send(message)


class BodyDeadline:
    """The whole body must arrive within `seconds` after the head, or the request is refused
    with 408 (`Rejection`, answered and counted like any other refusal)."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        complete = False

        async def bounded_receive() -> Message:
            nonlocal complete
            if complete:  # after the body, receive only waits for a disconnect: no bound
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise Rejection(
                    408, f"request body not received within {self.seconds:g} s"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, bounded_receive, send)


class _BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's head (see the module)."""

    header_timeout: ClassVar[float]
    rejections: ClassVar[Rejections | None]
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            # Answered before its body was all here (413, 429, 408): reading the rest would
            # only let the client hold the connection.
            self.server_state.total_requests += 1
            self.transport.close()
            return
        super().on_response_complete()
        self._watch_head()

    def _watch_head(self) -> None:
        """A timer runs while the head of a request is awaited and some of it has come (or
        the connection is new); an idle kept-alive connection has uvicorn's keep-alive timer."""
        awaiting_head = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        idle_kept_alive = self.timeout_keep_alive_task is not None
        if awaiting_head and not idle_kept_alive:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)
        else:
            self._cancel_head_timer()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        reason = f"request head not received within {self.header_timeout:g} s"
        if self.rejections is not None:
            host = self.client[0] if self.client else "unknown"
            self.rejections.refused(str(host), 408, reason)
        body = json.dumps({"detail": reason}).encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n".encode()
            + b"connection: close\r\n\r\n"
            + body
        )
        self.transport.close()


def bounded_protocol(
    header_timeout: float, rejections: Rejections | None = None
) -> type[H11Protocol]:
    """The HTTP protocol class for uvicorn (`uvicorn.Config(http=...)`) with this head deadline;
    a head too slow counts as a refusal in `rejections`."""

    class BoundedH11Protocol(_BoundedH11Protocol):
        pass

    BoundedH11Protocol.header_timeout = header_timeout
    BoundedH11Protocol.rejections = rejections
    return BoundedH11Protocol


class CountedMessages(logging.Filter):
    """Lets through one record in `every` of the messages uvicorn logs once per request it
    refuses itself (past the connection cap, malformed requests), saying how many it stands for."""

    MESSAGES = frozenset({"Exceeded concurrency limit.", "Invalid HTTP request received."})

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self._seen: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if message not in self.MESSAGES:
            return True
        self._seen[message] += 1
        count = self._seen[message]
        if count != 1 and count % self.every:
            return False
        record.msg = (
            f"{message} ({count} since the gateway started; logged one line per {self.every})"
        )
        record.args = None
        return True


def count_uvicorn_refusals(every: int) -> None:
    """Install `CountedMessages` on uvicorn's error logger (once per process)."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    for existing in uvicorn_errors.filters:
        if isinstance(existing, CountedMessages):
            existing.every = every
            return
    uvicorn_errors.addFilter(CountedMessages(every))
