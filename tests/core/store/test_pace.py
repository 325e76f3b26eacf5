"""The rate governor's buckets in the store, on SQLite and PostgreSQL: tokens taken in batches
and refilled at the rate, a pause and a slow-down seen by every engine sharing the database,
and concurrent takers from two engines (two runs) never given more than the bucket holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from core.jira.pace import SLOW_FACTOR
from core.store import MappingStore, StoreTokens

T0 = 1_800_000_000.0
CLASS = "PUT issue/{issueIdOrKey}"
RATE, CAPACITY = 40.0, 20.0


@pytest.fixture
async def other_store(database_url: str, store: MappingStore) -> AsyncIterator[MappingStore]:
    """A second engine on the same database: another run's."""
    async with await MappingStore.open(database_url) as opened:
        yield opened


async def test_tokens_are_taken_in_batches_and_refill_at_the_rate(store: MappingStore) -> None:
    tokens = StoreTokens(store.engine)
    grants = [await tokens.take(CLASS, RATE, CAPACITY, 4, T0) for _ in range(6)]
    # A new bucket is full: 20 tokens, 4 at a time; the next 4 are reserved, to be spent
    # once paid for (0.1 s at 40 a second).
    assert [(grant.tokens, grant.wait) for grant in grants] == [(4, 0.0)] * 5 + [
        (4, pytest.approx(4 / RATE))
    ]
    later = await tokens.take(CLASS, RATE, CAPACITY, 4, T0 + 0.35)  # 14 tokens back, 4 owed
    assert (later.tokens, later.wait) == (4, 0.0)
    bucket = await tokens.bucket(CLASS)
    assert bucket is not None
    assert (bucket.tokens, bucket.at) == (pytest.approx(6.0), T0 + 0.35)
    # Never more than it holds, however long it was left.
    await tokens.take(CLASS, RATE, CAPACITY, 1, T0 + 3600)
    bucket = await tokens.bucket(CLASS)
    assert bucket is not None
    assert bucket.tokens == CAPACITY - 1


async def test_a_pause_and_a_slow_down_reach_every_run(
    store: MappingStore, other_store: MappingStore
) -> None:
    run, other_run = StoreTokens(store.engine), StoreTokens(other_store.engine)
    await run.take(CLASS, RATE, CAPACITY, 20, T0)  # empties it
    await run.pause(CLASS, T0 + 3)
    paused = await other_run.take(CLASS, RATE, CAPACITY, 4, T0 + 1)
    assert (paused.tokens, paused.paused_until) == (0, T0 + 3)
    assert paused.wait == pytest.approx(2.0)
    # A shorter pause heard later does not cut the longer one short.
    await other_run.pause(CLASS, T0 + 2)
    assert (await run.take(CLASS, RATE, CAPACITY, 4, T0 + 2.5)).tokens == 0

    after = await other_run.take(CLASS, RATE, CAPACITY, 20, T0 + 3)
    assert (after.tokens, after.wait) == (20, 0.0)  # refilled meanwhile (to its capacity)
    await other_run.slow(CLASS, T0 + 10)
    slowed = await run.take(CLASS, RATE, CAPACITY, 8, T0 + 3.25)
    # At half the rate, a quarter of a second gave 5 tokens, not 10: the other 3 are paid for
    # at 20 a second.
    assert slowed.tokens == 8
    assert slowed.wait == pytest.approx((8 - RATE * SLOW_FACTOR * 0.25) / (RATE * SLOW_FACTOR))
    assert slowed.slowed_until == T0 + 10


async def test_a_pause_of_a_class_never_taken_from_holds(store: MappingStore) -> None:
    tokens = StoreTokens(store.engine)
    await tokens.pause("DELETE group/user", T0 + 5)
    grant = await tokens.take("DELETE group/user", RATE, CAPACITY, 1, T0)
    assert (grant.tokens, grant.wait) == (0, pytest.approx(5.0))


async def test_concurrent_takers_on_two_engines_share_one_bucket(
    store: MappingStore, other_store: MappingStore
) -> None:
    runs = [StoreTokens(store.engine), StoreTokens(other_store.engine)]
    grants = await asyncio.gather(
        *(runs[n % 2].take(CLASS, RATE, CAPACITY, 3, T0) for n in range(16))
    )
    # 16 takers of 3 at one instant: the bucket's 20 at once (6 takers), and each later taker
    # waits for its own 3, one after another: nobody is given the same token twice.
    waits = sorted(grant.wait for grant in grants)
    assert all(grant.tokens == 3 for grant in grants)
    assert waits == pytest.approx([max(0.0, (3 * n - 20) / RATE) for n in range(1, 17)])
