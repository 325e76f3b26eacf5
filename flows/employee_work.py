"""The one path every piece of work takes for one employee: read, plan, apply.

Whatever started it (a webhook, the reconciliation, a retry from the UI), the work for an
employee reads their current PeopleForce record and mapping, plans with the pure `core.plan`,
and applies each action through retryable tasks, recording every Jira effect in the store as
soon as it happened. Running it again converges: nothing is created twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal
from uuid import UUID, uuid4

from loguru import logger
from prefect import get_client
from prefect.client.orchestration import PrefectClient
from prefect.runtime import flow_run

from core.errors import ConfigurationError
from core.peopleforce.models import Employee
from core.plan import (
    Action,
    AddComment,
    Assignee,
    CancelOffboarding,
    CreateIssue,
    Facts,
    FieldValue,
    IssueCheck,
    MoveDueDate,
    Plan,
    RelinkIssue,
    Report,
    UpdateFields,
    plan_with_assets,
    today_in,
)
from core.rules import FieldType
from core.settings import get_settings
from core.store import EffectAction, EmployeeLink, Leases, Lifecycle, snapshot_hash
from flows.observability import EventKeys, RunArtifacts, employee_properties, tag_run
from tasks import jira, peopleforce, store
from tasks.retry import action_task, inline
from tasks.services import current, open_services

Process = Literal["onboarding", "offboarding", "field_sync"]
ALL_PROCESSES: frozenset[Process] = frozenset({"onboarding", "offboarding", "field_sync"})
SUBTASK_ROUNDS = 3


def process_of(action: Action) -> Process | None:
    """Which business process an action belongs to (None: a report, any process may give it)."""
    match action:
        case CreateIssue(kind="onboarding"):
            return "onboarding"
        case CreateIssue(kind="offboarding") | MoveDueDate() | CancelOffboarding():
            return "offboarding"
        case CreateIssue(kind="record") | UpdateFields() | AddComment():
            return "field_sync"
        case RelinkIssue(kind="onboarding"):
            return "onboarding"
        case RelinkIssue(kind="offboarding"):
            return "offboarding"
        case RelinkIssue():
            return "field_sync"
    return None


@dataclass(frozen=True)
class Prefetched:
    """What a caller already read for an employee (reconciliation reads the company in bulk):
    the PeopleForce record, and what Jira answered for the issues the link points at. The
    mapping is always read again, under the employee's lease."""

    employee: Employee
    jira: IssueCheck | None = None


@dataclass
class EmployeeOutcome:
    employee_id: int
    name: str | None = None
    applied: list[str] = field(default_factory=list)
    left_for_others: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    jira_keys: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def who(self) -> str:
        return f"{self.employee_id} {self.name}" if self.name else str(self.employee_id)


async def sync_employee(
    employee_id: int,
    processes: frozenset[Process] = ALL_PROCESSES,
    *,
    today: date | None = None,
    prefetched: Prefetched | None = None,
) -> EmployeeOutcome:
    """Read, plan and apply for one employee; the actions of other processes are left alone."""
    services = current()
    today = today or today_in(services.rules.zone, datetime.now(UTC))
    outcome = EmployeeOutcome(employee_id)
    if prefetched is None and (record := services.records.pop(employee_id, None)):
        prefetched = Prefetched(record)  # the sync flow's triage read it moments ago
    employee = (
        prefetched.employee if prefetched else await inline(peopleforce.read_employee)(employee_id)
    )
    checked = prefetched.jira if prefetched else None
    outcome.name = employee.display_name if employee else None
    link, previous = await inline(store.read_mapping)(
        employee_id, employee.email if employee else None, outcome.who
    )
    _facts, result = await plan_with_assets(
        Facts(employee_id, employee, link, previous, jira=checked),
        services.rules,
        today,
        lambda: inline(peopleforce.read_assets)(employee_id, outcome.who),
    )
    outcome.notes.extend(result.notes)
    await apply_plan(result, employee, link, previous, processes, today, outcome)
    return outcome


