"""The scope and the field map's policies, run by Prefect against the simulators over HTTP: the
PeopleForce simulator changes, the sync flow runs, the Jira simulator shows what came of it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.jira.adf import adf_to_text
from core.rules import Rules
from core.store import Lifecycle
from flows.sync import sync_employees
from sandbox.stack import Simulators
from tests.cli.test_cli import run_cli
from tests.fixtures_flows import World
from tests.paths import RULES_EXAMPLE

CONTRACTORS = {"exclude": [{"name": "contractors", "employment_type": "Contractor"}]}
GITHUB = "customfield_10053"  # a text field of the Jira simulator; the tests map the login to it


def use_rules(world: World, monkeypatch: pytest.MonkeyPatch, **changes: Any) -> Rules:
    rules = Rules.model_validate({**world.services.rules.model_dump(), **changes})
    monkeypatch.setattr(world.services, "rules", rules)
    return rules


async def assert_converged(world: World, *employee_ids: int) -> None:
    """One more run changes nothing in Jira."""
    writes = world.jira.state.writes
    await sync_employees(list(employee_ids))
    assert world.jira.state.writes == writes


# --- the scope ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "left_out"),
    [
        pytest.param(CONTRACTORS, {"employment_type": "Contractor"}, id="employment type"),
        pytest.param(
            {"include": [{"department": ["Engineering", "IT"]}]},
            {"department": "Sales"},
            id="department",
        ),
        pytest.param(
            {"exclude": [{"division": "Research"}]}, {"division": "Research"}, id="division"
        ),
        pytest.param({"include": [{"location": "Remote"}]}, {"location": "Kyiv"}, id="location"),
        pytest.param(
            {"exclude": [{"position": ["Intern", "Trainee"]}]},
            {"position": "Intern"},
            id="position",
        ),
        pytest.param(
            {"exclude": [{"fields": {"agency": "Acme"}}]},
            {"fields": {"agency": "acme"}},
            id="custom field",
        ),
    ],
)
async def test_someone_out_of_scope_gets_no_onboarding_and_a_colleague_in_scope_does(
    world: World, monkeypatch: pytest.MonkeyPatch, scope: dict, left_out: dict
) -> None:
    use_rules(world, monkeypatch, scope=scope)
    outside = world.hire("Out", "Side", in_days=3, **left_out)
    inside = world.hire("In", "Side", in_days=3)
    await sync_employees([outside.id, inside.id])
    assert world.issues_of(outside.id) == []
    assert await world.services.store.get(outside.id) is None
    (parent,) = world.parents_of(inside.id)
    assert parent.summary == f"Onboarding: In Side ({world.days(3)})"
    await assert_converged(world, outside.id, inside.id)


async def test_include_and_exclude_together(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    use_rules(world, monkeypatch, scope={"include": [{"department": "Engineering"}], **CONTRACTORS})
    engineer = world.hire("Eng", "Staff", in_days=2, department="Engineering")
    contractor = world.hire(
        "Eng", "Contractor", in_days=2, department="Engineering", employment_type="Contractor"
    )
    seller = world.hire("Sales", "Staff", in_days=2, department="Sales")
    await sync_employees([engineer.id, contractor.id, seller.id])
    assert len(world.parents_of(engineer.id)) == 1
    assert world.issues_of(contractor.id) == []
    assert world.issues_of(seller.id) == []


async def test_a_leaver_out_of_scope_never_onboarded_here_gets_no_offboarding(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_rules(world, monkeypatch, scope=CONTRACTORS)
    person = world.hire("Long", "Contractor", in_days=-400, employment_type="Contractor")
    world.peopleforce.state.terminate(person.id, effective_on=world.days(3))
    await sync_employees([person.id])
    assert world.issues_of(person.id) == []


async def onboarded(world: World, first: str, last: str, **fields: Any):
    person = world.hire(first, last, in_days=-3, **fields)
    await sync_employees([person.id])
    (onboarding,) = world.parents_of(person.id)
    return person, onboarding


async def test_leaving_the_scope_with_nothing_stops_field_sync_until_they_are_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_rules(world, monkeypatch, scope=CONTRACTORS)  # on_leaving_scope = "nothing"
    person, onboarding = await onboarded(world, "Moved", "Contractor")
    world.peopleforce.state.update(person.id, employment_type="Contractor", position="Lead")

    await sync_employees([person.id])

    assert world.parents_of(person.id) == [onboarding]  # no offboarding
    assert onboarding.custom["customfield_10050"] == "Software Engineer"  # not synced
    assert onboarding.comments == []
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.lifecycle == Lifecycle.onboarding
    await assert_converged(world, person.id)

    # Back in scope: the fields catch up on what changed meanwhile.
    world.peopleforce.state.update(person.id, employment_type="Full-Time")
    await sync_employees([person.id])
    assert onboarding.custom["customfield_10050"] == "Lead"
    assert "- position: Software Engineer -> Lead" in adf_to_text(onboarding.comments[-1].body)


async def test_leaving_the_scope_with_offboard_offboards_as_of_today(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_rules(world, monkeypatch, scope={**CONTRACTORS, "on_leaving_scope": "offboard"})
    person, onboarding = await onboarded(world, "Now", "Contractor")
    world.peopleforce.state.update(person.id, employment_type="Contractor")

    await sync_employees([person.id])

    offboarding = next(i for i in world.parents_of(person.id) if i.key != onboarding.key)
    today = world.days(0)
    assert offboarding.summary == f"Offboarding: Now Contractor (last day {today})"
    assert offboarding.duedate == today.isoformat()
    assert "Revoke access for Now Contractor" in [
        i.summary for i in world.issues_of(person.id) if i.parent_key == offboarding.key
    ]
    link = await world.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.offboarding_issue_key) == (Lifecycle.offboarded, offboarding.key)
    # Still out of scope: the offboarding stays, nothing is cancelled or made again.
    await assert_converged(world, person.id)
    assert offboarding.status == "To Do"


async def test_someone_onboarded_here_who_leaves_out_of_scope_is_offboarded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_rules(world, monkeypatch, scope=CONTRACTORS)
    person, onboarding = await onboarded(world, "Last", "Contract")
    world.peopleforce.state.update(person.id, employment_type="Contractor")
    await sync_employees([person.id])
    world.peopleforce.state.terminate(person.id, effective_on=world.days(10))

    await sync_employees([person.id])

    offboarding = next(i for i in world.parents_of(person.id) if i.key != onboarding.key)
    assert offboarding.duedate == world.days(10).isoformat()
    await assert_converged(world, person.id)


def test_plan_says_why_nothing_is_done_for_someone_out_of_scope(tmp_path: Path) -> None:
    """`pf-jira-sync plan ID` shows the scope among the inputs and the entry that left them out."""
    rules = tmp_path / "rules.toml"
    exclude = '\n[[scope.exclude]]\nname = "contractors"\nemployment_type = "Contractor"\n'
    rules.write_text(RULES_EXAMPLE.read_text().replace('on_leaving_scope = "nothing"\n', exclude))
    with Simulators() as simulators:
        state = simulators.peopleforce_state
        person = state.hire(
            first_name="Sam",
            last_name="Rivera",
            employment_type="Contractor",
            hired_on=state.today + timedelta(days=5),
        )
        result = run_cli(
            "plan", str(person.id), cwd=tmp_path, RULES_FILE=str(rules), **simulators.environment()
        )
        assert simulators.jira_state.writes == 0
    assert result.returncode == 0, result.stderr
    left_out = 'scope.exclude.0 "contractors" matches (employment_type Contractor)'
    assert f"  scope                  out of scope: {left_out}\n" in result.stdout
    assert "Actions\n  none: this employee is out of scope (see the notes)\n" in result.stdout
    assert f"  - out of scope: {left_out}; no onboarding, no offboarding" in result.stdout


# --- field map policies ---------------------------------------------------------------------


def map_github(world: World, monkeypatch: pytest.MonkeyPatch, **policy: Any) -> None:
    """The example's field map, with the GitHub login written to `GITHUB` instead of location."""
    field_map = world.services.rules.model_dump()["field_map"]
    del field_map["location"]
    field_map["fields.github"] = {"jira_field": GITHUB, **policy}
    use_rules(world, monkeypatch, field_map=field_map)


