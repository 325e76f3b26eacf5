"""Real HR life, run by Prefect against the simulators over HTTP: a leaver whatever the order
of events, a hire withdrawn before day one (terminated, or deleted), a first day that moves,
and a route with its own lead time."""

from __future__ import annotations

import pytest

from core.jira.adf import adf_to_text
from core.rules import Rules
from core.store import EffectAction, Lifecycle
from flows.onboarding import onboarding
from flows.sync import sync_employees
from sandbox.jira import SimIssue
from tests.fixtures_flows import World


async def assert_converged(world: World, employee_id: int) -> None:
    """One more run changes nothing in Jira."""
    writes = world.jira.state.writes
    await sync_employees([employee_id])
    assert world.jira.state.writes == writes


@pytest.mark.parametrize(
    ("hired_in", "leaves_in", "lifecycle"),
    [
        pytest.param(-10, -2, Lifecycle.offboarded, id="entered after its effective date"),
        pytest.param(-3, 0, Lifecycle.offboarded, id="effective today, create not seen yet"),
    ],
)
async def test_a_leaver_never_onboarded_here_gets_exactly_one_offboarding(
    world: World, hired_in: int, leaves_in: int, lifecycle: Lifecycle
) -> None:
    person = world.hire("Late", "Leaver", in_days=hired_in)
    world.peopleforce.state.terminate(person.id, effective_on=world.days(leaves_in))
    await sync_employees([person.id])  # the termination's run
    await sync_employees([person.id])  # the create's run, delivered after it
    (parent,) = world.parents_of(person.id)
    assert parent.summary == f"Offboarding: Late Leaver (last day {world.days(leaves_in)})"
    assert parent.duedate == world.days(leaves_in).isoformat()
    assert "Revoke access for Late Leaver" in [
        i.summary for i in world.issues_of(person.id) if i.parent_key == parent.key
    ]
    link = await world.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.offboarding_issue_key) == (lifecycle, parent.key)


async def test_a_hire_withdrawn_before_day_one_cancels_the_onboarding(world: World) -> None:
    person = world.hire("Never", "Started", in_days=5)
    await sync_employees([person.id])
    (onboarding_issue,) = world.parents_of(person.id)
    world.peopleforce.state.terminate(person.id, effective_on=world.days(2))

    await sync_employees([person.id])

    (parent,) = world.parents_of(person.id)  # no offboarding
    assert parent.key == onboarding_issue.key
    assert parent.status == "Cancelled"
    subtasks = [i for i in world.issues_of(person.id) if i.parent_key == parent.key]
    assert subtasks
    assert {i.status for i in subtasks} == {"Cancelled"}
    comment = adf_to_text(parent.comments[-1].body)
    assert "withdrawn in PeopleForce before day one" in comment
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.lifecycle == Lifecycle.withdrawn
    assert link.onboarding_issue_key is None
    effects = [effect.action for effect in await world.services.store.effects(person.id)]
    assert effects[-1] == EffectAction.transition

    await assert_converged(world, person.id)
    assert len(parent.comments) == 1


async def test_a_hire_withdrawn_before_any_onboarding_gets_no_issue(world: World) -> None:
    person = world.hire("Never", "Onboarded", in_days=30)  # beyond the lead time
    world.peopleforce.state.terminate(person.id, effective_on=world.days(20))
    await sync_employees([person.id])
    assert world.issues_of(person.id) == []


async def test_a_termination_applied_again_after_its_revert_recreates_the_offboarding(
    world: World,
) -> None:
    person = world.hire("Twice", "Leaving", in_days=1)
    await sync_employees([person.id])
    world.peopleforce.state.terminate(person.id, effective_on=world.days(10))
    await sync_employees([person.id])
    world.peopleforce.state.revert_termination(person.id)
    await sync_employees([person.id])
    (cancelled,) = [i for i in world.parents_of(person.id) if i.summary.startswith("Offboarding")]
    assert cancelled.status == "Cancelled"

    world.peopleforce.state.terminate(person.id, effective_on=world.days(10))  # the same again
    await sync_employees([person.id])

    offboardings = [i for i in world.parents_of(person.id) if i.summary.startswith("Offboarding")]
    assert [i.status for i in offboardings] == ["Cancelled", "To Do"]
    fresh = offboardings[1]
    assert fresh.duedate == world.days(10).isoformat()
    assert [i for i in world.issues_of(person.id) if i.parent_key == fresh.key]  # its checklist
    link = await world.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.offboarding_issue_key) == (Lifecycle.offboarding, fresh.key)
    await assert_converged(world, person.id)


async def test_a_withdrawn_hire_reinstated_gets_a_fresh_onboarding(world: World) -> None:
    person = world.hire("Back", "Again", in_days=5)
    await sync_employees([person.id])
    world.peopleforce.state.terminate(person.id, effective_on=world.days(2))
    await sync_employees([person.id])
    world.peopleforce.state.revert_termination(person.id)

    await sync_employees([person.id])

    assert [i.status for i in world.parents_of(person.id)] == ["Cancelled", "To Do"]
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.lifecycle == Lifecycle.onboarding
    assert link.onboarding_issue_key == world.parents_of(person.id)[1].key


