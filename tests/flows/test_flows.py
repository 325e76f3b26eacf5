"""The onboarding, offboarding and field-sync flows, run by Prefect against the simulators.

Every request goes over real HTTP to the simulators and is held to the published specs; the
mapping store is a fresh SQLite file per test.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import LogSort
from prefect.logging.handlers import APILogHandler

from core.jira.adf import adf_to_text
from core.names import ONBOARDING_FLOW
from core.store import EffectAction, Leases, Lifecycle
from flows.field_sync import field_sync
from flows.offboarding import offboarding
from flows.onboarding import onboarding
from flows.sync import PROCESS_FLOWS, sync_employees
from flows.work import EmployeesFailed
from sandbox.faults import Faults
from sandbox.jira import account_id_for
from tests.fixtures_flows import World


def subtasks_of(world: World, employee_id: int, parent_key: str) -> list[str]:
    return [i.summary for i in world.issues_of(employee_id) if i.parent_key == parent_key]


async def test_onboarding_creates_the_routed_issue_and_checklist(world: World) -> None:
    person = world.hire("Ada", "Lovelace", in_days=5, department="Engineering")
    assert person.manager_id is not None
    manager = world.peopleforce.state.get(person.manager_id)
    assert manager.email is not None
    (outcome,) = await onboarding([person.id])
    assert outcome.error is None
    (parent,) = world.parents_of(person.id)
    assert parent.project == "IT"  # the engineering route
    assert parent.summary == f"Onboarding: Ada Lovelace ({world.days(5)})"
    assert parent.duedate == world.days(5).isoformat()
    assert parent.assignee == account_id_for(manager.email)  # route: the manager
    assert parent.custom["customfield_10050"] == "Software Engineer"
    assert parent.custom["customfield_10051"] == {"value": "Engineering"}
    assert parent.custom["customfield_10052"] == {"accountId": account_id_for(manager.email)}
    assert parent.properties["peopleforce.sync"]["kind"] == "onboarding"
    assert subtasks_of(world, person.id, parent.key) == [
        "Create accounts for Ada Lovelace",
        "Prepare a laptop for Ada Lovelace",
        "Welcome meeting with Ada Lovelace",
        "Grant source code access to Ada Lovelace",
    ]
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.lifecycle == Lifecycle.onboarding
    assert link.onboarding_issue_key == parent.key
    assert len(link.onboarding_subtask_keys) == 4
    assert link.synced_fields["department"] == "Engineering"
    actions = [effect.action for effect in await world.services.store.effects(person.id)]
    assert actions == [EffectAction.create_onboarding, EffectAction.create_subtask]


async def test_running_again_changes_nothing(world: World) -> None:
    person = world.hire("Grace", "Hopper", in_days=2)
    await onboarding([person.id])
    writes = world.jira.state.writes
    (again,) = await onboarding([person.id])
    assert again.applied == []
    assert world.jira.state.writes == writes
    assert len(world.parents_of(person.id)) == 1


async def test_hire_beyond_the_lead_time_waits(world: World) -> None:
    person = world.hire("Alan", "Turing", in_days=30)
    (outcome,) = await onboarding([person.id])
    assert outcome.applied == []
    assert "beyond the 14-day lead time" in outcome.notes[0]
    assert world.issues_of(person.id) == []


async def test_offboarding_has_asset_subtasks_and_is_due_on_the_last_day(world: World) -> None:
    person = world.hire("Linus", "Pauling", in_days=1, department="Finance")
    await onboarding([person.id])
    world.give_asset(person, "MacBook Pro 14", "C02XK1")
    world.peopleforce.state.terminate(person.id, effective_on=world.days(20))
    (outcome,) = await offboarding([person.id])
    assert outcome.error is None
    offboarding_issue = next(
        i for i in world.parents_of(person.id) if i.summary.startswith("Offboarding")
    )
    assert offboarding_issue.project == "HR"
    assert offboarding_issue.duedate == world.days(20).isoformat()
    assert subtasks_of(world, person.id, offboarding_issue.key) == [
        "Revoke access for Linus Pauling",
        "Exit interview with Linus Pauling",
        "Collect MacBook Pro 14 (C02XK1) from Linus Pauling",
    ]
    link = await world.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.termination_on) == (Lifecycle.offboarding, world.days(20))


async def test_moved_termination_date_moves_the_due_date(world: World) -> None:
    person = world.hire("Marie", "Curie", in_days=1)
    world.peopleforce.state.terminate(person.id, effective_on=world.days(10))
    await offboarding([person.id])
    world.peopleforce.state.terminate(person.id, effective_on=world.days(12))
    (outcome,) = await offboarding([person.id])
    (parent,) = world.parents_of(person.id)
    assert parent.duedate == world.days(12).isoformat()
    assert "moved from" in adf_to_text(parent.comments[-1].body)
    assert outcome.applied[0].startswith(f"moved the last day on {parent.key} from")


async def test_last_day_moved_later_after_it_came_reopens_the_offboarding(world: World) -> None:
    person = world.hire("Enrico", "Fermi", in_days=-30)
    world.peopleforce.state.terminate(person.id, effective_on=world.days(0))
    await offboarding([person.id])
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.lifecycle == Lifecycle.offboarded
    world.peopleforce.state.terminate(person.id, effective_on=world.days(10))

    (outcome,) = await offboarding([person.id])

    assert outcome.error is None
    assert outcome.applied[0].startswith("moved the last day on ")
    link = await world.services.store.get(person.id)
    assert link is not None
    # offboarded -> offboarding: the termination is no longer effective.
    assert (link.lifecycle, link.termination_on) == (Lifecycle.offboarding, world.days(10))


async def test_reverted_termination_of_someone_never_onboarded_here(world: World) -> None:
    # Started long before this service knew them: no onboarding, then a termination, reverted.
    person = world.hire("Paul", "Dirac", in_days=-400)
    world.peopleforce.state.terminate(person.id, effective_on=world.days(15))
    await offboarding([person.id])
    link = await world.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.onboarding_issue_key) == (Lifecycle.offboarding, None)
    world.peopleforce.state.revert_termination(person.id)

    (outcome,) = await offboarding([person.id])

    assert outcome.error is None
    (offboarding_issue,) = world.parents_of(person.id)
    assert offboarding_issue.status == "Cancelled"
    link = await world.services.store.get(person.id)
    assert link is not None
    # offboarding -> pending: nothing of this service's work is left.
    assert (link.lifecycle, link.offboarding_issue_key, link.termination_on) == (
        Lifecycle.pending,
        None,
        None,
    )


async def test_mover_gets_a_field_update_and_a_comment(world: World) -> None:
    person = world.hire("Émilie", "du Châtelet", in_days=1, department="Finance")
    await onboarding([person.id])
    world.peopleforce.state.update(person.id, department="Sales", position="Account Executive")
    (outcome,) = await field_sync([person.id])
    assert outcome.error is None
    (parent,) = world.parents_of(person.id)
    assert parent.custom["customfield_10051"] == {"value": "Sales"}
    assert parent.custom["customfield_10050"] == "Account Executive"
    comment = adf_to_text(parent.comments[-1].body)
    assert "department: Finance -> Sales" in comment
    assert "position: Software Engineer -> Account Executive" in comment
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.synced_fields["department"] == "Sales"
    (again,) = await field_sync([person.id])
    assert again.applied == []


async def test_each_flow_leaves_the_other_processes_alone(world: World) -> None:
    person = world.hire("Rosalind", "Franklin", in_days=1)
    (outcome,) = await field_sync([person.id])
    assert outcome.applied == []
    assert outcome.left_for_others == ["onboarding issue (done by the onboarding run)"]
    assert world.issues_of(person.id) == []


async def test_reverted_termination_cancels_the_offboarding(world: World) -> None:
    person = world.hire("Niels", "Bohr", in_days=1)
    await onboarding([person.id])
    world.peopleforce.state.terminate(person.id, effective_on=world.days(15))
    await offboarding([person.id])
    world.peopleforce.state.revert_termination(person.id)
    (outcome,) = await offboarding([person.id])
    assert outcome.error is None
    offboarding_issue = next(
        i for i in world.parents_of(person.id) if i.summary.startswith("Offboarding")
    )
    assert offboarding_issue.status == "Cancelled"
    assert all(
        i.status == "Cancelled"
        for i in world.issues_of(person.id)
        if i.parent_key == offboarding_issue.key
    )
    assert "reverted" in adf_to_text(offboarding_issue.comments[-1].body)
    link = await world.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.offboarding_issue_key) == (Lifecycle.onboarding, None)


async def test_rehire_under_a_new_id_gets_new_onboarding_linked_to_the_old(world: World) -> None:
    first = world.hire("Lise", "Meitner", in_days=1, email="lise.meitner@example.com")
    await onboarding([first.id])
    world.peopleforce.state.terminate(first.id, effective_on=world.days(2))
    await offboarding([first.id])
    first_link = await world.services.store.get(first.id)
    assert first_link is not None
    old_offboarding = first_link.offboarding_issue_key
    again = world.hire("Lise", "Meitner", in_days=10, email="lise.meitner@example.com")
    (outcome,) = await onboarding([again.id])
    assert outcome.error is None
    (parent,) = world.parents_of(again.id)
    assert f"Related: {old_offboarding}" in str(parent.description)
    link = await world.services.store.get(again.id)
    assert link is not None
    assert link.previous_employee_id == first.id


async def test_crash_between_create_and_record_then_rerun_keeps_one_issue(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    person = world.hire("Kurt", "Gödel", in_days=1, department="Finance")
    original = world.services.store.record_effect

    async def crash(*args, **kwargs):
        raise RuntimeError("process killed before the store write")

    monkeypatch.setattr(world.services.store, "record_effect", crash)
    with pytest.raises(EmployeesFailed):
        await onboarding([person.id])
    assert len(world.parents_of(person.id)) == 1  # created in Jira, not recorded
    assert await world.services.store.get(person.id) is None
    monkeypatch.setattr(world.services.store, "record_effect", original)
    (outcome,) = await onboarding([person.id])
    assert outcome.error is None
    (parent,) = world.parents_of(person.id)  # still one: found by its label and adopted
    link = await world.services.store.get(person.id)
    assert link is not None
    assert link.onboarding_issue_key == parent.key
    assert len(subtasks_of(world, person.id, parent.key)) == 3
    actions = [effect.action for effect in await world.services.store.effects(person.id)]
    assert actions[0] == EffectAction.adopt_existing


async def test_flaky_jira_still_converges_without_duplicates(world: World) -> None:
    people = [world.hire("Flaky", f"Person{n}", in_days=1, department="Sales") for n in range(6)]
    world.jira.state.set_faults(
        Faults(error_rate=0.3, error_statuses=[429, 503], retry_after="1", seed=11)
    )
    outcomes = await onboarding([p.id for p in people])
    assert [o.error for o in outcomes] == [None] * 6
    world.jira.state.set_faults(Faults())
    for person in people:
        (parent,) = world.parents_of(person.id)
        assert len(subtasks_of(world, person.id, parent.key)) == 3
    assert world.jira.state.fault_injector.injected > 0


async def test_permanent_rejection_fails_with_what_to_fix_and_records_nothing(world: World) -> None:
    # "position" (customfield_10050) is no longer on the project's screen.
    known = world.jira.state.custom_fields
    world.jira.state.custom_fields = known - {"customfield_10050"}
    try:
        person = world.hire("Paul", "Dirac", in_days=1)
        with pytest.raises(EmployeesFailed) as failed:
            await onboarding([person.id])
    finally:
        world.jira.state.custom_fields = known
    message = str(failed.value)
    assert "Jira rejected customfield_10050" in message
    assert "check field_map.position in" in message
    assert world.issues_of(person.id) == []
    assert await world.services.store.get(person.id) is None


async def test_unicode_names_and_missing_optional_fields(world: World) -> None:
    person = world.hire("李", "雷", in_days=1, department="People", manager_id=None, email=None)
    (outcome,) = await onboarding([person.id])
    assert outcome.error is None
    (parent,) = world.parents_of(person.id)
    assert parent.summary == f"Onboarding: 李 雷 ({world.days(1)})"
    assert parent.assignee is None
    assert parent.custom.get("customfield_10052") is None  # no manager: field left empty
    description = adf_to_text(parent.description)
    assert "Manager: none." in description  # not "Manager:  <>."
    assert "<>" not in description
    link = await world.services.store.get(person.id)
    assert link is not None
    assert (link.email, link.jira_account_id) == (None, None)


async def test_unknown_employee_is_reported(world: World) -> None:
    (outcome,) = await onboarding([987654])
    assert outcome.error is None
    assert outcome.notes == ["PeopleForce does not know this employee"]


async def test_a_failed_run_ends_with_what_failed_for_whom_and_what_to_do(world: World) -> None:
    """Read back through the Prefect API, as the UI shows it: the failed process subflow is
    named after the person, its last log line and an artifact say why and what to do, and say
    that the Retry button is on the run that started it."""
    known = world.jira.state.custom_fields
    world.jira.state.custom_fields = known - {"customfield_10050"}
    try:
        person = world.hire("Paul", "Dirac", in_days=1)
        run: Any = sync_employees  # Prefect's overloads do not type `return_state` for async flows
        state = await run([person.id], return_state=True)
    finally:
        world.jira.state.custom_fields = known
    assert state.is_failed()
    advice = (
        "What to do: fix what it names, then Retry. Retry: the run that started this one "
        f"({state.state_details.flow_run_id}) has the Retry button in the Prefect UI."
    )
    assert advice in (state.message or "")
    await APILogHandler.aflush()
    async with get_client() as client:
        (sub,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(
                    any_=[state.state_details.flow_run_id]
                )
            )
        )
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[sub.id])),
            sort=LogSort.TIMESTAMP_ASC,
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[sub.id]))
        )
    assert sub.name == f"onboarding · Paul Dirac ({person.id})"
    assert {f"employee:{person.id}", "onboarding"} <= set(sub.tags)
    assert sub.state is not None
    assert sub.state.is_failed()
    last = logs[-1].message
    assert f"onboarding failed for {person.id} Paul Dirac" in last
    assert "Jira rejected customfield_10050" in last
    assert "check field_map.position in" in last
    assert advice in last
    (failure,) = [a for a in artifacts if "What failed, and what to do" in str(a.data)]
    assert "check field_map.position in" in str(failure.data)
    assert "fix what it names, then Retry" in str(failure.data)


async def test_hired_and_leaving_before_the_first_run_the_offboarding_names_the_onboarding(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both subflows want the same people. The onboarding subflow is made to start late (until
    someone else holds their leases, or 5 s), so that without an order the offboarding would
    take them first; the onboarding still goes first, and the offboarding's description names
    the onboarding issue."""
    people = []
    for n in range(2):
        person = world.hire("Fixed", f"Term{n}", in_days=5)
        world.peopleforce.state.terminate(person.id, effective_on=world.days(40))
        people.append(person)
    leases = Leases(world.services.store.engine)

    async def late_onboarding(**parameters: Any) -> Any:
        for _ in range(50):
            if all([await leases.holder_of(person.id) for person in people]):
                break
            await asyncio.sleep(0.1)
        run: Any = onboarding  # Prefect's overloads type a flow's call as a state too
        return await run(**parameters)

    monkeypatch.setitem(PROCESS_FLOWS, ONBOARDING_FLOW, late_onboarding)
    routed = await sync_employees([person.id for person in people])
    assert routed["onboarding"] == routed["offboarding"] == [person.id for person in people]
    for person in people:
        onboarding_issue, offboarding_issue = world.parents_of(person.id)
        assert onboarding_issue.summary.startswith("Onboarding")
        assert offboarding_issue.summary.startswith("Offboarding")
        assert offboarding_issue.description is not None
        assert f"Related: {onboarding_issue.key}" in adf_to_text(offboarding_issue.description)
