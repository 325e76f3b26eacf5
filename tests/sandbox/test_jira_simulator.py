"""The Jira simulator keeps Jira's rules: JQL subset, workflow, auth, validation, faults, 410.

Most checks go through `JiraClient` (so the spec contract applies); `raw` is a plain client for
what our client must never send (the removed search, invalid transitions, bad auth).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from core.errors import (
    ApiError,
    ApiTimeoutError,
    GoneError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    TransportError,
)
from core.http import send
from core.jira import (
    JiraClient,
    adf_to_text,
    issue_payload,
    parse_jira_error,
    subtask_payload,
    text_to_adf,
)
from sandbox.faults import Faults
from sandbox.jira import GONE_SEARCH, ISSUE_TYPES, UNKNOWN_FIELD, create_app, rest_api
from sandbox.jira_limits import RateLimits
from tests.contract import SpecContract
from tests.fixtures_jira import JIRA_API_TOKEN, JIRA_EMAIL, JiraSandbox, jira_account

ANA = jira_account("ana.garcia@example.com")
LI = jira_account("li.lei@example.com")


@pytest.fixture
async def raw(jira_sim: JiraSandbox) -> AsyncIterator[httpx.AsyncClient]:
    auth = httpx.BasicAuth(JIRA_EMAIL, JIRA_API_TOKEN)
    async with httpx.AsyncClient(base_url=jira_sim.url, auth=auth) as client:
        yield client


async def keys(jira: JiraClient, jql: str) -> list[str]:
    return [issue["key"] async for issue in jira.search(jql, fields=["summary"])]


# --------------------------------------------------------------------------- the API surface


def test_every_simulated_operation_is_in_the_spec() -> None:
    operations = SpecContract.load("jira-platform-v3.json").served_operations(rest_api)
    assert len(operations) == 16
    for operation in operations:
        # Only the removed search is simulated while deprecated: to answer 410 as Jira does.
        assert bool(operation.definition.get("deprecated")) == (
            operation.template == "/rest/api/3/search"
        )


# --------------------------------------------------------------------------- JQL


@pytest.fixture
def issues(jira_sim: JiraSandbox) -> None:
    """HR-1..4 and IT-1..2 in a spread of labels, parents, assignees and statuses.

    Made in-process (creation is tested through the API elsewhere) to keep 30 cases quick.
    """
    state = jira_sim.state
    task, subtask = ISSUE_TYPES["task"], ISSUE_TYPES["sub-task"]
    state.add_issue("HR", task, "one", labels=["pf-employee-1", "onboarding"], assignee=ANA)
    state.add_issue("HR", subtask, "two", labels=["pf-employee-1"], parent_key="HR-1")
    state.add_issue("HR", task, "three", labels=["offboarding"], assignee=ANA, status="In Progress")
    state.add_issue("HR", task, "four", status="Done")
    state.add_issue("IT", task, "five", labels=["pf-employee-1"], assignee=LI)
    state.add_issue("IT", subtask, "six", parent_key="IT-1", assignee=ANA, status="Cancelled")


@pytest.mark.usefixtures("issues")
@pytest.mark.parametrize(
    ("jql", "expected"),
    [
        ("project = HR ORDER BY key", ["HR-1", "HR-2", "HR-3", "HR-4"]),
        ("project = hr AND labels = pf-employee-1 ORDER BY key", ["HR-1", "HR-2"]),
        ("labels = pf-employee-1 ORDER BY key", ["HR-1", "HR-2", "IT-1"]),
        ("labels in (onboarding, offboarding) ORDER BY key", ["HR-1", "HR-3"]),
        ("key in (HR-2, it-1) ORDER BY key", ["HR-2", "IT-1"]),
        ("parent = HR-1", ["HR-2"]),
        (
            "project in (HR, IT) AND statusCategory != Done ORDER BY key",
            ["HR-1", "HR-2", "HR-3", "IT-1"],
        ),
        ("assignee = {ana} AND statusCategory != Done ORDER BY key", ["HR-1", "HR-3"]),
        ("assignee = {ana} ORDER BY key", ["HR-1", "HR-3", "IT-2"]),
        # != and NOT IN never match an empty field (HR-4 has no labels), as in Jira.
        ("project = HR AND labels != onboarding ORDER BY key", ["HR-2", "HR-3"]),
        ("project = HR AND labels not in (pf-employee-1) ORDER BY key", ["HR-3"]),
        ('project = "HR" AND status = "In Progress"', ["HR-3"]),
        ("statusCategory = done ORDER BY key", ["HR-4", "IT-2"]),
        ("issuetype = Sub-task ORDER BY key", ["HR-2", "IT-2"]),
        ("project = HR ORDER BY key DESC", ["HR-4", "HR-3", "HR-2", "HR-1"]),
        ("project = HR", ["HR-4", "HR-3", "HR-2", "HR-1"]),  # default: newest first
        ("labels = nobody-has-this", []),
    ],
)
async def test_jql_subset(jira: JiraClient, jql: str, expected: list[str]) -> None:
    assert await keys(jira, jql.format(ana=ANA)) == expected


@pytest.mark.usefixtures("issues")
@pytest.mark.parametrize(
    ("jql", "message"),
    [
        ("", "Unbounded JQL"),
        ("ORDER BY key", "Unbounded JQL"),
        ("project = HR OR project = IT", "OR"),
        ("summary ~ onboarding", "field 'summary'"),
        ("project = HR AND created >= -1d", "field 'created'"),
        ("project = NOPE", "The value 'NOPE' does not exist for the field 'project'"),
        ("key in (HR-1, HR-99)", "An issue with key 'HR-99' does not exist"),
        ("status = Closed", "The value 'Closed' does not exist for the field 'status'"),
        ("project = HR ORDER BY summary", "ORDER BY summary"),
        ("project = HR AND", "ends unexpectedly"),
        ("labels in (a, b", "ends unexpectedly"),
        ("project HR", "operator 'HR'"),
    ],
)
async def test_unsupported_or_wrong_jql_is_a_400(jira: JiraClient, jql: str, message: str) -> None:
    with pytest.raises(RequestRejectedError) as caught:
        await keys(jira, jql)
    assert caught.value.status == 400
    assert message in caught.value.message


async def test_search_pages_are_capped_and_tokens_belong_to_their_query(
    jira: JiraClient, jira_sim: JiraSandbox, raw: httpx.AsyncClient
) -> None:
    task = ISSUE_TYPES["task"]
    for n in range(150):
        jira_sim.state.add_issue("IT", task, f"bulk {n}")

    found = [
        issue async for issue in jira.search("project = IT", fields=["summary"], max_results=500)
    ]
    assert len(found) == 150
    assert jira_sim.state.calls["POST /rest/api/3/search/jql"] == 2  # 100 + 50

    first = (await raw.post("/rest/api/3/search/jql", json={"jql": "project = IT"})).json()
    assert first["isLast"] is False
    assert first["issues"][0] == {"id": first["issues"][0]["id"]}  # default fields: the id only
    token = first["nextPageToken"]
    reused = await raw.post(
        "/rest/api/3/search/jql", json={"jql": "project = HR", "nextPageToken": token}
    )
    assert reused.status_code == 400
    assert "next page token" in reused.json()["errorMessages"][0]


# --------------------------------------------------------------------------- workflow


async def test_workflow(jira: JiraClient, raw: httpx.AsyncClient) -> None:
    created = await jira.create_issue("HR", "Task", "walk the workflow")

    async def targets() -> list[tuple[str, str, str | None]]:
        return [(t.id, t.to_status, t.to_category) for t in await jira.get_transitions(created.key)]

    assert await targets() == [("21", "In Progress", "indeterminate"), ("41", "Cancelled", "done")]
    refused = await raw.post(
        f"/rest/api/3/issue/{created.key}/transitions", json={"transition": {"id": "31"}}
    )
    assert refused.status_code == 400
    assert refused.json() == {
        "errorMessages": ["Transition id '31' is not valid for this issue."],
        "errors": {},
    }

    await jira.transition_to(created.key, "In Progress")
    assert await targets() == [("31", "Done", "done"), ("41", "Cancelled", "done")]
    await jira.transition_to(created.key, "Done")
    assert await targets() == []
    issue = await jira.get_issue(created.key, fields=["status"])
    assert (issue.status, issue.status_category) == ("Done", "done")


async def test_cancel_with_a_comment_in_the_same_transition(
    jira: JiraClient, jira_sim: JiraSandbox, raw: httpx.AsyncClient
) -> None:
    created = await jira.create_issue("HR", "Task", "to cancel")
    answer = await raw.post(
        f"/rest/api/3/issue/{created.key}/transitions",
        json={
            "transition": {"id": "41"},
            "update": {"comment": [{"add": {"body": text_to_adf("Hire withdrawn")}}]},
        },
    )
    assert answer.status_code == 204
    stored = jira_sim.state.issues[created.key]
    assert stored.status == "Cancelled"
    assert [comment.body for comment in stored.comments] == [text_to_adf("Hire withdrawn")]
    assert await jira.get_transitions(created.key) == []


# --------------------------------------------------------------------------- auth and removed search


@pytest.mark.parametrize(
    "auth", [None, httpx.BasicAuth(JIRA_EMAIL, "wrong"), httpx.BasicAuth("x@y.z", JIRA_API_TOKEN)]
)
async def test_requests_without_the_right_credentials_get_401(
    jira_sim: JiraSandbox, auth: httpx.BasicAuth | None
) -> None:
    async with httpx.AsyncClient(base_url=jira_sim.url, auth=auth) as client:
        answer = await client.get("/rest/api/3/myself")
        control = await client.get("/_sandbox/faults")
    assert answer.status_code == 401
    assert answer.json() == {
        "errorMessages": ["Client must be authenticated to access this resource."],
        "errors": {},
    }
    assert control.status_code == 200  # the sandbox's own controls need no credentials


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_old_search_is_gone(raw: httpx.AsyncClient, method: str) -> None:
    request = (
        raw.build_request("GET", "/rest/api/3/search", params={"jql": "project = HR"})
        if method == "GET"
        else raw.build_request("POST", "/rest/api/3/search", json={"jql": "project = HR"})
    )
    with pytest.raises(GoneError) as caught:
        await send(raw, "Jira", request, parse_jira_error)
    assert caught.value.status == 410
    assert caught.value.message == GONE_SEARCH
    assert caught.value.body is not None
    assert '"errors":{}' in caught.value.body.replace(" ", "")


# --------------------------------------------------------------------------- validation


ELEMENT_ERRORS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "no summary",
        {"fields": {"project": {"key": "HR"}, "issuetype": {"name": "Task"}}},
        "summary",
        "summary",
    ),
    ("unknown project", issue_payload("XX", "Task", "x"), "project", "project"),
    ("unknown type", issue_payload("HR", "Story", "x"), "issuetype", "issue type"),
    ("subtask without parent", issue_payload("HR", "Sub-task", "x"), "parentId", "hierarchy"),
    ("subtask of a subtask", subtask_payload("HR", "HR-2", "x"), "parentId", "hierarchy"),
    (
        "task under a task",
        issue_payload("HR", "Task", "x", parent_key="HR-1"),
        "parentId",
        "hierarchy",
    ),
    (
        "parent elsewhere",
        subtask_payload("IT", "HR-1", "x"),
        "project",
        "same project as the parent",
    ),
    ("missing parent", subtask_payload("HR", "HR-404", "x"), "parent", "HR-404"),
    (
        "unknown assignee",
        issue_payload("HR", "Task", "x", assignee_account_id="nobody"),
        "assignee",
        "nobody",
    ),
    (
        "inactive assignee",
        issue_payload("HR", "Task", "x", assignee_account_id="{gone}"),
        "assignee",
        "cannot be assigned",
    ),
    (
        "unknown field",
        issue_payload("HR", "Task", "x", fields={"customfield_99999": 1}),
        "customfield_99999",
        UNKNOWN_FIELD.format("customfield_99999"),
    ),
    (
        "system field not on screen",
        issue_payload("HR", "Task", "x", fields={"priority": {"name": "High"}}),
        "priority",
        "not on the appropriate screen",
    ),
    (
        "text description",
        {"fields": {**issue_payload("HR", "Task", "x")["fields"], "description": "plain"}},
        "description",
        "Atlassian Document",
    ),
    (
        "empty text node",
        issue_payload(
            "HR",
            "Task",
            "x",
            {
                "type": "doc",
                "version": 1,
                "content": [{"type": "paragraph", "content": [{"type": "text", "text": ""}]}],
            },
        ),
        "description",
        "must not be empty",
    ),
    (
        "label with a space",
        issue_payload("HR", "Task", "x", labels=["two words"]),
        "labels",
        "contains spaces",
    ),
    (
        "bad due date",
        issue_payload("HR", "Task", "x", due_date="02/09/2025"),
        "duedate",
        "02/09/2025",
    ),
]


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [case[1:] for case in ELEMENT_ERRORS],
    ids=[case[0] for case in ELEMENT_ERRORS],
)
async def test_creates_that_jira_refuses(
    jira: JiraClient, jira_sim: JiraSandbox, payload: dict[str, Any], field: str, message: str
) -> None:
    await jira.create_issue("HR", "Task", "HR-1")
    await jira.create_issue("HR", "Sub-task", "HR-2", parent_key="HR-1")
    gone = jira_sim.state.add_user("gone@example.com", "Gone", active=False)
    payload = copy.deepcopy(payload)
    fields = payload["fields"]
    if fields.get("assignee") == {"id": "{gone}"}:
        fields["assignee"] = {"id": gone.account_id}

    result = await jira.create_issues_bulk([payload])  # one element: refused as a whole (400)

    [failure] = result.failed
    assert field in failure.field_errors, failure
    assert message in failure.field_errors[field]
    assert len(jira_sim.state.issues) == 2  # nothing half-made


async def test_epic_may_parent_a_task_and_registered_custom_fields_are_accepted(
    jira: JiraClient,
) -> None:
    epic = await jira.create_issue("IT", "Epic", "Equipment")
    task = await jira.create_issue(
        "IT", "task", "Laptop", parent_key=epic.key, fields={"customfield_10059": {"value": "x"}}
    )
    issue = await jira.get_issue(task.key)
    assert issue.parent_key == epic.key
    assert issue.fields["customfield_10059"] == {"value": "x"}
    assert (await jira.get_issue(epic.key)).fields["subtasks"][0]["key"] == task.key


async def test_custom_fields_are_configurable() -> None:
    app = create_app(
        email=JIRA_EMAIL, api_token=JIRA_API_TOKEN, custom_fields={"customfield_20000"}
    )
    transport = httpx.ASGITransport(app=app)
    async with JiraClient(
        "http://jira.test", JIRA_EMAIL, JIRA_API_TOKEN, transport=transport
    ) as jira:
        await jira.create_issue("HR", "Task", "x", fields={"customfield_20000": "ok"})
        with pytest.raises(RequestRejectedError, match="customfield_10050"):
            await jira.create_issue("HR", "Task", "x", fields={"customfield_10050": "no"})


async def test_bulk_refuses_more_than_fifty(raw: httpx.AsyncClient) -> None:
    payloads = [issue_payload("HR", "Task", f"t{n}") for n in range(51)]
    answer = await raw.post("/rest/api/3/issue/bulk", json={"issueUpdates": payloads})
    assert answer.status_code == 400
    assert "50" in answer.json()["errorMessages"][0]


# --------------------------------------------------------------------------- users


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("ana", {"Ana García", "Ana García López"}),
        ("garcía", {"Ana García", "Ana García López"}),
        ("ana.garcia@", {"Ana García"}),
        ("ana.garcia.l", {"Ana García López"}),
        ("ZOË", {"Zoë Ñúñez-Łukasz"}),
        ("李", {"李雷"}),
        ("nobody", set()),
    ],
)
async def test_user_search_matches_prefixes_of_active_users(
    raw: httpx.AsyncClient, jira_sim: JiraSandbox, query: str, expected: set[str]
) -> None:
    jira_sim.state.add_user("ana.old@example.com", "Ana Old", active=False)
    answer = await raw.get("/rest/api/3/user/search", params={"query": query})
    assert {user["displayName"] for user in answer.json()} == expected


async def test_user_search_needs_a_query(raw: httpx.AsyncClient) -> None:
    answer = await raw.get("/rest/api/3/user/search")
    assert answer.status_code == 400


# --------------------------------------------------------------------------- faults


async def test_error_rate_one_gives_429_with_retry_after(
    jira: JiraClient, jira_sim: JiraSandbox, raw: httpx.AsyncClient
) -> None:
    put = await raw.put("/_sandbox/faults", json={"error_rate": 1, "retry_after": "4"})
    assert put.status_code == 200
    assert (await raw.get("/_sandbox/faults")).json()["error_rate"] == 1

    with pytest.raises(RateLimitedError) as caught:
        await jira.create_issue("HR", "Task", "x")
    assert caught.value.retry_after == 4
    assert caught.value.reason == "jira-burst-based"
    stats = (await raw.get("/_sandbox/stats")).json()
    assert stats["faults_injected"] == 1
    assert stats["writes"] == 0  # the fault answered before the API saw it
    assert jira_sim.state.issues == {}


async def test_faults_can_target_methods_and_statuses(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    jira_sim.state.set_faults(
        Faults(error_rate=1, error_statuses=[503], retry_after=None, only_methods=["POST"])
    )
    await jira.myself()  # GET passes
    with pytest.raises(ServerError) as caught:
        await jira.create_issue("HR", "Task", "x")
    assert caught.value.status == 503


async def test_latency_is_applied(jira: JiraClient, raw: httpx.AsyncClient) -> None:
    await raw.put("/_sandbox/faults", json={"latency_ms": 150})
    started = time.perf_counter()
    await jira.myself()
    assert time.perf_counter() - started >= 0.15
    started = time.perf_counter()
    await raw.get("/_sandbox/stats")  # control endpoints are never slowed
    assert time.perf_counter() - started < 0.15


# --------------------------------------------------------------------------- writes whose answer is lost

ONE_TASK = {"fields": {"project": {"key": "HR"}, "issuetype": {"name": "Task"}, "summary": "x"}}


def losing(outcome: str | int, **more: Any) -> dict[str, Any]:
    """Faults that apply every write and then lose its answer as `outcome`."""
    return {"after_apply_rate": 1, "after_apply_outcomes": [outcome], **more}


async def stats_of(raw: httpx.AsyncClient) -> dict[str, Any]:
    return (await raw.get("/_sandbox/stats")).json()


async def test_a_reset_applies_the_write_then_drops_the_connection_without_an_answer(
    jira_sim: JiraSandbox, raw: httpx.AsyncClient
) -> None:
    assert (await raw.put("/_sandbox/faults", json=losing("reset"))).status_code == 200
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await raw.post("/rest/api/3/issue", json=ONE_TASK)
    assert list(jira_sim.state.issues) == ["HR-1"]  # applied all the same
    stats = await stats_of(raw)
    assert stats["applied_then_failed"] == 1
    assert stats["applied_then_failed_by_outcome"] == {"reset": 1}
    assert stats["faults_injected"] == 0
    # Reads are never faulted this way, nor is a search (a POST that changes nothing).
    assert (await raw.get("/rest/api/3/issue/HR-1")).status_code == 200
    searched = await raw.post("/rest/api/3/search/jql", json={"jql": "project = HR"})
    assert searched.status_code == 200
    assert (await stats_of(raw))["applied_then_failed"] == 1


async def test_a_timeout_holds_the_answer_past_the_client_timeout(
    jira_sim: JiraSandbox, jira_contract: SpecContract, raw: httpx.AsyncClient
) -> None:
    await raw.put("/_sandbox/faults", json=losing("timeout", after_apply_hold_seconds=60))
    async with jira_sim.client(jira_contract, timeout=0.5) as jira:
        with pytest.raises(ApiTimeoutError):
            await jira.create_issue("HR", "Task", "x")
    assert list(jira_sim.state.issues) == ["HR-1"]
    assert (await stats_of(raw))["applied_then_failed_by_outcome"] == {"timeout": 1}


async def test_a_timeout_drops_the_connection_once_held(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    # Held for less than the client waits: then dropped, with no answer at all.
    jira_sim.state.set_faults(Faults(**losing("timeout", after_apply_hold_seconds=0.2)))
    with pytest.raises(TransportError) as caught:
        await jira.create_issue("HR", "Task", "x")
    assert not isinstance(caught.value, ApiTimeoutError)
    assert isinstance(caught.value.__cause__, (httpx.ReadError, httpx.RemoteProtocolError))
    assert list(jira_sim.state.issues) == ["HR-1"]


@pytest.mark.parametrize(
    ("status", "error"), [(500, ServerError), (502, ServerError), (503, ApiError)]
)
async def test_a_status_after_apply_answers_an_error_for_a_write_that_happened(
    jira: JiraClient, jira_sim: JiraSandbox, status: int, error: type[ApiError]
) -> None:
    jira_sim.state.set_faults(Faults(**losing(status)))
    with pytest.raises(error) as caught:
        await jira.create_issues_bulk(
            [issue_payload("HR", "Task", "one"), issue_payload("HR", "Task", "two")]
        )
    assert caught.value.status == status
    assert [issue.summary for issue in jira_sim.state.issues.values()] == ["one", "two"]
    assert jira_sim.state.stats()["applied_then_failed_by_outcome"] == {str(status): 1}


async def test_every_write_kind_can_lose_its_answer_and_a_refused_one_keeps_its_own(
    jira: JiraClient, jira_sim: JiraSandbox, raw: httpx.AsyncClient
) -> None:
    created = await jira.create_issue("HR", "Task", "x")
    jira_sim.state.set_faults(Faults(**losing(500)))
    with pytest.raises(ServerError):
        await jira.add_comment(created.key, "hello")
    with pytest.raises(ServerError):
        await jira.edit_issue(created.key, fields={"summary": "renamed"})
    with pytest.raises(ServerError):
        await jira.transition_to(created.key, "In Progress")
    with pytest.raises(ServerError):
        await jira.set_issue_property(created.key, "p", {"v": 1})
    issue = jira_sim.state.issues[created.key]
    assert (len(issue.comments), issue.summary, issue.status) == (1, "renamed", "In Progress")
    assert issue.properties == {"p": {"v": 1}}
    # Refused by the API itself: nothing applied, so its own answer comes back.
    refused = await raw.post("/rest/api/3/issue", json={"fields": {"summary": "no project"}})
    assert refused.status_code == 400
    assert jira_sim.state.stats()["applied_then_failed"] == 4


async def test_after_apply_faults_follow_the_rate_and_seed(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    runs: list[list[bool]] = []
    for _ in range(2):
        jira_sim.state.set_faults(Faults(after_apply_rate=0.5, after_apply_outcomes=[502], seed=7))
        lost = []
        for n in range(12):
            try:
                await jira.create_issue("HR", "Task", f"n{n}")
                lost.append(False)
            except ServerError:
                lost.append(True)
        runs.append(lost)
    assert runs[0] == runs[1]  # the same seed loses the same answers
    assert 0 < sum(runs[0]) < 12
    assert len(jira_sim.state.issues) == 24  # every one applied


# --------------------------------------------------------------------------- rate limits


class FrozenClock:
    """The rate limiter's clock, moved by the test: buckets refill only when it says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def frozen(jira_sim: JiraSandbox) -> FrozenClock:
    clock = FrozenClock()
    jira_sim.state.rate_limiter.clock = clock
    return clock