def comments_of(issue: SimIssue) -> list[str]:
    return [adf_to_text(comment.body) for comment in issue.comments]


@pytest.mark.parametrize(
    "moved_to",
    [
        pytest.param(9, id="later"),
        pytest.param(2, id="earlier"),
        pytest.param(40, id="beyond the lead time, after the onboarding was made"),
        pytest.param(-2, id="to a day already past"),
    ],
)
async def test_a_moved_first_day_moves_the_onboarding_issue(world: World, moved_to: int) -> None:
    person = world.hire("Moved", "Start", in_days=5, department="Finance")
    await sync_employees([person.id])
    (onboarding_issue,) = world.parents_of(person.id)
    assert onboarding_issue.duedate == world.days(5).isoformat()
    world.peopleforce.state.update(person.id, hired_on=world.days(moved_to))

    await sync_employees([person.id])

    (parent,) = world.parents_of(person.id)  # the same issue, moved: no second one
    assert parent.key == onboarding_issue.key
    assert parent.duedate == world.days(moved_to).isoformat()
    assert parent.summary == f"Onboarding: Moved Start ({world.days(moved_to)})"
    assert parent.status == "To Do"
    moved = f"The first day moved from {world.days(5)} to {world.days(moved_to)}."
    assert moved in comments_of(parent)
    link = await world.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.hired_on) == (Lifecycle.onboarding, world.days(moved_to))

    await assert_converged(world, person.id)
    assert comments_of(parent).count(moved) == 1


async def test_a_first_day_moved_before_the_lead_time_waits_then_onboards_on_the_new_day(
    world: World,
) -> None:
    person = world.hire("Far", "Ahead", in_days=30, department="Finance")
    await sync_employees([person.id])  # seen once while beyond the lead time
    assert world.issues_of(person.id) == []
    world.peopleforce.state.update(person.id, hired_on=world.days(40))
    await sync_employees([person.id])
    assert world.issues_of(person.id) == []  # still beyond the lead time: nothing to move

    world.peopleforce.state.update(person.id, hired_on=world.days(10))
    await sync_employees([person.id])
    (parent,) = world.parents_of(person.id)
    assert parent.duedate == world.days(10).isoformat()
    assert comments_of(parent) == []  # made for the day it is: nothing moved


async def test_a_hire_deleted_before_day_one_cancels_the_onboarding(world: World) -> None:
    person = world.hire("Entered", "ByMistake", in_days=5, department="Finance")
    await sync_employees([person.id])
    (onboarding_issue,) = world.parents_of(person.id)
    world.peopleforce.state.delete(person.id)  # PeopleForce sends no webhook for it

    # What a manual run does (`replay --employee`, Retry); the reconciliation does the same.
    await sync_employees([person.id])

    (parent,) = world.parents_of(person.id)  # no offboarding
    assert parent.key == onboarding_issue.key
    assert parent.status == "Cancelled"
    subtasks = [i for i in world.issues_of(person.id) if i.parent_key == parent.key]
    assert subtasks
    assert {i.status for i in subtasks} == {"Cancelled"}
    assert comments_of(parent) == [
        f"Entered ByMistake was deleted in PeopleForce before day one (first day "
        f"{world.days(5)}): onboarding cancelled. Remove any account or access already prepared."
    ]
    link = await world.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.onboarding_issue_key) == (Lifecycle.withdrawn, None)

    await assert_converged(world, person.id)
    assert len(parent.comments) == 1


async def test_a_hire_deleted_after_day_one_is_reported_and_nothing_changes(
    world: World,
) -> None:
    person = world.hire("Already", "Started", in_days=-3, department="Finance")
    await sync_employees([person.id])
    (onboarding_issue,) = world.parents_of(person.id)
    world.peopleforce.state.delete(person.id)
    writes = world.jira.state.writes

    (outcome,) = await onboarding([person.id])

    assert outcome.error is None
    assert outcome.applied == []
    assert any("no longer returns this employee" in note for note in outcome.notes)
    assert world.jira.state.writes == writes
    assert world.parents_of(person.id)[0].status == onboarding_issue.status == "To Do"
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.lifecycle == Lifecycle.onboarding


async def test_a_route_s_own_lead_time_decides_when_its_hires_are_onboarded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = world.services.rules.model_dump()
    (engineering,) = [route for route in raw["routes"] if route["name"] == "engineering"]
    engineering["prehire_lead_days"] = 21
    monkeypatch.setattr(world.services, "rules", Rules.model_validate(raw))
    engineer = world.hire("Early", "Engineer", in_days=20, department="Engineering")
    accountant = world.hire("Later", "Accountant", in_days=20, department="Finance")

    routed = await sync_employees([engineer.id, accountant.id])

    assert routed == {"onboarding": [engineer.id]}
    (parent,) = world.parents_of(engineer.id)
    assert (parent.project, parent.duedate) == ("IT", world.days(20).isoformat())
    assert world.issues_of(accountant.id) == []  # the rules' own 14 days
