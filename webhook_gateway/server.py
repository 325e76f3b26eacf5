"""Run the gateway with uvicorn: `serve(...)` blocks; `create_server(...)` for an existing event loop."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI

from core.logging import configure_logging
from core.settings import Settings, get_settings
from webhook_gateway.app import create_app
from webhook_gateway.bounds import bounded_protocol, count_uvicorn_refusals
from webhook_gateway.dispatching import DeferredDispatching

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8700


def create_server(
    settings: Settings | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    dispatch: bool = True,
    **app_options: Any,
) -> uvicorn.Server:
    """A uvicorn server for the gateway; `await server.serve()` runs it until it is told to exit.

    With `dispatch`, the gateway also turns stored events into Prefect flow runs (and its
    `/readyz` checks the Prefect API). `app_options` go to `create_app`. Raises `GatewayConfigError` before anything starts when the settings
    cannot run a gateway.
    """
    settings = settings or get_settings()
    configure_logging(settings, component="gateway")
    if dispatch:
        dispatching = DeferredDispatching(settings)
        app_options = {
            "on_stored": dispatching.wake,
            "extra_lifespan": dispatching.lifespan,
            "readiness_checks": [dispatching.prefect_ready],
            **app_options,
        }
    app = create_app(settings, **app_options)
    return uvicorn.Server(server_config(app, settings, host=host, port=port))


def server_config(
    app: FastAPI, settings: Settings, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> uvicorn.Config:
    """How uvicorn runs the gateway app: with the bounds of the settings (README, "Security")."""
    count_uvicorn_refusals(settings.gateway_reject_log_every)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        # Logging goes through loguru (configure_logging routes uvicorn's loggers there); the
        # gateway logs each delivery itself, so the access log would only repeat it.
        log_config=None,
        access_log=False,
        # The head of each request within the header timeout (408 past it); the body's
        # deadline is the app's (`BodyDeadline`). A slow head counts as a refusal.
        http=bounded_protocol(settings.gateway_header_timeout_seconds, app.state.rejections),
        timeout_keep_alive=settings.gateway_keep_alive_seconds,
        # Past it, uvicorn answers 503 (it counts the connection asking among its connections).
        limit_concurrency=settings.gateway_max_connections + 1,
        forwarded_allow_ips=settings.gateway_forwarded_allow_ips,
    )


def serve(
    settings: Settings | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    fd: int | None = None,
    **app_options: Any,
) -> None:
    """Run the gateway until interrupted (Ctrl-C or SIGTERM stop it cleanly); with `fd`, on
    that inherited listening socket (connections made while no gateway ran wait in its queue)."""
    server = create_server(settings, host=host, port=port, **app_options)
    sockets = [socket.socket(fileno=fd)] if fd is not None else None
    asyncio.run(server.serve(sockets=sockets))