def limit_headers(answer: httpx.Response) -> dict[str, str]:
    return {
        name: value
        for name, value in answer.headers.items()
        if name.startswith(("x-ratelimit-", "retry-after", "ratelimit-"))
    }


async def put_limits(raw: httpx.AsyncClient, **limits: Any) -> None:
    answer = await raw.put("/_sandbox/rate-limits", json={"enabled": True, **limits})
    assert answer.status_code == 200, answer.text


async def test_rate_limits_are_off_unless_enabled(raw: httpx.AsyncClient) -> None:
    assert (await raw.get("/_sandbox/rate-limits")).json()["enabled"] is False
    answers = [await raw.get("/rest/api/3/myself") for _ in range(150)]
    assert {answer.status_code for answer in answers} == {200}
    assert limit_headers(answers[-1]) == {}
    assert (await raw.get("/_sandbox/stats")).json()["rate_limited"] == 0


async def test_a_burst_is_limited_per_endpoint_and_method_with_jiras_headers(
    raw: httpx.AsyncClient, frozen: FrozenClock
) -> None:
    await put_limits(raw, per_method={"GET": 5, "POST": 100})
    passed = [await raw.get("/rest/api/3/myself") for _ in range(5)]
    assert [answer.status_code for answer in passed] == [200] * 5
    assert [answer.headers["x-ratelimit-remaining"] for answer in passed] == list("43210")
    assert {answer.headers["x-ratelimit-limit"] for answer in passed} == {"5"}

    refused = await raw.get("/rest/api/3/myself")
    assert refused.status_code == 429
    headers = limit_headers(refused)
    assert headers["ratelimit-reason"] == "jira-burst-based"
    assert headers["retry-after"] == "1"  # whole seconds, as Jira sends it
    reset = datetime.fromisoformat(headers["x-ratelimit-reset"])
    assert 0 < (reset - datetime.now(UTC)).total_seconds() <= 0.2  # one token at 5 a second
    assert refused.json()["errorMessages"] == ["Rate limit exceeded."]

    # Another endpoint, or another method, has a bucket of its own.
    assert (await raw.get("/rest/api/3/user/search", params={"query": "ana"})).status_code == 200
    created = await raw.post("/rest/api/3/issue", json=ONE_TASK)
    assert created.status_code == 201
    assert created.headers["x-ratelimit-limit"] == "100"

    frozen.now += 0.2  # one token back
    assert (await raw.get("/rest/api/3/myself")).status_code == 200
    assert (await raw.get("/rest/api/3/myself")).status_code == 429

    stats = (await raw.get("/_sandbox/stats")).json()
    assert stats["rate_limited"] == 2
    assert stats["rate_limited_by_reason"] == {"jira-burst-based": 2}
    assert stats["rate_limited_by_endpoint"] == {"GET /rest/api/3/myself": 2}
    assert stats["by_endpoint"]["GET /rest/api/3/myself"] == 6  # refused ones never reach it


