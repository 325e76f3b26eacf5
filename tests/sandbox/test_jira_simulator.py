"""The Jira simulator keeps Jira's rules: JQL subset, workflow, auth, validation, faults, 410.

Most checks go through `JiraClient` (so the spec contract applies); `raw` is a plain client for
what our client must never send (the removed search, invalid transitions, bad auth).
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from core.errors import GoneError, RateLimitedError, RequestRejectedError, ServerError
from core.http import send
from core.jira import JiraClient, issue_payload, parse_jira_error, subtask_payload, text_to_adf
from sandbox.faults import Faults
from sandbox.jira import GONE_SEARCH, ISSUE_TYPES, UNKNOWN_FIELD, create_app, rest_api
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
    contract = SpecContract.load("jira-platform-v3.json")
    simulated = {
        (method, route.path)
        for route in rest_api.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    assert len(simulated) == 13
    for method, template in simulated:
        operation = contract.operation(method, template)
        assert operation.template == template
        # Only the removed search is simulated while deprecated: to answer 410 as Jira does.
        assert bool(operation.definition.get("deprecated")) == (template == "/rest/api/3/search")


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