async def apply_plan(
    result: Plan,
    employee: Employee | None,
    link: EmployeeLink | None,
    previous: EmployeeLink | None,
    processes: frozenset[Process],
    today: date,
    outcome: EmployeeOutcome,
) -> None:
    who = outcome.who
    for action in result.actions:
        process = process_of(action)
        if process is not None and process not in processes:
            outcome.left_for_others.append(f"{action.action} ({process})")
            continue
        match action:
            case Report():
                outcome.notes.append(action.why)
                logger.warning("{}: {}", who, action.why)
                continue
            case CreateIssue():
                assert employee is not None
                key = await _create_issue(
                    action, employee, previous.employee_id if previous else None, today, who
                )
            case UpdateFields():
                key = await _update_fields(action, result.employee_id, who)
            case AddComment():
                key = await _add_comment(action, result.employee_id, who)
            case MoveDueDate():
                key = await _move_due_date(action, result.employee_id, today, who)
            case CancelOffboarding():
                key = await _cancel_offboarding(
                    action,
                    result.employee_id,
                    list(link.offboarding_subtask_keys) if link else [],
                    bool(link and link.onboarding_issue_key),
                    who,
                )
            case RelinkIssue():
                key = await _relink(action, result.employee_id, who)
        outcome.applied.append(
            f"{action.action}{'(' + action.kind + ')' if isinstance(action, CreateIssue) else ''} {key}"
        )
        logger.bind(Action=action.action, JiraKey=key).info("{}: {}", who, outcome.applied[-1])
        if key not in outcome.jira_keys:
            outcome.jira_keys.append(key)


# --- Each kind of action ------------------------------------------------------------------


async def _account_ids(emails: Iterable[str | None], who: str) -> dict[str, str | None]:
    wanted = sorted({email.casefold() for email in emails if email})
    found = await asyncio.gather(*(inline(jira.find_account_id)(email, who) for email in wanted))
    return dict(zip(wanted, found, strict=True))


def _user_emails(values: Iterable[FieldValue]) -> list[str | None]:
    return [value.value for value in values if value.type == FieldType.user]


def _assignee_id(assignee: Assignee, accounts: dict[str, str | None]) -> str | None:
    if assignee.account_id:
        return assignee.account_id
    return accounts.get(assignee.email.casefold()) if assignee.email else None


@action_task("create issue", "create {action.kind} issue · {who}")
async def _create_issue(
    action: CreateIssue, employee: Employee, previous_employee_id: int | None, today: date, who: str
) -> str:
    emails = [
        action.assignee.email,
        *(subtask.assignee.email for subtask in action.subtasks),
        *_user_emails(action.fields),
        employee.email,
    ]
    accounts = await _account_ids(emails, who)
    key = await inline(jira.find_issue_by_label)(action.guard_label, who)
    effect = EffectAction.adopt_existing
    if key is None:
        key = await inline(jira.create_issue)(
            action, who, _assignee_id(action.assignee, accounts), accounts
        )
        effect = EffectAction(f"create_{action.kind}")
    await inline(store.record_effect)(
        employee.id,
        effect,
        who,
        issue_key=key,
        detail={"kind": action.kind, "summary": action.summary, "why": action.why},
        link_update=_link_after_create(
            action, key, employee, previous_employee_id, accounts, today
        ),
    )
    if action.subtasks:
        parent_is_new = effect != EffectAction.adopt_existing
        await _create_subtasks(action, key, employee.id, accounts, who, parent_is_new=parent_is_new)
    return key


def _link_after_create(
    action: CreateIssue,
    key: str,
    employee: Employee,
    previous_employee_id: int | None,
    accounts: dict[str, str | None],
    today: date,
) -> dict:
    update: dict = {
        "email": employee.email,
        "display_name": employee.display_name,
        "jira_account_id": accounts.get(employee.email.casefold()) if employee.email else None,
    }
    if action.kind == "onboarding":
        update |= {
            "onboarding_issue_key": key,
            "onboarding_subtask_keys": [],
            "lifecycle": Lifecycle.onboarding,
            # A rehire starts over: the former offboarding is history (kept in the audit).
            "offboarding_issue_key": None,
            "offboarding_subtask_keys": [],
            "termination_on": None,
        }
        if previous_employee_id is not None:
            update["previous_employee_id"] = previous_employee_id
    elif action.kind == "offboarding":
        assert action.due_date is not None
        update |= {
            "offboarding_issue_key": key,
            "offboarding_subtask_keys": [],
            "termination_on": action.due_date,
            "lifecycle": Lifecycle.offboarded
            if action.due_date <= today
            else Lifecycle.offboarding,
        }
    else:
        update["record_issue_key"] = key
    if action.snapshot:
        update |= {"synced_fields": action.snapshot, "synced_hash": snapshot_hash(action.snapshot)}
    return update