async def test_one_endpoint_can_have_its_own_rate_and_a_longer_burst(
    raw: httpx.AsyncClient, frozen: FrozenClock
) -> None:
    await put_limits(
        raw,
        per_method={"GET": 100},
        per_endpoint={"GET /rest/api/3/issue/{issueIdOrKey}": 2},
        burst_seconds=2,
        per_issue_writes=[],
    )
    await raw.post("/rest/api/3/issue", json=ONE_TASK)  # POST is not limited here
    statuses = [(await raw.get(f"/rest/api/3/issue/HR-{n % 2 + 1}")).status_code for n in range(5)]
    assert statuses == [200, 404, 200, 404, 429]  # one bucket for every issue: 2 a second x 2 s
    assert (await raw.get("/rest/api/3/myself")).headers["x-ratelimit-limit"] == "200"


async def test_writes_to_one_issue_are_limited_and_other_issues_go_on(
    raw: httpx.AsyncClient, frozen: FrozenClock, jira_sim: JiraSandbox
) -> None:
    await put_limits(
        raw,
        per_method={"GET": 1000, "POST": 1000, "PUT": 1000},
        per_issue_writes=[{"writes": 3, "seconds": 2}, {"writes": 5, "seconds": 30}],
    )
    for _ in range(2):
        assert (await raw.post("/rest/api/3/issue", json=ONE_TASK)).status_code == 201
    edit = {"fields": {"summary": "y"}}
    comment = {"body": text_to_adf("hello")}
    assert (await raw.put("/rest/api/3/issue/HR-1", json=edit)).status_code == 204
    assert (await raw.post("/rest/api/3/issue/HR-1/comment", json=comment)).status_code == 201
    issue_id = jira_sim.state.issues["HR-1"].id
    assert (await raw.put(f"/rest/api/3/issue/{issue_id}", json=edit)).status_code == 204

    refused = await raw.put("/rest/api/3/issue/hr-1", json=edit)  # the same issue, any spelling
    assert refused.status_code == 429
    assert refused.headers["ratelimit-reason"] == "jira-per-issue-on-write"
    assert refused.headers["x-ratelimit-limit"] == "3"
    assert refused.headers["retry-after"] == "2"
    assert (await raw.get("/rest/api/3/issue/HR-1")).status_code == 200  # reads are not limited
    assert (await raw.put("/rest/api/3/issue/HR-2", json=edit)).status_code == 204

    frozen.now += 2.0  # the 2 s window has room again; the 30 s one has 2 left
    assert (await raw.put("/rest/api/3/issue/HR-1", json=edit)).status_code == 204
    assert (await raw.put("/rest/api/3/issue/HR-1", json=edit)).status_code == 204
    refused = await raw.put("/rest/api/3/issue/HR-1", json=edit)
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit"] == "5"
    reset = datetime.fromisoformat(refused.headers["x-ratelimit-reset"])
    assert 27 < (reset - datetime.now(UTC)).total_seconds() <= 28.1  # the first write + 30 s

    stats = (await raw.get("/_sandbox/stats")).json()
    assert stats["rate_limited_by_reason"] == {"jira-per-issue-on-write": 2}
    assert jira_sim.state.issues["HR-1"].summary == "y"