@pytest.mark.parametrize(
    ("policy", "in_jira", "comment"),
    [
        pytest.param({}, None, "- fields.github: octocat -> (none)", id="clear (the default)"),
        pytest.param({"when_empty": "skip"}, "octocat", None, id="skip"),
        pytest.param(
            {"when_empty": "default", "default": "no login yet"},
            "no login yet",
            "- fields.github: octocat -> no login yet",
            id="default",
        ),
    ],
)
async def test_a_login_emptied_in_peopleforce_is_written_as_the_policy_says(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    policy: dict,
    in_jira: str | None,
    comment: str | None,
) -> None:
    map_github(world, monkeypatch, **policy)
    person, onboarding = await onboarded(world, "Octo", "Cat", fields={"github": "octocat"})
    assert onboarding.custom[GITHUB] == "octocat"
    world.peopleforce.state.update(person.id, fields={"github": None})

    await sync_employees([person.id])

    assert onboarding.custom[GITHUB] == in_jira
    texts = [adf_to_text(c.body) for c in onboarding.comments]
    assert texts == ([f"Octo Cat changed in PeopleForce:\n{comment}"] if comment else [])
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.synced_fields["fields.github"] == in_jira
    await assert_converged(world, person.id)  # the snapshot settles: no update every run


async def test_a_field_is_written_only_while_its_condition_holds(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    map_github(world, monkeypatch, when={"department": "Engineering"})
    person, onboarding = await onboarded(
        world, "Git", "Hub", department="Engineering", fields={"github": "gh-old"}
    )
    assert onboarding.custom[GITHUB] == "gh-old"
    seller = world.hire("No", "Login", in_days=-3, department="Sales", fields={"github": "x"})
    await sync_employees([seller.id])
    (seller_onboarding,) = world.parents_of(seller.id)
    assert GITHUB not in seller_onboarding.custom

    world.peopleforce.state.update(person.id, department="Sales", fields={"github": "gh-new"})
    await sync_employees([person.id])

    assert onboarding.custom[GITHUB] == "gh-old"  # Sales: the login is left as it is
    assert onboarding.custom["customfield_10051"] == {"value": "Sales"}
    await assert_converged(world, person.id)

    world.peopleforce.state.update(person.id, department="Engineering")
    await sync_employees([person.id])
    assert onboarding.custom[GITHUB] == "gh-new"  # back in Engineering: it catches up
