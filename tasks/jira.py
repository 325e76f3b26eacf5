"""Steps that read or change Jira. Each is one call (or one bulk call), retried when transient.

A write that is not idempotent (a create, a bulk create, a comment, a transition) is retried
with a `confirm`: after a failure that may have been applied (`core.errors.may_have_applied`),
`core.retry` first reads, strongly consistently, whether it was, and sends it again only if it
was not. Which read is strongly consistent, and why, is said at each confirm below; the short
of it: Jira's search is eventually consistent (an issue created or changed seconds ago may be
missing or stale), a read of one issue by key (its fields, its comments, its transitions) is
not.
"""

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
    WriteInDoubtError,
    is_transient,
)
from core.jira.adf import adf_to_text, text_to_adf
from core.jira.client import MAX_BULK_FETCH, SERVICE, Comment, Issue, subtask_payload
from core.names import RETIRED_LABEL_SUFFIX
from core.plan import CreateIssue, FieldValue, IssueCheck, Subtask
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
    """An issue this service created but did not record, long enough ago for search to show
    it. One created seconds ago may be missing: `find_created_issue` does not miss it."""
    async for issue in current().jira.search(f'labels = "{label}" ORDER BY key', fields=["labels"]):
        return issue["key"]
    return None


# A lost create is looked for from a little before the newest key search knows (search may
# index a few issues out of order), reading a bulk fetch's worth of keys at once, and at most
# so many keys in one look (past that, search has fallen far behind: look again later).
SCAN_SLACK = 10
SCAN_BATCH = MAX_BULK_FETCH
MAX_SCAN = 1000


async def find_created_issue(project: str, label: str, who: str) -> str | None:
    """The issue labelled `label` if Jira has it, even one created a moment ago: after a create
    whose answer was lost, or a crash between a create and its record.

    Why this read. Search is eventually consistent, so it alone may miss an issue created
    seconds ago; `reconcileIssues` would make it consistent, but only for issue ids one has,
    and a lost create gave none. A read by key is consistent, and Jira numbers the keys of a
    project in the order the issues are created. So: (1) the newest key search knows in the
    project, (2) the label search, which finds the issue if search knows it, (3) if not, the
    issue is newer than anything search knew at (1), so the keys after that one are read by
    key (a bulk fetch: a hundred keys in one request, as consistent as reading each) until
    Jira has none past them. (1) comes before (2): an issue search learns of between the two
    is then found by (2) or lies after the key of (1), never missed. That is three requests
    in the common case, and this runs only when a create is in doubt. Each read is retried on
    its own (a 429 on one does not start the look over); `WriteInDoubtError` when it cannot
    tell yet.
    """
    project = project.upper()
    newest = await _newest_number(project, who)
    found = await find_issue_by_label(label, who)
    if found is not None:
        return found
    first = max(newest - SCAN_SLACK, 0) + 1
    for start in range(first, first + MAX_SCAN, SCAN_BATCH):
        numbers = range(start, start + SCAN_BATCH)
        read = await _issues_at([f"{project}-{n}" for n in numbers], who)
        for issue in read:
            if label in issue.labels:
                return issue.key  # the key it answers under now, should it have moved
        if not any(_number(issue.key, project) >= numbers[-1] - SCAN_SLACK for issue in read):
            return None  # past the newest issue (deleted ones leave gaps, not ten in a row)
    raise WriteInDoubtError(
        SERVICE,
        f"cannot tell yet whether an issue labelled {label} exists: read {MAX_SCAN} keys of "
        f"{project} after the newest one search knows, and Jira has more",
    )


def _number(key: str, project: str) -> int:
    """The number of `key` in `project`; -1 for a key of another project (an issue moved out
    answers under its new key)."""
    prefix, _, number = key.upper().rpartition("-")
    return int(number) if prefix == project and number.isdigit() else -1


@API_CALL("read the newest key of {project} · {who}")
async def _newest_number(project: str, who: str) -> int:
    """The number of the newest key search knows in `project` (0: none)."""
    async for issue in current().jira.search(
        f'project = "{project}" ORDER BY key DESC', fields=["labels"], max_results=1
    ):
        number = str(issue["key"]).rpartition("-")[2]
        return int(number) if number.isdigit() else 0
    return 0


@API_CALL("read issues by key from {keys[0]} · {who}")
async def _issues_at(keys: list[str], who: str) -> list[Issue]:
    """The issues answering under `keys`, with their labels (those Jira has)."""
    return await current().jira.get_issues(keys, fields=["labels"])


@API_CALL("search issues of {what}")
async def search_issues(jql: str, what: str) -> list[Issue]:
    """Every issue a bounded JQL finds, with its labels (one request per 100 issues)."""
    return await current().jira.search_issues(jql)


@API_CALL("look up {key}")
async def issue_key(key: str) -> str | None:
    """The key the issue answers under now; None when it does not answer (deleted, hidden)."""
    return await current().jira.current_key(key)


async def _issue_created(action: CreateIssue, who: str) -> str | None:
    return await find_created_issue(action.project, action.guard_label, who)


@API_CALL("create {action.kind} issue · {who}", confirm=_issue_created)
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
    """The parent's subtasks by summary, so that a rerun creates only the missing ones.

    Read from the parent's `subtasks` field, by key: consistent, unlike a `parent = X` search,
    which may not show a subtask created a moment ago (and a rerun would make it again)."""
    parent = await current().jira.get_issue(parent_key, fields=["subtasks"])
    found: dict[str, str] = {}
    for subtask in parent.subtasks:
        if subtask.summary is not None:
            found.setdefault(subtask.summary, subtask.key)
    return found


