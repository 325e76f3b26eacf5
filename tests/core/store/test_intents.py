"""Write-ahead records of Jira writes in doubt, on SQLite and PostgreSQL."""

from __future__ import annotations

from core.store import Intents, MappingStore


async def test_announced_writes_stay_open_per_employee_and_guard_until_settled(
    store: MappingStore,
) -> None:
    intents = Intents(store.engine)
    guard = "pf-onboarding-7-20270104"
    assert not await intents.announce(7, "create_issue", guard, detail={"kind": "x"})
    assert await intents.announce(7, "create_issue", guard)  # a retry says it again: in doubt
    assert not await intents.announce(7, "comment", "comment:HR-1:abc", issue_key="HR-1")
    assert not await intents.announce(8, "create_issue", "pf-onboarding-8-20270104")

    (first, again) = await intents.open(7, "pf-onboarding-7-20270104")
    assert (first.operation, first.detail, again.detail) == ("create_issue", {"kind": "x"}, {})
    assert await intents.open(7, "pf-onboarding-8-20270104") == []
    # No link is needed, and none is made: announcing must not change how anyone is planned.
    assert await store.get(7) is None

    assert await intents.settle(7, ["pf-onboarding-7-20270104", "pf-unknown"]) == 2
    assert await intents.open(7, "pf-onboarding-7-20270104") == []
    assert [i.guard for i in await intents.all_open()] == [
        "comment:HR-1:abc",
        "pf-onboarding-8-20270104",
    ]
    assert await intents.settle(7, []) == 0
    assert not await intents.announce(7, "create_issue", guard)  # settled: no longer in doubt
