"""Employee leases on SQLite and PostgreSQL: one holder at a time, expiry, waiting."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from core.store import Leases, LeaseTimeout, MappingStore


async def test_one_holder_at_a_time(store: MappingStore) -> None:
    leases = Leases(store.engine)
    assert await leases.try_acquire(7, "run-a")
    assert not await leases.try_acquire(7, "run-b")
    assert await leases.try_acquire(7, "run-a")  # the holder may extend it
    assert await leases.try_acquire(8, "run-b")  # other employees are free
    assert await leases.holder_of(7) == "run-a"
    await leases.release(7, "run-b")  # not the holder: nothing happens
    assert await leases.holder_of(7) == "run-a"
    await leases.release(7, "run-a")
    assert await leases.try_acquire(7, "run-b")


async def test_expired_lease_can_be_taken(store: MappingStore) -> None:
    leases = Leases(store.engine)
    assert await leases.try_acquire(7, "crashed-run", ttl=timedelta(seconds=-1))
    assert await leases.holder_of(7) is None
    assert await leases.try_acquire(7, "next-run")


async def test_hold_waits_for_the_other_run(store: MappingStore) -> None:
    leases = Leases(store.engine)
    order: list[str] = []

    async def work(holder: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with leases.hold(7, holder, poll=0.05):
            order.append(f"{holder} in")
            await asyncio.sleep(0.2)
            order.append(f"{holder} out")

    await asyncio.gather(work("a", 0), work("b", 0.05))
    assert order == ["a in", "a out", "b in", "b out"]
    assert await leases.holder_of(7) is None


async def test_hold_gives_up_after_waiting(store: MappingStore) -> None:
    leases = Leases(store.engine)
    await leases.try_acquire(7, "slow-run")
    with pytest.raises(LeaseTimeout, match="employee 7 is still being worked on by slow-run"):
        async with leases.hold(7, "impatient", wait=0.2, poll=0.05):
            pass


async def test_concurrent_acquires_have_one_winner(store: MappingStore) -> None:
    leases = Leases(store.engine)
    won = await asyncio.gather(*(leases.try_acquire(9, f"run-{n}") for n in range(10)))
    assert sum(won) == 1