async def test_near_limit_is_said_under_a_fifth_left_when_enabled(
    raw: httpx.AsyncClient, frozen: FrozenClock
) -> None:
    await put_limits(raw, per_method={"GET": 10}, near_limit=True)
    answers = [await raw.get("/rest/api/3/myself") for _ in range(10)]
    near = [answer.headers.get("x-ratelimit-nearlimit") for answer in answers]
    assert near == [None] * 8 + ["true", "true"]  # 1 and 0 left of 10


async def test_rate_limits_from_the_constructor_come_back_on_reset(
    raw: httpx.AsyncClient,
) -> None:
    app = create_app(
        email=JIRA_EMAIL,
        api_token=JIRA_API_TOKEN,
        rate_limits=RateLimits(enabled=True, per_method={"GET": 1}),
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://jira.test",
        auth=httpx.BasicAuth(JIRA_EMAIL, JIRA_API_TOKEN),
    ) as client:
        assert (await client.get("/rest/api/3/myself")).status_code == 200
        assert (await client.get("/rest/api/3/myself")).status_code == 429
        await client.put("/_sandbox/rate-limits", json={"enabled": False})
        assert (await client.get("/rest/api/3/myself")).status_code == 200
        assert (await client.post("/_sandbox/reset")).status_code == 204
        assert (await client.get("/_sandbox/rate-limits")).json()["per_method"] == {"GET": 1}
        assert (await client.get("/rest/api/3/myself")).status_code == 200  # a full bucket
        assert (await client.get("/rest/api/3/myself")).status_code == 429
        assert (await client.get("/_sandbox/stats")).json()["rate_limited"] == 1