@dataclass(frozen=True)
class SubtaskOutcome:
    """What one bulk create did. Refused elements do not raise, so that the flow records
    what was created before it decides to go on or to stop."""

    created: list[str]
    refused: list[str]  # why each refused element failed
    retryable: bool  # the refusals were transient (a rate limit or timeout part-way)


async def _subtasks_created(
    parent_key: str, subtasks: list[Subtask], who: str
) -> SubtaskOutcome | None:
    """What a bulk create whose answer was lost made: the requested subtasks the parent now
    lists (read by key, so current); None when it made none of them."""
    existing = await find_subtasks(parent_key, who)
    made = [existing[s.summary] for s in subtasks if s.summary in existing]
    if not made:
        return None
    missing = [s.summary for s in subtasks if s.summary not in existing]
    refused = [f"{summary!r}: not created (its answer was lost)" for summary in missing]
    return SubtaskOutcome(made, refused, retryable=bool(missing))


@API_CALL("create {count} subtasks of {parent_key} · {who}", confirm=_subtasks_created)
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


async def find_comment(issue_key: str, text: str, who: str) -> str | None:
    """The id of this comment if it is the newest one this service wrote on the issue.

    Comments are read with the issue (consistent, newest first). A comment carries no label,
    so it is known by its text and author: this service's newest comment there, if it says
    exactly `text`. The service never means to write the same comment twice in a row on one
    issue: each one reports a change (fields, the last day, a cancellation), and the next
    change says something else.
    """
    me = await _own_account_id(who)
    wanted = _words(adf_to_text(text_to_adf(text)))
    for comment in await _newest_comments(issue_key, who):
        if comment.author_account_id == me:
            return comment.id if _words(comment.text) == wanted else None
    return None


@API_CALL("read who this service is in Jira · {who}")
async def _own_account_id(who: str) -> str:
    return (await current().jira.myself()).account_id


@API_CALL("read the comments of {issue_key} · {who}")
async def _newest_comments(issue_key: str, who: str) -> list[Comment]:
    return await current().jira.get_comments(issue_key)


def _words(text: str) -> list[str]:
    return text.split()


@API_CALL("comment on {issue_key} · {who}", confirm=find_comment)
async def add_comment(issue_key: str, text: str, who: str) -> str:
    return await current().jira.add_comment(issue_key, text)


@API_CALL("read the status of {issue_key} · {who}")
async def _moved_to(issue_key: str, status: str, who: str) -> bool | None:
    """True when the issue is in `status` (read by key, so current), else None."""
    current_status = (await current().jira.get_issue(issue_key, fields=["status"])).status
    return True if (current_status or "").casefold() == status.casefold() else None


@API_CALL("move {issue_key} to {status} · {who}", confirm=_moved_to)
async def transition_issue(issue_key: str, status: str, who: str) -> bool:
    """Move the issue to `status`; False when it is already there."""
    return await current().jira.transition_to(issue_key, status)


@API_CALL("set due date of {issue_key} · {who}")
async def set_due_date(issue_key: str, due: date, who: str, summary: str | None = None) -> None:
    """Set the issue's due date, and its summary when one is given (one edit: idempotent)."""
    fields = {"duedate": due.isoformat()} | ({"summary": summary} if summary else {})
    await current().jira.edit_issue(issue_key, fields=fields)


def _description(action: CreateIssue) -> str | None:
    related = f"\n\nRelated: {action.related_issue_key}" if action.related_issue_key else ""
    text = (action.description or "") + related
    return text.strip() or None


async def check_issues(keys: Sequence[str], who: str) -> IssueCheck:
    """Which of `keys` Jira no longer answers (deleted, hidden) or answers under another key
    (moved), as the reconciliation's check tells them: one bulk read by key (strongly
    consistent, unlike search) for all, then one look-up per key it did not return under that
    key, which only drift causes (a moved issue is looked up by its old key, as Jira follows
    it; whether the bulk read follows it too is not relied on)."""
    wanted = list(dict.fromkeys(keys))[:MAX_BULK_FETCH]
    if not wanted:
        return IssueCheck()
    answered = {issue.key for issue in await _issues_at(wanted, who)}
    unanswered = [key for key in wanted if key not in answered]
    now = {key: await issue_key(key) for key in unanswered}
    return IssueCheck(
        missing=frozenset(key for key, current_key in now.items() if current_key is None),
        moved={key: new for key, new in now.items() if new and new != key},
    )


@API_CALL("retire the work labels of {issue_key} · {who}")
async def retire_work_labels(issue_key: str, prefix: str, who: str) -> None:
    """A cancelled issue gives up its work labels (those starting with `prefix`; each kept with
    `RETIRED_LABEL_SUFFIX`), so the same work planned again (a termination applied again after
    its revert, a withdrawn hire reinstated) makes a fresh issue instead of finding this one.
    Idempotent: a retired label no longer starts a guard."""
    jira = current().jira
    issue = await jira.get_issue(issue_key, fields=["labels"])
    guards = [
        label
        for label in issue.labels
        if label.startswith(prefix) and not label.endswith(RETIRED_LABEL_SUFFIX)
    ]
    if guards:
        operations = [{"remove": label} for label in guards]
        operations += [{"add": f"{label}{RETIRED_LABEL_SUFFIX}"} for label in guards]
        await jira.edit_issue(issue_key, update={"labels": operations})
