"""Inbox retention: the `prune-inbox` flow against the Prefect test server, on the world's store,
and its scheduled deployment."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import ConcurrencyLimitStrategy

from core.settings import Settings
from core.store import EventStatus, InboxRepository, WebhookEvent
from deployments.definitions import ALL, PRUNE_INBOX
from flows.retention import SUMMARY_ARTIFACT, prune_inbox
from tests.fixtures_flows import World


def event(key: str, status: EventStatus, *, days_ago: float) -> WebhookEvent:
    changed = datetime.now(UTC) - timedelta(days=days_ago)
    return WebhookEvent(
        event_key=key,
        action="employee_update" if status is not EventStatus.ignored else "leave_request_create",
        employee_id=None if status is EventStatus.ignored else 1,
        status=status,
        body=json.dumps({"key": key}),
        received_at=changed,
        updated_at=changed,
    )


async def test_old_events_done_or_ignored_are_removed_and_the_run_says_how_many(
    world: World,
) -> None:
    inbox = InboxRepository(world.services.store.engine)
    for status in EventStatus:  # every status, old and recent: only old done/ignored go
        for n in range(2):
            await inbox.add(event(f"old-{status.value}-{n}", status, days_ago=45))
        await inbox.add(event(f"recent-{status.value}", status, days_ago=5))

    run: Any = prune_inbox  # Prefect's overloads do not type `return_state` for async flows
    state = await run(return_state=True, older_than_days=30)
    result = await state.aresult()

    assert result["retention_days"] == 30
    assert result["removed"] == {"done": 2, "ignored": 2}
    assert result["removed_total"] == 4
    assert result["kept"] == {
        status.value: 1 if status in (EventStatus.done, EventStatus.ignored) else 3
        for status in EventStatus
    }
    left = {stored.event_key for stored in await inbox.recent(100)}
    assert not any(key.startswith(("old-done", "old-ignored")) for key in left)
    for status in EventStatus:
        if status not in (EventStatus.done, EventStatus.ignored):
            assert {f"old-{status.value}-0", f"old-{status.value}-1"} <= left  # however old

    run_id = state.state_details.flow_run_id
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    (summary,) = [artifact for artifact in found if artifact.key == SUMMARY_ARTIFACT]
    text = str(summary.data)
    assert "Removed **4** events done or ignored" in text
    assert "| done | 2 | 1 |" in text
    assert "| failed | 0 | 3 |" in text

    # Nothing left to remove: a second run removes nothing and says so.
    again = await prune_inbox(older_than_days=30)
    assert again["removed"] == {"done": 0, "ignored": 0}


async def test_the_retention_deployment_runs_daily_one_run_at_a_time(prefect_server: None) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.inbox_retention_days, settings.inbox_prune_cron) == (30, "15 3 * * *")
    deployment = await PRUNE_INBOX.flow.ato_deployment(**PRUNE_INBOX.options(settings))
    deployment_id = await deployment.aapply()
    async with get_client() as client:
        stored = await client.read_deployment(deployment_id)
    assert PRUNE_INBOX.full_name == "prune-inbox/scheduled"
    (schedule,) = stored.schedules
    assert getattr(schedule.schedule, "cron", None) == "15 3 * * *"
    assert getattr(schedule.schedule, "timezone", None) == "UTC"
    assert stored.global_concurrency_limit is not None
    assert stored.global_concurrency_limit.limit == 1
    assert stored.concurrency_options is not None
    assert stored.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    assert PRUNE_INBOX in ALL  # served by `up`, registered by `deploy`, with every other one
