"""The reconciliation, run by Prefect against the simulators over real HTTP, and its commands.

Each flow test starts from an empty PeopleForce company, adds a quiet majority (people who
started long ago and need nothing, as in any real company, so the safeguard's share stays
realistic), then the few people its case needs. Changes are made in the simulator without
webhooks: only the reconciliation can notice them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import Artifact, ConcurrencyLimitStrategy
from prefect.states import State
from pydantic import AnyHttpUrl

from core.jira.adf import adf_to_text
from core.peopleforce import PeopleForceClient
from core.settings import Settings, get_settings
from core.store import EffectAction, EventStatus, InboxRepository, Leases, Lifecycle, WebhookEvent
from deployments.definitions import ALL, RECONCILE
from flows.observability import artifact_key
from flows.offboarding import offboarding
from flows.onboarding import onboarding
from flows.reconcile import PLAN_ARTIFACT, SUMMARY_ARTIFACT, SafeguardStopped, reconcile
from sandbox.seed import SeedPerson
from sandbox.server import free_port
from sandbox.stack import Simulators
from tasks import store as tasks_store
from tests.fixtures_flows import World
from tests.fixtures_peopleforce import PeopleForceSandbox
from tests.paths import ROOT

QUIET = 12
LONG_AGO = datetime(2024, 1, 8, 9, 0, tzinfo=UTC)


@pytest.fixture
def company(world: World) -> World:
    """The world with an empty PeopleForce company, plus the quiet majority."""
    state = world.peopleforce.state
    with state.lock:
        state.people.clear()
    for n in range(QUIET):
        person = world.hire("Quiet", f"Colleague{n}", in_days=-400 - n, department="Finance")
        person.updated_at = LONG_AGO  # not changed lately: planned from the list alone
    return world


@pytest.fixture
def settings() -> Iterator[Settings]:
    """The process's settings with the safeguard at its defaults; restored afterwards."""
    settings = get_settings()
    names = ("safeguard_max_share", "safeguard_max_offboard", "jira_base_url")
    saved = {name: getattr(settings, name) for name in names}
    settings.safeguard_max_share, settings.safeguard_max_offboard = 0.2, 10
    yield settings
    for name, value in saved.items():
        setattr(settings, name, value)


async def onboarded(world: World, first: str, last: str, **fields: Any) -> SeedPerson:
    """Someone who started three days ago and was onboarded through the webhook path."""
    person = world.hire(first, last, in_days=-3, **fields)
    (outcome,) = await onboarding([person.id])
    assert outcome.error is None
    return person


async def artifacts(state: State) -> dict[str, Artifact]:
    """The run's artifacts by key."""
    run_id = state.state_details.flow_run_id
    assert run_id is not None
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return {artifact.key: artifact for artifact in found if artifact.key}


def table_of(artifact: Artifact) -> list[dict[str, str]]:
    data = artifact.data
    return cast(list[dict[str, str]], json.loads(data) if isinstance(data, str) else data)


async def run_state(**parameters: bool) -> State:
    """Run the flow and return its final state (not its result), e.g. to read its artifacts."""
    run: Any = reconcile  # Prefect's overloads do not type `return_state` for async flows
    return await run(return_state=True, **parameters)


# --- each drift case ---------------------------------------------------------------------


async def test_hires_reach_the_lead_time_and_missed_hires_are_onboarded(
    company: World, settings: Settings
) -> None:
    # World.days counts from today in the rules' time zone (Europe/Kyiv), as the plan does.
    due = company.hire("Ada", "Lovelace", in_days=14)
    early = company.hire("Alan", "Turing", in_days=15)
    missed = company.hire("Grace", "Hopper", in_days=-3)  # started; no webhook ever came
    result = await reconcile()
    assert result["need_work"] == 2
    (parent,) = company.parents_of(due.id)
    assert parent.summary == f"Onboarding: Ada Lovelace ({company.days(14)})"
    assert company.parents_of(early.id) == []
    (missed_parent,) = company.parents_of(missed.id)
    link = await company.services.store.get(missed.id)
    assert link is not None
    assert (link.lifecycle, link.onboarding_issue_key) == (Lifecycle.onboarding, missed_parent.key)


