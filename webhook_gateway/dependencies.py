"""What the gateway's routes need, as FastAPI dependencies.

The app's `GatewayConfig` and inbox are read from `app.state` on each request (the lifespan
opens the inbox; tests swap it for an unreachable one). The webhook's body is checked in the
order the route documents: size (413), signature (401), JSON (400), envelope (422); each
refusal is a `Rejection`, answered by the app's exception handler.

Every dependency is async (FastAPI runs a plain function dependency in a thread) and there are
few of them: FastAPI resolves each one on every delivery, some 10 us of CPU apiece here. So
`client_address`, which only log lines need, is a plain function, shared with the exception
handlers.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from loguru import logger

from core.peopleforce.signature import SIGNATURE_HEADER, verify
from core.store import InboxRepository, WebhookEvent
from webhook_gateway.config import GatewayConfig
from webhook_gateway.envelope import NotAnEnvelope, classify, decode_body, parse_envelope
from webhook_gateway.errors import Rejection

MAX_BODY_BYTES = 1024 * 1024


def client_address(request: Request) -> str:
    """`host:port` of the peer, for the log."""
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown client"


async def _gateway_config(request: Request) -> GatewayConfig:
    return request.app.state.config


async def _inbox(request: Request) -> InboxRepository:
    return request.app.state.inbox


Config = Annotated[GatewayConfig, Depends(_gateway_config)]
Inbox = Annotated[InboxRepository, Depends(_inbox)]


async def read_body(request: Request) -> bytes:
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


async def verified_body(request: Request, config: Config) -> bytes:
    """The raw body, within the size limit and signed with the webhook secret (HMAC of the
    bytes as received); accepted unsigned, with a warning, only when no secret is set."""
    raw = await read_body(request)
    if config.secret is None:
        logger.warning("accepting an UNSIGNED webhook from {}", client_address(request))
        return raw
    header = request.headers.get(SIGNATURE_HEADER)
    if not header:
        raise Rejection(401, "missing signature")
    if not verify(config.secret, raw, header):
        raise Rejection(401, "invalid signature")
    return raw


VerifiedBody = Annotated[bytes, Depends(verified_body)]


async def received_event(raw: VerifiedBody) -> WebhookEvent:
    """The inbox event of a verified delivery: its body as UTF-8 JSON (a leading byte-order
    mark tolerated) in a PeopleForce envelope, keyed and classified."""
    try:
        text, payload = decode_body(raw)
    except (ValueError, RecursionError) as error:
        raise Rejection(400, f"body is not UTF-8 JSON ({type(error).__name__})") from None
    try:
        envelope = parse_envelope(payload)
    except NotAnEnvelope as error:
        raise Rejection(422, f"not a PeopleForce webhook: {error}") from None
    return WebhookEvent(
        event_key=envelope.event_key(raw),
        action=envelope.action,
        employee_id=envelope.employee_id,
        status=classify(envelope),
        urgent=envelope.is_joiner_or_leaver,
        body=text,
    )


ReceivedEvent = Annotated[WebhookEvent, Depends(received_event)]
