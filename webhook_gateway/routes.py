"""The gateway's routes: one router per concern.

`webhook`: `POST /webhooks/peopleforce` answers, in this order of checks:

- 413 for a body over 1 MiB (refused from `Content-Length`, or while reading a body without one);
- 401 for a missing or wrong `X-PeopleForce-Signature` (HMAC of the raw bytes; nothing stored);
- 400 for a body that is not UTF-8 JSON (a leading byte-order mark is tolerated), 422 for JSON
  that is not a PeopleForce envelope (`webhook_gateway.envelope`: among others an `action` with
  a control character or a lone surrogate, an employee id that is neither a JSON integer nor a
  string of digits), never a 5xx that a sender would retry forever;
- 202 `{"event_key", "ref", "status"}` once the event is committed to the inbox: `pending` for an
  employee event, `ignored` for actions this service does not act on (so PeopleForce stops
  resending them); 200 with the stored key and status for a repeated delivery; `ref` is the
  event's short reference (`e17`), which `pf-jira-sync events` shows and `replay` takes;
- 503 when the inbox cannot be written, so that PeopleForce delivers again later.

The checks up to 422 are the route's dependencies (`webhook_gateway.dependencies`). Turning
pending events into flow runs is not the gateway's job: `on_stored` tells whoever does it that
there is new work.

`health`: `GET /healthz` says the process is alive, `GET /readyz` that the inbox is writable and
every extra readiness check passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from loguru import logger

from core.names import WEBHOOK_PATH
from core.store import EventStatus, InboxRepository, WebhookEvent
from core.text import printable
from webhook_gateway.config import ReadinessCheck
from webhook_gateway.dependencies import Config, Inbox, ReceivedEvent
from webhook_gateway.errors import STORE_UNAVAILABLE, describe_error
from webhook_gateway.logs import event_properties

READINESS_TIMEOUT_SECONDS = 5.0

webhook = APIRouter()
health = APIRouter()


@webhook.post(WEBHOOK_PATH, status_code=202)
async def receive_peopleforce_webhook(
    event: ReceivedEvent, inbox: Inbox, config: Config
) -> JSONResponse:
    # Every line about this delivery carries its event: the flows that work it log the same.
    with logger.contextualize(**event_properties(event)):
        return await _store(event, inbox, config.on_stored)


async def _store(
    event: WebhookEvent, inbox: InboxRepository, on_stored: Callable[[], None] | None
) -> JSONResponse:
    try:
        stored, created = await inbox.add(event)
    except STORE_UNAVAILABLE as error:
        logger.error(
            "webhook {} not stored, answering 503: inbox unavailable ({})",
            printable(event.event_key),
            describe_error(error),
        )
        return JSONResponse({"detail": "inbox unavailable, deliver again later"}, status_code=503)

    answer = {"event_key": stored.event_key, "ref": stored.ref, "status": stored.status.value}
    if not created:
        logger.info(
            "webhook {} is a repeat delivery (stored as {}, ref {})",
            printable(stored.event_key),
            answer["status"],
            stored.ref,
        )
        return JSONResponse(answer, status_code=200)
    # `ref`: the short reference `events` shows and `replay` takes.
    logger.info(
        "webhook {} accepted as {} (employee {}, ref {})",
        printable(stored.event_key),
        answer["status"],
        stored.employee_id,
        stored.ref,
    )
    if stored.status is EventStatus.pending and on_stored is not None:
        try:
            on_stored()
        except Exception:
            # The event is safely stored: whoever dispatches will find it on its next pass.
            logger.exception("on_stored failed after storing {}", printable(stored.event_key))
    return JSONResponse(answer, status_code=202)


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@health.get("/readyz")
async def readyz(inbox: Inbox, config: Config) -> JSONResponse:
    checks: list[tuple[str, ReadinessCheck]] = [("store", inbox.check_writable)]
    checks += [(_check_name(check), check) for check in config.readiness_checks]
    results = await asyncio.gather(*(_run_check(check) for _, check in checks))
    report = {name: result for (name, _), result in zip(checks, results, strict=True)}
    failed = [name for name, result in report.items() if result != "ok"]
    if failed:
        logger.warning("not ready: {}", "; ".join(f"{n}: {report[n]}" for n in failed))
        detail = "not ready: " + ", ".join(f"{name} failed" for name in failed)
        return JSONResponse({"detail": detail, "checks": report}, status_code=503)
    return JSONResponse({"status": "ready", "checks": report})


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


def _check_name(check: ReadinessCheck) -> str:
    return getattr(check, "__name__", None) or type(check).__name__
