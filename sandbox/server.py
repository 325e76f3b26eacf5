"""Run an ASGI app with uvicorn on loopback in a background thread: for tests, the CLI and benchmarks.

The app is offered one thing plain ASGI cannot do: drop its connection without any HTTP answer
(a TCP reset), as a failing network or load balancer does. Uvicorn answers 500 for an app that
raises or returns without answering, so the simulators' faults reach the socket through the
`ABORT_CONNECTION` scope extension instead.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

GRACEFUL_SHUTDOWN_SECONDS = 3
# scope["extensions"][ABORT_CONNECTION](): reset the request's connection, no answer sent.
ABORT_CONNECTION = "pf-jira-sync.abort_connection"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def reset_connection(transport: asyncio.Transport) -> None:
    """Close with a TCP RST (linger 0), so the client reads a reset, not an orderly end."""
    if transport.is_closing():
        return  # the client has gone already
    sock = transport.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # closed under us: abort() alone then
    transport.abort()


class ConnectionControl:
    """Outermost ASGI layer: offers the app `ABORT_CONNECTION` for the request's connection.

    Uvicorn keeps the connection's transport on the request cycle whose bound `receive` it
    passes to the app; that is the one way to it from inside (the scope does not carry it).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = getattr(getattr(receive, "__self__", None), "transport", None)
        if scope["type"] == "http" and isinstance(transport, asyncio.Transport):
            extensions = scope.setdefault("extensions", {})
            extensions[ABORT_CONNECTION] = lambda: reset_connection(transport)
        await self.app(scope, receive, send)


class BackgroundServer:
    """`with BackgroundServer(app) as server: httpx.get(server.url + "/...")`."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            ConnectionControl(app),
            host=host,
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
            # Uvicorn waits for open connections without limit by default; `stop` must not.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name=f"uvicorn:{self.port}", daemon=True
        )

    def start(self, timeout: float = 15.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                # Usually the port is taken: uvicorn has logged why.
                raise RuntimeError(f"server on {self.url} did not start (is the port in use?)")
            time.sleep(0.01)
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
