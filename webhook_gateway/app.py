"""The webhook gateway: verify a PeopleForce delivery, store it in the inbox, only then acknowledge.

`POST /webhooks/peopleforce` answers, in this order of checks:

- 413 for a body over 1 MiB (refused from `Content-Length`, or while reading a body without one);
- 401 for a missing or wrong `X-PeopleForce-Signature` (HMAC of the raw bytes; nothing stored);
- 400 for a body that is not UTF-8 JSON, 422 for JSON that is not a PeopleForce envelope;
- 202 `{"event_key", "status"}` once the event is committed to the inbox: `pending` for an
  employee event, `ignored` for actions this service does not act on (so PeopleForce stops
  resending them); 200 with the stored key and status for a repeated delivery;
- 503 when the inbox cannot be written, so that PeopleForce delivers again later.

Turning pending events into flow runs is not the gateway's job: `on_stored` tells whoever does
it that there is new work. `GET /healthz` says the process is alive, `GET /readyz` that the
inbox is writable and every extra readiness check passes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from loguru import logger
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

from core.names import WEBHOOK_PATH
from core.peopleforce.signature import SIGNATURE_HEADER, verify
from core.settings import Settings, get_settings
from core.store import EventStatus, InboxRepository, MappingStore, WebhookEvent
from webhook_gateway.envelope import NotAnEnvelope, classify, parse_envelope

MAX_BODY_BYTES = 1024 * 1024
READINESS_TIMEOUT_SECONDS = 5.0

# A readiness check fails by raising (or returning False); its function name names it.
ReadinessCheck = Callable[[], Awaitable[object]]
LifespanExtension = Callable[[FastAPI], AbstractAsyncContextManager[object]]

# Errors that mean "the inbox cannot be written right now": answer 503 so PeopleForce retries.
# OSError and TimeoutError cover a database server that refuses or drops the connection.
STORE_UNAVAILABLE = (SQLAlchemyError, OSError, TimeoutError)


class GatewayConfigError(Exception):
    """The gateway cannot run with these settings; the text says what to set."""


class Rejection(Exception):
    """A delivery refused with an HTTP status; `reason` goes in the log and the answer."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(status_code, reason)
        self.status_code = status_code
        self.reason = reason


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
    settings = settings or get_settings()
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    if secret is None and not settings.allow_unsigned_webhooks:
        raise GatewayConfigError(
            "WEBHOOK_SECRET is not set: set it to the secret configured in PeopleForce "
            "(Settings -> Webhooks), or set ALLOW_UNSIGNED_WEBHOOKS=true on a closed test network"
        )
    database_url = store_url or settings.effective_database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        if secret is None:
            logger.warning(
                "UNSIGNED WEBHOOKS ARE ACCEPTED: no WEBHOOK_SECRET is set and "
                "ALLOW_UNSIGNED_WEBHOOKS=true; anyone who can reach {} can post events",
                WEBHOOK_PATH,
            )
        async with await MappingStore.open(database_url) as store:
            app.state.store = store
            app.state.inbox = InboxRepository(store.engine)
            logger.info(
                "webhook gateway ready: inbox at {}",
                make_url(database_url).render_as_string(hide_password=True),
            )
            if extra_lifespan is None:
                yield
            else:
                async with extra_lifespan(app):
                    yield

    app = FastAPI(
        title="pf-jira-sync webhook gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(Rejection)
    async def rejected(request: Request, rejection: Rejection) -> JSONResponse:
        logger.warning(
            "webhook rejected from {}: {} {}",
            _client(request),
            rejection.status_code,
            rejection.reason,
        )
        return JSONResponse({"detail": rejection.reason}, status_code=rejection.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Starlette logs the traceback too; this keeps the answer JSON like every other error.
        logger.opt(exception=error).error("{} {} failed", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.post(WEBHOOK_PATH, status_code=202)
    async def receive_peopleforce_webhook(request: Request) -> JSONResponse:
        raw = await _read_body(request)
        if secret is None:
            logger.warning("accepting an UNSIGNED webhook from {}", _client(request))
        else:
            header = request.headers.get(SIGNATURE_HEADER)
            if not header:
                raise Rejection(401, "missing signature")
            if not verify(secret, raw, header):
                raise Rejection(401, "invalid signature")
        try:
            text = raw.decode("utf-8")
            payload = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise Rejection(400, f"body is not UTF-8 JSON ({type(error).__name__})") from None
        try:
            envelope = parse_envelope(payload)
        except NotAnEnvelope as error:
            raise Rejection(422, f"not a PeopleForce webhook: {error}") from None

        event = WebhookEvent(
            event_key=envelope.event_key(raw),
            action=envelope.action,
            employee_id=envelope.employee_id,
            status=classify(envelope),
            body=text,
        )
        # Every line about this delivery carries its event: the flows that work it log the same.
        with logger.contextualize(**event_properties(event)):
            return await store_event(request, event)

    async def store_event(request: Request, event: WebhookEvent) -> JSONResponse:
        inbox: InboxRepository = request.app.state.inbox
        try:
            stored, created = await inbox.add(event)
        except STORE_UNAVAILABLE as error:
            logger.error(
                "webhook {} not stored, answering 503: inbox unavailable ({})",
                event.event_key,
                describe_error(error),
            )
            return JSONResponse(
                {"detail": "inbox unavailable, deliver again later"}, status_code=503
            )

        answer = {"event_key": stored.event_key, "status": stored.status.value}
        if not created:
            logger.info(
                "webhook {} is a repeat delivery (stored as {})", stored.event_key, answer["status"]
            )
            return JSONResponse(answer, status_code=200)
        logger.info(
            "webhook {} accepted as {} (employee {})",
            stored.event_key,
            answer["status"],
            stored.employee_id,
        )
        if stored.status is EventStatus.pending and on_stored is not None:
            try:
                on_stored()
            except Exception:
                # The event is safely stored: whoever dispatches will find it on its next pass.
                logger.exception("on_stored failed after storing {}", stored.event_key)
        return JSONResponse(answer, status_code=202)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        inbox: InboxRepository = request.app.state.inbox
        checks: list[tuple[str, ReadinessCheck]] = [("store", inbox.check_writable)]
        checks += [(_check_name(check), check) for check in readiness_checks]
        results = await asyncio.gather(*(_run_check(check) for _, check in checks))
        report = {name: result for (name, _), result in zip(checks, results, strict=True)}
        failed = [name for name, result in report.items() if result != "ok"]
        if failed:
            logger.warning("not ready: {}", "; ".join(f"{n}: {report[n]}" for n in failed))
            detail = "not ready: " + ", ".join(f"{name} failed" for name in failed)
            return JSONResponse({"detail": detail, "checks": report}, status_code=503)
        return JSONResponse({"status": "ready", "checks": report})

    return app


async def _read_body(request: Request) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed `MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise Rejection(400, "invalid Content-Length") from None
        if declared_size > MAX_BODY_BYTES:
            raise Rejection(413, f"body of {declared_size} bytes exceeds {MAX_BODY_BYTES}")
    body = bytearray()
    # Also bounded without a Content-Length (chunked): stop reading at the limit.
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Rejection(413, f"body exceeds {MAX_BODY_BYTES} bytes")
    return bytes(body)


async def _run_check(check: ReadinessCheck) -> str:
    """ "ok", or why the check failed (an exception, False, or no answer in time)."""
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            result = await check()
    except TimeoutError:
        return f"no answer within {READINESS_TIMEOUT_SECONDS:g} s"
    except Exception as error:
        return describe_error(error)
    return "failed" if result is False else "ok"


def describe_error(error: BaseException) -> str:
    """The error's type and message, without the SQL parameters (they hold the body)."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        return f"{type(error.orig).__name__}: {error.orig}"
    if isinstance(error, StatementError):
        # Its text appends the statement and its parameters: keep only the first line.
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return f"{type(error).__name__}: {error}"


def event_properties(event: WebhookEvent) -> dict[str, object]:
    """The log properties of a webhook event (the same names the flows bind)."""
    properties: dict[str, object] = {"EventKey": event.event_key, "Action": event.action}
    if event.employee_id is not None:
        properties["EmployeeId"] = event.employee_id
    return properties


def _check_name(check: ReadinessCheck) -> str:
    return getattr(check, "__name__", None) or type(check).__name__


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown client"
