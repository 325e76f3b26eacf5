"""Exactly once under ambiguous failures: Jira applies a write and the answer is lost, search
lags behind writes, and the process dies between a send and its record.

Every request goes over real HTTP to the simulators (held to the specs), the flows run on the
Prefect test server. `losing` makes the Jira simulator apply every write and lose its answer
(a reset connection or a 5xx); search lags 5 s (or far longer, where a test needs search to
miss what was just made).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.jira.adf import adf_to_text
from core.names import work_label
from core.store import EffectAction, Intents, Lifecycle
from flows.field_sync import field_sync
from flows.offboarding import offboarding
from flows.onboarding import onboarding
from flows.work import EmployeesFailed
from sandbox.faults import Faults
from sandbox.jira import SimIssue
from tasks import jira as jira_tasks
from tasks import store as store_tasks
from tasks.services import Services, use
from tests.contract import SpecContract
from tests.fixtures_flows import World
from tests.flows.test_assets_degrade import leaving

SEARCH_LAG = 5.0


def losing(*outcomes: Any, lag: float = SEARCH_LAG, **more: Any) -> Faults:
    """Every write applied and its answer lost, as one of `outcomes`; search `lag` s behind."""
    return Faults(
        after_apply_rate=1,
        after_apply_outcomes=list(outcomes or ["reset", 500, 502, 503]),
        search_lag_seconds=lag,
        **more,
    )


def subtasks_of(world: World, parent: SimIssue) -> list[str]:
    return sorted(i.summary for i in world.jira.state.issues.values() if i.parent_key == parent.key)


def lost_answers(world: World) -> int:
    return world.jira.state.stats()["applied_then_failed"]


async def open_intents(world: World) -> list[str]:
    return [intent.guard for intent in await Intents(world.services.store.engine).all_open()]


async def effects(world: World, employee_id: int) -> list[str]:
    return [effect.action for effect in await world.services.store.effects(employee_id)]


def comments_on(issue: SimIssue) -> list[str]:
    return [adf_to_text(comment.body) for comment in issue.comments]


@pytest.fixture
async def slow_to_answer(world: World, jira_contract: SpecContract) -> AsyncIterator[World]:
    """The world with a Jira client that gives up on an answer after 2 s."""
    services = world.services
    async with world.jira.client(jira_contract, timeout=2.0) as jira:
        impatient = Services(
            services.peopleforce, jira, services.store, services.rules, services.rules_file
        )
        async with use(impatient):
            yield World(impatient, world.peopleforce, world.jira, world.today, world.database_url)


# --------------------------------------------------------------------------- answers lost


async def test_onboarding_whose_every_answer_is_lost_creates_one_issue_and_one_checklist(
    world: World,
) -> None:
    person = world.hire("Ada", "Lovelace", in_days=3, department="Engineering")
    world.jira.state.set_faults(losing())

    (outcome,) = await onboarding([person.id])

    assert outcome.error is None
    (parent,) = world.parents_of(person.id)
    assert subtasks_of(world, parent) == [
        "Create accounts for Ada Lovelace",
        "Grant source code access to Ada Lovelace",
        "Prepare a laptop for Ada Lovelace",
        "Welcome meeting with Ada Lovelace",
    ]
    assert len(world.issues_of(person.id)) == 5
    assert lost_answers(world) == 2  # the create and the bulk create: both made, both unanswered
    link = await world.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.onboarding_issue_key) == (Lifecycle.onboarding, parent.key)
    assert sorted(link.onboarding_subtask_keys) == sorted(
        i.key for i in world.issues_of(person.id) if i.parent_key
    )
    assert await effects(world, person.id) == [
        EffectAction.create_onboarding,
        EffectAction.create_subtask,
    ]
    assert await open_intents(world) == []


async def test_a_create_that_timed_out_is_found_not_made_again(slow_to_answer: World) -> None:
    world = slow_to_answer
    person = world.hire("Grace", "Hopper", in_days=2, department="Finance")
    world.jira.state.set_faults(losing("timeout", after_apply_hold_seconds=60))

    (outcome,) = await onboarding([person.id])

    assert outcome.error is None
    (parent,) = world.parents_of(person.id)
    assert len(subtasks_of(world, parent)) == 3
    assert world.jira.state.stats()["applied_then_failed_by_outcome"] == {"timeout": 2}


async def test_a_field_change_whose_comment_answer_is_lost_comments_once(world: World) -> None:
    person = world.hire("Émilie", "du Châtelet", in_days=1, department="Finance")
    await onboarding([person.id])
    world.peopleforce.state.update(person.id, department="Sales", position="Account Executive")
    # The edit is idempotent and resent as it is: were every one of its answers lost too, it
    # would be resent until the retries ran out. Only the POSTs lose theirs.
    world.jira.state.set_faults(losing(only_methods=["POST"]))

    (outcome,) = await field_sync([person.id])

    assert outcome.error is None
    (parent,) = world.parents_of(person.id)
    assert parent.custom["customfield_10051"] == {"value": "Sales"}
    (comment,) = comments_on(parent)
    assert "department: Finance -> Sales" in comment
    assert lost_answers(world) == 1


async def test_a_cancellation_whose_answers_are_lost_cancels_and_says_so_once(
    world: World,
) -> None:
    person = world.hire("Niels", "Bohr", in_days=1)
    await onboarding([person.id])
    world.peopleforce.state.terminate(person.id, effective_on=world.days(15))
    await offboarding([person.id])
    world.peopleforce.state.revert_termination(person.id)
    world.jira.state.set_faults(losing())

    (outcome,) = await offboarding([person.id])

    assert outcome.error is None
    leaving = next(i for i in world.parents_of(person.id) if i.summary.startswith("Offboarding"))
    subtasks = [i for i in world.issues_of(person.id) if i.parent_key == leaving.key]
    assert {i.status for i in [leaving, *subtasks]} == {"Cancelled"}
    (comment,) = comments_on(leaving)
    assert "reverted" in comment
    # Each transition, the retired work labels (an idempotent edit, sent again), the comment.
    assert lost_answers(world) == 1 + len(subtasks) + 1 + 1
    assert not any(
        label.startswith(f"pf-offboarding-{person.id}-") and not label.endswith("-cancelled")
        for label in leaving.labels
    )


async def test_flaky_jira_that_also_loses_answers_makes_each_issue_once(world: World) -> None:
    people = [world.hire("Flaky", f"Person{n}", in_days=1, department="Sales") for n in range(3)]
    world.jira.state.set_faults(
        Faults(
            error_rate=0.3,
            error_statuses=[429, 503],
            retry_after="1",
            after_apply_rate=0.3,
            after_apply_outcomes=["reset", 500, 502, 503],
            search_lag_seconds=SEARCH_LAG,
            seed=5,
        )
    )

    outcomes = await onboarding([person.id for person in people])

    assert [outcome.error for outcome in outcomes] == [None] * 3
    for person in people:
        (parent,) = world.parents_of(person.id)
        assert len(subtasks_of(world, parent)) == 3
    stats = world.jira.state.stats()
    assert stats["faults_injected"] > 0
    assert stats["applied_then_failed"] > 0
    assert await open_intents(world) == []


# --------------------------------------------------------------------------- killed between send and record


def crash_before_recording(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store write after the Jira writes never happens, as when the process is killed
    there: the run ends having changed Jira and recorded nothing."""

    async def killed(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("process killed before the store write")

    monkeypatch.setattr(world.services.store, "record_effect", killed)


async def rerun_onboards_once(world: World, employee_id: int, parent: SimIssue) -> None:
    """The rerun after a crash ends well with the one parent the crashed run made and its whole
    checklist, and the link knows them."""
    (outcome,) = await onboarding([employee_id])

    assert outcome.error is None
    assert world.parents_of(employee_id) == [parent]
    assert len(subtasks_of(world, parent)) == 3
    link = await world.services.store.get(employee_id)
    assert link is not None
    assert link.onboarding_issue_key == parent.key
    assert len(link.onboarding_subtask_keys) == 3


async def test_killed_between_the_creates_and_their_record_the_rerun_adopts(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Search lags far behind: it cannot show the issues the first run made.
    world.jira.state.set_faults(Faults(search_lag_seconds=600))
    person = world.hire("Kurt", "Gödel", in_days=1, department="Finance")
    with monkeypatch.context() as patch:
        crash_before_recording(world, patch)
        with pytest.raises(EmployeesFailed):
            await onboarding([person.id])
    (parent,) = world.parents_of(person.id)
    assert len(subtasks_of(world, parent)) == 3
    assert await world.services.store.get(person.id) is None
    guard = work_label("onboarding", person.id, world.days(1))
    assert await open_intents(world) == [guard]
    # The guard search alone would create a second one: it does not show the first yet.
    assert await jira_tasks.find_issue_by_label(guard, "test") is None

    await rerun_onboards_once(world, person.id, parent)
    assert await effects(world, person.id) == [
        EffectAction.adopt_existing,
        EffectAction.create_subtask,
    ]
    assert await open_intents(world) == []


async def test_killed_after_the_parent_before_its_subtasks_the_rerun_completes_them(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.jira.state.set_faults(Faults(search_lag_seconds=600))
    person = world.hire("Emmy", "Noether", in_days=1, department="Finance")

    async def killed(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("process killed before the subtasks")

    with monkeypatch.context() as patch:
        crash_before_recording(world, patch)
        patch.setattr(jira_tasks, "create_subtasks", killed)
        with pytest.raises(EmployeesFailed):
            await onboarding([person.id])
    (parent,) = world.parents_of(person.id)
    assert subtasks_of(world, parent) == []

    await rerun_onboards_once(world, person.id, parent)


async def test_killed_between_a_comment_and_its_record_the_rerun_comments_no_more(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    person = world.hire("Marie", "Curie", in_days=1)
    world.peopleforce.state.terminate(person.id, effective_on=world.days(10))
    await offboarding([person.id])
    world.peopleforce.state.terminate(person.id, effective_on=world.days(12))
    with monkeypatch.context() as patch:
        crash_before_recording(world, patch)
        with pytest.raises(EmployeesFailed):
            await offboarding([person.id])
    (leaving,) = world.parents_of(person.id)
    assert len(comments_on(leaving)) == 1

    (outcome,) = await offboarding([person.id])

    assert outcome.error is None
    assert comments_on(leaving) == [
        f"The last day moved from {world.days(10)} to {world.days(12)}."
    ]
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.termination_on == world.days(12)
    assert await open_intents(world) == []


async def test_killed_between_a_moved_first_day_and_its_record_the_rerun_comments_no_more(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    person = world.hire("Lise", "Moved", in_days=4, department="Finance")
    await onboarding([person.id])
    world.peopleforce.state.update(person.id, hired_on=world.days(8))
    with monkeypatch.context() as patch:
        crash_before_recording(world, patch)
        with pytest.raises(EmployeesFailed):
            await onboarding([person.id])
    (parent,) = world.parents_of(person.id)
    assert parent.duedate == world.days(8).isoformat()
    assert len(comments_on(parent)) == 1

    (outcome,) = await onboarding([person.id])

    assert outcome.error is None
    assert comments_on(parent) == [f"The first day moved from {world.days(4)} to {world.days(8)}."]
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.hired_on == world.days(8)
    assert await open_intents(world) == []


async def test_killed_after_the_asset_comment_the_rerun_adopts_and_comments_no_more(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.jira.state.set_faults(Faults(search_lag_seconds=600))
    person = leaving(world, "Hedy", "Lamarr", "not_found")
    with monkeypatch.context() as patch:
        crash_before_recording(world, patch)
        with pytest.raises(EmployeesFailed):
            await offboarding([person.id])
    (parent,) = world.parents_of(person.id)
    (comment,) = comments_on(parent)
    assert comment.startswith("The asset list must be checked by hand: ")

    (outcome,) = await offboarding([person.id])

    assert outcome.error is None
    assert world.parents_of(person.id) == [parent]
    assert comments_on(parent) == [comment]
    assert await effects(world, person.id) == [
        EffectAction.adopt_existing,
        EffectAction.create_subtask,
        EffectAction.comment,
    ]
    assert await open_intents(world) == []


async def test_a_write_in_doubt_that_never_happened_is_sent(world: World) -> None:
    # Announced, then killed before the send: the rerun reads Jira, finds nothing, creates.
    person = world.hire("Lise", "Meitner", in_days=1, department="Finance")
    guard = work_label("onboarding", person.id, world.days(1))
    await store_tasks.announce_write(person.id, "create_issue", guard, "test")

    (outcome,) = await onboarding([person.id])

    assert outcome.error is None
    (parent,) = world.parents_of(person.id)
    assert len(subtasks_of(world, parent)) == 3
    assert await effects(world, person.id) == [
        EffectAction.create_onboarding,
        EffectAction.create_subtask,
    ]
    assert await open_intents(world) == []
