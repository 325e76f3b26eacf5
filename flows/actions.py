"""Apply a plan: one Prefect task run per planned action, named after the employee.

Each action's steps (find the Jira user, search the guard label, create, subtasks, record)
are calls to `tasks`, each retried on its own; every Jira effect is recorded in the store as
soon as the action's writes are done, so running the same plan again converges instead of
repeating it.

Exactly once, whatever dies when. A write that is not idempotent (an issue, a comment) is
announced in the store before it is sent (`tasks.store.announce_write`) and settled once its
effect is recorded. A lost answer is settled in-step by a strongly consistent read
(`tasks.jira`, `core.retry`); a process killed between the send and the record leaves the
announcement behind, and the next run that plans the same write reads Jira by key before it
sends anything (`find_created_issue`, `find_comment`), where a search could still miss what
was made seconds ago. A parent issue is recorded together with its subtasks, after both: a
run killed in between adopts the parent and makes only the missing subtasks (read from the
parent, by key) on the next run, instead of leaving it without them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, ParamSpec, TypeVar

from loguru import logger
from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from core import lifecycle, render
from core.errors import ConfigurationError
from core.names import work_label_prefix
from core.peopleforce.models import Employee
from core.plan import (
    AddComment,
    Assignee,
    CancelOffboarding,
    CancelOnboarding,
    CreateIssue,
    FieldValue,
    MoveDueDate,
    Plan,
    Process,
    RelinkIssue,
    Report,
    UpdateFields,
    process_of,
)
from core.retry import ACTION
from core.rules import FieldType
from core.store import EffectAction, EmployeeLink
from flows.outcome import EmployeeOutcome
from tasks import jira, store
from tasks.services import current

SUBTASK_ROUNDS = 3

P = ParamSpec("P")
R = TypeVar("R")


def action_task(
    name: str, task_run_name: str
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Task[P, Coroutine[Any, Any, R]]]:
    """One planned action as a task run of its own, named after the employee in the UI. Prefect
    does not retry it (`retries=0`): `core.retry.ACTION` tries a whole action again after a long
    outage, as each of its steps is retried on its own (why, in `core.retry`)."""

    def decorate(
        function: Callable[P, Coroutine[Any, Any, R]],
    ) -> Task[P, Coroutine[Any, Any, R]]:
        return task(name=name, task_run_name=task_run_name, retries=0, cache_policy=NO_CACHE)(
            ACTION(task_run_name)(function)
        )

    return decorate


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
            outcome.left_for_others.append(render.left_line(action, process))
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
            case CancelOnboarding():
                key = await _cancel_onboarding(
                    action,
                    result.employee_id,
                    list(link.onboarding_subtask_keys) if link else [],
                    who,
                )
            case RelinkIssue():
                key = await _relink(action, result.employee_id, who)
        outcome.applied.append(render.applied_line(action, key))
        logger.bind(Action=action.action, JiraKey=key).info("{}: {}", who, outcome.applied[-1])
        if key not in outcome.jira_keys:
            outcome.jira_keys.append(key)


# --- Each kind of action ------------------------------------------------------------------


async def _account_ids(emails: Iterable[str | None], who: str) -> dict[str, str | None]:
    wanted = sorted({email.casefold() for email in emails if email})
    found = await asyncio.gather(*(jira.find_account_id(email, who) for email in wanted))
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
    key, created_now = await _find_or_create(action, employee.id, accounts, who)
    subtasks = SubtasksMade()
    comments: list[str] = []  # the guards of the comments posted
    try:
        if action.subtasks:
            await _create_subtasks(
                action, key, accounts, who, parent_is_new=created_now, made=subtasks
            )
        # Before the issue is recorded: once it is, no later run plans this create again, so
        # a comment not yet posted would never be. A run that dies in between adopts the
        # issue, and finds the comments it posted (announced, then read by key).
        comments += [await _comment_once(employee.id, key, t, who) for t in action.comments]
    finally:
        # Recorded whether the subtasks all came or not: what exists is never forgotten.
        await _record_created(
            action, employee, key, created_now, subtasks, accounts, previous_employee_id, today, who
        )
    for _ in comments:
        await store.record_effect(employee.id, EffectAction.comment, who, issue_key=key)
    # Only once the whole action is done: a retry of it (core.retry.ACTION, with the plan it
    # had) still finds the create in doubt, and reads Jira by key rather than search.
    await store.settle_writes(employee.id, [action.guard_label, *comments], who)
    return key


async def _find_or_create(
    action: CreateIssue, employee_id: int, accounts: dict[str, str | None], who: str
) -> tuple[str, bool]:
    """The parent issue's key, and whether it was created now (else found, to be adopted).

    The create is announced first (settled once recorded, found or made). An issue labelled
    with the guard that was made long ago (a crash before any announcement was kept) is found
    by search. A create announced before and never settled may have happened seconds ago,
    where search may not show it yet: then Jira is read by key instead."""
    in_doubt = await store.announce_write(
        employee_id,
        "create_issue",
        action.guard_label,
        who,
        detail={"kind": action.kind, "project": action.project, "summary": action.summary},
    )
    if in_doubt:
        found = await jira.find_created_issue(action.project, action.guard_label, who)
    else:
        found = await jira.find_issue_by_label(action.guard_label, who)
    if found is not None:
        return found, False
    created = await jira.create_issue(
        action, who, _assignee_id(action.assignee, accounts), accounts
    )
    return created, True


@dataclass
class SubtasksMade:
    """The subtasks of one parent as the action found and made them, round after round."""

    found: dict[str, str] = field(default_factory=dict)  # summary -> key, read from Jira
    created: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return list(dict.fromkeys([*self.found.values(), *self.created]))

    @property
    def already_there(self) -> list[str]:
        return sorted(key for key in self.found.values() if key not in self.created)


async def _record_created(
    action: CreateIssue,
    employee: Employee,
    key: str,
    created_now: bool,
    subtasks: SubtasksMade,
    accounts: dict[str, str | None],
    previous_employee_id: int | None,
    today: date,
    who: str,
) -> None:
    """The parent issue and its subtasks in the link: one record, so that a link never knows
    the parent without the subtasks made for it; then the audit row of the subtasks."""
    change = lifecycle.issue_created(
        action.kind,
        key,
        lifecycle.Person(
            email=employee.email,
            display_name=employee.display_name,
            jira_account_id=accounts.get(employee.email.casefold()) if employee.email else None,
        ),
        today=today,
        due_date=action.due_date,
        snapshot=action.snapshot,
        previous_employee_id=previous_employee_id,
    )
    with_subtasks = lifecycle.subtasks_recorded(action.kind, subtasks.keys)
    if action.subtasks and with_subtasks is not None:
        change = replace(change, **with_subtasks.changed())
    await store.record_effect(
        employee.id,
        EffectAction(f"create_{action.kind}") if created_now else EffectAction.adopt_existing,
        who,
        issue_key=key,
        detail={"kind": action.kind, "summary": action.summary, "why": action.why},
        link_update=change,
    )
    if action.subtasks and (subtasks.created or lifecycle.subtask_kind(action.kind)):
        await store.record_effect(
            employee.id,
            EffectAction.create_subtask,
            who,
            issue_key=key,
            detail={"created": subtasks.created, "already_there": subtasks.already_there},
        )


async def _create_subtasks(
    action: CreateIssue,
    parent_key: str,
    accounts: dict[str, str | None],
    who: str,
    *,
    parent_is_new: bool,
    made: SubtasksMade,
) -> None:
    """Make the checklist's missing subtasks under `parent_key`, filling in `made` as it goes
    (so that a failure part-way still leaves what was made to be recorded)."""
    subtasks = list(action.subtasks)
    assignees = [_assignee_id(subtask.assignee, accounts) for subtask in subtasks]
    labels = [label for label in action.labels if label != action.guard_label]
    for round_number in range(SUBTASK_ROUNDS):
        # A parent created a moment ago has no subtasks yet: no need to ask Jira.
        if not (round_number == 0 and parent_is_new):
            made.found = await jira.find_subtasks(parent_key, who)
        missing = [n for n, subtask in enumerate(subtasks) if subtask.summary not in made.found]
        if not missing:
            return
        done = await jira.create_subtasks(
            parent_key,
            action.project,
            action.subtask_type,
            [subtasks[n] for n in missing],
            [assignees[n] for n in missing],
            labels,
            len(missing),
            who,
        )
        made.created.extend(key for key in done.created if key not in made.created)
        if not done.refused:
            return
        if not done.retryable:
            raise ConfigurationError(
                f"Jira refused {len(done.refused)} subtask(s) of {parent_key}: "
                + "; ".join(done.refused[:3])
                + f" (check the checklists in {current().rules_file})"
            )
    raise RuntimeError(f"subtasks of {parent_key} still incomplete after {SUBTASK_ROUNDS} rounds")


def _comment_guard(issue_key: str, text: str) -> str:
    """What names one comment among the writes in doubt: its issue and its text."""
    return f"comment:{issue_key}:{hashlib.sha256(text.encode()).hexdigest()[:24]}"


async def _comment_once(employee_id: int, issue_key: str, text: str, who: str) -> str:
    """Add a comment, unless an earlier attempt announced it and Jira has it (read with the
    issue, so current); returns the guard to settle once the effect is recorded."""
    guard = _comment_guard(issue_key, text)
    in_doubt = await store.announce_write(employee_id, "comment", guard, who, issue_key=issue_key)
    if in_doubt and await jira.find_comment(issue_key, text, who):
        return guard
    await jira.add_comment(issue_key, text, who)
    return guard


@action_task("comment", "comment on {action.issue_key} · {who}")
async def _add_comment(action: AddComment, employee_id: int, who: str) -> str:
    guard = await _comment_once(employee_id, action.issue_key, action.text, who)
    await store.record_effect(employee_id, EffectAction.comment, who, issue_key=action.issue_key)
    await store.settle_writes(employee_id, [guard], who)
    return action.issue_key


@action_task("update fields", "update fields of {action.issue_key} · {who}")
async def _update_fields(action: UpdateFields, employee_id: int, who: str) -> str:
    accounts = await _account_ids(_user_emails(action.fields), who)
    old_labels = [
        "-".join(old.split())
        for source, old, _new in action.changes
        if old and any(v.source == source and v.type == FieldType.labels for v in action.fields)
    ]
    await jira.update_fields(action.issue_key, list(action.fields), old_labels, accounts, who)
    await store.record_effect(
        employee_id,
        EffectAction.update_fields,
        who,
        issue_key=action.issue_key,
        detail={"changes": [list(change) for change in action.changes]},
        link_update=lifecycle.fields_synced(action.snapshot),
    )
    return action.issue_key


@action_task("move due date", "move due date of {action.issue_key} · {who}")
async def _move_due_date(action: MoveDueDate, employee_id: int, today: date, who: str) -> str:
    await jira.set_due_date(action.issue_key, action.new, who, summary=action.summary)
    guard = await _comment_once(employee_id, action.issue_key, action.comment, who)
    detail: dict[str, Any] = {"kind": action.kind, "duedate": [str(action.old), str(action.new)]}
    if action.summary:
        detail["summary"] = action.summary
    await store.record_effect(
        employee_id,
        EffectAction.update_fields,
        who,
        issue_key=action.issue_key,
        detail=detail,
        link_update=lifecycle.issue_date_moved(action.kind, action.new, today=today),
    )
    await store.settle_writes(employee_id, [guard], who)
    return action.issue_key


@action_task("cancel offboarding", "cancel offboarding {action.issue_key} · {who}")
async def _cancel_offboarding(
    action: CancelOffboarding, employee_id: int, subtask_keys: list[str], onboarded: bool, who: str
) -> str:
    return await _cancel(
        "offboarding",
        action.issue_key,
        subtask_keys,
        action.comment,
        employee_id,
        who,
        detail={},
        link_update=lifecycle.offboarding_cancelled(onboarded=onboarded),
    )


@action_task("cancel onboarding", "cancel onboarding {action.issue_key} · {who}")
async def _cancel_onboarding(
    action: CancelOnboarding, employee_id: int, subtask_keys: list[str], who: str
) -> str:
    return await _cancel(
        "onboarding",
        action.issue_key,
        subtask_keys,
        action.comment,
        employee_id,
        who,
        detail={"why": action.why},
        link_update=lifecycle.onboarding_cancelled(),
    )


async def _cancel(
    kind: str,
    issue_key: str,
    subtask_keys: list[str],
    comment: str,
    employee_id: int,
    who: str,
    *,
    detail: dict[str, Any],
    link_update: lifecycle.LinkChange,
) -> str:
    """Move the issue and its subtasks to Cancelled, retire its work labels, say why, record."""
    keys = [issue_key, *subtask_keys]
    for key in keys:
        # Idempotent as it is: the issue's transitions are read first, and none leads from
        # Cancelled to Cancelled.
        await jira.transition_issue(key, "Cancelled", who)
    # Before the cancel is recorded: a run that dies in between cancels again, and retires the
    # labels then (both steps are idempotent).
    await jira.retire_work_labels(issue_key, work_label_prefix(kind, employee_id), who)
    guard = await _comment_once(employee_id, issue_key, comment, who)
    await store.record_effect(
        employee_id,
        EffectAction.transition,
        who,
        issue_key=issue_key,
        detail={"to": "Cancelled", "issues": keys, **detail},
        link_update=link_update,
    )
    await store.settle_writes(employee_id, [guard], who)
    return issue_key


@action_task("relink issue", "relink {action.kind} issue {action.new_key} · {who}")
async def _relink(action: RelinkIssue, employee_id: int, who: str) -> str:
    # Nothing changes in Jira: the store follows the issue to its new key.
    await store.record_effect(
        employee_id,
        EffectAction.relink,
        who,
        issue_key=action.new_key,
        detail={"kind": action.kind, "from": action.old_key, "why": action.why},
        link_update=lifecycle.issue_relinked(action.kind, action.new_key),
    )
    return action.new_key
