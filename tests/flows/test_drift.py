"""Drift on the webhook path: an issue deleted or moved in Jira after the service recorded it.

The process flows run by Prefect against the simulators over real HTTP; Jira drifts through
the simulator's own controls (`DELETE /_sandbox/issues/{key}`, `POST /_sandbox/issues/{key}/move`)
and its request counts are read from `/_sandbox/stats`.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from core.jira.adf import adf_to_text
from flows.field_sync import field_sync
from flows.onboarding import onboarding
from flows.sync import sync_employees
from sandbox.seed import SeedPerson
from tests.fixtures_flows import World

BULK_FETCH = "POST /rest/api/3/issue/bulkfetch"
GET_ISSUE = "GET /rest/api/3/issue/{issueIdOrKey}"


async def sandbox(world: World, method: str, path: str, **kwargs: Any) -> Any:
    async with httpx.AsyncClient(base_url=world.jira.url) as client:
        response = await client.request(method, f"/_sandbox{path}", **kwargs)
        response.raise_for_status()
        return response.json()


async def calls(world: World) -> dict[str, int]:
    return (await sandbox(world, "GET", "/stats"))["by_endpoint"]


async def onboarded(world: World, first: str, last: str) -> tuple[SeedPerson, str]:
    person = world.hire(first, last, in_days=2, department="Finance")
    (outcome,) = await onboarding([person.id])
    assert outcome.error is None
    (parent,) = world.parents_of(person.id)
    return person, parent.key


async def test_moved_issue_is_followed_with_a_comment_and_then_updated(world: World) -> None:
    person, old_key = await onboarded(world, "Kurt", "Gödel")
    new_key = (await sandbox(world, "POST", f"/issues/{old_key}/move", json={"project": "IT"}))[
        "key"
    ]
    world.peopleforce.state.update(person.id, position="Controller")
    (outcome,) = await field_sync([person.id])
    assert outcome.error is None
    (parent,) = world.parents_of(person.id)  # followed, not created again
    assert parent.key == new_key
    assert parent.custom["customfield_10050"] == "Controller"
    comments = [adf_to_text(comment.body) for comment in parent.comments]
    assert any(f"moved in Jira from {old_key}" in comment for comment in comments)
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.onboarding_issue_key == new_key
    assert link.synced_fields["position"] == "Controller"
    # The link follows Jira now: the next run is quiet, and reads nothing more by key.
    before = await calls(world)
    (again,) = await field_sync([person.id])
    assert again.error is None
    assert again.applied == []
    assert (await calls(world)).get(GET_ISSUE, 0) == before.get(GET_ISSUE, 0)


async def test_deleted_issue_is_recreated_when_the_rules_say_so(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        world.services,
        "rules",
        world.services.rules.model_copy(update={"missing_issue": "recreate"}),
    )
    person, old_key = await onboarded(world, "Emmy", "Noether")
    assert (await sandbox(world, "DELETE", f"/issues/{old_key}"))["deleted"][0] == old_key
    world.peopleforce.state.update(person.id, position="Controller")
    (outcome,) = await field_sync([person.id])
    assert outcome.error is None
    assert any(f"{old_key} no longer answers in Jira" in note for note in outcome.notes)
    (recreated,) = world.parents_of(person.id)  # one issue, not two
    assert recreated.key != old_key
    assert recreated.custom["customfield_10050"] == "Controller"
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.onboarding_issue_key == recreated.key
    (again,) = await field_sync([person.id])
    assert again.error is None
    assert again.applied == []
    assert len(world.parents_of(person.id)) == 1


async def test_webhook_sync_recreates_a_deleted_issue_in_the_field_sync_run(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook's entry routes a field change to field sync only (triage reads no Jira);
    the recreated onboarding issue is made there all the same, once."""
    monkeypatch.setattr(
        world.services,
        "rules",
        world.services.rules.model_copy(update={"missing_issue": "recreate"}),
    )
    person, old_key = await onboarded(world, "Grace", "Hopper")
    await sandbox(world, "DELETE", f"/issues/{old_key}")
    world.peopleforce.state.update(person.id, position="Controller")
    routed = await sync_employees([person.id])
    assert routed == {"field-sync": [person.id]}
    (recreated,) = world.parents_of(person.id)
    assert recreated.key != old_key
    assert recreated.custom["customfield_10050"] == "Controller"
    assert await sync_employees([person.id]) == {}
    assert len(world.parents_of(person.id)) == 1


async def test_deleted_issue_is_reported_when_the_rules_say_report(world: World) -> None:
    person, old_key = await onboarded(world, "Lise", "Meitner")
    await sandbox(world, "DELETE", f"/issues/{old_key}")
    world.peopleforce.state.update(person.id, position="Controller")
    (outcome,) = await field_sync([person.id])
    assert outcome.error is None
    assert any("the rules say report: not created again" in note for note in outcome.notes)
    assert world.parents_of(person.id) == []


async def test_a_plan_touching_no_existing_issue_reads_nothing_more(world: World) -> None:
    person, _ = await onboarded(world, "Alan", "Turing")
    before = await calls(world)
    (quiet,) = await field_sync([person.id])  # nothing changed: no action on the issue
    assert quiet.applied == []
    after = await calls(world)
    assert after.get(BULK_FETCH, 0) == before.get(BULK_FETCH, 0)
    assert after.get(GET_ISSUE, 0) == before.get(GET_ISSUE, 0)
    # An update on the issue (no drift) costs one bulk read for the check, no look-ups.
    world.peopleforce.state.update(person.id, position="Cryptanalyst")
    (moved_on,) = await field_sync([person.id])
    assert moved_on.error is None
    updated = await calls(world)
    assert updated.get(BULK_FETCH, 0) == after.get(BULK_FETCH, 0) + 1
    assert updated.get(GET_ISSUE, 0) == after.get(GET_ISSUE, 0)
