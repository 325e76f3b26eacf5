"""Two Jira clients, each with its own store engine (two flow runs), against the Jira simulator
over HTTP with Jira's rate limits on: sharing the governor's buckets through the store keeps
them both under the endpoint's limit, where each pacing alone at the same rate does not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from core.jira import JiraClient
from core.jira.pace import Governor, LocalTokens, Rates, TokenSource
from core.retry import API_CALL
from core.store import MappingStore, StoreTokens
from tests.contract import SpecContract
from tests.fixtures_jira import JIRA_API_TOKEN, JIRA_EMAIL, JiraSandbox

# The simulator's limits for this test (Jira's shape, smaller numbers, so it runs in seconds),
# and the governor's rates, below them.
SIMULATOR_LIMITS = {
    "enabled": True,
    "per_method": {"GET": 100, "POST": 100, "PUT": 10},
    "burst_seconds": 0.5,
    "per_issue_writes": [{"writes": 6, "seconds": 2}],
}
RATES = Rates(
    per_method={"GET": 80.0, "POST": 80.0, "PUT": 8.0},
    burst_seconds=0.5,
    issue_windows=((5, 2.0),),
)
EDITS_PER_RUN = 30
ISSUES_PER_RUN = 11


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[list[MappingStore]]:
    """Two engines on one store (SQLite, PostgreSQL): two runs' sessions."""
    async with (
        await MappingStore.open(database_url) as one,
        await MappingStore.open(database_url) as other,
    ):
        yield [one, other]


async def limits_on(jira_sim: JiraSandbox) -> list[list[str]]:
    """The simulator's limits on; issues for each run to edit (a run's issues are its own: a
    run holds its employees' leases)."""
    async with httpx.AsyncClient(base_url=jira_sim.url, trust_env=False) as raw:
        answer = await raw.put("/_sandbox/rate-limits", json=SIMULATOR_LIMITS)
        assert answer.status_code == 200, answer.text
    async with JiraClient(jira_sim.url, JIRA_EMAIL, JIRA_API_TOKEN) as setup:
        created = [
            (await setup.create_issue("HR", "Task", f"issue {n}")).key
            for n in range(2 * ISSUES_PER_RUN)
        ]
    return [created[:ISSUES_PER_RUN], created[ISSUES_PER_RUN:]]


async def edit_all(jira: JiraClient, keys: list[str]) -> None:
    """EDITS_PER_RUN edits, 8 at a time; the first issue gets a fifth of them (more than its
    window: per-issue pacing), each retried as the service retries (core.retry)."""
    bound = asyncio.Semaphore(8)
    targets = [
        keys[0] if n % 5 == 0 else keys[1 + n % (len(keys) - 1)] for n in range(EDITS_PER_RUN)
    ]

    async def edit(n: int, key: str) -> None:
        async with bound:
            await API_CALL.call(
                f"edit {key}", lambda: jira.edit_issue(key, fields={"summary": f"edit {n}"})
            )

    await asyncio.gather(*(edit(n, key) for n, key in enumerate(targets)))


async def two_runs(
    jira_sim: JiraSandbox, contract: SpecContract, sources: list[TokenSource]
) -> tuple[int, float]:
    """Both runs' edits at once; the simulator's 429s, and the seconds it took."""
    keys = await limits_on(jira_sim)
    jira_sim.state.rate_limiter.reset_counts()
    clients = [jira_sim.client(contract, pacer=Governor(RATES, source)) for source in sources]
    started = asyncio.get_running_loop().time()
    try:
        await asyncio.gather(*(edit_all(client, keys[n]) for n, client in enumerate(clients)))
    finally:
        for client in clients:
            await client.aclose()
    elapsed = asyncio.get_running_loop().time() - started
    return jira_sim.state.rate_limiter.refused.total(), elapsed


async def test_two_runs_sharing_the_store_stay_under_the_limits(
    jira_sim: JiraSandbox, jira_contract: SpecContract, stores: list[MappingStore]
) -> None:
    refused, elapsed = await two_runs(
        jira_sim, jira_contract, [StoreTokens(store.engine) for store in stores]
    )
    assert refused == 0
    # 60 edits at 8 a second, after the 4 the bucket holds: about 7 s.
    assert elapsed >= (2 * EDITS_PER_RUN - RATES.capacity(8.0)) / 8.0 * 0.9


async def test_two_runs_each_pacing_alone_go_past_the_limit(
    jira_sim: JiraSandbox, jira_contract: SpecContract
) -> None:
    # The same rates, each run's buckets its own: together twice the rate (and at the start
    # both buckets' 4 at once, where the endpoint holds 5), and Jira refuses.
    refused, _ = await two_runs(jira_sim, jira_contract, [LocalTokens(), LocalTokens()])
    assert refused >= 3
