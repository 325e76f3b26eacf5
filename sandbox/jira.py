"""A Jira Cloud simulator: the operations `core.jira.JiraClient` uses, answered the way Jira does.

`create_app(...)` returns a FastAPI app whose state (`app.state.jira`, a `JiraState`) tests and
benchmarks read directly. Answers follow the shapes of Atlassian's published spec (the tests
validate every 2xx response against it), errors use Jira's `{errorMessages, errors}` body, and
the known traps are kept: the old `/rest/api/3/search` is gone (410), unknown fields are
refused, subtasks need a parent in the same project, JQL must be bounded, and assignees are
account ids. Latency and errors are injected by `sandbox.faults.FaultInjector`.

Search can lag behind writes as Jira's does (`Faults.search_lag_seconds`): it then sees each
issue as it was that long ago, except the issues named in `reconcileIssues`; reads by key,
comments and transitions stay current. Writes can be applied and then lose their answer
(`Faults.after_apply_rate`), so a caller cannot tell whether they happened.

Jira's burst and per-issue write limits are enforced when enabled (`sandbox.jira_limits`,
`create_app(rate_limits=...)` or `PUT /_sandbox/rate-limits`): 429s with Jira's headers.

Control endpoints (no auth, never faulted): `GET|PUT /_sandbox/faults`, `GET|PUT
/_sandbox/rate-limits`, `GET /_sandbox/issues`,
`GET /_sandbox/stats`, `GET /_sandbox/journal`, `POST /_sandbox/users`, `POST /_sandbox/reset`,
and, to make Jira drift from what the service recorded, `DELETE /_sandbox/issues/{key}` and
`POST /_sandbox/issues/{key}/move`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import math
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox import jira_meta
from sandbox.faults import WRITE_METHODS, FaultInjector, Faults
from sandbox.jira_limits import RateLimiter, RateLimits, route_template

DEFAULT_CUSTOM_FIELDS = frozenset(f"customfield_{number}" for number in range(10050, 10060))
MAX_PAGE = 100  # Jira returns at most 100 issues per search page when fields are requested
MAX_BULK = 50
MAX_BULK_FETCH = 100
MAX_RECONCILE = 50  # issue ids a search may name in reconcileIssues
MAX_PROPERTY_BYTES = 32768
ACCOUNT_NAMESPACE = uuid.UUID("6f0f5e3a-5d0c-4c1b-9a43-6a1f3c2d7e10")

GONE_SEARCH = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
    "A full migration guideline is available at "
    "https://developer.atlassian.com/changelog/#CHANGE-2046"
)
NO_ISSUE = "Issue does not exist or you do not have permission to see it."
UNKNOWN_FIELD = "Field '{0}' cannot be set. It is not on the appropriate screen, or unknown."


# --------------------------------------------------------------------------- workflow and types


@dataclass(frozen=True)
class Status:
    id: str
    name: str
    category: str  # statusCategory key


STATUS_CATEGORIES = {
    "new": {"id": 2, "key": "new", "name": "To Do", "colorName": "blue-gray"},
    "indeterminate": {
        "id": 4,
        "key": "indeterminate",
        "name": "In Progress",
        "colorName": "yellow",
    },
    "done": {"id": 3, "key": "done", "name": "Done", "colorName": "green"},
}
STATUSES = {
    status.name: status
    for status in (
        Status("10000", "To Do", "new"),
        Status("3", "In Progress", "indeterminate"),
        Status("10001", "Done", "done"),
        Status("10002", "Cancelled", "done"),
    )
}
INITIAL_STATUS = "To Do"


@dataclass(frozen=True)
class WorkflowTransition:
    id: str
    name: str
    to: str


# To Do -> In Progress -> Done; Cancelled from either open status; Done and Cancelled are final.
WORKFLOW: dict[str, tuple[WorkflowTransition, ...]] = {
    "To Do": (
        WorkflowTransition("21", "Start Progress", "In Progress"),
        WorkflowTransition("41", "Cancel", "Cancelled"),
    ),
    "In Progress": (
        WorkflowTransition("31", "Done", "Done"),
        WorkflowTransition("41", "Cancel", "Cancelled"),
    ),
    "Done": (),
    "Cancelled": (),
}


@dataclass(frozen=True)
class IssueType:
    id: str
    name: str
    subtask: bool
    hierarchy_level: int


ISSUE_TYPES = {
    issue_type.name.casefold(): issue_type
    for issue_type in (
        IssueType("10000", "Epic", False, 1),
        IssueType("10001", "Task", False, 0),
        IssueType("10002", "Sub-task", True, -1),
    )
}


# --------------------------------------------------------------------------- state


@dataclass
class SimUser:
    account_id: str
    email: str
    display_name: str
    active: bool = True
    account_type: str = "atlassian"
    email_visible: bool = True  # privacy settings can hide the email from API callers


@dataclass
class SimComment:
    id: str
    author_id: str
    body: dict[str, Any]
    created: str


@dataclass
class SimIssue:
    id: int
    key: str
    project: str
    issue_type: IssueType
    summary: str
    created: str
    status: str = INITIAL_STATUS
    description: dict[str, Any] | None = None
    labels: list[str] = field(default_factory=list)
    assignee: str | None = None
    duedate: str | None = None
    parent_key: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    comments: list[SimComment] = field(default_factory=list)
    updated: str = ""

    @property
    def number(self) -> int:
        return int(self.key.rsplit("-", 1)[1])


@dataclass(frozen=True)
class JournalEntry:
    at: str
    change: Literal["create", "edit", "comment"]  # a transition is an edit
    key: str
    labels: list[str]


def account_id_for(email: str) -> str:
    """Deterministic, Atlassian-shaped account id, so seeds and tests can predict it."""
    return f"712020:{uuid.uuid5(ACCOUNT_NAMESPACE, email.strip().casefold())}"


def now_text() -> str:
    # RFC 3339 with an offset: Jira itself writes "+0000", which the spec's date-time refuses.
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JiraState:
    """Everything the simulator holds, including its fault injector.

    `reset()` returns to the configured users, no issues, zero counts and the initial faults.
    """

    def __init__(
        self,
        *,
        email: str,
        users: Iterable[tuple[str, str]] = (),
        projects: Iterable[str] = ("HR", "IT"),
        custom_fields: Iterable[str] = DEFAULT_CUSTOM_FIELDS,
        faults: Faults | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.caller_email = email
        self.configured_users = list(users)
        self.projects = {key.upper(): str(10000 + n) for n, key in enumerate(projects)}
        self.custom_fields = set(custom_fields)
        self.initial_faults = faults or Faults()
        # Wired into the app by `create_app`; held here so tests and control endpoints reach it.
        self.fault_injector = FaultInjector(
            _unattached, self.initial_faults.model_copy(), is_write=_is_api_write
        )
        self.initial_rate_limits = rate_limits or RateLimits()
        self.rate_limiter = RateLimiter(
            _unattached,
            self.initial_rate_limits.model_copy(deep=True),
            lambda scope: _rate_limited_as(self, scope),
        )
        self.reset()

    def set_faults(self, faults: Faults) -> None:
        lagged = self.search_lag > 0
        self.fault_injector.set(faults)
        if faults.search_lag_seconds and not lagged:
            # What exists when search starts lagging counts as long indexed.
            self._versions = {
                issue.id: [(-math.inf, copy.deepcopy(issue))] for issue in self.issues.values()
            }
            self._unsettled = {}
        elif not faults.search_lag_seconds:
            self._versions, self._unsettled = {}, {}

    @property
    def search_lag(self) -> float:
        return self.fault_injector.faults.search_lag_seconds

    def reset(self) -> None:
        self.users: dict[str, SimUser] = {}
        self.issues: dict[str, SimIssue] = {}
        # While search lags: per issue id, what search may see of it, oldest first (a
        # monotonic time and a copy, None once deleted), and the changes not yet copied.
        self._versions: dict[int, list[tuple[float, SimIssue | None]]] = {}
        self._unsettled: dict[int, tuple[float, SimIssue | None]] = {}
        self._by_label: tuple[tuple[int, ...], dict[str, list[SimIssue]]] | None = None
        self.fault_injector.set(self.initial_faults.model_copy())
        self.fault_injector.reset_counts()
        self.rate_limiter.set(self.initial_rate_limits.model_copy(deep=True))
        self.rate_limiter.reset_counts()
        self.calls: Counter[str] = Counter()  # "METHOD /route" -> requests that reached the API
        # Every change to an issue, in order: benchmarks time webhook -> Jira write from it.
        self.journal: list[JournalEntry] = []
        self._next_issue_id = 10000
        self._next_comment_id = 10000
        self._next_number = dict.fromkeys(self.projects, 1)
        # Keys of issues moved to another project -> their new key: Jira still answers the old one.
        self.moved_keys: dict[str, str] = {}
        configured = {email.casefold() for email, _ in self.configured_users}
        if self.caller_email.casefold() not in configured:
            # A service account: its accountType is "app", so it never passes for a person.
            self.add_user(self.caller_email, "pf-jira-sync (service account)", account_type="app")
        for email, display_name in self.configured_users:
            self.add_user(email, display_name)

    # ----------------------------------------------------------------- users

    def add_user(
        self,
        email: str,
        display_name: str,
        *,
        active: bool = True,
        account_type: str = "atlassian",
        email_visible: bool = True,
    ) -> SimUser:
        user = SimUser(
            account_id_for(email), email, display_name, active, account_type, email_visible
        )
        self.users[user.account_id] = user
        return user

    @property
    def caller(self) -> SimUser:
        return self.users[account_id_for(self.caller_email)]

    # ----------------------------------------------------------------- issues

    def project_key(self, reference: str | None) -> str | None:
        """The project key for a key (any case) or a project id; None when there is none."""
        if reference is None:
            return None
        return next(
            (
                key
                for key, pid in self.projects.items()
                if reference.upper() == key or reference == pid
            ),
            None,
        )

    def find_issue(self, key_or_id: str) -> SimIssue | None:
        if key_or_id.isdigit():
            return next((i for i in self.issues.values() if i.id == int(key_or_id)), None)
        key = key_or_id.upper()
        while key in self.moved_keys and key not in self.issues:
            key = self.moved_keys[key]
        return self.issues.get(key)

    def issue(self, key_or_id: str) -> SimIssue:
        issue = self.find_issue(key_or_id)
        if issue is None:
            raise JiraApiError(404, [NO_ISSUE])
        return issue

    def add_issue(
        self, project: str, issue_type: IssueType, summary: str, **values: Any
    ) -> SimIssue:
        number = self._next_number[project]
        self._next_number[project] = number + 1
        created = now_text()
        issue = SimIssue(
            id=self._next_issue_id,
            key=f"{project}-{number}",
            project=project,
            issue_type=issue_type,
            summary=summary,
            created=created,
            updated=created,
            **values,
        )
        self._next_issue_id += 1
        self.issues[issue.key] = issue
        self.journal.append(JournalEntry(created, "create", issue.key, list(issue.labels)))
        self.mark(issue)
        return issue

    def touched(self, issue: SimIssue, change: Literal["edit", "comment"]) -> None:
        """Record a change to an existing issue (an edit, a comment, a transition)."""
        issue.updated = now_text()
        self.journal.append(JournalEntry(issue.updated, change, issue.key, list(issue.labels)))
        self.mark(issue)

    def with_labels(self, labels: Iterable[str]) -> list[SimIssue]:
        """The issues as they are now that carry one of `labels`, from an index found again
        once an issue was created, changed or removed (the journal and the count of issues
        say so): a label search of 50 employees would otherwise test every issue of a company
        of 100,000 (reconciliation makes 2,000 of them)."""
        key = (id(self.issues), len(self.issues), len(self.journal), len(self.moved_keys))
        if self._by_label is None or self._by_label[0] != key:
            index: dict[str, list[SimIssue]] = defaultdict(list)
            for issue in self.issues.values():
                for label in issue.labels:
                    index[label].append(issue)
            self._by_label = (key, dict(index))
        found = {
            issue.id: issue
            for label in labels
            for issue in self._by_label[1].get(label, ())
            if self.issues.get(issue.key) is issue and label in issue.labels
        }
        return [found[issue_id] for issue_id in sorted(found)]

    # ----------------------------------------------------------------- search's lag

    def mark(self, issue: SimIssue, *, deleted: bool = False) -> None:
        """The issue changed now (or is gone): search sees that only `search_lag` from now."""
        if self.search_lag:
            self._unsettled[issue.id] = (time.monotonic(), None if deleted else issue)

    def settle(self) -> None:
        """Copy what changed into search's versions, once a request's changes are all made
        (so no search sees half a request), and forget versions no search can see any more."""
        if not self._unsettled:
            return
        cutoff = time.monotonic() - self.search_lag
        for issue_id, (at, issue) in self._unsettled.items():
            versions = self._versions.setdefault(issue_id, [])
            versions.append((at, copy.deepcopy(issue)))
            visible = [n for n, (when, _) in enumerate(versions) if when <= cutoff]
            if visible:
                del versions[: visible[-1]]
        self._unsettled = {}

    def searchable(self, reconcile: Iterable[int] = ()) -> list[SimIssue]:
        """The issues as search sees them now: as they were `search_lag` seconds ago, except
        those whose ids are in `reconcile` (current, as `reconcileIssues` asks)."""
        if not self.search_lag:
            return list(self.issues.values())
        self.settle()
        cutoff = time.monotonic() - self.search_lag
        current = {issue.id: issue for issue in self.issues.values()}
        wanted = set(reconcile)
        seen: list[SimIssue] = []
        for issue_id in sorted(set(current) | set(self._versions)):
            if issue_id in wanted:
                if issue_id in current:
                    seen.append(current[issue_id])
                continue
            old = [version for when, version in self._versions.get(issue_id, ()) if when <= cutoff]
            if old and old[-1] is not None:
                seen.append(old[-1])
        return seen

    def add_comment(self, issue: SimIssue, author: SimUser, body: dict[str, Any]) -> SimComment:
        comment = SimComment(str(self._next_comment_id), author.account_id, body, now_text())
        self._next_comment_id += 1
        issue.comments.append(comment)
        self.touched(issue, "comment")
        return comment

    def delete_issue(self, key: str) -> list[str]:
        """Delete an issue and its subtasks, as a Jira admin would; returns the keys deleted."""
        issue = self.issue(key)
        doomed = [issue.key] + [i.key for i in self.issues.values() if i.parent_key == issue.key]
        for doomed_key in doomed:
            self.mark(self.issues.pop(doomed_key), deleted=True)
        return doomed

    def move_issue(self, key: str, project: str) -> SimIssue:
        """Move an issue (with its subtasks) to another project: it gets a new key there, and
        its old key keeps answering, as in Jira. Labels, fields and comments move with it."""
        issue = self.issue(key)
        target = self.project_key(project)
        if target is None:
            raise JiraApiError(400, [f"No project could be found with key '{project}'."])
        subtasks = [i for i in self.issues.values() if i.parent_key == issue.key]
        for moving in [issue, *subtasks]:
            old_key = moving.key
            number = self._next_number[target]
            self._next_number[target] = number + 1
            del self.issues[old_key]
            moving.project, moving.key = target, f"{target}-{number}"
            self.issues[moving.key] = moving
            self.moved_keys[old_key] = moving.key
        for subtask in subtasks:
            subtask.parent_key = issue.key
        for moved in [issue, *subtasks]:
            self.mark(moved)
        return issue

    # ----------------------------------------------------------------- accounting

    def stats(self) -> dict[str, Any]:
        """Requests that reached the API, split into reads and writes, as benchmarks report them."""
        reads = sum(count for call, count in self.calls.items() if _is_read(call))
        lost = self.fault_injector.applied_then_failed
        return {
            "reads": reads,
            "writes": self.calls.total() - reads,
            "by_endpoint": dict(sorted(self.calls.items())),
            "issues": len(self.issues),
            # Refused before the API saw them: nothing happened.
            "faults_injected": self.fault_injector.injected,
            # Applied, then the answer was lost: the caller cannot tell that they happened.
            "applied_then_failed": lost.total(),
            "applied_then_failed_by_outcome": dict(sorted(lost.items())),
            # Refused by the rate limits (`rate_limited_by_reason`): the API never saw them.
            **self.rate_limiter.stats(),
        }

    @property
    def reads(self) -> int:
        return self.stats()["reads"]

    @property
    def writes(self) -> int:
        return self.stats()["writes"]


SEARCH_PATH = "/rest/api/3/search/jql"
BULK_FETCH_PATH = "/rest/api/3/issue/bulkfetch"


# Reads sent as POST (their query is a body): they change nothing.
READ_POSTS = (SEARCH_PATH, BULK_FETCH_PATH)


def _is_read(call: str) -> bool:
    return call.startswith("GET ") or call in {f"POST {path}" for path in READ_POSTS}


def _is_api_write(scope: Scope) -> bool:
    """A request that changes something (a search or a bulk fetch by POST changes nothing)."""
    return scope["method"] in WRITE_METHODS and not scope["path"].endswith(READ_POSTS)


# --------------------------------------------------------------------------- errors


class JiraApiError(Exception):
    """Answered as Jira's error body: `{"errorMessages": [...], "errors": {...}}`."""

    def __init__(
        self, status: int, messages: Sequence[str] = (), errors: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.messages = list(messages)
        self.errors = dict(errors or {})
        super().__init__(f"{status}: {self.messages} {self.errors}")

    def body(self) -> dict[str, Any]:
        return {"errorMessages": self.messages, "errors": self.errors}


class JqlError(JiraApiError):
    def __init__(self, message: str) -> None:
        super().__init__(400, [message])


# --------------------------------------------------------------------------- validation


def adf_problem(value: Any) -> str | None:
    """Why `value` is not an ADF document Jira would store, or None when it is."""
    if not (
        isinstance(value, dict)
        and value.get("type") == "doc"
        and value.get("version") == 1
        and isinstance(value.get("content"), list)
    ):
        return "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
    nodes = list(value["content"])
    while nodes:
        node = nodes.pop()
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            return "INVALID_INPUT: every ADF node needs a type"
        if node["type"] == "text" and not (isinstance(node.get("text"), str) and node["text"]):
            return "INVALID_INPUT: ADF text nodes must not be empty"
        content = node.get("content", [])
        if not isinstance(content, list):
            return "INVALID_INPUT: ADF content must be a list"
        nodes.extend(content)
    return None


class FieldEditor:
    """Validates `fields` and `update` of a create, edit or transition, collecting every error.

    Nothing is applied until all of the request is known to be valid, as in Jira.
    """

    def __init__(self, state: JiraState, issue: SimIssue | None) -> None:
        self.state = state
        self.errors: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.labels: list[str] = list(issue.labels) if issue else []
        self.labels_touched = False

    def read(self, fields: Any, update: Any, *, settable: set[str]) -> None:
        fields = fields or {}
        update = update or {}
        if not isinstance(fields, dict) or not isinstance(update, dict):
            raise JiraApiError(400, ["'fields' and 'update' must be JSON objects"])
        for name in set(fields) & set(update):
            self.errors[name] = f"Field '{name}' cannot be set in both 'fields' and 'update'"
        for name, value in fields.items():
            self._set(name, value, settable)
        for name, operations in update.items():
            if not isinstance(operations, list):
                self.errors[name] = "Operations must be a list"
                continue
            for operation in operations:
                self._operate(name, operation, settable)

    def _known(self, name: str, settable: set[str]) -> bool:
        if name in settable or name in self.state.custom_fields:
            return True
        self.errors[name] = UNKNOWN_FIELD.format(name)
        return False

    def _operate(self, name: str, operation: Any, settable: set[str]) -> None:
        if not self._known(name, settable):
            return
        if not isinstance(operation, dict) or len(operation) != 1:
            self.errors[name] = "Each operation must have exactly one of add, set, remove, edit"
            return
        [(verb, value)] = operation.items()
        if name == "labels" and verb in ("add", "remove"):
            problem = _label_problem(value)
            if problem:
                self.errors[name] = problem
                return
            self.labels_touched = True
            if verb == "add" and value not in self.labels:
                self.labels.append(value)
            elif verb == "remove" and value in self.labels:
                self.labels.remove(value)
        elif verb == "set":
            self._set(name, value, settable)
        else:
            self.errors[name] = f"Operation '{verb}' is not supported for field '{name}'"

    def _set(self, name: str, value: Any, settable: set[str]) -> None:
        if not self._known(name, settable):
            return
        check = getattr(self, f"_check_{name}", None)
        if check is None:  # a registered custom field takes any JSON value
            self.values[name] = value
            return
        problem = check(value)
        if problem:
            self.errors[name] = problem
        elif name == "labels":
            self.labels = list(value or [])
            self.labels_touched = True
        else:
            self.values[name] = value

    @staticmethod
    def _check_labels(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, list):
            return "Labels must be a list of texts."
        return next(filter(None, map(_label_problem, value)), None)

    @staticmethod
    def _check_summary(value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "You must specify a summary of the issue."
        if "\n" in value or len(value) > 255:
            return "Summary must be a single line of at most 255 characters."
        return None

    @staticmethod
    def _check_description(value: Any) -> str | None:
        return None if value is None else adf_problem(value)

    def _check_assignee(self, value: Any) -> str | None:
        if value is None:
            return None
        account_id = (
            (value.get("id") or value.get("accountId")) if isinstance(value, dict) else None
        )
        user = self.state.users.get(account_id) if isinstance(account_id, str) else None
        if user is None or not user.active:
            return f"User '{account_id}' cannot be assigned issues."
        return None

    @staticmethod
    def _check_duedate(value: Any) -> str | None:
        if value is None:
            return None
        try:  # Jira takes yyyy-MM-dd only; fromisoformat alone would also take 20250902
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                date.fromisoformat(value)
                return None
        except (TypeError, ValueError):
            pass
        return f"Error parsing date string: {value}"

    def apply(self, issue: SimIssue) -> None:
        if "summary" in self.values:
            issue.summary = self.values["summary"]
        if "description" in self.values:
            issue.description = self.values["description"]
        if "duedate" in self.values:
            issue.duedate = self.values["duedate"]
        if "assignee" in self.values:
            assignee = self.values["assignee"]
            issue.assignee = (assignee.get("id") or assignee.get("accountId")) if assignee else None
        if self.labels_touched:
            issue.labels = list(self.labels)
        for name, value in self.values.items():
            if name in self.state.custom_fields:
                issue.custom[name] = value
        self.state.touched(issue, "edit")


def _label_problem(label: Any) -> str | None:
    if not isinstance(label, str) or not label or len(label) > 255:
        return "A label must be a non-empty text of at most 255 characters."
    if re.search(r"\s", label):
        return f"The label '{label}' contains spaces which is invalid."
    return None


CREATE_FIELDS = {
    "project",
    "issuetype",
    "summary",
    "description",
    "labels",
    "assignee",
    "duedate",
    "parent",
}
EDIT_FIELDS = {"summary", "description", "labels", "assignee", "duedate"}


def _reference(value: Any, *names: str) -> str | None:
    """The id or key out of `{"key": ...}` / `{"id": ...}` / `{"name": ...}`."""
    if isinstance(value, dict):
        for name in names:
            if isinstance(value.get(name), (str, int)):
                return str(value[name])
    return None


def _issue_type(reference: str | None) -> IssueType | None:
    """An issue type by id or by name (any case)."""
    if reference is None:
        return None
    wanted = reference.casefold()
    return next((t for t in ISSUE_TYPES.values() if wanted in (t.id, t.name.casefold())), None)


def create_issue(state: JiraState, payload: Any) -> SimIssue:
    """Validate one create request (single or bulk element) and make the issue, or raise 400."""
    if not isinstance(payload, dict) or not isinstance(payload.get("fields"), dict):
        raise JiraApiError(400, ["The request must carry a 'fields' object."])
    fields = payload["fields"]
    errors: dict[str, str] = {}

    project = state.project_key(_reference(fields.get("project"), "key", "id"))
    if project is None:
        errors["project"] = "Specify a valid project ID or key"

    issue_type = _issue_type(_reference(fields.get("issuetype"), "name", "id"))
    if issue_type is None:
        errors["issuetype"] = "Specify an issue type"

    parent: SimIssue | None = None
    parent_ref = _reference(fields.get("parent"), "key", "id")
    if parent_ref is not None:
        parent = state.find_issue(parent_ref)
        if parent is None:
            errors["parent"] = f"Could not find issue by id or key: {parent_ref}"
    if issue_type is not None and parent_ref is None and issue_type.subtask:
        errors["parentId"] = "Given parent work item does not belong to appropriate hierarchy."
    if issue_type is not None and parent is not None:
        if parent.issue_type.hierarchy_level != issue_type.hierarchy_level + 1:
            errors["parentId"] = "Given parent work item does not belong to appropriate hierarchy."
        elif issue_type.subtask and project is not None and parent.project != project:
            errors["project"] = "Sub-tasks must be created in the same project as the parent."

    editor = FieldEditor(state, None)
    if "summary" not in fields and "summary" not in (payload.get("update") or {}):
        editor.errors["summary"] = "You must specify a summary of the issue."
    editor.read(
        {k: v for k, v in fields.items() if k not in ("project", "issuetype", "parent")},
        payload.get("update"),
        settable=CREATE_FIELDS,
    )
    properties = _read_properties(payload.get("properties"), errors)
    errors = {**editor.errors, **errors}
    if errors or project is None or issue_type is None:
        raise JiraApiError(400, [], errors)

    issue = state.add_issue(
        project,
        issue_type,
        editor.values["summary"],
        parent_key=parent.key if parent else None,
        properties=properties,
    )
    editor.apply(issue)
    return issue


def _read_properties(value: Any, errors: dict[str, str]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for item in value or []:
        key = item.get("key") if isinstance(item, dict) else None
        problem = _property_problem(key, item.get("value") if isinstance(item, dict) else None)
        if problem:
            errors["properties"] = problem
        else:
            properties[str(key)] = item["value"]
    return properties


def _property_problem(key: Any, value: Any) -> str | None:
    if not isinstance(key, str) or not key or len(key) > 255:
        return "The property key must be between 1 and 255 characters."
    if value is None or len(json.dumps(value).encode()) > MAX_PROPERTY_BYTES:
        return f"The property value must be non-empty JSON of at most {MAX_PROPERTY_BYTES} bytes."
    return None


# --------------------------------------------------------------------------- JQL


_JQL_TOKEN = re.compile(
    r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<symbol>!=|=|\(|\)|,)|(?P<word>[^\s=!(),"']+))"""
)
JQL_FIELDS = {
    "project",
    "labels",
    "key",
    "issuekey",
    "parent",
    "status",
    "statuscategory",
    "assignee",
    "issuetype",
}


@dataclass(frozen=True)
class Clause:
    field: str
    negated: bool
    values: tuple[str, ...]


@dataclass(frozen=True)
class Jql:
    clauses: tuple[Clause, ...]
    order_by: str  # "key", "created" or "updated"
    descending: bool


def parse_jql(text: str) -> Jql:
    """The subset the service uses: `field (=|!=|in|not in) value` joined by AND, ORDER BY."""
    tokens: list[str] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _JQL_TOKEN.match(text, position)
        if not match or match.end() == position:
            raise JqlError(f"Error in the JQL Query: cannot read the query at '{text[position:]}'.")
        position = match.end()
        token = match.group("string")
        tokens.append(_unquote(token) if token else match.group("symbol") or match.group("word"))
    clauses: list[Clause] = []
    order_by, descending = "created", True  # Jira's default order: newest first
    index = 0

    def take() -> str:
        nonlocal index
        if index >= len(tokens):
            raise JqlError("Error in the JQL Query: the query ends unexpectedly.")
        index += 1
        return tokens[index - 1]

    while index < len(tokens):
        word = take()
        if word.upper() == "ORDER":
            if take().upper() != "BY":
                raise JqlError("Error in the JQL Query: expecting 'BY' after 'ORDER'.")
            order_by = take().casefold()
            if order_by not in ("key", "created", "updated"):
                raise JqlError(f"Not supported by the simulator: ORDER BY {order_by}")
            descending = False
            if index < len(tokens):
                direction = take().upper()
                if direction not in ("ASC", "DESC"):
                    raise JqlError(
                        f"Error in the JQL Query: expecting ASC or DESC, got '{direction}'."
                    )
                descending = direction == "DESC"
            if index < len(tokens):
                raise JqlError("Not supported by the simulator: one ORDER BY field only.")
            break
        if clauses:
            if word.upper() == "OR":
                raise JqlError("Not supported by the simulator: OR (use AND and IN)")
            if word.upper() != "AND":
                raise JqlError(f"Error in the JQL Query: expecting AND, got '{word}'.")
            word = take()
        name = word.casefold()
        if name not in JQL_FIELDS:
            raise JqlError(f"Not supported by the simulator: field '{word}'")
        operator = take()
        negated = False
        if operator.upper() == "NOT":
            negated, operator = True, take()
        if operator == "=" and not negated:
            values: tuple[str, ...] = (take(),)
        elif operator == "!=" and not negated:
            negated, values = True, (take(),)
        elif operator.upper() == "IN":
            if take() != "(":
                raise JqlError("Error in the JQL Query: expecting '(' after IN.")
            items = [take()]
            while (separator := take()) == ",":
                items.append(take())
            if separator != ")":
                raise JqlError("Error in the JQL Query: expecting ',' or ')' in a list.")
            values = tuple(items)
        else:
            raise JqlError(f"Not supported by the simulator: operator '{operator}'")
        clauses.append(Clause("key" if name == "issuekey" else name, negated, values))
    if not clauses:
        raise JqlError(
            "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
        )
    return Jql(tuple(clauses), order_by, descending)


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def _category_of(value: str) -> str:
    wanted = value.casefold()
    for key, category in STATUS_CATEGORIES.items():
        if wanted in (key, str(category["name"]).casefold(), str(category["id"])):
            return key
    raise JqlError(f"The value '{value}' does not exist for the field 'statusCategory'.")


def matcher(state: JiraState, clause: Clause) -> Callable[[SimIssue], bool]:
    """A predicate for one clause; unknown projects, statuses and keys are errors, as in Jira."""
    values = clause.values
    wanted: set[str]
    if clause.field == "project":
        wanted = set()
        for value in values:
            key = state.project_key(value)
            if key is None:
                raise JqlError(f"The value '{value}' does not exist for the field 'project'.")
            wanted.add(key)

        def current(issue: SimIssue) -> Iterable[str]:
            return [issue.project]
    elif clause.field in ("key", "parent"):
        wanted = set()
        for value in values:
            found = state.find_issue(value)
            if found is None:
                raise JqlError(
                    f"An issue with key '{value}' does not exist for field '{clause.field}'."
                )
            wanted.add(found.key)

        def current(issue: SimIssue) -> Iterable[str]:
            if clause.field == "key":
                return [issue.key]
            return [issue.parent_key] if issue.parent_key else []
    elif clause.field == "labels":
        wanted = set(values)

        def current(issue: SimIssue) -> Iterable[str]:
            return issue.labels
    elif clause.field == "status":
        wanted = set()
        for value in values:
            status = next(
                (s for s in STATUSES.values() if value.casefold() in (s.name.casefold(), s.id)),
                None,
            )
            if status is None:
                raise JqlError(f"The value '{value}' does not exist for the field 'status'.")
            wanted.add(status.name)

        def current(issue: SimIssue) -> Iterable[str]:
            return [issue.status]
    elif clause.field == "statuscategory":
        wanted = {_category_of(value) for value in values}

        def current(issue: SimIssue) -> Iterable[str]:
            return [STATUSES[issue.status].category]
    elif clause.field == "assignee":
        wanted = set(values)

        def current(issue: SimIssue) -> Iterable[str]:
            return [issue.assignee] if issue.assignee else []
    else:  # issuetype
        wanted = {value.casefold() for value in values}

        def current(issue: SimIssue) -> Iterable[str]:
            return [issue.issue_type.name.casefold()]

    def matches(issue: SimIssue) -> bool:
        present = set(current(issue))
        if clause.negated:
            # Jira's != and NOT IN never match an empty field.
            return bool(present) and not present & wanted
        return bool(present & wanted)

    return matches


def run_jql(state: JiraState, jql: Jql, issues: Iterable[SimIssue] | None = None) -> list[SimIssue]:
    """The issues (default: all, as they are now) that `jql` finds, in its order."""
    predicates = [matcher(state, clause) for clause in jql.clauses]
    candidates: Iterable[SimIssue] = state.issues.values() if issues is None else issues
    labelled = next((c for c in jql.clauses if c.field == "labels" and not c.negated), None)
    if issues is None and labelled is not None:
        candidates = state.with_labels(labelled.values)
    found = [issue for issue in candidates if all(p(issue) for p in predicates)]
    if jql.order_by == "key":
        found.sort(key=lambda issue: (issue.project, issue.number), reverse=jql.descending)
    else:  # created and updated: issue ids grow with creation, updated is a timestamp
        sort_key: Callable[[SimIssue], Any] = (
            (lambda issue: issue.id)
            if jql.order_by == "created"
            else (lambda issue: (issue.updated, issue.id))
        )
        found.sort(key=sort_key, reverse=jql.descending)
    return found


def _page_token(jql: str, offset: int) -> str:
    raw = json.dumps({"q": hashlib.sha256(jql.encode()).hexdigest()[:16], "o": offset})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _read_page_token(jql: str, token: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["q"] != hashlib.sha256(jql.encode()).hexdigest()[:16]:
            raise ValueError("token for another query")
        return int(data["o"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise JiraApiError(400, ["The provided next page token is invalid or expired."]) from None


# --------------------------------------------------------------------------- rendering


class Renderer:
    """Spec-shaped JSON for the simulator's objects, with `self` links under the request's base."""

    def __init__(
        self, state: JiraState, request: Request, view: Sequence[SimIssue] | None = None
    ) -> None:
        self.state = state
        # root_path carries a mount prefix (the /ex/jira/{cloudId} form); base_url drops it.
        root = f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"
        self.base = root.rstrip("/") + "/rest/api/3"
        # The issues as this answer sees them: a lagging search's view, or as they are now.
        self._view = view
        self._subtasks: dict[str, list[SimIssue]] | None = None
        self._by_key: dict[str, SimIssue] | None = None

    def _issues(self) -> Iterable[SimIssue]:
        return self.state.issues.values() if self._view is None else self._view

    def _children(self) -> dict[str, list[SimIssue]]:
        """Subtasks by parent key, gathered once per answer: a page of a search over 10,000
        issues would otherwise scan them all for every issue it shows."""
        if self._subtasks is None:
            self._subtasks = {}
            for issue in self._issues():
                if issue.parent_key:
                    self._subtasks.setdefault(issue.parent_key, []).append(issue)
        return self._subtasks

    def _parent(self, key: str) -> SimIssue | None:
        if self._view is None:
            return self.state.issues.get(key)
        if self._by_key is None:
            self._by_key = {issue.key: issue for issue in self._view}
        return self._by_key.get(key)

    def user(self, user: SimUser, *, full: bool = True) -> dict[str, Any]:
        """`User` (full) or `UserDetails` (as author or assignee): the two differ in locale."""
        data: dict[str, Any] = {
            "self": f"{self.base}/user?accountId={user.account_id}",
            "accountId": user.account_id,
            "accountType": user.account_type,
            "avatarUrls": {
                size: f"https://avatar-management.example/{user.account_id}/{size}"
                for size in ("16x16", "24x24", "32x32", "48x48")
            },
            "displayName": user.display_name,
            "active": user.active,
            "timeZone": "Etc/UTC",
        }
        if user.email_visible:
            data["emailAddress"] = user.email
        if full:
            data["locale"] = "en_US"
        return data

    def status(self, name: str) -> dict[str, Any]:
        status = STATUSES[name]
        category = STATUS_CATEGORIES[status.category]
        return {
            "self": f"{self.base}/status/{status.id}",
            "description": "",
            "iconUrl": f"{self.base.removesuffix('/rest/api/3')}/images/icons/statuses/generic.png",
            "name": status.name,
            "id": status.id,
            "statusCategory": {"self": f"{self.base}/statuscategory/{category['id']}", **category},
        }

    def issue_type(self, issue_type: IssueType) -> dict[str, Any]:
        return {
            "self": f"{self.base}/issuetype/{issue_type.id}",
            "id": issue_type.id,
            "name": issue_type.name,
            "subtask": issue_type.subtask,
            "hierarchyLevel": issue_type.hierarchy_level,
        }

    def issue_link(self, issue: SimIssue) -> dict[str, Any]:
        """How a parent or subtask is shown inside another issue."""
        return {
            "id": str(issue.id),
            "key": issue.key,
            "self": f"{self.base}/issue/{issue.id}",
            "fields": {
                "summary": issue.summary,
                "status": self.status(issue.status),
                "issuetype": self.issue_type(issue.issue_type),
            },
        }

    def comment(self, comment: SimComment) -> dict[str, Any]:
        author = self.user(self.state.users[comment.author_id], full=False)
        return {
            "self": f"{self.base}/issue/comment/{comment.id}",
            "id": comment.id,
            "author": author,
            "updateAuthor": author,
            "body": comment.body,
            "created": comment.created,
            "updated": comment.created,
            "jsdPublic": True,
        }

    def fields(self, issue: SimIssue) -> dict[str, dict[str, Any]]:
        """All fields, split into navigable ones and the rest (only `*all` returns comments)."""
        assignee = self.state.users.get(issue.assignee) if issue.assignee else None
        parent = self._parent(issue.parent_key) if issue.parent_key else None
        subtasks = self._children().get(issue.key, [])
        navigable: dict[str, Any] = {
            "summary": issue.summary,
            "description": issue.description,
            "issuetype": self.issue_type(issue.issue_type),
            "project": {
                "self": f"{self.base}/project/{self.state.projects[issue.project]}",
                "id": self.state.projects[issue.project],
                "key": issue.project,
                "name": issue.project,
            },
            "status": self.status(issue.status),
            "labels": list(issue.labels),
            "assignee": self.user(assignee, full=False) if assignee else None,
            "reporter": self.user(self.state.caller, full=False),
            "duedate": issue.duedate,
            "subtasks": [self.issue_link(subtask) for subtask in subtasks],
            "created": issue.created,
            "updated": issue.updated,
            **{name: issue.custom.get(name) for name in sorted(self.state.custom_fields)},
        }
        if parent:
            navigable["parent"] = self.issue_link(parent)
        comments = [self.comment(comment) for comment in issue.comments]
        other = {
            "comment": {
                "comments": comments,
                "self": f"{self.base}/issue/{issue.id}/comment",
                "maxResults": len(comments),
                "total": len(comments),
                "startAt": 0,
            }
        }
        return {"navigable": navigable, "other": other}

    def issue(
        self, issue: SimIssue, fields: Sequence[str] | None, properties: Sequence[str] = ()
    ) -> dict[str, Any]:
        """An `IssueBean`. `fields=None` is the search default: the id alone."""
        if fields is None:
            return {"id": str(issue.id)}
        bean: dict[str, Any] = {
            "expand": "",
            "id": str(issue.id),
            "self": f"{self.base}/issue/{issue.id}",
            "key": issue.key,
            "fields": self._select(issue, fields),
        }
        if properties:
            everything = "*all" in properties
            bean["properties"] = {
                key: value
                for key, value in issue.properties.items()
                if everything or key in properties
            }
        return bean

    def _select(self, issue: SimIssue, requested: Sequence[str]) -> dict[str, Any]:
        groups = self.fields(issue)
        available = {**groups["navigable"], **groups["other"]}
        chosen: dict[str, Any] = {}
        excluded = {name[1:] for name in requested if name.startswith("-")}
        for name in requested:
            if name == "*all":
                chosen.update(available)
            elif name == "*navigable":
                chosen.update(groups["navigable"])
            elif name in available:
                chosen[name] = available[name]
        return {name: value for name, value in chosen.items() if name not in excluded}


def _list_param(request: Request, name: str) -> list[str] | None:
    """A list query parameter, repeated or comma-separated (Jira takes both)."""
    raw = request.query_params.getlist(name)
    if not raw:
        return None
    return [item.strip() for value in raw for item in value.split(",") if item.strip()]


def _int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise JiraApiError(400, [f"'{name}' must be a number."]) from None


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise JiraApiError(400, ["Unexpected character in the request body: not JSON."]) from None


# --------------------------------------------------------------------------- the API


def _state(request: Request) -> JiraState:
    return request.app.state.jira


async def _count_call(request: Request) -> None:
    route = request.scope.get("route")
    _state(request).calls[f"{request.method} {getattr(route, 'path', request.url.path)}"] += 1


async def _authenticate(request: Request) -> SimUser:
    """Basic auth with the configured email and token, or 401 as Jira answers it."""
    state = _state(request)
    expected = request.app.state.jira_credentials
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    try:
        given = base64.b64decode(encoded, validate=True) if scheme.lower() == "basic" else b""
    except binascii.Error:
        given = b""
    if not given or not hmac.compare_digest(given, expected):
        raise JiraApiError(401, ["Client must be authenticated to access this resource."])
    return state.caller


Caller = Annotated[SimUser, Depends(_authenticate)]
# Path parameters named as in the spec, so call counts read like the spec's operations.
IssueKey = Annotated[str, Path(alias="issueIdOrKey")]
PropertyKey = Annotated[str, Path(alias="propertyKey")]


async def _settle_changes(request: Request) -> AsyncIterator[None]:
    """After the request: what it changed becomes what a lagging search will see, in time."""
    try:
        yield
    finally:
        _state(request).settle()


rest_api = APIRouter(
    prefix="/rest/api/3",
    dependencies=[Depends(_count_call), Depends(_authenticate), Depends(_settle_changes)],
)


@rest_api.get("/myself")
async def myself(request: Request, caller: Caller) -> JSONResponse:
    return JSONResponse(Renderer(_state(request), request).user(caller))


@rest_api.get("/user/search")
async def find_users(request: Request) -> JSONResponse:
    state = _state(request)
    query = (request.query_params.get("query") or "").strip().casefold()
    account_id = request.query_params.get("accountId")
    if not query and not account_id:
        raise JiraApiError(400, ["One of 'query' or 'accountId' parameters must be provided."])
    start = _int_param(request, "startAt", 0)
    limit = _int_param(request, "maxResults", 50)

    def matches(user: SimUser) -> bool:
        if account_id:
            return user.account_id == account_id
        words = [user.display_name.casefold(), *user.display_name.casefold().split()]
        emails = [user.email.casefold()] if user.email_visible else []
        return any(candidate.startswith(query) for candidate in [*words, *emails])

    found = [user for user in state.users.values() if user.active and matches(user)]
    renderer = Renderer(state, request)
    return JSONResponse([renderer.user(user) for user in found[start : start + limit]])


@rest_api.post("/issue", status_code=201)
async def create_one(request: Request) -> JSONResponse:
    state = _state(request)
    issue = create_issue(state, await _json_body(request))
    base = Renderer(state, request).base
    return JSONResponse(
        {"id": str(issue.id), "key": issue.key, "self": f"{base}/issue/{issue.id}"}, status_code=201
    )


@rest_api.post("/issue/bulk", status_code=201)
async def create_many(request: Request) -> JSONResponse:
    state = _state(request)
    body = await _json_body(request)
    updates = body.get("issueUpdates") if isinstance(body, dict) else None
    if not isinstance(updates, list) or not updates:
        raise JiraApiError(400, ["'issueUpdates' must be a non-empty list."])
    if len(updates) > MAX_BULK:
        raise JiraApiError(400, [f"Bulk create is limited to {MAX_BULK} issues per request."])
    base = Renderer(state, request).base
    issues: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for position, payload in enumerate(updates):
        try:
            issue = create_issue(state, payload)
        except JiraApiError as error:
            errors.append(
                {
                    "status": error.status,
                    "failedElementNumber": position,
                    "elementErrors": {**error.body(), "status": error.status},
                }
            )
            continue
        issues.append({"id": str(issue.id), "key": issue.key, "self": f"{base}/issue/{issue.id}"})
    # 201 when anything was created; 400 with the same body when every element failed.
    return JSONResponse({"issues": issues, "errors": errors}, status_code=201 if issues else 400)


@rest_api.post("/issue/bulkfetch")
async def bulk_fetch(request: Request) -> JSONResponse:
    """Up to 100 issues by id or key, read as they are now (not through search's index); an
    issue that does not exist is left out, as Jira does."""
    state = _state(request)
    body = await _json_body(request)
    wanted = body.get("issueIdsOrKeys") if isinstance(body, dict) else None
    if not isinstance(wanted, list) or not wanted or not all(isinstance(k, str) for k in wanted):
        raise JiraApiError(400, ["'issueIdsOrKeys' must be a non-empty list of issue ids or keys."])
    if len(wanted) > MAX_BULK_FETCH:
        raise JiraApiError(400, [f"At most {MAX_BULK_FETCH} issues can be fetched at once."])
    fields = body.get("fields") or ["*all"]
    if not isinstance(fields, list):
        raise JiraApiError(400, ["'fields' must be a list of field names."])
    renderer = Renderer(state, request)
    found = [issue for key in wanted if (issue := state.find_issue(key)) is not None]
    unique = list({issue.key: issue for issue in found}.values())
    return JSONResponse(
        {"issues": [renderer.issue(issue, fields, []) for issue in unique], "issueErrors": []}
    )


@rest_api.get("/issue/{issueIdOrKey}")
async def get_issue(request: Request, key: IssueKey) -> JSONResponse:
    state = _state(request)
    issue = state.issue(key)
    fields = _list_param(request, "fields") or ["*all"]
    properties = _list_param(request, "properties") or []
    return JSONResponse(Renderer(state, request).issue(issue, fields, properties))


@rest_api.put("/issue/{issueIdOrKey}", status_code=204)
async def edit_issue(request: Request, key: IssueKey) -> Response:
    state = _state(request)
    issue = state.issue(key)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise JiraApiError(400, ["The request body must be a JSON object."])
    editor = FieldEditor(state, issue)
    editor.read(body.get("fields"), body.get("update"), settable=EDIT_FIELDS)
    if editor.errors:
        raise JiraApiError(400, [], editor.errors)
    editor.apply(issue)
    return Response(status_code=204)


@rest_api.post("/issue/{issueIdOrKey}/comment", status_code=201)
async def add_comment(request: Request, key: IssueKey, caller: Caller) -> JSONResponse:
    state = _state(request)
    issue = state.issue(key)
    body = await _json_body(request)
    adf = body.get("body") if isinstance(body, dict) else None
    if not adf:
        raise JiraApiError(400, [], {"comment": "Comment body can not be empty!"})
    problem = adf_problem(adf)
    if problem:
        raise JiraApiError(400, [], {"comment": problem})
    comment = state.add_comment(issue, caller, adf)
    return JSONResponse(Renderer(state, request).comment(comment), status_code=201)


@rest_api.get("/issue/{issueIdOrKey}/comment")
async def get_comments(request: Request, key: IssueKey) -> JSONResponse:
    """A page of the issue's comments, oldest first unless `orderBy=-created`: current, as any
    read of one issue is."""
    state = _state(request)
    issue = state.issue(key)
    order = request.query_params.get("orderBy", "created")
    if order not in ("created", "+created", "-created"):
        raise JiraApiError(400, [f"Ordering by '{order}' is not supported."])
    start = max(0, _int_param(request, "startAt", 0))
    limit = max(1, min(_int_param(request, "maxResults", 100), 100))
    comments = issue.comments[::-1] if order == "-created" else issue.comments
    renderer = Renderer(state, request)
    return JSONResponse(
        {
            "comments": [renderer.comment(c) for c in comments[start : start + limit]],
            "startAt": start,
            "maxResults": limit,
            "total": len(comments),
        }
    )


@rest_api.get("/issue/{issueIdOrKey}/transitions")
async def get_transitions(request: Request, key: IssueKey) -> JSONResponse:
    state = _state(request)
    issue = state.issue(key)
    renderer = Renderer(state, request)
    return JSONResponse(
        {
            "expand": "transitions",
            "transitions": [
                {
                    "id": transition.id,
                    "name": transition.name,
                    "to": renderer.status(transition.to),
                    "hasScreen": False,
                    "isGlobal": False,
                    "isInitial": False,
                    "isAvailable": True,
                    "isConditional": False,
                    "isLooped": False,
                }
                for transition in WORKFLOW[issue.status]
            ],
        }
    )


@rest_api.post("/issue/{issueIdOrKey}/transitions", status_code=204)
async def do_transition(request: Request, key: IssueKey, caller: Caller) -> Response:
    state = _state(request)
    issue = state.issue(key)
    body = await _json_body(request)
    transition_id = _reference(body.get("transition") if isinstance(body, dict) else None, "id")
    if transition_id is None:
        raise JiraApiError(400, ["Missing 'transition' identifier"])
    transition = next((t for t in WORKFLOW[issue.status] if t.id == transition_id), None)
    if transition is None:
        raise JiraApiError(400, [f"Transition id '{transition_id}' is not valid for this issue."])
    update = dict(body.get("update") or {})
    comment_operations = update.pop("comment", [])
    if not isinstance(comment_operations, list):
        comment_operations = [None]  # refused below, like any malformed comment
    editor = FieldEditor(state, issue)
    editor.read(body.get("fields"), update, settable=EDIT_FIELDS)
    new_comments: list[dict[str, Any]] = []
    for operation in comment_operations:
        body_adf = (operation.get("add") or {}).get("body") if isinstance(operation, dict) else None
        if adf_problem(body_adf) or not isinstance(body_adf, dict):
            editor.errors["comment"] = "Comment body must be an Atlassian Document."
        else:
            new_comments.append(body_adf)
    if editor.errors:
        raise JiraApiError(400, [], editor.errors)
    issue.status = transition.to
    editor.apply(issue)  # records the change, the new status with it
    for comment in new_comments:
        state.add_comment(issue, caller, comment)
    return Response(status_code=204)


@rest_api.put("/issue/{issueIdOrKey}/properties/{propertyKey}")
async def set_property(request: Request, key: IssueKey, property_key: PropertyKey) -> Response:
    state = _state(request)
    issue = state.issue(key)
    raw = await request.body()
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    problem = _property_problem(property_key, value) if raw else "The property value is empty."
    if problem or value is None:
        raise JiraApiError(400, [problem or "The property value must be valid, non-empty JSON."])
    created = property_key not in issue.properties
    issue.properties[property_key] = value
    state.mark(issue)
    return Response(status_code=201 if created else 200)


@dataclass(frozen=True)
class SearchRequest:
    """One search, from the GET query or the POST body."""

    jql: str
    next_page_token: str | None
    max_results: int
    fields: list[str] | None
    properties: list[str]
    reconcile: list[int]


@rest_api.post("/search/jql")
async def search(request: Request) -> JSONResponse:
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("jql"), str):
        raise JiraApiError(400, ["The 'jql' field is required."])
    requested = body.get("maxResults", 50)
    if not isinstance(requested, int):
        raise JiraApiError(400, ["'maxResults' must be a number."])
    reconcile = body.get("reconcileIssues") or []
    if not isinstance(reconcile, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in reconcile
    ):
        raise JiraApiError(400, ["'reconcileIssues' must be a list of issue ids."])
    return _search(
        request,
        SearchRequest(
            jql=body["jql"],
            next_page_token=body.get("nextPageToken"),
            max_results=requested,
            fields=body.get("fields"),
            properties=body.get("properties") or [],
            reconcile=reconcile,
        ),
    )


@rest_api.get("/search/jql")
async def search_by_get(request: Request) -> JSONResponse:
    jql = request.query_params.get("jql")
    if not jql:
        raise JiraApiError(400, ["The 'jql' parameter is required."])
    try:
        reconcile = [int(item) for item in _list_param(request, "reconcileIssues") or []]
    except ValueError:
        raise JiraApiError(400, ["'reconcileIssues' must be a list of issue ids."]) from None
    return _search(
        request,
        SearchRequest(
            jql=jql,
            next_page_token=request.query_params.get("nextPageToken"),
            max_results=_int_param(request, "maxResults", 50),
            fields=_list_param(request, "fields"),
            properties=_list_param(request, "properties") or [],
            reconcile=reconcile,
        ),
    )


def _search(request: Request, asked: SearchRequest) -> JSONResponse:
    """A page of what the JQL finds, as search sees the issues (it may lag behind writes)."""
    state = _state(request)
    if len(asked.reconcile) > MAX_RECONCILE:
        raise JiraApiError(400, [f"'reconcileIssues' accepts at most {MAX_RECONCILE} issue ids."])
    # Without a lag search sees the issues as they are (`run_jql` may then use its index).
    view = state.searchable(asked.reconcile) if state.search_lag else None
    found = run_jql(state, parse_jql(asked.jql), view)
    offset = _read_page_token(asked.jql, asked.next_page_token) if asked.next_page_token else 0
    size = max(1, min(asked.max_results, MAX_PAGE))
    page = found[offset : offset + size]
    renderer = Renderer(state, request, view)
    result: dict[str, Any] = {
        "issues": [renderer.issue(issue, asked.fields, asked.properties) for issue in page],
        "isLast": offset + size >= len(found),
    }
    if not result["isLast"]:
        result["nextPageToken"] = _page_token(asked.jql, offset + size)
    return JSONResponse(result)


@rest_api.get("/search")
@rest_api.post("/search")
async def removed_search() -> JSONResponse:
    """CHANGE-2046: the old search is gone in production; answer as Jira does."""
    raise JiraApiError(410, [GONE_SEARCH])


# --------------------------------------------------------------------------- control endpoints


class NewUser(BaseModel):
    email: str
    display_name: str
    active: bool = True
    account_type: str = "atlassian"
    email_visible: bool = True


sandbox_control = APIRouter(
    prefix="/_sandbox", tags=["sandbox"], dependencies=[Depends(_settle_changes)]
)


@sandbox_control.get("/faults")
async def read_faults(request: Request) -> Faults:
    return _state(request).fault_injector.faults


@sandbox_control.put("/faults")
async def replace_faults(request: Request, faults: Faults) -> Faults:
    _state(request).set_faults(faults)
    return faults


@sandbox_control.get("/rate-limits")
async def read_rate_limits(request: Request) -> RateLimits:
    return _state(request).rate_limiter.limits


@sandbox_control.put("/rate-limits")
async def replace_rate_limits(request: Request, limits: RateLimits) -> RateLimits:
    """New limits; every bucket starts full."""
    _state(request).rate_limiter.set(limits)
    return limits


@sandbox_control.get("/issues")
async def all_issues(request: Request) -> JSONResponse:
    state = _state(request)
    renderer = Renderer(state, request)
    return JSONResponse(
        [renderer.issue(issue, ["*all"], ["*all"]) for issue in state.issues.values()]
    )


@sandbox_control.get("/journal")
async def journal(request: Request, since: int = 0) -> list[JournalEntry]:
    """Issue changes from position `since` on (poll with the count already read)."""
    return _state(request).journal[since:]


@sandbox_control.delete("/issues/{issueIdOrKey}")
async def delete_issue(request: Request, key: IssueKey) -> dict[str, list[str]]:
    """Delete an issue and its subtasks (as someone in Jira might): returns the keys deleted."""
    return {"deleted": _state(request).delete_issue(key)}


class IssueMove(BaseModel):
    project: str


@sandbox_control.post("/issues/{issueIdOrKey}/move")
async def move_issue(request: Request, key: IssueKey, move: IssueMove) -> dict[str, str]:
    """Move an issue and its subtasks to another project; the old key keeps answering."""
    return {"key": _state(request).move_issue(key, move.project).key}


@sandbox_control.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    return _state(request).stats()


@sandbox_control.post("/users", status_code=201)
async def add_user(request: Request, user: NewUser) -> dict[str, str]:
    added = _state(request).add_user(**user.model_dump())
    return {"accountId": added.account_id}


@sandbox_control.post("/reset", status_code=204)
async def reset(request: Request) -> Response:
    """Back to the configured users, no issues, zero counts and the initial faults."""
    _state(request).reset()
    return Response(status_code=204)


# --------------------------------------------------------------------------- the app


def create_app(
    *,
    email: str,
    api_token: str,
    users: Sequence[tuple[str, str]] = (),
    projects: tuple[str, ...] = ("HR", "IT"),
    faults: Faults | None = None,
    custom_fields: Iterable[str] = DEFAULT_CUSTOM_FIELDS,
    rate_limits: RateLimits | None = None,
) -> FastAPI:
    """A Jira Cloud simulator. `users` are (email, display name); the caller is `email`.

    `custom_fields` are the `customfield_*` ids that can be set; any other is refused as Jira
    refuses a field that is not on the screen. `rate_limits` (off by default) are Jira's burst
    and per-issue write limits.
    """
    app = FastAPI(
        title="Jira Cloud simulator",
        docs_url="/_sandbox/docs",
        openapi_url="/_sandbox/openapi.json",
        redoc_url=None,
    )
    state = JiraState(
        email=email,
        users=users,
        projects=projects,
        custom_fields=custom_fields,
        faults=faults,
        rate_limits=rate_limits,
    )
    app.state.jira = state
    app.state.jira_credentials = f"{email}:{api_token}".encode()

    def attach_injector(inner: ASGIApp) -> ASGIApp:
        # Starlette builds the middleware stack lazily, on the first request; the state's own
        # injector is put in it so faults set on the state (or over HTTP) take effect.
        state.fault_injector.app = inner
        return state.fault_injector

    def attach_limiter(inner: ASGIApp) -> ASGIApp:
        # Outside the fault injector: a request the limits refuse never reaches the rest.
        state.rate_limiter.app = inner
        return state.rate_limiter

    app.add_middleware(attach_injector)
    app.add_middleware(attach_limiter)

    @app.exception_handler(JiraApiError)
    async def jira_error(_: Request, error: JiraApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    app.include_router(rest_api)
    app.include_router(sandbox_control)
    # Configuration reads (projects, createmeta, fields, statuses, assignable users): doctor's.
    jira_meta.install(app, Renderer, ISSUE_TYPES.values(), STATUSES, rest_api.dependencies)
    return app


def _rate_limited_as(state: JiraState, scope: Scope) -> tuple[str, str | None] | None:
    """The endpoint a request counts against ("METHOD /template") and, for a write to one
    issue, that issue's current key; None for what Jira does not serve (no limit applies)."""
    # The API's own routes (the app's are wrapped per router): the same templates as `calls`.
    found = route_template([*rest_api.routes, *jira_meta.rest_api.routes], scope)
    if found is None:
        return None
    template, path_params = found
    key = path_params.get("issueIdOrKey")
    issue = None
    if key is not None and _is_api_write(scope):
        known = state.find_issue(key)
        issue = known.key if known is not None else key.upper()
    return f"{scope['method']} {template}", issue


async def _unattached(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("a sandbox middleware was used before the app's stack was built")
