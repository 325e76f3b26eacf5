"""The log properties that name a webhook event on every line about it (gateway and dispatcher)."""

from __future__ import annotations

from core.store import WebhookEvent
from core.text import printable


def event_properties(event: WebhookEvent) -> dict[str, object]:
    """The log properties of a webhook event (the same names the flows bind); the sender's text
    in them (the action, and the key made from it) escaped and bounded (`core.text`)."""
    properties: dict[str, object] = {
        "EventKey": printable(event.event_key),
        "Action": printable(event.action),
    }
    if event.id is not None:  # stored: its short reference, as `events` shows it
        properties["EventRef"] = event.ref
    if event.employee_id is not None:
        properties["EmployeeId"] = event.employee_id
    return properties
