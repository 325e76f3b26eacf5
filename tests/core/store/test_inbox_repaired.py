"""The inbox's events the reconciliation repaired, on SQLite and PostgreSQL."""

from __future__ import annotations

from core.store import EventStatus, InboxRepository, MappingStore, WebhookEvent


async def test_close_repaired_ends_only_failed_and_pending_events(store: MappingStore) -> None:
    inbox = InboxRepository(store.engine)
    ids = {}
    for key, status in [
        ("failed", EventStatus.failed),
        ("pending", EventStatus.pending),
        ("dispatched", EventStatus.dispatched),  # its run closes it
        ("done", EventStatus.done),
        ("other", EventStatus.failed),  # not in the list
    ]:
        event, _ = await inbox.add(
            WebhookEvent(
                event_key=key,
                action="employee_update",
                employee_id=1,
                status=status,
                body="{}",
                outcome="before",
            )
        )
        assert event.id is not None
        ids[key] = event.id
    outcomes = {
        ids[key]: f"repaired ({key})" for key in ("failed", "pending", "dispatched", "done")
    }
    assert await inbox.close_repaired(outcomes) == 2
    assert await inbox.close_repaired(outcomes) == 0  # once

    async def state(key: str) -> tuple[str, str | None]:
        event = await inbox.get(key)
        assert event is not None
        return event.status.value, event.outcome

    assert await state("failed") == ("done", "repaired (failed)")
    assert await state("pending") == ("done", "repaired (pending)")
    assert await state("dispatched") == ("dispatched", "before")
    assert await state("done") == ("done", "before")
    assert await state("other") == ("failed", "before")