# --------------------------------------------------------------------------- search lag


async def search_keys(raw: httpx.AsyncClient, jql: str, **more: Any) -> list[str]:
    answer = await raw.post(
        "/rest/api/3/search/jql", json={"jql": jql, "fields": ["summary"], **more}
    )
    assert answer.status_code == 200, answer.text
    return [issue["key"] for issue in answer.json()["issues"]]


async def until_found(raw: httpx.AsyncClient, jql: str, expected: list[str]) -> None:
    deadline = time.monotonic() + 20
    while await search_keys(raw, jql) != expected:
        assert time.monotonic() < deadline, f"{jql} never found {expected}"
        await asyncio.sleep(0.05)


async def test_search_lags_behind_creates_and_edits_but_reads_by_key_do_not(
    jira: JiraClient, jira_sim: JiraSandbox, raw: httpx.AsyncClient
) -> None:
    before = await jira.create_issue("HR", "Task", "before", labels=["old"])
    await raw.put("/_sandbox/faults", json={"search_lag_seconds": 600})
    assert await search_keys(raw, "labels = old") == [before.key]  # there before the lag

    created = await jira.create_issue("HR", "Task", "new", labels=["fresh"])
    await jira.edit_issue(before.key, update={"labels": [{"add": "edited"}]})
    await jira.transition_to(before.key, "In Progress")
    subtask = await jira.create_issue("HR", "Sub-task", "child", parent_key=before.key)
    await jira.add_comment(before.key, "still current")

    assert await search_keys(raw, "labels = fresh") == []
    assert await search_keys(raw, "labels = edited") == []
    assert await search_keys(raw, 'status = "To Do" AND project = HR') == [before.key]
    assert await search_keys(raw, f"parent = {before.key}") == []
    searched = await raw.post(
        "/rest/api/3/search/jql", json={"jql": "labels = old", "fields": ["subtasks", "labels"]}
    )
    assert searched.json()["issues"][0]["fields"] == {"subtasks": [], "labels": ["old"]}
    # Reads by key, transitions and comments are current.
    read = await jira.get_issue(before.key, fields=["labels", "status", "subtasks"])
    assert (read.labels, read.status) == (["old", "edited"], "In Progress")
    assert [item["key"] for item in read.fields["subtasks"]] == [subtask.key]
    assert [t.to_status for t in await jira.get_transitions(before.key)] == ["Done", "Cancelled"]
    comments = await raw.get(f"/rest/api/3/issue/{before.key}/comment")
    assert [c["body"] for c in comments.json()["comments"]] == [text_to_adf("still current")]

    # Named in reconcileIssues, an issue is answered as it is now.
    ids = [int(created.id), int(before.id)]
    assert await search_keys(raw, "labels = fresh", reconcileIssues=ids) == [created.key]
    assert await search_keys(raw, "labels = edited", reconcileIssues=ids) == [before.key]
    assert await search_keys(raw, "labels = old", reconcileIssues=[int(created.id)]) == [before.key]

    # Once the lag has passed, search catches up.
    await raw.put("/_sandbox/faults", json={"search_lag_seconds": 0.05})
    await until_found(raw, "labels = fresh", [created.key])
    await until_found(raw, f"parent = {before.key}", [subtask.key])
    assert await search_keys(raw, "labels = edited") == [before.key]