async def test_effective_and_future_terminations_get_their_offboarding(
    company: World, settings: Settings
) -> None:
    gone = await onboarded(company, "Marie", "Curie")
    leaving = await onboarded(company, "Pierre", "Curie")
    company.peopleforce.state.terminate(gone.id, effective_on=company.days(-1))
    company.peopleforce.state.terminate(leaving.id, effective_on=company.days(20))
    result = await reconcile()
    assert result["actions"] == {"create_issue (offboarding)": 2}
    for person, last_day, lifecycle in (
        (gone, company.days(-1), Lifecycle.offboarded),
        (leaving, company.days(20), Lifecycle.offboarding),
    ):
        issue = next(i for i in company.parents_of(person.id) if i.summary.startswith("Offboard"))
        assert issue.duedate == last_day.isoformat()
        link = await company.services.store.get(person.id)
        assert link is not None
        assert (link.lifecycle, link.termination_on) == (lifecycle, last_day)


async def test_reverted_termination_cancels_the_offboarding(
    company: World, settings: Settings
) -> None:
    person = await onboarded(company, "Niels", "Bohr")
    company.peopleforce.state.terminate(person.id, effective_on=company.days(15))
    await offboarding([person.id])
    company.peopleforce.state.revert_termination(person.id)  # the revert webhook was missed
    result = await reconcile()
    assert result["actions"] == {"cancel_offboarding": 1}
    issue = next(i for i in company.parents_of(person.id) if i.summary.startswith("Offboard"))
    assert issue.status == "Cancelled"
    link = await company.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.offboarding_issue_key) == (Lifecycle.onboarding, None)


async def test_a_hire_deleted_before_day_one_has_the_onboarding_cancelled(
    company: World, settings: Settings
) -> None:
    person = company.hire("Ada", "Byron", in_days=6, department="Finance")
    (outcome,) = await onboarding([person.id])
    assert outcome.error is None
    company.peopleforce.state.delete(person.id)  # no webhook: only the reconciliation sees it
    result = await reconcile()
    assert result["actions"] == {"cancel_onboarding": 1}
    (issue,) = company.parents_of(person.id)
    assert issue.status == "Cancelled"
    assert "deleted in PeopleForce before day one" in adf_to_text(issue.comments[-1].body)
    link = await company.services.store.get(person.id)
    assert link is not None
    assert link.lifecycle == Lifecycle.withdrawn
    assert (await reconcile())["need_work"] == 0


async def test_drifted_fields_are_updated_with_a_comment(
    company: World, settings: Settings
) -> None:
    person = await onboarded(company, "Émilie", "du Châtelet", department="Finance")
    company.peopleforce.state.update(person.id, department="Sales", position="Account Executive")
    result = await reconcile()
    assert result["actions"] == {"update_fields": 1, "add_comment": 1}
    (parent,) = company.parents_of(person.id)
    assert parent.custom["customfield_10051"] == {"value": "Sales"}
    assert "department: Finance -> Sales" in adf_to_text(parent.comments[-1].body)