async def _create_subtasks(
    action: CreateIssue,
    parent_key: str,
    employee_id: int,
    accounts: dict[str, str | None],
    who: str,
    *,
    parent_is_new: bool,
) -> None:
    subtasks = list(action.subtasks)
    assignees = [_assignee_id(subtask.assignee, accounts) for subtask in subtasks]
    keys_field = f"{action.kind}_subtask_keys" if action.kind != "record" else None
    labels = [label for label in action.labels if label != action.guard_label]
    for round_number in range(SUBTASK_ROUNDS):
        # A parent created a moment ago has no subtasks yet: no need to ask Jira.
        first_of_new = round_number == 0 and parent_is_new
        existing = {} if first_of_new else await inline(jira.find_subtasks)(parent_key, who)
        missing = [n for n, subtask in enumerate(subtasks) if subtask.summary not in existing]
        done = (
            await inline(jira.create_subtasks)(
                parent_key,
                action.project,
                action.subtask_type,
                [subtasks[n] for n in missing],
                [assignees[n] for n in missing],
                labels,
                len(missing),
                who,
            )
            if missing
            else None
        )
        created = done.created if done else []
        if created or keys_field:
            await inline(store.record_effect)(
                employee_id,
                EffectAction.create_subtask,
                who,
                issue_key=parent_key,
                detail={"created": created, "already_there": sorted(existing.values())},
                link_update={keys_field: [*existing.values(), *created]} if keys_field else None,
            )
        if done is None or not done.refused:
            return
        if not done.retryable:
            raise ConfigurationError(
                f"Jira refused {len(done.refused)} subtask(s) of {parent_key}: "
                + "; ".join(done.refused[:3])
                + f" (check the checklists in {current().rules_file})"
            )
    raise RuntimeError(f"subtasks of {parent_key} still incomplete after {SUBTASK_ROUNDS} rounds")


@action_task("comment", "comment on {action.issue_key} · {who}")
async def _add_comment(action: AddComment, employee_id: int, who: str) -> str:
    await inline(jira.add_comment)(action.issue_key, action.text, who)
    await inline(store.record_effect)(
        employee_id, EffectAction.comment, who, issue_key=action.issue_key
    )
    return action.issue_key


@action_task("update fields", "update fields of {action.issue_key} · {who}")
async def _update_fields(action: UpdateFields, employee_id: int, who: str) -> str:
    accounts = await _account_ids(_user_emails(action.fields), who)
    old_labels = [
        "-".join(old.split())
        for source, old, _new in action.changes
        if old and any(v.source == source and v.type == FieldType.labels for v in action.fields)
    ]
    await inline(jira.update_fields)(
        action.issue_key, list(action.fields), old_labels, accounts, who
    )
    await inline(store.record_effect)(
        employee_id,
        EffectAction.update_fields,
        who,
        issue_key=action.issue_key,
        detail={"changes": [list(change) for change in action.changes]},
        link_update={
            "synced_fields": action.snapshot,
            "synced_hash": snapshot_hash(action.snapshot),
        },
    )
    return action.issue_key


@action_task("move due date", "move due date of {action.issue_key} · {who}")
async def _move_due_date(action: MoveDueDate, employee_id: int, today: date, who: str) -> str:
    await inline(jira.set_due_date)(action.issue_key, action.new, who)
    await inline(jira.add_comment)(
        action.issue_key, f"The last day moved from {action.old} to {action.new}.", who
    )
    await inline(store.record_effect)(
        employee_id,
        EffectAction.update_fields,
        who,
        issue_key=action.issue_key,
        detail={"duedate": [str(action.old), str(action.new)]},
        link_update={
            "termination_on": action.new,
            "lifecycle": Lifecycle.offboarded if action.new <= today else Lifecycle.offboarding,
        },
    )
    return action.issue_key


@action_task("cancel offboarding", "cancel offboarding {action.issue_key} · {who}")
async def _cancel_offboarding(
    action: CancelOffboarding, employee_id: int, subtask_keys: list[str], onboarded: bool, who: str
) -> str:
    keys = [action.issue_key, *subtask_keys]
    for key in keys:
        await inline(jira.transition_issue)(key, "Cancelled", who)
    await inline(jira.add_comment)(action.issue_key, action.comment, who)
    await inline(store.record_effect)(
        employee_id,
        EffectAction.transition,
        who,
        issue_key=action.issue_key,
        detail={"to": "Cancelled", "issues": keys},
        link_update={
            "offboarding_issue_key": None,
            "offboarding_subtask_keys": [],
            "termination_on": None,
            "lifecycle": Lifecycle.onboarding if onboarded else Lifecycle.pending,
        },
    )
    return action.issue_key


@action_task("relink issue", "relink {action.kind} issue {action.new_key} · {who}")
async def _relink(action: RelinkIssue, employee_id: int, who: str) -> str:
    # Nothing changes in Jira: the store follows the issue to its new key.
    await inline(store.record_effect)(
        employee_id,
        EffectAction.relink,
        who,
        issue_key=action.new_key,
        detail={"kind": action.kind, "from": action.old_key, "why": action.why},
        link_update={f"{action.kind}_issue_key": action.new_key},
    )
    return action.new_key