async def test_a_deleted_issue_stays_in_a_lagging_search_for_a_while(
    jira: JiraClient, jira_sim: JiraSandbox, raw: httpx.AsyncClient
) -> None:
    created = await jira.create_issue("HR", "Task", "doomed", labels=["doomed"])
    await raw.put("/_sandbox/faults", json={"search_lag_seconds": 600})
    assert (await raw.delete(f"/_sandbox/issues/{created.key}")).status_code == 200
    assert await search_keys(raw, "labels = doomed") == [created.key]
    assert await search_keys(raw, "labels = doomed", reconcileIssues=[int(created.id)]) == []
    await raw.put("/_sandbox/faults", json={"search_lag_seconds": 0.05})
    await until_found(raw, "labels = doomed", [])


async def test_search_by_get_takes_the_same_query_and_reconcile_ids(
    jira: JiraClient, raw: httpx.AsyncClient
) -> None:
    await raw.put("/_sandbox/faults", json={"search_lag_seconds": 600})
    created = await jira.create_issue("HR", "Task", "by get", labels=["get"])
    query = {"jql": "labels = get", "fields": "summary,labels"}
    assert (await raw.get("/rest/api/3/search/jql", params=query)).json()["issues"] == []
    reconciled = await raw.get(
        "/rest/api/3/search/jql", params={**query, "reconcileIssues": [created.id, "10999"]}
    )
    [found] = reconciled.json()["issues"]
    assert (found["key"], found["fields"]["labels"]) == (created.key, ["get"])
    too_many = await raw.get(
        "/rest/api/3/search/jql",
        params={**query, "reconcileIssues": [str(n) for n in range(51)]},
    )
    assert too_many.status_code == 400
    posted = await raw.post(
        "/rest/api/3/search/jql",
        json={"jql": "labels = get", "reconcileIssues": list(range(51))},
    )
    assert posted.status_code == 400
    assert "at most 50" in posted.json()["errorMessages"][0]


