"""What the gateway accepts as a PeopleForce webhook, and which deliveries it acts on."""

from __future__ import annotations

import codecs
import json
from typing import Any

from loguru import logger
from pydantic import ValidationError

from core.peopleforce.models import (
    EMPLOYEE_PROFILE_ACTIONS,
    WebhookAttributes,
    WebhookData,
    WebhookEnvelope,
    strict_id,
)
from core.store import EventStatus
from core.text import is_printable, printable

# PeopleForce topics are short snake_case names; a longer one is not from PeopleForce.
MAX_ACTION_LENGTH = 100
# Ids go into 32-bit integer columns (PostgreSQL `integer`).
MAX_RECORD_ID = 2**31 - 1


class NotAnEnvelope(ValueError):
    """Valid JSON, but not a PeopleForce webhook envelope; the text says what is wrong."""


def decode_body(raw: bytes) -> tuple[str, Any]:
    """The JSON text of a verified body and what it holds; `ValueError` (or `RecursionError`)
    when it is not UTF-8 JSON.

    A leading UTF-8 byte-order mark is tolerated and left out of the text: some senders write
    one, RFC 8259 lets a parser ignore it, and it is no part of the JSON. The signature was
    checked over the raw bytes, BOM included, before this.
    """
    text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    return text, json.loads(text)


def parse_envelope(payload: Any) -> WebhookEnvelope:
    """The envelope of a delivery, or `NotAnEnvelope` saying what is missing.

    Only the envelope is required: an object with a non-empty `action` string of printable
    text (no control character, no lone surrogate: it becomes the event key, a run tag and log
    lines, and a lone surrogate cannot even be stored), and a `data` object whose `id`, if any,
    is a positive JSON integer. For a sub-record topic (`employee_position_create`) the employee
    is `data.attributes.employee_id`, a positive JSON integer or a string of digits, nothing
    coerced into one (`true`, `3.7`, `" 9_10_015 "` are refused). The record inside is read with
    the models; a record field in an unexpected shape does not refuse the delivery (the webhook
    is only a hint, the flows re-read the employee): the event is then keyed by its body hash.
    """
    if not isinstance(payload, dict):
        raise NotAnEnvelope("the body is not a JSON object")
    action = payload.get("action")
    if not isinstance(action, str) or not action.strip():
        raise NotAnEnvelope("`action` must be a non-empty string")
    if len(action) > MAX_ACTION_LENGTH:
        raise NotAnEnvelope(f"`action` is longer than {MAX_ACTION_LENGTH} characters")
    if not is_printable(action):
        raise NotAnEnvelope(
            "`action` must be printable text (no control characters or lone surrogates)"
        )
    data = payload.get("data")
    if not isinstance(data, dict):
        raise NotAnEnvelope("`data` must be an object")
    record_id = data.get("id")
    if record_id is not None and not _is_record_id(record_id):
        raise NotAnEnvelope("`data.id` must be a positive integer")
    attributes = data.get("attributes")
    employee_ref = attributes.get("employee_id") if isinstance(attributes, dict) else None
    if employee_ref is not None and _names_employee_in_attributes(action):
        employee_ref = _employee_id(employee_ref)
    try:
        envelope = WebhookEnvelope.model_validate(payload)
    except ValidationError as error:
        fields = sorted({".".join(map(str, item["loc"])) for item in error.errors()})
        # The field names are the sender's keys (custom fields): escaped, and bounded.
        logger.warning(
            "webhook {} for record {}: unexpected shape of {}; keeping only the envelope",
            printable(action),
            record_id,
            printable(", ".join(fields)),
        )
        envelope = WebhookEnvelope(
            action=action,
            data=WebhookData(
                id=record_id,
                attributes=WebhookAttributes.model_validate(
                    {"employee_id": employee_ref} if _is_record_id(employee_ref) else {}
                ),
            ),
        )
    try:
        employee_id = envelope.employee_id
    except ValueError:  # checked above; kept so that the model's reading is the one trusted
        raise NotAnEnvelope(EMPLOYEE_ID_RULE) from None
    if employee_id is not None and not _is_record_id(employee_id):
        raise NotAnEnvelope(EMPLOYEE_ID_RULE)
    return envelope


EMPLOYEE_ID_RULE = (
    "the employee id must be a positive integer (`data.attributes.employee_id`: "
    'a JSON integer or a string of digits, "1041")'
)


def _names_employee_in_attributes(action: str) -> bool:
    """Sub-record topics (`employee_position_create`): the employee is in the attributes."""
    probe = WebhookEnvelope(action=action)
    return probe.is_employee_event and action not in EMPLOYEE_PROFILE_ACTIONS


def _employee_id(value: object) -> int:
    """A strict employee id within the store's range, or `NotAnEnvelope`."""
    try:
        employee_id = strict_id(value)
    except ValueError:
        raise NotAnEnvelope(EMPLOYEE_ID_RULE) from None
    if not _is_record_id(employee_id):
        raise NotAnEnvelope(EMPLOYEE_ID_RULE)
    return employee_id


def classify(envelope: WebhookEnvelope) -> EventStatus:
    """`pending` for an event about one employee (`employee_*` with an employee id), else `ignored`."""
    if envelope.is_employee_event and envelope.employee_id is not None:
        return EventStatus.pending
    return EventStatus.ignored


def _is_record_id(value: object) -> bool:
    # bool is an int in Python, and `true` is no id.
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_RECORD_ID