async def sync_employees(
    employee_ids: Iterable[int],
    processes: frozenset[Process],
    *,
    concurrency: int,
    event_keys: EventKeys | None = None,
    today: date | None = None,
    prefetched: Mapping[int, Prefetched] | None = None,
    on_done: Callable[[EmployeeOutcome], Awaitable[None]] | None = None,
) -> list[EmployeeOutcome]:
    """Work many employees at once, at most `concurrency` at a time; one failure stops no other.

    `on_done` is given each employee's outcome as soon as their work is done (and their slot
    and lease are free), while the others are still worked."""
    bound = asyncio.Semaphore(concurrency)
    leases = Leases(current().store.engine)
    holder = f"{flow_run.get_id() or 'local'}:{uuid4().hex[:8]}"

    # No per-employee tags on task runs: Prefect treats every task-run tag as a concurrency
    # limit and asks its server for a slot per tag and task run (an extra round trip, and 503s
    # under load). Task runs carry the employee in their names instead.
    async def work(employee_id: int) -> EmployeeOutcome:
        async with bound:
            try:
                # Never two runs on one employee: a webhook run, the reconciliation and a
                # retry from the UI take turns.
                async with leases.hold(employee_id, holder):
                    return await sync_employee(
                        employee_id,
                        processes,
                        today=today,
                        prefetched=(prefetched or {}).get(employee_id),
                    )
            except Exception as error:  # reported per employee; the run fails at the end
                logger.error("employee {}: {}", employee_id, error)
                return EmployeeOutcome(employee_id, error=f"{type(error).__name__}: {error}")

    async def one(employee_id: int) -> EmployeeOutcome:
        # Every line of this employee's work carries the employee and its webhook events.
        with logger.contextualize(**employee_properties(employee_id, event_keys)):
            outcome = await work(employee_id)
            if on_done is not None:
                await on_done(outcome)
            return outcome

    unique = list(dict.fromkeys(employee_ids))
    return list(await asyncio.gather(*(one(employee_id) for employee_id in unique)))


class EmployeesFailed(Exception):
    """Some employees' work failed; the others were done. The run fails so it shows and can be retried."""


def run_name(process: str):
    """A flow-run name from the parameters: the employee for one, the count for many."""

    def name() -> str:
        given = flow_run.get_name()
        if given and given.startswith(f"{process} · "):
            return given  # named at creation (the dispatcher knows the name from the webhook)
        ids = list(flow_run.parameters.get("employee_ids") or [])
        return (
            f"{process} · employee {ids[0]}"
            if len(ids) == 1
            else f"{process} · {len(ids)} employees"
        )

    return name


async def run_process(
    process: Process | None, employee_ids: list[int], event_keys: EventKeys | None = None
) -> list[EmployeeOutcome]:
    """The body of every per-employee flow: open the services, work everyone, report."""
    processes = ALL_PROCESSES if process is None else frozenset({process})
    settings = get_settings()
    # One Prefect client for the run's tags, artifacts and name.
    async with get_client() as client:
        # Tagged once created, not at creation: every event of a run's task runs would carry
        # the run's tags as related resources (six times the server's event rows, measured).
        await tag_run(client, process, employee_ids)
        async with open_services(settings):
            artifacts = RunArtifacts(process, client)
            outcomes = await sync_employees(
                employee_ids,
                processes,
                concurrency=settings.employee_concurrency,
                event_keys=event_keys,
                on_done=artifacts.links,
            )
            await artifacts.outcomes_summary(outcomes)
        if len(outcomes) == 1 and outcomes[0].name:
            name = f"{process or 'sync'} · {outcomes[0].name} ({outcomes[0].employee_id})"
            await _rename_run(client, name)
    for outcome in outcomes:
        logger.bind(**employee_properties(outcome.employee_id, event_keys)).info(
            "{}: applied {} | left {} | notes {}",
            outcome.who,
            outcome.applied or "nothing",
            outcome.left_for_others or "nothing",
            outcome.notes or "none",
        )
    failed = [outcome for outcome in outcomes if outcome.error]
    if failed:
        raise EmployeesFailed(
            f"{len(failed)} of {len(outcomes)} employee(s) failed: "
            + "; ".join(f"{outcome.employee_id}: {outcome.error}" for outcome in failed[:5])
        )
    return outcomes


async def _rename_run(client: PrefectClient, name: str) -> None:
    run_id = flow_run.get_id()
    if run_id:
        await client.update_flow_run(UUID(str(run_id)), name=name)
