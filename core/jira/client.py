"""Async client for the parts of Jira Cloud REST API v3 this service uses.

It knows HTTP, auth, pagination and Jira's error bodies; every failure surfaces as a
`core.errors` type (through `core.http.send`), so callers decide what to retry. It knows
nothing of Prefect or of onboarding rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypedDict, Unpack
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from core.errors import ApiError, NotFoundError, RequestRejectedError, UnexpectedAnswerError
from core.http import (
    DEFAULT_TIMEOUT,
    ApiClient,
    ErrorBodyParser,
    answer_error,
    read_answer,
    read_json,
    send,
)
from core.jira import answers, meta
from core.jira.adf import AdfNode, adf_to_text, text_to_adf
from core.jira.pace import Governor, JiraCall, Pacer, Rates
from core.settings import Settings, SettingsError

SERVICE = "Jira"
API = "rest/api/3"
BULK_CREATE_LIMIT = 50  # Jira refuses more issueUpdates per bulk request
SUBTASK_ISSUE_TYPE = "Sub-task"  # company-managed default; team-managed projects call it "Subtask"

IssuePayload = dict[str, Any]


# --------------------------------------------------------------------------- results


# Jira reads at most this many issues in one bulk fetch.
MAX_BULK_FETCH = 100


@dataclass(frozen=True)
class CreatedIssue:
    id: str
    key: str


@dataclass(frozen=True)
class BulkCreated:
    """An issue made by a bulk create; `index` is its position in the list passed in."""

    index: int
    id: str
    key: str


@dataclass(frozen=True)
class BulkFailure:
    """An element of a bulk create that Jira refused, or never saw because an earlier chunk failed."""

    index: int
    status: int | None
    messages: tuple[str, ...] = ()
    field_errors: dict[str, str] = field(default_factory=dict)
    error: ApiError | None = None  # set when a whole chunk failed (rate limit, timeout, ...)

    def __str__(self) -> str:
        details = [*self.messages, *(f"{name}: {text}" for name, text in self.field_errors.items())]
        return f"element {self.index} ({self.status}): {'; '.join(details) or 'failed'}"


@dataclass
class BulkResult:
    created: list[BulkCreated] = field(default_factory=list)
    failed: list[BulkFailure] = field(default_factory=list)
    # The error that stopped the run after some issues were already created; None otherwise.
    interrupted_by: ApiError | None = None
    # Issues Jira reports created in an answer too garbled to tell which element each one is
    # (an unusable element number, a count that does not add up): created all the same, so
    # they must be recorded, and the elements of that request are not to be sent again blindly.
    unplaced: list[CreatedIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def key_for(self, index: int) -> str | None:
        return next((item.key for item in self.created if item.index == index), None)


@dataclass(frozen=True)
class Transition:
    id: str
    name: str
    to_status: str
    to_category: str | None  # statusCategory key: "new", "indeterminate" or "done"


@dataclass(frozen=True)
class Comment:
    id: str
    author_account_id: str | None
    body: Any  # ADF, as Jira stored it
    created: str | None

    @property
    def text(self) -> str:
        try:
            return adf_to_text(self.body)
        except (TypeError, AttributeError, ValueError, RecursionError):
            return ""


@dataclass(frozen=True)
class IssueLink:
    """A subtask (or parent) as another issue shows it."""

    key: str
    summary: str | None


@dataclass(frozen=True)
class JiraUser:
    account_id: str
    display_name: str | None
    email_address: str | None
    active: bool
    account_type: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JiraUser:
        return cls.from_answer(answers.USER.validate_python(data))

    @classmethod
    def from_answer(cls, user: answers.UserAnswer) -> JiraUser:
        return cls(
            account_id=user.accountId,
            display_name=user.displayName,
            email_address=user.emailAddress,
            active=user.active is not False,
            account_type=user.accountType,
        )


@dataclass(frozen=True)
class Issue:
    """An issue as Jira returned it, with the fields this service reads most made handy."""

    id: str
    key: str
    fields: dict[str, Any]
    properties: dict[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Issue:
        return cls.from_answer(answers.ISSUE.validate_python(data))

    @classmethod
    def from_answer(cls, issue: answers.IssueAnswer) -> Issue:
        return cls(
            id=issue.id,
            key=issue.key,
            fields=dict(issue.fields or {}),
            properties=dict(issue.properties or {}),
        )

    # `fields` holds whatever Jira puts there (the spec allows any value): each accessor
    # answers None (or no labels) for a value not in the shape it reads.

    @property
    def summary(self) -> str | None:
        return _text(self.fields.get("summary"))

    @property
    def description_text(self) -> str:
        try:
            return adf_to_text(self.fields.get("description"))
        except (TypeError, AttributeError, ValueError, RecursionError):
            return ""

    @property
    def status(self) -> str | None:
        return _text(_member(self.fields.get("status"), "name"))

    @property
    def status_category(self) -> str | None:
        category = _member(self.fields.get("status"), "statusCategory")
        return _text(_member(category, "key"))

    @property
    def labels(self) -> list[str]:
        labels = self.fields.get("labels")
        return (
            [label for label in labels if isinstance(label, str)]
            if isinstance(labels, list)
            else []
        )

    @property
    def parent_key(self) -> str | None:
        return _text(_member(self.fields.get("parent"), "key"))

    @property
    def subtasks(self) -> list[IssueLink]:
        """The subtasks listed in the `subtasks` field (read with the issue, so current)."""
        listed = self.fields.get("subtasks")
        links = []
        for item in listed if isinstance(listed, list) else []:
            key = _text(_member(item, "key"))
            if key:
                links.append(IssueLink(key, _text(_member(_member(item, "fields"), "summary"))))
        return links

    @property
    def assignee_account_id(self) -> str | None:
        return _text(_member(self.fields.get("assignee"), "accountId"))


def _member(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class JiraReadIncomplete(ApiError):
    """Jira could not read some of the issues asked for now (`issueErrors` of a bulk fetch):
    transient, the same read is tried again."""

    transient = True


class TransitionNotAvailableError(RequestRejectedError):
    """The issue's workflow offers no transition to the wanted status from where it is now."""


