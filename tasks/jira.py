"""Steps that read or change Jira. Each is one call (or one bulk call), retried when transient."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from core.errors import (
    ApiError,
    ConfigurationError,
    RequestRejectedError,
    is_transient,
)
from core.jira.client import Issue, subtask_payload
from core.plan import CreateIssue, FieldValue, Subtask
from core.retry import API_CALL
from core.rules import FieldType
from tasks.services import current

# What to look at when Jira refuses a system field.
SYSTEM_FIELD_HINTS = {
    "project": "check default_project and routes.*.project in {rules}",
    "issuetype": "check onboarding/offboarding issue_type and subtask_type in {rules} (and the project's issue types)",
    "assignee": "the assignee cannot be assigned in that project: check the assignees in {rules}",
    "parent": "subtasks must be in their parent's project: check subtask_type in {rules}",
    "labels": "a label was refused: labels cannot contain spaces",
    "duedate": "the Due date field is not on the create screen of that project",
    "summary": "check the summary templates in {rules}",
    "description": "check the description templates in {rules}",
}


def explain_rejection(error: ApiError, values: Sequence[FieldValue], rules_file: Path) -> str:
    """Turn Jira's field errors into what to fix, naming the rules entry when there is one."""
    by_jira_field = {value.jira_field: value.source for value in values}
    parts = []
    for jira_field, message in (error.field_errors or {}).items():
        if jira_field in by_jira_field:
            hint = f"check field_map.{by_jira_field[jira_field]} in {rules_file}"
        else:
            hint = SYSTEM_FIELD_HINTS.get(jira_field, "check {rules}").format(rules=rules_file)
        parts.append(f"Jira rejected {jira_field} ({message}): {hint}")
    if not parts:
        parts.append(f"Jira rejected the request ({error.message}): check {rules_file}")
    return "; ".join(parts)


def jira_field_values(
    values: Sequence[FieldValue], account_ids: Mapping[str, str | None]
) -> tuple[dict[str, Any], list[str]]:
    """Mapped values as Jira wants them: (fields to set, labels to add)."""
    fields: dict[str, Any] = {}
    labels: list[str] = []
    for value in values:
        raw = value.value
        match value.type:
            case FieldType.labels:
                if raw:
                    labels.append("-".join(raw.split()))
            case FieldType.option:
                fields[value.jira_field] = {"value": raw} if raw else None
            case FieldType.user:
                account = account_ids.get(raw.casefold()) if raw else None
                fields[value.jira_field] = {"accountId": account} if account else None
            case FieldType.text | FieldType.date:
                fields[value.jira_field] = raw
    return fields, labels


@API_CALL("find Jira user · {who}")
async def find_account_id(email: str, who: str) -> str | None:
    """The Jira accountId for an email (exact match); cached for the rest of the run."""
    services = current()
    key = email.casefold()
    if key not in services.account_ids:
        services.account_ids[key] = await services.jira.find_user_by_email(email)
    return services.account_ids[key]


@API_CALL("search {label} · {who}")
async def find_issue_by_label(label: str, who: str) -> str | None:
    """An issue this service created but may not have recorded (a crash between the two)."""
    async for issue in current().jira.search(f'labels = "{label}" ORDER BY key', fields=["labels"]):
        return issue["key"]
    return None


@API_CALL("search issues of {what}")
async def search_issues(jql: str, what: str) -> list[Issue]:
    """Every issue a bounded JQL finds, with its labels (one request per 100 issues)."""
    return await current().jira.search_issues(jql)


@API_CALL("look up {key}")
async def issue_key(key: str) -> str | None:
    """The key the issue answers under now; None when it does not answer (deleted, hidden)."""
    return await current().jira.current_key(key)


@API_CALL("create {action.kind} issue · {who}")
async def create_issue(
    action: CreateIssue, who: str, assignee_id: str | None, account_ids: dict[str, str | None]
) -> str:
    """Create the parent issue (labels and the audit property in the same request)."""
    services = current()
    fields, extra_labels = jira_field_values(action.fields, account_ids)
    try:
        created = await services.jira.create_issue(
            action.project,
            action.issue_type,
            action.summary,
            _description(action),
            labels=[*action.labels, *extra_labels],
            fields=fields,
            assignee_account_id=assignee_id,
            due_date=action.due_date,
            properties={"peopleforce.sync": {"kind": action.kind, "guard": action.guard_label}},
        )
    except RequestRejectedError as error:
        raise ConfigurationError(
            explain_rejection(error, action.fields, services.rules_file)
        ) from error
    return created.key


