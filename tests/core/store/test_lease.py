"""Employee leases on SQLite and PostgreSQL: one holder at a time, expiry, renewal, waiting.

Time to live are small here (a second or two) so that expiry is seen quickly; the bounds the
tests wait for are generous, for a loaded machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.store import Leases, LeaseTimeout, MappingStore
from core.store.lease import LEASE_TTL, LEASE_WAIT, RENEW_EVERY, LeaseLost
from tests.paths import ROOT

SHORT = timedelta(seconds=1)


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


async def test_renewal_extends_all_of_one_holders_leases_in_one_go(store: MappingStore) -> None:
    leases = Leases(store.engine)
    for employee_id in (1, 2, 3):
        assert await leases.try_acquire(employee_id, "run-a", ttl=SHORT)
    assert await leases.try_acquire(4, "run-b", ttl=SHORT)
    assert await leases.renew("run-a", ttl=timedelta(minutes=5)) == {1, 2, 3}
    await asyncio.sleep(1.5)  # past the first TTL: only the renewed ones are still held
    assert [await leases.holder_of(n) for n in (1, 2, 3, 4)] == ["run-a"] * 3 + [None]


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


async def test_a_live_holder_keeps_its_leases_past_the_ttl(store: MappingStore) -> None:
    leases = Leases(store.engine)
    taken_by_others: list[bool] = []
    ttl = timedelta(seconds=2)  # renewed each 0.25 s: a stalled loop has 1.75 s to spare
    async with leases.holding("long-run", ttl=ttl, renew_every=ttl / 8) as held:
        async with held.hold(7), held.hold(8):
            deadline = time.monotonic() + 2 * ttl.total_seconds()
            while time.monotonic() < deadline:  # two TTLs of work
                taken_by_others.append(await leases.try_acquire(7, "other", ttl=SHORT))
                taken_by_others.append(await leases.try_acquire(8, "other", ttl=SHORT))
                await asyncio.sleep(0.1)
            assert await leases.holder_of(7) == await leases.holder_of(8) == "long-run"
        assert await leases.holder_of(7) is None  # released at the end of the block
    assert taken_by_others
    assert not any(taken_by_others)


async def test_a_holder_that_stops_renewing_loses_the_lease_after_the_ttl(
    store: MappingStore,
) -> None:
    leases = Leases(store.engine)
    holding = leases.holding("frozen-run", ttl=SHORT, renew_every=SHORT / 4)
    async with holding as held, held.hold(7):
        # The renewing task stops, as when the process is killed: nothing released.
        assert holding._renewing is not None
        holding._renewing.cancel()
        assert not await leases.try_acquire(7, "next-run", ttl=SHORT)
        started = time.monotonic()
        async with leases.hold(7, "next-run", wait=30, poll=0.05):
            waited = time.monotonic() - started
            assert await leases.holder_of(7) == "next-run"
    assert 0 < waited < 30


async def test_a_lost_lease_stops_that_employees_work_only(store: MappingStore) -> None:
    leases = Leases(store.engine)
    other_done = False

    async def other() -> None:
        nonlocal other_done
        async with held.hold(8):
            await asyncio.sleep(1.5)
            other_done = True

    async def stolen() -> None:
        async with held.hold(7):
            # Another run took the employee, as it may once a stalled holder's lease lapsed.
            async with store.engine.begin() as connection:
                await connection.execute(
                    sa.text("UPDATE employee_lease SET holder = 'thief' WHERE employee_id = 7")
                )
            assert await leases.try_acquire(7, "thief", ttl=timedelta(minutes=5))
            await asyncio.sleep(30)

    async with leases.holding("stalled-run", ttl=SHORT, renew_every=SHORT / 4) as held:
        others = asyncio.create_task(other())
        with pytest.raises(LeaseLost, match="lease on employee 7 lapsed"):
            await stolen()
        await others
    assert other_done
    assert await leases.holder_of(7) == "thief"  # not released by the run that lost it


HOLDER_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import timedelta
    from core.database import create_engine
    from core.store import Leases

    async def main():
        engine = create_engine(sys.argv[1])
        ttl = timedelta(seconds=float(sys.argv[2]))
        async with Leases(engine).holding("doomed", ttl=ttl, renew_every=ttl / 6) as held:
            async with held.hold(7):
                print("held", flush=True)
                await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_killed_holders_lease_lapses_and_a_live_one_is_kept(store: MappingStore) -> None:
    """A real process holds the lease: alive, it keeps it past its TTL; killed with SIGKILL (no
    release, no cleanup), the lease is free again within about a TTL."""
    ttl = 3.0  # renewed each 0.5 s
    url = store.engine.url.render_as_string(hide_password=False)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER_PROCESS,
        url,
        str(ttl),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    leases = Leases(store.engine)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line.strip() == b"held"
        await asyncio.sleep(1.5 * ttl)  # past its TTL: the renewals keep it
        assert await leases.holder_of(7) == "doomed"
        assert not await leases.try_acquire(7, "replay", ttl=SHORT)
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 10)
        assert await leases.holder_of(7) == "doomed"  # nothing let it go
        started = time.monotonic()
        async with leases.hold(7, "replay", wait=60, poll=0.05):
            waited = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert waited < 60


def test_a_waiter_outwaits_a_dead_holder() -> None:
    assert 2 * (LEASE_TTL + RENEW_EVERY).total_seconds() < LEASE_WAIT
    assert RENEW_EVERY < LEASE_TTL / 2
