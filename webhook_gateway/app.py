"""The webhook gateway app: verify a PeopleForce delivery, store it in the inbox, only then acknowledge.

`create_app` checks the settings (`GatewayConfig`), keeps them as `app.state.config` and
assembles the parts, one module per concern:

- `routes`: the webhook route and the health routes (what each answers: see there);
- `dependencies`: what the routes need (the config, the inbox, the verified body, the event);
- `errors`: `Rejection` (answered here with its status), `GatewayConfigError`, store errors;
- `bounds`: the body deadline, the per-client limit on refused requests, the counted log;
- here: the lifespan, which opens the inbox, and the exception handlers.

The names other modules import from here (`create_app`, `GatewayConfigError`,
`event_properties`, `MAX_BODY_BYTES`) stay importable from here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from loguru import logger

from core.names import WEBHOOK_PATH
from core.settings import Settings, get_settings, mask_url
from core.store import InboxRepository, MappingStore
from webhook_gateway import routes
from webhook_gateway.bounds import BodyDeadline, RejectGate, Rejections, client_host
from webhook_gateway.config import GatewayConfig, LifespanExtension, ReadinessCheck
from webhook_gateway.dependencies import MAX_BODY_BYTES
from webhook_gateway.errors import GatewayConfigError, Rejection
from webhook_gateway.logs import event_properties

__all__ = [
    "MAX_BODY_BYTES",
    "GatewayConfigError",
    "create_app",
    "event_properties",
]


def create_app(
    settings: Settings | None = None,
    *,
    store_url: str | None = None,
    on_stored: Callable[[], None] | None = None,
    readiness_checks: Sequence[ReadinessCheck] = (),
    extra_lifespan: LifespanExtension | None = None,
) -> FastAPI:
    """The gateway app.

    - `store_url`: the inbox's database (default: the settings' effective database URL); opened
      and migrated when the app starts, kept as `app.state.store` and `app.state.inbox`.
    - `on_stored`: called, on the event loop, after each new pending event is committed (not
      for duplicates or ignored events). Keep it quick and non-blocking, e.g. `event.set`; an
      exception is logged and does not fail the delivery.
    - `readiness_checks`: async callables run by `/readyz` besides the inbox check.
    - `extra_lifespan(app)`: entered once the inbox is open, left before it closes (a
      dispatcher that needs `app.state.inbox` lives here).

    Raises `GatewayConfigError` when no webhook secret is set and unsigned webhooks are not
    explicitly allowed.
    """
    config = GatewayConfig.from_settings(
        settings or get_settings(),
        store_url=store_url,
        on_stored=on_stored,
        readiness_checks=readiness_checks,
        extra_lifespan=extra_lifespan,
    )
    app = FastAPI(
        title="pf-jira-sync webhook gateway",
        lifespan=lifespan,
        exception_handlers={Rejection: rejected, Exception: unexpected},
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.config = config
    # Refusals per client: counted by `rejected`, a client refused too often answered 429 by
    # the gate before anything of its request is read (the outermost of the two).
    app.state.rejections = Rejections(
        config.reject_limit, config.reject_window, config.reject_log_every
    )
    app.add_middleware(BodyDeadline, seconds=config.body_timeout)
    app.add_middleware(RejectGate, rejections=app.state.rejections)
    app.include_router(routes.webhook)
    app.include_router(routes.health)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
    """Opens (and migrates) the inbox for the app's lifetime, with `extra_lifespan` inside."""
    config: GatewayConfig = app.state.config
    if config.secret is None:
        logger.warning(
            "UNSIGNED WEBHOOKS ARE ACCEPTED: no WEBHOOK_SECRET is set and "
            "ALLOW_UNSIGNED_WEBHOOKS=true; anyone who can reach {} can post events",
            WEBHOOK_PATH,
        )
    async with await MappingStore.open(config.database_url) as store:
        app.state.store = store
        app.state.inbox = InboxRepository(store.engine)
        logger.info(
            "webhook gateway ready: inbox at {}",
            mask_url(config.database_url),
        )
        if config.extra_lifespan is None:
            yield
        else:
            async with config.extra_lifespan(app):
                yield


async def rejected(request: Request, rejection: Rejection) -> JSONResponse:
    # Counted, and logged one line per many (a flood must not fill the log).
    rejections: Rejections = request.app.state.rejections
    rejections.refused(client_host(request.scope), rejection.status_code, rejection.reason)
    # A request refused before its body was all read: the connection is not reused.
    headers = {"connection": "close"} if rejection.status_code in (408, 413) else None
    return JSONResponse(
        {"detail": rejection.reason}, status_code=rejection.status_code, headers=headers
    )


async def unexpected(request: Request, error: Exception) -> JSONResponse:
    # Starlette logs the traceback too; this keeps the answer JSON like every other error.
    logger.opt(exception=error).error("{} {} failed", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)
