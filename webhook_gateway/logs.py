"""The log properties that name a webhook event on every line about it (gateway and dispatcher)."""

from __future__ import annotations

from core.store import WebhookEvent


def event_properties(event: WebhookEvent) -> dict[str, object]:
    """The log properties of a webhook event (the same names the flows bind)."""
    properties: dict[str, object] = {"EventKey": event.event_key, "Action": event.action}
    if event.id is not None:  # stored: its short reference, as `events` shows it
        properties["EventRef"] = event.ref
    if event.employee_id is not None:
        properties["EmployeeId"] = event.employee_id
    return properties
