"""The inbox as several dispatchers share it: atomic claims in batches, take-over of a dead
dispatcher's batch, what a flow records per employee, how a finished run settles its events,
and requeue in bulk. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.store import (
    EventStatus,
    InboxRepository,
    MappingStore,
    Settled,
    WebhookEvent,
    WorkResult,
)
from core.store.models import utc_now

SOON = timedelta(seconds=60)


@pytest.fixture
async def inbox(store: MappingStore) -> InboxRepository:
    return InboxRepository(store.engine)


@pytest.fixture
async def second_inbox(database_url: str) -> AsyncIterator[InboxRepository]:
    """The same inbox through an engine of its own: another gateway process."""
    async with await MappingStore.open(database_url) as other:
        yield InboxRepository(other.engine)


async def add(
    inbox: InboxRepository, *keys: str, employee_id: int | None = 7, **fields: Any
) -> None:
    for key in keys:
        await inbox.add(
            WebhookEvent(
                event_key=key,
                employee_id=employee_id,
                body=json.dumps({"key": key}),
                **{"action": "employee_update", **fields},
            )
        )


async def status_of(inbox: InboxRepository, key: str) -> EventStatus:
    event = await inbox.get(key)
    assert event is not None
    return event.status


async def test_concurrent_claims_give_each_event_to_one_dispatcher(
    inbox: InboxRepository, second_inbox: InboxRepository
) -> None:
    keys = [f"k{n}" for n in range(60)]
    await add(inbox, *keys)
    until = utc_now() + SOON

    async with asyncio.timeout(60):
        claims = await asyncio.gather(
            *(
                repository.claim(keys, name, until)
                for repository, name in [(inbox, "a"), (second_inbox, "b")] * 3
            )
        )

    claimed = [key for _token, keys_claimed in claims for key in keys_claimed]
    assert sorted(claimed) == sorted(keys)  # each once, none lost
    assert len({token for token, _ in claims}) == 6  # every claim is a batch of its own
    event = await inbox.get("k0")
    assert event is not None
    assert event.status is EventStatus.dispatching
    assert event.claimed_by in ("a", "b")
    # Claimed events are no longer pending: no dispatcher finds them there.
    assert await inbox.pending() == []
    assert await inbox.waiting() == 60


async def test_an_expired_batch_is_taken_over_whole_by_one_dispatcher(
    inbox: InboxRepository, second_inbox: InboxRepository
) -> None:
    await add(inbox, "a1", "a2", "a3", "b1")
    past = utc_now() - timedelta(seconds=1)
    dead_token, _ = await inbox.claim(["a1", "a2", "a3"], "dead", past)
    live_token, _ = await inbox.claim(["b1"], "alive", utc_now() + SOON)

    async with asyncio.timeout(60):
        taken = await asyncio.gather(
            inbox.take_over("a", utc_now() + SOON), second_inbox.take_over("b", utc_now() + SOON)
        )

    batches = [batch for result in taken for batch in result.items()]
    assert len(batches) == 1  # one of them took it; the live claim is nobody's to take
    token, events = batches[0]
    assert token == dead_token  # the same batch: the same idempotency key
    assert [event.event_key for event in events] == ["a1", "a2", "a3"]
    assert {event.claimed_by for event in events} <= {"a", "b"}
    assert len({event.claimed_by for event in events}) == 1
    b1 = await inbox.get("b1")
    assert b1 is not None
    assert (b1.claimed_by, b1.claim_token) == ("alive", live_token)
    # Taken: not expired any more, so nobody takes it again.
    assert await inbox.take_over("c", utc_now() + SOON) == {}


async def test_expired_batches_are_taken_over_by_their_lane(inbox: InboxRepository) -> None:
    """A batch holding a joiner's or leaver's event goes back to the urgent lane, the other to
    the routine one: an urgent lane with room never takes a routine batch."""
    await add(inbox, "update", employee_id=1)
    await add(inbox, "hire", employee_id=2, action="employee_create")
    await add(inbox, "its update", employee_id=2)
    past = utc_now() - timedelta(seconds=1)
    routine, _ = await inbox.claim(["update"], "dead", past)
    urgent, _ = await inbox.claim(["hire", "its update"], "dead", past)

    assert list(await inbox.take_over("a", utc_now() + SOON, urgent=True)) == [urgent]
    assert await inbox.take_over("a", utc_now() + SOON, urgent=True) == {}
    assert list(await inbox.take_over("a", utc_now() + SOON, urgent=False)) == [routine]


async def test_a_batch_is_recorded_only_under_its_own_claim(inbox: InboxRepository) -> None:
    await add(inbox, "e1", "e2")
    token, _ = await inbox.claim(["e1", "e2"], "a", utc_now() + SOON)

    assert await inbox.mark_dispatched(["e1", "e2"], "run-x", claim="another batch") == 0
    assert await inbox.mark_dispatched(["e1", "e2"], "run-1", claim=token) == 2
    assert await inbox.mark_dispatched(["e1", "e2"], "run-2", claim=token) == 0  # once
    event = await inbox.get("e1")
    assert event is not None
    assert (event.status, event.flow_run_id, event.claim_token, event.claimed_by) == (
        EventStatus.dispatched,
        "run-1",
        None,
        None,
    )
    assert event.dispatch_attempts == 1


async def test_a_failed_attempt_keeps_the_batch_unless_prefect_certainly_took_nothing(
    inbox: InboxRepository,
) -> None:
    await add(inbox, "kept", "released")
    later = utc_now() + timedelta(seconds=30)
    kept, _ = await inbox.claim(["kept"], "a", utc_now() + SOON)
    released, _ = await inbox.claim(["released"], "a", utc_now() + SOON)

    await inbox.mark_attempt_failed(["kept"], "dispatch failed (TimeoutError)", later, claim=kept)
    await inbox.mark_attempt_failed(
        ["released"], "dispatch failed (ConnectError)", later, claim=released, release=True
    )

    waiting = await inbox.get("kept")
    assert waiting is not None
    assert (waiting.status, waiting.claim_token, waiting.claim_expires_at) == (
        EventStatus.dispatching,
        kept,
        later,
    )
    assert waiting.outcome == "dispatch failed (TimeoutError)"
    back = await inbox.get("released")
    assert back is not None
    assert (back.status, back.claim_token, back.next_attempt_at) == (
        EventStatus.pending,
        None,
        later,
    )
    # The kept batch is due again once its claim expires, or at once when Prefect is back.
    assert await inbox.take_over("b", utc_now() + SOON) == {}
    assert await inbox.expedite("a") == 1
    assert list(await inbox.take_over("b", utc_now() + SOON)) == [kept]


async def test_the_flow_records_work_on_events_of_its_own_run_and_the_worse_result_stays(
    inbox: InboxRepository,
) -> None:
    await add(inbox, "mine", "other run")
    await add(inbox, "pending")
    await inbox.mark_dispatched(["mine"], "parent")
    await inbox.mark_dispatched(["other run"], "another")

    done = dict.fromkeys(("mine", "other run", "pending"), (WorkResult.done, None))
    assert await inbox.record_work(done, ["child", "parent"]) == 1
    failed = {"mine": (WorkResult.permanent, "7 Ada: Jira refused customfield_10053")}
    assert await inbox.record_work(failed, ["child", "parent"]) == 1
    # A later `done` (the other process flow of the same person) does not hide the failure.
    assert await inbox.record_work({"mine": (WorkResult.done, None)}, ["parent"]) == 0
    assert await inbox.record_work({"mine": (WorkResult.retry, "x")}, ["parent"]) == 0

    mine, other = await inbox.get("mine"), await inbox.get("other run")
    assert mine is not None
    assert other is not None
    assert (mine.work_result, mine.outcome) == (
        WorkResult.permanent,
        "7 Ada: Jira refused customfield_10053",
    )
    assert other.work_result is None
    assert [event.event_key for event in await inbox.dispatched_to("parent")] == ["mine"]


async def test_a_finished_run_is_settled_once_whoever_settles_it(
    inbox: InboxRepository, second_inbox: InboxRepository
) -> None:
    await add(inbox, "done", "retry", "failed")
    await inbox.mark_dispatched(["done", "retry", "failed"], "run-1")
    again = utc_now() + timedelta(seconds=10)
    settled = {
        "done": Settled(EventStatus.done, "Jira IT-1; completed in flow run r"),
        "retry": Settled(EventStatus.pending, "Crashed (attempt 1 of 5)", again, failed_run=True),
        "failed": Settled(EventStatus.failed, "failed for good", failed_run=True),
    }

    async with asyncio.timeout(60):
        changed = await asyncio.gather(
            inbox.settle_run("run-1", settled), second_inbox.settle_run("run-1", settled)
        )

    assert sorted(changed) == [0, 3]
    retry = await inbox.get("retry")
    assert retry is not None
    assert (retry.status, retry.next_attempt_at, retry.failed_runs, retry.flow_run_id) == (
        EventStatus.pending,
        again,
        1,
        None,
    )
    assert await status_of(inbox, "done") is EventStatus.done
    failed = await inbox.get("failed")
    assert failed is not None
    assert (failed.status, failed.failed_runs) == (EventStatus.failed, 1)
    # Not due yet; then due like any pending event.
    assert await inbox.pending() == []
    assert [e.event_key for e in await inbox.pending(now=again)] == ["retry"]


async def test_requeue_matching_sends_back_by_status_age_and_employee(
    inbox: InboxRepository,
) -> None:
    old = datetime(2026, 1, 1, tzinfo=UTC)
    await add(inbox, "old failed", status=EventStatus.failed, received_at=old, updated_at=old)
    await add(inbox, "new failed", status=EventStatus.failed)
    await add(inbox, "set aside", employee_id=8, status=EventStatus.set_aside, updated_at=old)
    await add(inbox, "nobody", employee_id=None, status=EventStatus.set_aside, updated_at=old)
    await add(inbox, "pending")

    with pytest.raises(ValueError, match="not pending"):
        await inbox.requeue_matching([EventStatus.pending])
    older = await inbox.requeue_matching(["failed"], older_than=utc_now() - timedelta(hours=1))
    assert [(event.event_key, event.was) for event in older] == [("old failed", EventStatus.failed)]
    by_employee = await inbox.requeue_matching(["failed", "set_aside"], employee_id=8)
    assert [event.event_key for event in by_employee] == ["set aside"]
    everything = await inbox.requeue_matching(["failed", "set_aside"])
    assert [event.event_key for event in everything] == ["new failed"]  # "nobody" stays
    requeued = await inbox.get("old failed")
    assert requeued is not None
    assert (requeued.status, requeued.outcome) == (EventStatus.pending, "requeued (was failed)")
    assert await status_of(inbox, "nobody") is EventStatus.set_aside
