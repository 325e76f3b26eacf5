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

from core.errors import ApiError, NotFoundError, RequestRejectedError
from core.http import DEFAULT_TIMEOUT, ApiClient, ErrorBodyParser, send
from core.jira.adf import AdfNode, adf_to_text, text_to_adf
from core.settings import Settings, SettingsError

SERVICE = "Jira"
API = "rest/api/3"
BULK_CREATE_LIMIT = 50  # Jira refuses more issueUpdates per bulk request
SUBTASK_ISSUE_TYPE = "Sub-task"  # company-managed default; team-managed projects call it "Subtask"

IssuePayload = dict[str, Any]


# --------------------------------------------------------------------------- results


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
class JiraUser:
    account_id: str
    display_name: str | None
    email_address: str | None
    active: bool
    account_type: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JiraUser:
        return cls(
            account_id=data["accountId"],
            display_name=data.get("displayName"),
            email_address=data.get("emailAddress"),
            active=bool(data.get("active", True)),
            account_type=data.get("accountType"),
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
        return cls(
            id=str(data["id"]),
            key=data.get("key", ""),
            fields=dict(data.get("fields") or {}),
            properties=dict(data.get("properties") or {}),
        )

    @property
    def summary(self) -> str | None:
        return self.fields.get("summary")

    @property
    def description_text(self) -> str:
        return adf_to_text(self.fields.get("description"))

    @property
    def status(self) -> str | None:
        return (self.fields.get("status") or {}).get("name")

    @property
    def status_category(self) -> str | None:
        return ((self.fields.get("status") or {}).get("statusCategory") or {}).get("key")

    @property
    def labels(self) -> list[str]:
        return list(self.fields.get("labels") or [])

    @property
    def parent_key(self) -> str | None:
        return (self.fields.get("parent") or {}).get("key")

    @property
    def assignee_account_id(self) -> str | None:
        return (self.fields.get("assignee") or {}).get("accountId")


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
    messages = [str(message) for message in body.get("errorMessages") or [] if message]
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
    except ValueError:
        return None


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
    ) -> None:
        super().__init__(
            base_url,
            headers={},
            auth=httpx.BasicAuth(email, api_token),
            transport=transport,
            timeout=timeout,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> JiraClient:
        """The client for the configured Jira; `SettingsError` names any missing setting."""
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
        return cls(base_url, email, token.get_secret_value(), transport=transport, timeout=timeout)

    # ----------------------------------------------------------------- plumbing

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | None] | None = None,
        json: Any = None,
        parse_body: ErrorBodyParser = parse_jira_error,
    ) -> httpx.Response:
        request = self._http.build_request(
            method,
            f"{API}/{path}",
            params={name: value for name, value in (params or {}).items() if value is not None},
            json=json,
        )
        return await send(self._http, SERVICE, request, parse_body)

    # ----------------------------------------------------------------- users

    async def myself(self) -> JiraUser:
        """The account the credentials belong to; a cheap check that URL and token work."""
        return JiraUser.from_json((await self._request("GET", "myself")).json())

    async def find_user_by_email(self, email: str) -> str | None:
        """The accountId of the active human user with exactly this email, if Jira shows it.

        User search matches prefixes of names and emails, and privacy settings can hide an
        email, so only an exact, case-insensitive `emailAddress` match counts.
        """
        response = await self._request("GET", "user/search", params={"query": email})
        wanted = email.strip().casefold()
        for user in response.json():
            address = (user.get("emailAddress") or "").strip().casefold()
            if address == wanted and user.get("accountType") == "atlassian":
                return user["accountId"]
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
        body = (await self._request("POST", "issue", json=payload)).json()
        return CreatedIssue(id=str(body["id"]), key=body["key"])

    async def create_issues_bulk(self, payloads: Sequence[IssuePayload]) -> BulkResult:
        """Create many issues, at most 50 per request; failures are reported per element.

        Jira answers 400 when every element of a request failed; that is read into the result
        too. If a whole request fails (rate limit, timeout) after earlier ones created issues,
        the run stops and the rest are reported failed with that error, so nothing created is
        lost from view; if nothing was created yet, the error is raised as usual.
        """
        result = BulkResult()
        for start in range(0, len(payloads), BULK_CREATE_LIMIT):
            chunk = payloads[start : start + BULK_CREATE_LIMIT]
            try:
                body = await self._create_chunk(chunk)
            except ApiError as error:
                if not result.created:
                    raise
                result.interrupted_by = error
                result.failed.extend(
                    BulkFailure(index, error.status, (error.message,), error.field_errors, error)
                    for index in range(start, len(payloads))
                )
                break
            self._read_bulk_answer(body, start, len(chunk), result)
        result.failed.sort(key=lambda failure: failure.index)
        return result

    async def _create_chunk(self, chunk: Sequence[IssuePayload]) -> dict[str, Any]:
        # An all-failed chunk comes back as 400 with the per-element body; keep that body
        # (the error only holds a truncated copy) so it is read like a partial success.
        all_failed: list[dict[str, Any]] = []

        def parse_body(response: httpx.Response) -> tuple[str, dict[str, str]]:
            body = _json_or_none(response)
            if isinstance(body, dict) and isinstance(body.get("errors"), list):
                all_failed.append(body)
            return parse_jira_error(response)

        try:
            response = await self._request(
                "POST", "issue/bulk", json={"issueUpdates": list(chunk)}, parse_body=parse_body
            )
        except RequestRejectedError as error:
            if error.status == 400 and all_failed:
                return all_failed[0]
            raise
        return response.json()

    @staticmethod
    def _read_bulk_answer(
        body: Mapping[str, Any], start: int, size: int, result: BulkResult
    ) -> None:
        failed_positions = set()
        for item in body.get("errors") or []:
            position = item.get("failedElementNumber")
            if not isinstance(position, int) or not 0 <= position < size:
                raise ApiError(SERVICE, f"bulk create reported an unusable element number: {item}")
            failed_positions.add(position)
            element = item.get("elementErrors") or {}
            result.failed.append(
                BulkFailure(
                    index=start + position,
                    status=item.get("status"),
                    messages=tuple(str(m) for m in element.get("errorMessages") or []),
                    field_errors={str(k): str(v) for k, v in (element.get("errors") or {}).items()},
                )
            )
        # Jira lists the created issues in request order, skipping the failed elements.
        succeeded = [position for position in range(size) if position not in failed_positions]
        issues = body.get("issues") or []
        if len(issues) != len(succeeded):
            raise ApiError(
                SERVICE,
                f"bulk create returned {len(issues)} issues for {len(succeeded)} accepted "
                "elements; cannot tell which is which",
            )
        result.created.extend(
            BulkCreated(index=start + position, id=str(issue["id"]), key=issue["key"])
            for position, issue in zip(succeeded, issues, strict=True)
        )

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
        response = await self._request("GET", f"issue/{_segment(key)}", params=params)
        return Issue.from_json(response.json())

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
        await self._request("PUT", f"issue/{_segment(key)}", json=body)

    async def add_labels(self, key: str, labels: Sequence[str]) -> None:
        """Add labels without replacing the ones people put there."""
        if labels:
            await self.edit_issue(key, update={"labels": [{"add": label} for label in labels]})

    async def add_comment(self, key: str, body: str | AdfNode) -> str:
        """Add a comment (plain text is converted to ADF); returns the comment id."""
        adf = text_to_adf(body) if isinstance(body, str) else body
        response = await self._request("POST", f"issue/{_segment(key)}/comment", json={"body": adf})
        return str(response.json()["id"])

    async def set_issue_property(self, key: str, property_key: str, value: Any) -> None:
        """Set an entity property (any non-empty JSON up to 32 KB). Not JQL-searchable."""
        if value is None:
            raise ValueError("Jira refuses an empty property value; delete the property instead")
        await self._request(
            "PUT", f"issue/{_segment(key)}/properties/{_segment(property_key)}", json=value
        )

    # ----------------------------------------------------------------- workflow

    async def get_transitions(self, key: str) -> list[Transition]:
        """The transitions available to these credentials from the issue's current status."""
        response = await self._request("GET", f"issue/{_segment(key)}/transitions")
        return [
            Transition(
                id=str(item["id"]),
                name=item.get("name", ""),
                to_status=(item.get("to") or {}).get("name", ""),
                to_category=((item.get("to") or {}).get("statusCategory") or {}).get("key"),
            )
            for item in response.json().get("transitions") or []
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
                    f"issue/{_segment(key)}/transitions",
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
        only). Results are eventually consistent: an issue created seconds ago may be missing.
        """
        body: dict[str, Any] = {
            "jql": jql,
            "maxResults": max_results,
            "fields": list(fields) if fields is not None else ["*navigable"],
        }
        if properties:
            body["properties"] = list(properties)
        while True:
            page = (await self._request("POST", "search/jql", json=body)).json()
            for issue in page.get("issues") or []:
                yield issue
            token = page.get("nextPageToken")
            # The last page may omit isLast or the token (JRACLOUD-92184): either ends it.
            if page.get("isLast") is True or not token:
                return
            if token == body.get("nextPageToken"):
                raise ApiError(SERVICE, f"search returned the same page token twice for {jql!r}")
            body["nextPageToken"] = token

    async def search_issues(self, jql: str, max_results: int = 100) -> list[Issue]:
        """Every issue a bounded `jql` finds, with its labels (one request per page)."""
        return [Issue.from_json(issue) async for issue in self.search(jql, ["labels"], max_results)]


def _segment(value: str) -> str:
    """A path segment, escaped so a key or property name cannot change the path."""
    return quote(value, safe="")