async def test_comments_are_read_a_page_at_a_time_newest_first_if_asked(
    jira: JiraClient, raw: httpx.AsyncClient
) -> None:
    created = await jira.create_issue("HR", "Task", "talkative")
    for n in range(3):
        await jira.add_comment(created.key, f"comment {n}")
    page = (
        await raw.get(
            f"/rest/api/3/issue/{created.key}/comment",
            params={"orderBy": "-created", "maxResults": 2},
        )
    ).json()
    assert [adf_to_text(c["body"]) for c in page["comments"]] == ["comment 2", "comment 1"]
    assert (page["startAt"], page["maxResults"], page["total"]) == (0, 2, 3)
    assert [c.text for c in await jira.get_comments(created.key)] == [
        "comment 2",
        "comment 1",
        "comment 0",
    ]


# --------------------------------------------------------------------------- control endpoints


async def test_counts_listing_users_and_reset(
    jira: JiraClient, jira_sim: JiraSandbox, raw: httpx.AsyncClient
) -> None:
    created = await jira.create_issue(
        "HR", "Task", "x", labels=["pf-1"], properties={"peopleforce.sync": {"id": 1}}
    )
    await jira.get_issue(created.key)
    _ = await keys(jira, "labels = pf-1")
    stats = (await raw.get("/_sandbox/stats")).json()
    assert (stats["reads"], stats["writes"]) == (2, 1)
    assert stats["by_endpoint"]["POST /rest/api/3/search/jql"] == 1

    [listed] = (await raw.get("/_sandbox/issues")).json()
    assert listed["key"] == "HR-1"
    assert listed["fields"]["labels"] == ["pf-1"]
    assert listed["properties"] == {"peopleforce.sync": {"id": 1}}

    added = await raw.post(
        "/_sandbox/users", json={"email": "new.hire@example.com", "display_name": "New Hire"}
    )
    assert added.json() == {"accountId": jira_account("new.hire@example.com")}
    assert await jira.find_user_by_email("new.hire@example.com") == jira_account(
        "new.hire@example.com"
    )

    await raw.put("/_sandbox/faults", json={"latency_ms": 5})
    assert (await raw.post("/_sandbox/reset")).status_code == 204
    assert jira_sim.state.issues == {}
    assert jira_sim.state.calls.total() == 0
    assert jira_sim.state.fault_injector.faults.latency_ms == 0
    assert await jira.find_user_by_email("new.hire@example.com") is None
    assert (await jira.create_issue("HR", "Task", "again")).key == "HR-1"


def test_label_search_sees_labels_as_they_are_now() -> None:
    """The label index behind searches follows creates, edits, moves and deletes."""
    from sandbox.jira import ISSUE_TYPES, JiraState, parse_jql, run_jql

    state = JiraState(email="bot@example.com")
    first = state.add_issue("HR", ISSUE_TYPES["task"], "one", labels=["pf-employee-1"])
    state.add_issue("HR", ISSUE_TYPES["task"], "two", labels=["pf-employee-2"])

    def found(*labels: str) -> list[str]:
        quoted = ", ".join(f'"{label}"' for label in labels)
        return [i.key for i in run_jql(state, parse_jql(f"labels in ({quoted}) ORDER BY key"))]

    assert found("pf-employee-1", "pf-employee-2") == ["HR-1", "HR-2"]
    first.labels = ["pf-employee-3"]
    state.touched(first, "edit")
    assert found("pf-employee-1") == []
    assert found("pf-employee-3") == ["HR-1"]
    third = state.add_issue("HR", ISSUE_TYPES["task"], "three", labels=["pf-employee-3"])
    assert found("pf-employee-3") == ["HR-1", third.key]
    state.delete_issue("HR-1")
    assert found("pf-employee-3") == [third.key]