# --------------------------------------------------------------------------- payloads


class IssueOptions(TypedDict, total=False):
    """The optional parts of an issue, shared by `issue_payload` and `JiraClient.create_issue`.

    `fields` carries custom fields (`customfield_NNNNN`) as Jira expects their values;
    `properties` become entity properties set in the same request.
    """

    labels: Sequence[str]
    fields: Mapping[str, Any] | None
    assignee_account_id: str | None
    parent_key: str | None
    due_date: date | str | None
    properties: Mapping[str, Any] | None


def issue_payload(
    project_key: str,
    issue_type: str,
    summary: str,
    description: str | AdfNode | None = None,
    **options: Unpack[IssueOptions],
) -> IssuePayload:
    """The body of one create (`POST /issue`, or one element of a bulk create)."""
    labels = options.get("labels", ())
    fields = options.get("fields")
    assignee_account_id = options.get("assignee_account_id")
    parent_key = options.get("parent_key")
    due_date = options.get("due_date")
    properties = options.get("properties")
    system: dict[str, Any] = {
        "project": {"key": project_key},
        "issuetype": {"name": issue_type},
        "summary": summary,
    }
    if description is not None:
        system["description"] = (
            text_to_adf(description) if isinstance(description, str) else description
        )
    if labels:
        system["labels"] = list(labels)
    if assignee_account_id:
        system["assignee"] = {"id": assignee_account_id}
    if parent_key:
        system["parent"] = {"key": parent_key}
    if due_date is not None:
        system["duedate"] = due_date.isoformat() if isinstance(due_date, date) else due_date
    clashing = set(system) & set(fields or {})
    if clashing:
        raise ValueError(f"set {sorted(clashing)} through their own arguments, not `fields`")
    payload: IssuePayload = {"fields": {**system, **(fields or {})}}
    if properties:
        payload["properties"] = [{"key": key, "value": value} for key, value in properties.items()]
    return payload


