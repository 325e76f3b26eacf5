"""Degrade, never drop: a leaver whose asset list cannot be read still gets their offboarding,
run by Prefect against the simulators over real HTTP (the assets endpoint told how to answer
through the simulator's control API)."""

from __future__ import annotations

import httpx

from core.jira.adf import adf_to_text
from core.store import EffectAction
from flows.offboarding import offboarding
from sandbox.seed import SeedPerson
from tests.fixtures_flows import World


def leaving(world: World, first: str, last: str, answer: str) -> SeedPerson:
    """Someone hired long ago, with a laptop, leaving in 20 days; the simulator's assets
    endpoint answers `answer` for them."""
    person = world.hire(first, last, in_days=-400, department="Finance")
    world.give_asset(person, "MacBook Pro 14", "C02XK1")
    world.peopleforce.state.terminate(person.id, effective_on=world.days(20))
    control = f"{world.peopleforce.url}/_sandbox/employees/{person.id}/assets-answer"
    httpx.put(control, json={"answer": answer}).raise_for_status()
    return person


def comments_on_offboarding(world: World, employee_id: int) -> list[str]:
    (parent,) = world.parents_of(employee_id)
    return [adf_to_text(comment.body) for comment in parent.comments]


def offboarding_subtasks(world: World, employee_id: int) -> tuple[str, list[str]]:
    (parent,) = world.parents_of(employee_id)
    assert parent.summary.startswith("Offboarding")
    subtasks = [i.summary for i in world.issues_of(employee_id) if i.parent_key == parent.key]
    return parent.key, subtasks


async def test_a_tenant_without_the_assets_module_still_gets_the_offboarding(
    world: World,
) -> None:
    person = leaving(world, "Grace", "Hopper", "not_found")
    (outcome,) = await offboarding([person.id])
    assert outcome.error is None
    _, subtasks = offboarding_subtasks(world, person.id)
    assert subtasks == [
        "Revoke access for Grace Hopper",
        "Exit interview with Grace Hopper",
        "Check the asset list by hand: PeopleForce answered 404 Not Found for this employee's "
        "assets (the assets module may not be enabled for the company)",
    ]
    assert any(
        note.startswith("the asset list could not be read: PeopleForce answered 404")
        for note in outcome.notes
    ), outcome.notes
    # The people working the issue read it there too, and why.
    by_hand = [
        "The asset list must be checked by hand: PeopleForce answered 404 Not Found for this "
        "employee's assets (the assets module may not be enabled for the company). This issue "
        "lists no equipment to collect: look it up in PeopleForce before the last day."
    ]
    assert comments_on_offboarding(world, person.id) == by_hand
    effects = [effect.action for effect in await world.services.store.effects(person.id)]
    assert effects.count(EffectAction.comment) == 1
    # Done once: the next run finds the offboarding in place and asks nothing more.
    (again,) = await offboarding([person.id])
    assert again.error is None
    assert again.applied == []
    assert len(world.parents_of(person.id)) == 1
    assert comments_on_offboarding(world, person.id) == by_hand


async def test_a_malformed_asset_is_skipped_with_a_note_and_the_rest_collected(
    world: World,
) -> None:
    person = leaving(world, "Ada", "Lovelace", "malformed")
    (outcome,) = await offboarding([person.id])
    assert outcome.error is None
    _, subtasks = offboarding_subtasks(world, person.id)
    assert subtasks == [
        "Revoke access for Ada Lovelace",
        "Exit interview with Ada Lovelace",
        "Collect MacBook Pro 14 (C02XK1) from Ada Lovelace",
        "Collect Docking station (DS-1) from Ada Lovelace",  # read without its unreadable date
    ]
    notes = "\n".join(outcome.notes)
    assert "asset Docking station (DS-1): its created_at could not be read" in notes
    assert "asset 'Monitor' (item 3 of the list) skipped" in notes
    # One comment on the issue lists what to check by hand.
    (comment,) = comments_on_offboarding(world, person.id)
    lines = comment.splitlines()
    assert lines[0] == (
        "The asset list was read only in part: check these assets by hand in PeopleForce."
    )
    assert [line.split(":")[0] for line in lines[1:]] == [
        "- asset Docking station (DS-1)",
        "- asset 'Monitor' (item 3 of the list) skipped",
    ]
    (again,) = await offboarding([person.id])
    assert again.applied == []
    assert len(comments_on_offboarding(world, person.id)) == 1