@API_CALL("read subtasks of {parent_key} · {who}")
async def find_subtasks(parent_key: str, who: str) -> dict[str, str]:
    """The parent's subtasks by summary, so that a rerun creates only the missing ones."""
    found: dict[str, str] = {}
    async for issue in current().jira.search(
        f"parent = {parent_key} ORDER BY key", fields=["summary"]
    ):
        summary = issue["fields"].get("summary")
        if isinstance(summary, str):
            found.setdefault(summary, issue["key"])
    return found


@dataclass(frozen=True)
class SubtaskOutcome:
    """What one bulk create did. Refused elements do not raise, so that the flow records
    what was created before it decides to go on or to stop."""

    created: list[str]
    refused: list[str]  # why each refused element failed
    retryable: bool  # the refusals were transient (a rate limit or timeout part-way)


@API_CALL("create {count} subtasks of {parent_key} · {who}")
async def create_subtasks(
    parent_key: str,
    project: str,
    subtask_type: str,
    subtasks: list[Subtask],
    assignee_ids: list[str | None],
    labels: list[str],
    count: int,
    who: str,
) -> SubtaskOutcome:
    """Create subtasks in bulk, 50 per call. A first call that fails creates nothing and is retried."""
    services = current()
    payloads = [
        subtask_payload(
            project,
            parent_key,
            subtask.summary,
            issue_type=subtask_type,
            labels=labels,
            assignee_account_id=assignee,
        )
        for subtask, assignee in zip(subtasks, assignee_ids, strict=True)
    ]
    try:
        result = await services.jira.create_issues_bulk(payloads)
    except RequestRejectedError as error:
        raise ConfigurationError(explain_rejection(error, (), services.rules_file)) from error
    refused = [
        f"{subtasks[failure.index].summary!r}: {failure.error or failure}"
        for failure in result.failed
    ]
    transient = result.interrupted_by is not None and is_transient(result.interrupted_by)
    # Issues Jira created in an answer it garbled are recorded too: never created twice.
    created = [c.key for c in result.created] + [c.key for c in result.unplaced]
    return SubtaskOutcome(created, refused, retryable=transient)


@API_CALL("update fields of {issue_key} · {who}")
async def update_fields(
    issue_key: str,
    values: list[FieldValue],
    old_labels: list[str],
    account_ids: dict[str, str | None],
    who: str,
) -> None:
    services = current()
    fields, labels = jira_field_values(values, account_ids)
    update: dict[str, list[dict[str, str]]] = {}
    label_ops = [{"remove": label} for label in old_labels if label not in labels]
    label_ops += [{"add": label} for label in labels]
    if label_ops:
        update["labels"] = label_ops
    try:
        await services.jira.edit_issue(issue_key, fields=fields or None, update=update or None)
    except RequestRejectedError as error:
        raise ConfigurationError(explain_rejection(error, values, services.rules_file)) from error


@API_CALL("comment on {issue_key} · {who}")
async def add_comment(issue_key: str, text: str, who: str) -> str:
    return await current().jira.add_comment(issue_key, text)


@API_CALL("move {issue_key} to {status} · {who}")
async def transition_issue(issue_key: str, status: str, who: str) -> bool:
    """Move the issue to `status`; False when it is already there."""
    return await current().jira.transition_to(issue_key, status)


@API_CALL("set due date of {issue_key} · {who}")
async def set_due_date(issue_key: str, due: date, who: str) -> None:
    await current().jira.edit_issue(issue_key, fields={"duedate": due.isoformat()})


def _description(action: CreateIssue) -> str | None:
    related = f"\n\nRelated: {action.related_issue_key}" if action.related_issue_key else ""
    text = (action.description or "") + related
    return text.strip() or None