def subtask_payload(
    project_key: str,
    parent_key: str,
    summary: str,
    description: str | AdfNode | None = None,
    *,
    issue_type: str = SUBTASK_ISSUE_TYPE,
    **options: Any,
) -> IssuePayload:
    """A subtask of `parent_key` (which must be in `project_key`); options as `issue_payload`."""
    return issue_payload(
        project_key, issue_type, summary, description, parent_key=parent_key, **options
    )


# --------------------------------------------------------------------------- errors


def parse_jira_error(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """Message and field errors from Jira's `{errorMessages, errors, status}` body.

    Rate-limit pages and gateway errors may be HTML or plain text: an HTML body gives no
    message (the status phrase is used), a short plain-text one is kept as it is.
    """
    body = _json_or_none(response)
    if body is None:
        text = response.text.strip()
        is_html = "html" in response.headers.get("content-type", "") or text.startswith("<")
        return ("" if is_html or len(text) > 300 else text), {}
    if not isinstance(body, dict):
        return "", {}
    listed = body.get("errorMessages")
    messages = [str(message) for message in listed if message] if isinstance(listed, list) else []
    if not messages and isinstance(body.get("message"), str):  # api.atlassian.com gateway form
        messages.append(body["message"])
    errors = body.get("errors")
    field_errors = (
        {str(name): str(text) for name, text in errors.items()} if isinstance(errors, dict) else {}
    )
    return "; ".join(messages), field_errors


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


BULK = "create_issues_bulk"


def _read_bulk_answer(
    response: httpx.Response, body: Any, start: int, size: int, result: BulkResult
) -> UnexpectedAnswerError | None:
    """Read one bulk answer into `result`, item by item; the error when it leaves elements in
    doubt (already recorded as their failures, with every readable issue kept)."""
    problems: list[str] = []
    if not isinstance(body, dict):
        problems.append("the answer is not an object")
        body = {}
    issues: list[answers.CreatedIssueAnswer] = []
    listed = body.get("issues")
    if isinstance(listed, list):
        for item in listed:
            try:
                issues.append(answers.CREATED_ISSUE.validate_python(item))
            except ValidationError:
                problems.append("an issue without a usable id and key")
    elif listed is not None:
        problems.append("`issues` is not a list")
    failures: dict[int, answers.BulkErrorAnswer] = {}
    reported = body.get("errors")
    if isinstance(reported, list):
        for item in reported:
            try:
                failure = answers.BULK_ERROR.validate_python(item)
            except ValidationError:
                problems.append("an unreadable error item")
                continue
            if not 0 <= failure.failedElementNumber < size:
                problems.append(
                    f"element number {failure.failedElementNumber} outside 0-{size - 1}"
                )
                continue
            failures[failure.failedElementNumber] = failure
    elif reported is not None:
        problems.append("`errors` is not a list")
    for position, failure in sorted(failures.items()):
        element = failure.elementErrors or answers.ElementErrors()
        result.failed.append(
            BulkFailure(
                index=start + position,
                status=failure.status,
                messages=tuple(str(m) for m in element.errorMessages or []),
                field_errors={str(k): str(v) for k, v in (element.errors or {}).items()},
            )
        )
    # Jira lists the created issues in request order, skipping the failed elements.
    succeeded = [position for position in range(size) if position not in failures]
    if not problems and len(issues) == len(succeeded):
        result.created.extend(
            BulkCreated(index=start + position, id=issue.id, key=issue.key)
            for position, issue in zip(succeeded, issues, strict=True)
        )
        return None
    if not problems:
        problems.append(f"{len(issues)} issues for {len(succeeded)} accepted elements")
    unique = list(dict.fromkeys(problems))
    doubt = answer_error(
        SERVICE,
        BULK,
        response,
        f"cannot tell which element each created issue is ({'; '.join(unique[:3])}): "
        f"{len(issues)} issues reported created, {len(succeeded)} elements may exist",
    )
    result.unplaced.extend(CreatedIssue(id=issue.id, key=issue.key) for issue in issues)
    result.failed.extend(
        BulkFailure(start + position, response.status_code, (doubt.message,), error=doubt)
        for position in succeeded
    )
    return doubt


def _stop(result: BulkResult, error: ApiError, indexes: range) -> None:
    """The run stops at `error`: the elements of `indexes` are reported failed with it."""
    result.interrupted_by = error
    result.failed.extend(
        BulkFailure(index, error.status, (error.message,), error.field_errors, error)
        for index in indexes
    )


# --------------------------------------------------------------------------- client


class JiraClient(ApiClient):
    """`async with JiraClient(base_url, email, api_token) as jira: await jira.myself()`.

    `base_url` is the site (`https://acme.atlassian.net`) or the gateway form
    (`https://api.atlassian.com/ex/jira/<cloudId>`); any path prefix is kept.
    """

    def __init__(
        self,
        base_url: str,
        email: str,
        api_token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        pacer: Pacer | None = None,
    ) -> None:
        super().__init__(
            base_url,
            headers={},
            auth=httpx.BasicAuth(email, api_token),
            transport=transport,
            timeout=timeout,
        )
        # Every request waits its turn here (`core.jira.pace`); without one given, this
        # process's own governor at the default rates.
        self.pacer: Pacer = pacer or Governor()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        pacer: Pacer | None = None,
    ) -> JiraClient:
        """The client for the configured Jira; `SettingsError` names any missing setting.

        `pacer` (a flow run's: shared through the store) defaults to a governor of this process
        at the configured rates (`JIRA_RATE_*`)."""
        settings.require("jira_email", "jira_api_token")
        base_url, email, token = (
            settings.jira_api_base,
            settings.jira_email,
            settings.jira_api_token,
        )
        if not base_url:
            raise SettingsError("JIRA_BASE_URL or JIRA_CLOUD_ID is not set (see .env.example)")
        if email is None or token is None:  # already refused by require(); narrows the types
            raise SettingsError("JIRA_EMAIL and JIRA_API_TOKEN are required")
        return cls(
            base_url,
            email,
            token.get_secret_value(),
            transport=transport,
            timeout=timeout,
            pacer=pacer or Governor(Rates.from_settings(settings)),
        )

    # ----------------------------------------------------------------- plumbing

    async def _request(
        self,
        method: str,
        endpoint: str,
        *,
        path: Mapping[str, str] | None = None,
        params: Mapping[str, str | int | None] | None = None,
        json: Any = None,
        parse_body: ErrorBodyParser = parse_jira_error,
    ) -> httpx.Response:
        """One request to `endpoint` (a template under the API root, `issue/{issueIdOrKey}`,
        its `path` parameters escaped into it), paced by the governor: Jira limits each
        endpoint and method, and writes to one issue (any method but GET on an issue's path)."""
        issue_key = (path or {}).get("issueIdOrKey") if method != "GET" else None
        call = JiraCall(method, endpoint, issue_key)
        escaped = {name: _segment(value) for name, value in (path or {}).items()}
        request = self._http.build_request(
            method,
            f"{API}/{endpoint.format(**escaped)}",
            params={name: value for name, value in (params or {}).items() if value is not None},
            json=json,
        )
        await self.pacer.before(call)
        try:
            response = await send(self._http, SERVICE, request, parse_body)
        except ApiError as error:
            await self.pacer.after(call, error)
            raise
        await self.pacer.after(call, response)
        return response

    # ----------------------------------------------------------------- users

    async def myself(self) -> JiraUser:
        """The account the credentials belong to; a cheap check that URL and token work."""
        response = await self._request("GET", "myself")
        return JiraUser.from_answer(read_answer(SERVICE, "myself", response, answers.USER))

    async def find_user_by_email(self, email: str) -> str | None:
        """The accountId of the active human user with exactly this email, if Jira shows it.

        User search matches prefixes of names and emails, and privacy settings can hide an
        email, so only an exact, case-insensitive `emailAddress` match counts.
        """
        response = await self._request("GET", "user/search", params={"query": email})
        users = read_answer(SERVICE, "find_user_by_email", response, answers.USER_LIST)
        wanted = email.strip().casefold()
        for user in users:
            address = (user.emailAddress or "").strip().casefold()
            if address == wanted and user.accountType == "atlassian":
                if user.accountId is None:
                    raise answer_error(
                        SERVICE,
                        "find_user_by_email",
                        response,
                        "the matching user has no accountId",
                    )
                return user.accountId
        return None

    # ----------------------------------------------------------------- issues

    async def create_issue(
        self,
        project_key: str,
        issue_type: str,
        summary: str,
        description: str | AdfNode | None = None,
        **options: Unpack[IssueOptions],
    ) -> CreatedIssue:
        """Create one issue. A timeout does not mean it was not created: check before retrying."""
        payload = issue_payload(project_key, issue_type, summary, description, **options)
        response = await self._request("POST", "issue", json=payload)
        created = read_answer(
            SERVICE,
            "create_issue",
            response,
            answers.CREATED_ISSUE,
            hint="; the issue may have been created all the same",
        )
        return CreatedIssue(id=created.id, key=created.key)

    async def create_issues_bulk(self, payloads: Sequence[IssuePayload]) -> BulkResult:
        """Create many issues, at most 50 per request; failures are reported per element.

        Jira answers 400 when every element of a request failed; that is read into the result
        too. If a whole request fails (rate limit, timeout) after earlier ones created issues,
        the run stops and the rest are reported failed with that error, so nothing created is
        lost from view; if nothing was created yet, the error is raised as usual.

        An answer that cannot be read in full still gives all it can: each issue it names with
        an id and a key is reported, in `created` when its element is known, else in
        `unplaced`; the elements it leaves in doubt (they may exist) fail with an
        `UnexpectedAnswerError` and the run stops there (`interrupted_by`). Only when no issue
        at all was reported created is that error raised instead.
        """
        result = BulkResult()
        for start in range(0, len(payloads), BULK_CREATE_LIMIT):
            chunk = payloads[start : start + BULK_CREATE_LIMIT]
            try:
                response, body = await self._create_chunk(chunk)
            except ApiError as error:
                if not (result.created or result.unplaced):
                    raise
                _stop(result, error, range(start, len(payloads)))
                break
            doubt = _read_bulk_answer(response, body, start, len(chunk), result)
            if doubt is not None:
                if not (result.created or result.unplaced):
                    raise doubt
                _stop(result, doubt, range(start + len(chunk), len(payloads)))
                break
        result.failed.sort(key=lambda failure: failure.index)
        return result

    async def _create_chunk(self, chunk: Sequence[IssuePayload]) -> tuple[httpx.Response, Any]:
        # An all-failed chunk comes back as 400 with the per-element body; keep that body
        # (the error only holds a truncated copy) so it is read like a partial success.
        all_failed: list[tuple[httpx.Response, Any]] = []

        def parse_body(response: httpx.Response) -> tuple[str, dict[str, str]]:
            body = _json_or_none(response)
            if isinstance(body, dict) and (
                isinstance(body.get("errors"), list) or isinstance(body.get("issues"), list)
            ):
                all_failed.append((response, body))
            return parse_jira_error(response)

        try:
            response = await self._request(
                "POST", "issue/bulk", json={"issueUpdates": list(chunk)}, parse_body=parse_body
            )
        except RequestRejectedError as error:
            if error.status == 400 and all_failed:
                return all_failed[0]
            raise
        body = read_json(
            SERVICE,
            BULK,
            response,
            hint="; the issues of this request may have been created all the same",
        )
        return response, body

    async def get_issue(
        self,
        key: str,
        fields: Sequence[str] | None = None,
        properties: Sequence[str] | None = None,
    ) -> Issue:
        """One issue; `fields` defaults to all of them, `properties` to none."""
        params = {
            "fields": ",".join(fields) if fields else None,
            "properties": ",".join(properties) if properties else None,
        }
        response = await self._request(
            "GET", "issue/{issueIdOrKey}", path={"issueIdOrKey": key}, params=params
        )
        return Issue.from_answer(read_answer(SERVICE, "get_issue", response, answers.ISSUE))

    async def get_issues(self, keys: Sequence[str], fields: Sequence[str]) -> list[Issue]:
        """The issues Jira has among `keys` (at most `MAX_BULK_FETCH`), read by key, not
        searched: as consistent as `get_issue`, one request for all. A key Jira has no issue
        for is left out; one it cannot read now raises `JiraReadIncomplete` (transient)."""
        if len(keys) > MAX_BULK_FETCH:
            raise ValueError(f"at most {MAX_BULK_FETCH} issues per bulk fetch, not {len(keys)}")
        response = await self._request(
            "POST", "issue/bulkfetch", json={"issueIdsOrKeys": list(keys), "fields": list(fields)}
        )
        answer = read_answer(SERVICE, "get_issues", response, answers.BULK_FETCH)
        if answer.issueErrors:
            raise JiraReadIncomplete(
                SERVICE, f"Jira could not read {len(answer.issueErrors)} of {len(keys)} issues now"
            )
        return [Issue.from_answer(issue) for issue in answer.issues or []]

    async def current_key(self, key: str) -> str | None:
        """The key the issue answers under now (Jira answers a moved issue's old key with its
        new one); None when it does not answer at all (deleted, or hidden from this account)."""
        try:
            return (await self.get_issue(key, fields=["labels"])).key
        except NotFoundError:
            return None

    async def edit_issue(
        self,
        key: str,
        fields: Mapping[str, Any] | None = None,
        update: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        """Set `fields` outright and apply `update` operations (`add`, `remove`, `set`)."""
        if not fields and not update:
            raise ValueError("nothing to edit: pass fields or update")
        body: dict[str, Any] = {}
        if fields:
            body["fields"] = dict(fields)
        if update:
            body["update"] = dict(update)
        await self._request("PUT", "issue/{issueIdOrKey}", path={"issueIdOrKey": key}, json=body)

    async def add_labels(self, key: str, labels: Sequence[str]) -> None:
        """Add labels without replacing the ones people put there."""
        if labels:
            await self.edit_issue(key, update={"labels": [{"add": label} for label in labels]})

    async def add_comment(self, key: str, body: str | AdfNode) -> str:
        """Add a comment (plain text is converted to ADF); returns the comment id."""
        adf = text_to_adf(body) if isinstance(body, str) else body
        response = await self._request(
            "POST", "issue/{issueIdOrKey}/comment", path={"issueIdOrKey": key}, json={"body": adf}
        )
        return read_answer(SERVICE, "add_comment", response, answers.COMMENT).id

    async def get_comments(
        self, key: str, *, newest_first: bool = True, max_results: int = 50
    ) -> list[Comment]:
        """One page of the issue's comments, the newest first unless asked otherwise.

        Read with the issue, so current (unlike a search): a comment just added is there.
        """
        response = await self._request(
            "GET",
            "issue/{issueIdOrKey}/comment",
            path={"issueIdOrKey": key},
            params={
                "orderBy": "-created" if newest_first else "created",
                "maxResults": max_results,
            },
        )
        page = read_answer(SERVICE, "get_comments", response, answers.COMMENT_PAGE)
        return [
            Comment(
                id=item.id,
                author_account_id=item.author.accountId if item.author else None,
                body=item.body,
                created=item.created,
            )
            for item in page.comments or []
        ]

    async def set_issue_property(self, key: str, property_key: str, value: Any) -> None:
        """Set an entity property (any non-empty JSON up to 32 KB). Not JQL-searchable."""
        if value is None:
            raise ValueError("Jira refuses an empty property value; delete the property instead")
        await self._request(
            "PUT",
            "issue/{issueIdOrKey}/properties/{propertyKey}",
            path={"issueIdOrKey": key, "propertyKey": property_key},
            json=value,
        )

    # ----------------------------------------------------------------- workflow

    async def get_transitions(self, key: str) -> list[Transition]:
        """The transitions available to these credentials from the issue's current status."""
        response = await self._request(
            "GET", "issue/{issueIdOrKey}/transitions", path={"issueIdOrKey": key}
        )
        answer = read_answer(SERVICE, "get_transitions", response, answers.TRANSITIONS)
        return [
            Transition(
                id=item.id,
                name=item.name or "",
                to_status=(item.to.name if item.to else None) or "",
                to_category=(
                    item.to.statusCategory.key if item.to and item.to.statusCategory else None
                ),
            )
            for item in answer.transitions or []
        ]

    async def transition_to(self, key: str, status_name: str) -> bool:
        """Move the issue to the status named `status_name` (any case).

        Transition ids differ between workflows, so the transition is found by its target.
        Returns False when the issue already is in that status; raises
        `TransitionNotAvailableError`, naming the reachable statuses, when it cannot get there.
        """
        wanted = status_name.casefold()
        transitions = await self.get_transitions(key)
        for transition in transitions:
            if transition.to_status.casefold() == wanted:
                await self._request(
                    "POST",
                    "issue/{issueIdOrKey}/transitions",
                    path={"issueIdOrKey": key},
                    json={"transition": {"id": transition.id}},
                )
                return True
        current = (await self.get_issue(key, fields=["status"])).status
        if current is not None and current.casefold() == wanted:
            return False
        targets = ", ".join(sorted({t.to_status for t in transitions})) or "none"
        raise TransitionNotAvailableError(
            SERVICE,
            f"{key} cannot move from {current!r} to {status_name!r}; reachable statuses: {targets}",
        )

    # ----------------------------------------------------------------- search

    async def search(
        self,
        jql: str,
        fields: Sequence[str] | None = None,
        max_results: int = 100,
        *,
        properties: Sequence[str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every issue matching a bounded `jql`, page by page (`POST /search/jql`).

        `fields=None` asks for Jira's navigable fields (the endpoint alone would return ids
        only). Results are eventually consistent: an issue created or changed seconds ago may
        be missing or stale.
        """
        body: dict[str, Any] = {
            "jql": jql,
            "maxResults": max_results,
            "fields": list(fields) if fields is not None else ["*navigable"],
        }
        if properties:
            body["properties"] = list(properties)
        while True:
            response = await self._request("POST", "search/jql", json=body)
            page = read_answer(SERVICE, "search", response, answers.SEARCH_PAGE)
            for issue in page.issues or []:
                # The id, the key and a `fields` object are always there for the caller.
                yield {
                    **(issue.model_extra or {}),
                    "id": issue.id,
                    "key": issue.key,
                    "fields": dict(issue.fields or {}),
                    **({"properties": issue.properties} if issue.properties is not None else {}),
                }
            token = page.nextPageToken
            # The last page may omit isLast or the token (JRACLOUD-92184): either ends it.
            if page.isLast is True or not token:
                return
            if token == body.get("nextPageToken"):
                raise answer_error(
                    SERVICE, "search", response, f"the same page token twice for {jql!r}"
                )
            body["nextPageToken"] = token

    async def search_issues(self, jql: str, max_results: int = 100) -> list[Issue]:
        """Every issue a bounded `jql` finds, with its labels (one request per page)."""
        return [
            Issue(issue["id"], issue["key"], issue["fields"], issue.get("properties") or {})
            async for issue in self.search(jql, ["labels"], max_results)
        ]

    # ----------------------------------------------------------------- configuration

    # Read by `doctor` to hold the rules against the site; each needs only Browse projects
    # (createmeta also Create issues) in the projects the rules name.

    async def get_project(self, key: str) -> meta.Project | None:
        """The project with this key or id; None when Jira has none this account may browse."""
        try:
            response = await self._request(
                "GET", "project/{projectIdOrKey}", path={"projectIdOrKey": key}
            )
        except NotFoundError:
            return None
        return read_answer(SERVICE, "get_project", response, meta.PROJECT).read()

    async def list_projects(self) -> list[meta.Project]:
        """Every project this account may browse (`GET /project/search`, page by page)."""
        pages = self._offset_pages("list_projects", "project/search", meta.PROJECT_PAGE)
        return [item.read() async for page in pages for item in page.items()]

    async def create_issue_types(self, project: str) -> list[meta.IssueTypeInfo]:
        """The issue types this account may create in the project (createmeta)."""
        pages = self._offset_pages(
            "create_issue_types",
            "issue/createmeta/{projectIdOrKey}/issuetypes",
            meta.ISSUE_TYPES_PAGE,
            path={"projectIdOrKey": project},
        )
        return [item.read() async for page in pages for item in page.items()]

    async def create_fields(self, project: str, issue_type_id: str) -> list[meta.CreateField]:
        """The fields of the create screen of one issue type in the project (createmeta)."""
        pages = self._offset_pages(
            "create_fields",
            "issue/createmeta/{projectIdOrKey}/issuetypes/{issueTypeId}",
            meta.CREATE_FIELDS_PAGE,
            path={"projectIdOrKey": project, "issueTypeId": issue_type_id},
        )
        return [item.read() async for page in pages for item in page.items()]

    async def list_fields(self) -> list[meta.JiraField]:
        """Every system and custom field this account can see (`GET /field`)."""
        response = await self._request("GET", "field")
        answer = read_answer(SERVICE, "list_fields", response, meta.FIELD_LIST)
        return [item.read() for item in answer]

    async def project_statuses(self, project: str) -> list[meta.IssueTypeStatuses]:
        """The statuses of each issue type's workflow in the project."""
        response = await self._request(
            "GET", "project/{projectIdOrKey}/statuses", path={"projectIdOrKey": project}
        )
        answer = read_answer(SERVICE, "project_statuses", response, meta.PROJECT_STATUSES)
        return [item.read() for item in answer]

    async def is_assignable(self, project: str, account_id: str) -> bool:
        """Whether the account may be assigned new issues in the project."""
        response = await self._request(
            "GET", "user/assignable/search", params={"project": project, "accountId": account_id}
        )
        users = read_answer(SERVICE, "is_assignable", response, answers.USER_LIST)
        return any(user.accountId == account_id for user in users)

    async def _offset_pages(
        self,
        operation: str,
        endpoint: str,
        shape: TypeAdapter[meta.PageT],
        *,
        path: Mapping[str, str] | None = None,
    ) -> AsyncIterator[meta.PageT]:
        """Each page of an offset-paged read (`startAt`/`maxResults`), until Jira says it is the
        last, the total is reached, or a page comes back short or empty."""
        start = 0
        for _ in range(meta.MAX_PAGES):
            response = await self._request(
                "GET", endpoint, path=path, params={"startAt": start, "maxResults": meta.PAGE_SIZE}
            )
            page = read_answer(SERVICE, operation, response, shape)
            yield page
            if page.is_last(start):
                return
            start += len(page.items())
        raise UnexpectedAnswerError(
            SERVICE, f"more than {meta.MAX_PAGES} pages of {endpoint}", operation=operation
        )


def _segment(value: str) -> str:
    """A path segment, escaped so a key or property name cannot change the path."""
    return quote(value, safe="")