async def test_deleted_issue_is_reported_by_default_and_recreated_when_the_rules_say_so(
    company: World, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    person = await onboarded(company, "Lise", "Meitner", department="Finance")
    (parent,) = company.parents_of(person.id)
    company.jira.state.delete_issue(parent.key)
    writes = company.jira.state.writes
    result = await reconcile()
    assert result["need_work"] == 0
    assert result["actions"] == {"report": 1}
    assert company.jira.state.writes == writes
    assert company.parents_of(person.id) == []
    monkeypatch.setattr(
        company.services,
        "rules",
        company.services.rules.model_copy(update={"missing_issue": "recreate"}),
    )
    result = await reconcile()
    assert result["actions"] == {"report": 1, "create_issue (onboarding)": 1}
    (recreated,) = company.parents_of(person.id)
    assert recreated.key != parent.key
    link = await company.services.store.get(person.id)
    assert link is not None
    assert link.onboarding_issue_key == recreated.key


async def test_moved_issue_is_followed_to_its_new_key(company: World, settings: Settings) -> None:
    person = await onboarded(company, "Kurt", "Gödel", department="Finance")
    (parent,) = company.parents_of(person.id)
    moved = company.jira.state.move_issue(parent.key, "IT")
    writes = company.jira.state.writes
    result = await reconcile()
    assert result["actions"] == {"relink_issue": 1}
    assert company.jira.state.writes == writes  # the store follows; Jira is left alone
    link = await company.services.store.get(person.id)
    assert link is not None
    assert link.onboarding_issue_key == moved.key
    effects = await company.services.store.effects(person.id)
    assert effects[-1].action == EffectAction.relink
    # Later changes go to the issue where it is now.
    company.peopleforce.state.update(person.id, position="Controller")
    await reconcile()
    assert moved.custom["customfield_10050"] == "Controller"


async def test_employee_gone_from_peopleforce_is_reported_not_deleted(
    company: World, settings: Settings
) -> None:
    person = await onboarded(company, "Paul", "Dirac", department="Finance")
    with company.peopleforce.state.lock:
        del company.peopleforce.state.people[person.id]
    issues = len(company.jira.state.issues)
    writes = company.jira.state.writes
    state = await run_state()
    result = await state.aresult()
    assert result["actions"] == {"report": 1}
    assert company.jira.state.writes == writes
    assert len(company.jira.state.issues) == issues
    link = await company.services.store.get(person.id)
    assert link is not None
    assert link.onboarding_issue_key is not None
    summary = (await artifacts(state))[SUMMARY_ARTIFACT]
    assert "PeopleForce no longer returns this employee" in str(summary.data)


async def test_second_run_right_after_applies_nothing(company: World, settings: Settings) -> None:
    company.hire("Ada", "Lovelace", in_days=5)
    mover = await onboarded(company, "Rosalind", "Franklin", department="Finance")
    leaver = await onboarded(company, "Lise", "Meitner", department="Finance")
    company.peopleforce.state.update(mover.id, department="Sales")
    company.peopleforce.state.terminate(leaver.id, effective_on=company.days(9))
    first = await reconcile()
    assert first["need_work"] == 3
    writes, reads = company.jira.state.writes, company.jira.state.reads
    second = await reconcile()
    assert (second["need_work"], second["actions"]) == (0, {})
    assert company.jira.state.writes == writes
    # One search for the mapped employees; no lookups, since every issue answered.
    assert company.jira.state.reads - reads == 1


# --- safeguard, dry run, summary, the per-employee rule -----------------------------------


async def test_safeguard_stops_a_run_offboarding_half_the_company_and_force_goes_ahead(
    company: World, settings: Settings
) -> None:
    quiet = sorted(company.peopleforce.state.people)[: QUIET // 2]
    for employee_id in quiet:
        company.peopleforce.state.terminate(employee_id, effective_on=company.days(-1))
    state = await run_state()
    assert state.is_failed()
    with pytest.raises(SafeguardStopped, match="would touch 6 of 12 employees"):
        await state.aresult()
    assert company.jira.state.writes == 0
    found = await artifacts(state)
    assert "SAFEGUARD_MAX_SHARE" in str(found[SUMMARY_ARTIFACT].data)
    assert len(table_of(found[PLAN_ARTIFACT])) == 6
    # The count rule alone stops it too.
    settings.safeguard_max_share, settings.safeguard_max_offboard = 1.0, 5
    with pytest.raises(SafeguardStopped, match="would offboard 6 employees"):
        await reconcile()
    assert company.jira.state.writes == 0
    result = await reconcile(force=True)
    assert result["actions"] == {"create_issue (offboarding)": 6}
    assert all(company.parents_of(employee_id) for employee_id in quiet)


async def test_dry_run_writes_nothing_and_publishes_the_plan_table(
    company: World, settings: Settings
) -> None:
    person = company.hire("Ada", "Lovelace", in_days=3)
    state = await run_state(dry_run=True)
    result = await state.aresult()
    assert (result["need_work"], result["applied"]) == (1, False)
    assert company.jira.state.writes == 0
    assert await company.services.store.get(person.id) is None
    plan = (await artifacts(state))[PLAN_ARTIFACT]
    assert plan.type == "table"
    (row,) = table_of(plan)
    assert row["employee"] == str(person.id)
    assert row["action"] == "create_issue (onboarding)"
    assert row["why"] == "within the pre-hire lead time"
    assert "Dry run" in (plan.description or "")


async def test_real_run_publishes_a_summary_with_links_to_the_issues(
    company: World, settings: Settings
) -> None:
    settings.jira_base_url = AnyHttpUrl("https://acme.atlassian.net")
    person = company.hire("Ada", "Lovelace", in_days=3)
    state = await run_state()
    (parent,) = company.parents_of(person.id)
    found = await artifacts(state)
    summary = str(found[SUMMARY_ARTIFACT].data)
    assert "create_issue (onboarding) 1" in summary
    assert f"[{parent.key}](https://acme.atlassian.net/browse/{parent.key})" in summary
    # Like every run that touched Jira, a link artifact per issue.
    assert found[artifact_key(parent.key)].data == (
        f"[{parent.key}](https://acme.atlassian.net/browse/{parent.key})"
    )


async def test_reconcile_waits_while_a_webhook_run_holds_the_employee(
    company: World, settings: Settings
) -> None:
    busy = company.hire("Ada", "Lovelace", in_days=3)
    free = company.hire("Alan", "Turing", in_days=3)
    leases = Leases(company.services.store.engine)
    async with leases.holding("webhook-run") as webhook_run, webhook_run.hold(busy.id):
        run = asyncio.create_task(reconcile())
        for _ in range(300):  # until the run has applied the free one (at most a minute)
            if company.parents_of(free.id):
                break
            await asyncio.sleep(0.2)
        assert company.parents_of(free.id)
        await asyncio.sleep(1)  # several of the lease's polls
        assert company.parents_of(busy.id) == []
    await run
    assert len(company.parents_of(busy.id)) == 1


async def test_hired_and_leaving_at_once_the_offboarding_names_the_onboarding(
    company: World, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One plan for both: the onboarding is applied first and the offboarding planned again, so
    that it reads as it does when the webhook path created the onboarding first (the asset
    list read once for both plans)."""
    person = company.hire("Fixed", "Term", in_days=5)
    company.peopleforce.state.terminate(person.id, effective_on=company.days(40))
    asset_reads: list[int] = []
    read_assets = PeopleForceClient.read_assets

    async def counted(client: PeopleForceClient, employee_id: int) -> Any:
        asset_reads.append(employee_id)
        return await read_assets(client, employee_id)

    monkeypatch.setattr(PeopleForceClient, "read_assets", counted)
    result = await reconcile()
    assert asset_reads == [person.id]
    assert result["actions"] == {"create_issue (onboarding)": 1, "create_issue (offboarding)": 1}
    onboarding_issue, offboarding_issue = company.parents_of(person.id)
    assert offboarding_issue.summary.startswith("Offboarding")
    assert offboarding_issue.description is not None
    assert f"Related: {onboarding_issue.key}" in adf_to_text(offboarding_issue.description)
    link = await company.services.store.get(person.id)
    assert link is not None
    assert (link.lifecycle, link.offboarding_issue_key) == (
        Lifecycle.offboarding,
        offboarding_issue.key,
    )


# --- the inbox's backlog: what a crash left ---------------------------------------------------


async def acknowledged(
    world: World,
    person: SeedPerson,
    action: str,
    status: EventStatus = EventStatus.failed,
    *,
    ago: timedelta = timedelta(minutes=10),
) -> WebhookEvent:
    """A webhook event the gateway acknowledged `ago`, as PeopleForce sent it, left `status`
    (failed: its run crashed; pending: never dispatched)."""
    body = json.dumps(world.peopleforce.state.render_webhook(action, person))
    event = WebhookEvent(
        event_key=f"{action}:{person.id}:{uuid4().hex}",
        action=action,
        employee_id=person.id,
        status=status,
        body=body,
        outcome="Crashed in flow run sync · 40 employees" if status == "failed" else None,
    )
    event.received_at = event.updated_at = datetime.now(UTC) - ago
    stored, created = await InboxRepository(world.services.store.engine).add(event)
    assert created
    return stored


async def event_state(world: World, event: WebhookEvent) -> tuple[str, str]:
    assert event.id is not None
    stored = await InboxRepository(world.services.store.engine).get_by_id(event.id)
    assert stored is not None
    return stored.status.value, stored.outcome or ""


async def test_the_backlog_a_crash_left_is_repaired_past_the_safeguard_and_closed(
    company: World, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash left 6 of 18 employees' events failed (33 %, over the 20 % share): the work they
    asked for is done, not refused, and their events end done; events that came after the run
    read the inbox, or that the dispatcher is about to send, are left alone."""
    leaver = await onboarded(company, "Marie", "Curie")
    company.peopleforce.state.terminate(leaver.id, effective_on=company.days(-1))
    hires = [company.hire("Crash", f"Left{n}", in_days=3) for n in range(5)]
    quiet = next(p for p in company.peopleforce.state.people.values() if p.first_name == "Quiet")
    failed = [await acknowledged(company, person, "employee_create") for person in hires]
    failed.append(await acknowledged(company, leaver, "employee_terminate"))
    stale = await acknowledged(company, hires[0], "employee_update", EventStatus.pending)
    fresh = await acknowledged(
        company, hires[1], "employee_update", EventStatus.pending, ago=timedelta(seconds=1)
    )
    in_step = await acknowledged(company, quiet, "employee_update")  # its work was done
    late: list[WebhookEvent] = []
    read_backlog = tasks_store.read_inbox_backlog

    async def and_then_one_more_arrives() -> list[WebhookEvent]:
        found = await read_backlog()
        late.append(await acknowledged(company, hires[2], "employee_update", ago=timedelta(0)))
        return found

    monkeypatch.setattr(tasks_store, "read_inbox_backlog", and_then_one_more_arrives)
    result = await reconcile()
    assert result["safeguard"] == []
    assert (result["need_work"], result["owed_to_webhooks"]) == (6, 6)
    assert result["events_closed"] == 8
    for person, event in zip([*hires, leaver], failed, strict=True):
        key = company.parents_of(person.id)[-1].key
        status, outcome = await event_state(company, event)
        assert status == "done"
        assert outcome.startswith(f"Jira {key}; repaired by the reconciliation, flow run ")
    assert (await event_state(company, stale))[0] == "done"
    status, outcome = await event_state(company, in_step)
    assert status == "done"
    assert outcome.startswith("no change in Jira; in step at the reconciliation, flow run ")
    assert (await event_state(company, fresh))[0] == "pending"  # the dispatcher's
    assert (await event_state(company, late[0]))[0] == "failed"  # after the read: not ours


async def test_a_stopped_run_points_at_the_redrive_of_failed_events(
    company: World, settings: Settings
) -> None:
    """Five hires nobody announced (29 %) stop the run; the one failed webhook event is not left
    silently: the refusal says how to re-drive it."""
    for n in range(5):
        company.hire("Unannounced", f"Hire{n}", in_days=3)
    crashed = await acknowledged(company, company.hire("Ada", "Lovelace"), "employee_create")
    with pytest.raises(SafeguardStopped) as stopped:
        await reconcile()
    message = str(stopped.value)
    assert "would touch 5 of 18 employees (28%) besides the 1 that acknowledged webhooks" in message
    assert "1 failed webhook event(s) of 1 employee(s) were not repaired" in message
    assert "`pf-jira-sync replay --status failed`" in message
    assert (await event_state(company, crashed))[0] == "failed"


async def test_the_deployment_runs_on_the_configured_cron_one_run_at_a_time(
    prefect_server: None, settings: Settings
) -> None:
    deployment = await RECONCILE.flow.ato_deployment(**RECONCILE.options(settings))
    deployment_id = await deployment.aapply()
    async with get_client() as client:
        stored = await client.read_deployment(deployment_id)
    assert RECONCILE.full_name == "reconcile/scheduled"
    (schedule,) = stored.schedules
    assert getattr(schedule.schedule, "cron", None) == settings.reconcile_cron == "30 1 * * *"
    assert getattr(schedule.schedule, "timezone", None) == "UTC"
    assert stored.global_concurrency_limit is not None
    assert stored.global_concurrency_limit.limit == 1
    assert stored.concurrency_options is not None
    assert stored.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    assert RECONCILE in ALL  # served by `up` with every other deployment


async def test_the_client_reads_single_pages_of_the_list_and_of_the_leavers(
    peopleforce: PeopleForceClient, peopleforce_sim: PeopleForceSandbox
) -> None:
    people = peopleforce_sim.people
    first = await peopleforce.employees_page(1)
    assert (first.number, first.pages) == (1, 1)
    assert [item.id for item in first.items] == sorted(person.id for person in people)
    peopleforce_sim.state.page_size = 7
    last = await peopleforce.employees_page(6)
    assert (last.pages, [item.id for item in last.items]) == (6, [p.id for p in people][35:42])
    leavers = await peopleforce.terminated_page(1)
    assert {leaver.last_name for leaver in leavers.items} == {"Hall", "Lee", "Martin"}
    assert all(leaver.termination_effective_on for leaver in leavers.items)
    since = max(p.updated_at for p in people if p.updated_at) - timedelta(seconds=1)
    changed = await peopleforce.employees_page(1, updated_since=since)
    assert len(changed.items) == 1


# --- the commands: `plan EMPLOYEE_ID`, `reconcile --dry-run`, `reconcile` ---------------------


@pytest.fixture(scope="module")
def simulators() -> Iterator[Simulators]:
    with Simulators() as running:
        yield running


def run_cli(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env |= {"PYTHONPATH": str(ROOT), "COLUMNS": "250", **settings}
    env["RULES_FILE"] = str(ROOT / "rules.example.toml")
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def seeded(simulators: Simulators, last_name: str) -> SeedPerson:
    return next(person for person in simulators.people if person.last_name == last_name)


def test_plan_command_prints_the_actions_and_their_inputs(
    simulators: Simulators, tmp_path: Path
) -> None:
    ravi = seeded(simulators, "Kumar")  # seeded to start in three days
    result = run_cli("plan", str(ravi.id), cwd=tmp_path, **simulators.environment())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Employee {ravi.id} Ravi Kumar" in out
    assert f"hired on               {ravi.hired_on}" in out
    assert "mapping                none: this service has done nothing for them yet" in out
    assert "1. create_issue (onboarding): IT: 'Onboarding: Ravi Kumar" in out
    assert "why: within the pre-hire lead time" in out
    assert "- Grant source code access to Ravi Kumar" in out
    jonas = seeded(simulators, "Berg")  # starts in 21 days: not yet
    result = run_cli("plan", str(jonas.id), cwd=tmp_path, **simulators.environment())
    assert "none: Jira is in step for this employee" in result.stdout
    assert "beyond the 14-day lead time" in result.stdout
    assert simulators.jira_state.writes == 0


def test_plan_command_for_an_unknown_employee(simulators: Simulators, tmp_path: Path) -> None:
    result = run_cli("plan", "99999", cwd=tmp_path, **simulators.environment())
    assert result.returncode == 0, result.stderr
    assert "PeopleForce does not know this employee" in result.stdout


def test_reconcile_dry_run_prints_the_whole_plan(simulators: Simulators, tmp_path: Path) -> None:
    result = run_cli("reconcile", "--dry-run", cwd=tmp_path, **simulators.environment())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for last_name in ("Kumar", "Petrova", "Vogel", "Hall", "Bondarenko"):
        person = seeded(simulators, last_name)
        assert f"│ {person.id} " in out, last_name
    assert "create_issue (offboarding)" in out
    assert f"of {len(simulators.people)} employees need work" in out
    assert "safeguard:" in out
    assert simulators.jira_state.writes == 0


def test_reconcile_says_when_prefect_does_not_answer(
    simulators: Simulators, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    result = run_cli("reconcile", cwd=tmp_path, **simulators.environment(), PREFECT_API_URL=dead)
    assert result.returncode == 1
    assert f"no Prefect server answers at {dead}" in result.stderr
    assert "Traceback" not in result.stderr
