"""The circuit breaker's window and latch, on SQLite and PostgreSQL: counted across callers,
tripped past a limit, latched until every hold is released or dropped, its window started
again when it closes, held events kept with their hold, and concurrent decisions admitting
no one past the limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from core.store import (
    CircuitBreaker,
    EventStatus,
    InboxRepository,
    Limits,
    MappingStore,
    WebhookEvent,
)
from core.store.breaker import RELEASE_GRANT_TTL

LIMITS = Limits(max_offboard=3, max_create=5, window=timedelta(minutes=10))
T0 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
RUN = "run-1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def breaker(store: MappingStore) -> CircuitBreaker:
    return CircuitBreaker(store.engine)


async def offboard(breaker: CircuitBreaker, employee_id: int, seconds: float, **options):
    return await breaker.admit(
        employee_id, f"{employee_id} Person", ["offboarding"], LIMITS, now=at(seconds), **options
    )


async def test_the_one_past_the_limit_trips_it_and_every_later_create_is_held(
    breaker: CircuitBreaker,
) -> None:
    admitted = [await offboard(breaker, employee, employee) for employee in (1, 2, 3)]
    assert all(answer.admitted for answer in admitted)

    fourth = await offboard(breaker, 4, 4)
    assert not fourth.admitted
    assert fourth.tripped
    assert fourth.hold is not None
    assert fourth.hold.reason == (
        "4 offboardings planned within 10 min on the webhook path, more than "
        "BREAKER_MAX_OFFBOARD (3)"
    )
    # Latched: a creation under its own limit is held too, and so is an offboarding long
    # after the window has passed; each says why the breaker is open, and since when.
    hire = await breaker.admit(5, "5 Hire", ["onboarding", "record"], LIMITS, now=at(60))
    state = await breaker.state(LIMITS, now=at(61))
    assert state.counted == {"offboarding": 3, "creation": 0}
    late = await offboard(breaker, 6, 3600)
    for held in (hire, late):
        assert held.hold is not None
        assert not held.tripped
        assert (held.hold.reason, held.hold.tripped_at) == (fourth.hold.reason, at(4))
    assert hire.hold is not None
    assert hire.hold.kinds == ["onboarding", "record"]

    state = await breaker.state(LIMITS, now=at(3601))
    assert state.open
    assert [hold.employee_id for hold in state.holds] == [4, 5, 6]
    assert state.counted == {"offboarding": 0, "creation": 0}  # the window moved on
    assert state.held_by_count == {"offboarding": 2, "creation": 1}


async def test_work_counted_already_passes_again_and_a_held_employee_stays_one_hold(
    breaker: CircuitBreaker,
) -> None:
    for employee in (1, 2, 3):
        assert (await offboard(breaker, employee, employee)).admitted
    assert not (await offboard(breaker, 4, 4)).admitted
    # A run worked again (a crash, Retry): counted in this window already, admitted again.
    assert (await offboard(breaker, 2, 30)).admitted
    # Held again (a new webhook about them): the same hold, with what it now holds too.
    again = await breaker.admit(4, "4 Person", ["onboarding"], LIMITS, now=at(40))
    assert again.hold is not None
    assert again.hold.kinds == ["offboarding", "onboarding"]
    assert [hold.employee_id for hold in await breaker.open_holds()] == [4]


async def test_the_window_slides_and_each_count_has_its_limit_or_none(
    breaker: CircuitBreaker,
) -> None:
    for employee in (1, 2, 3):
        assert (await offboard(breaker, employee, employee)).admitted
    # Ten minutes after the first three, they no longer count.
    assert (await offboard(breaker, 4, 604)).admitted
    assert (await offboard(breaker, 5, 605)).admitted
    assert (await offboard(breaker, 6, 606)).admitted
    assert not (await offboard(breaker, 7, 607)).admitted

    # A count at 0 is off: nothing of it is counted or held, and a plan creating nothing
    # counted is never asked about (even while the breaker is open).
    creations_only = Limits(max_offboard=0, max_create=2, window=timedelta(minutes=10))
    assert creations_only.counted(["offboarding", "onboarding"]) == {"creation"}
    off = Limits(max_offboard=0, max_create=0, window=timedelta(minutes=10))
    assert off.off
    assert (await breaker.admit(8, "8 P", ["offboarding"], off, now=at(608))).admitted


async def test_release_closes_it_restarts_the_window_and_admits_the_released_once(
    breaker: CircuitBreaker, store: MappingStore
) -> None:
    inbox = InboxRepository(store.engine)
    for employee in (1, 2, 3):
        await offboard(breaker, employee, employee)
    keys = {employee: await dispatched_event(inbox, employee) for employee in (4, 5)}
    for employee in (4, 5):
        held = await offboard(
            breaker, employee, employee, event_keys=[keys[employee]], flow_run_ids=[RUN]
        )
        assert held.events_held == 1
    event = await inbox.get(keys[4])
    assert event is not None
    assert event.status == EventStatus.held
    assert event.flow_run_id == RUN
    assert "held by the circuit breaker, open since 2026-12-08 10:00:04 UTC" in (
        event.outcome or ""
    )
    # Holding an event its run no longer has (dispatched again elsewhere) holds nothing.
    other = await dispatched_event(inbox, 9, run="run-2")
    assert (await offboard(breaker, 9, 9, event_keys=[other], flow_run_ids=[RUN])).events_held == 0

    partly = await breaker.release([4, 77], now=at(100))
    assert [hold.employee_id for hold in partly.holds] == [4]
    assert [event.event_key for event in partly.events] == [keys[4]]
    assert (partly.closed, partly.still_held, partly.asked_not_held) == (False, 2, [77])
    requeued = await inbox.get(keys[4])
    assert requeued is not None
    assert (requeued.status, requeued.flow_run_id) == (EventStatus.pending, None)
    # Still open: the released employee passes (its grant), anyone else is held.
    assert (await offboard(breaker, 4, 110)).released
    assert not (await offboard(breaker, 10, 111)).admitted

    everything = await breaker.release(now=at(200))
    assert everything.closed
    assert sorted(hold.employee_id for hold in everything.holds) == [5, 9, 10]
    # Closed: the window starts at the release, so the released ones (not counted) and the
    # three admitted before it leave room for three more.
    for employee in (5, 9, 10):
        assert (await offboard(breaker, employee, 210)).released
    for employee in (11, 12, 13):
        assert (await offboard(breaker, employee, 220)).admitted
    assert not (await offboard(breaker, 14, 230)).admitted
    state = await breaker.state(LIMITS, now=at(231))
    assert state.window_start == at(200)
    assert state.counted["offboarding"] == 3
    # Its work admitted, a run that works it again within the window passes (a Retry); once
    # the window has passed, a grant used once admits nothing more: held like anyone's.
    assert (await offboard(breaker, 4, 240)).admitted
    assert not (await offboard(breaker, 4, 720)).admitted


async def test_a_grant_lets_the_released_employees_other_processes_pass_and_expires(
    breaker: CircuitBreaker,
) -> None:
    for employee in (1, 2, 3):
        await offboard(breaker, employee, employee)
    # Hired and leaving at once: held for both.
    held = await breaker.admit(4, "4 P", ["onboarding", "offboarding"], LIMITS, now=at(4))
    assert held.hold is not None
    assert not (await offboard(breaker, 5, 5)).admitted
    await breaker.release([4], now=at(10))
    # Its onboarding run uses the grant, its offboarding run after it passes too, although
    # the breaker is still open (employee 5).
    assert (await breaker.admit(4, "4 P", ["onboarding"], LIMITS, now=at(11))).released
    assert (await offboard(breaker, 4, 12)).admitted
    # A grant nobody used lapses.
    await breaker.release([5], now=at(20))
    late = at(20) + RELEASE_GRANT_TTL + timedelta(seconds=1)
    assert not (await breaker.admit(5, "5 P", ["offboarding"], LIMITS, now=late)).released


async def test_drop_ends_the_holds_and_their_events_without_sending_anything(
    breaker: CircuitBreaker, store: MappingStore
) -> None:
    inbox = InboxRepository(store.engine)
    for employee in (1, 2, 3):
        await offboard(breaker, employee, employee)
    key = await dispatched_event(inbox, 4)
    await offboard(breaker, 4, 4, event_keys=[key], flow_run_ids=[RUN])
    await offboard(breaker, 5, 5)

    dropped = await breaker.drop(now=at(50))
    assert dropped.closed
    assert [event.event_key for event in dropped.events] == [key]
    event = await inbox.get(key)
    assert event is not None
    assert event.status == EventStatus.dropped
    assert event.outcome == (
        "dropped by an operator at 2026-12-08 10:00:50 UTC: nothing was sent to Jira"
    )
    # No grant: a dropped employee's next offboarding is counted (the window restarted).
    answer = await offboard(breaker, 4, 60)
    assert answer.admitted
    assert not answer.released
    assert (await breaker.release(now=at(70))).holds == []


async def test_concurrent_decisions_admit_no_one_past_the_limit(
    breaker: CircuitBreaker, database_url: str
) -> None:
    # Two engines: two processes deciding at once on the same store.
    async with await MappingStore.open(database_url) as other:
        breakers = (breaker, CircuitBreaker(other.engine))
        answers = await asyncio.gather(
            *(offboard(breakers[employee % 2], employee, 1) for employee in range(1, 21))
        )
    assert sum(answer.admitted for answer in answers) == 3
    assert sum(answer.tripped for answer in answers) == 1
    assert len(await breaker.open_holds()) == 17


async def dispatched_event(inbox: InboxRepository, employee_id: int, run: str = RUN) -> str:
    key = f"employee_terminate:{employee_id}:2026-12-08T10:00:00Z"
    await inbox.add(
        WebhookEvent(
            event_key=key,
            action="employee_terminate",
            employee_id=employee_id,
            body=json.dumps({"employee": employee_id}),
        )
    )
    await inbox.mark_dispatched([key], run)
    return key


@pytest.fixture(autouse=True)
async def _bounded() -> AsyncIterator[None]:
    # A lock that is never released would hang the test rather than fail it.
    async with asyncio.timeout(60):
        yield
