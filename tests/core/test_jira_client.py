"""JiraClient against the simulator over real HTTP, every request held to Atlassian's spec."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from core.errors import (
    MAX_RETRY_AFTER_SECONDS,
    ApiError,
    ApiTimeoutError,
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    GoneError,
    NotFoundError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    TransportError,
    UnexpectedAnswerError,
    is_transient,
    may_have_applied,
    retry_delay,
)
from core.jira import (
    JiraClient,
    TransitionNotAvailableError,
    adf_to_text,
    bullet_list,
    doc,
    issue_payload,
    paragraph,
    subtask_payload,
    text_to_adf,
)
from core.settings import Settings, SettingsError
from sandbox.faults import Faults
from sandbox.jira import create_app
from sandbox.server import free_port
from tests.contract import ContractViolation, SpecContract
from tests.fixtures_jira import (
    JIRA_API_TOKEN,
    JIRA_EMAIL,
    JIRA_USERS,
    ContractTransport,
    JiraSandbox,
    jira_account,
)

UNICODE_TEXT = "Zoë Ñúñez-Łukasz 李雷 🚀"
UNKNOWN_FIELD = (
    "Field 'customfield_99999' cannot be set. It is not on the appropriate screen, or unknown."
)


def text_nodes(node: Any) -> list[dict[str, Any]]:
    """Every text node in an ADF tree."""
    if isinstance(node, list):
        return [found for item in node for found in text_nodes(item)]
    if not isinstance(node, dict):
        return []
    own = [node] if node.get("type") == "text" else []
    return own + text_nodes(node.get("content", []))


# --------------------------------------------------------------------------- ADF


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "  \n \n",
        "a\n\n\n\nb",
        "line\r\nnext\rlast",
        "tab\there",
        "nul\x00byte",
        "\ud800x",
    ],
)
def test_text_to_adf_never_emits_empty_text_nodes(text: str) -> None:
    document = text_to_adf(text)
    assert document["type"] == "doc"
    assert document["version"] == 1
    assert all(node["text"] for node in text_nodes(document))
    json.dumps(document).encode()  # sendable as UTF-8


def test_text_to_adf_shapes_paragraphs_breaks_and_bullets() -> None:
    text = f"{UNICODE_TEXT}\nsecond line\n\n- laptop\n- badge 🪪\n\nbye"
    document = text_to_adf(text)
    assert [block["type"] for block in document["content"]] == [
        "paragraph",
        "bulletList",
        "paragraph",
    ]
    first = document["content"][0]["content"]
    assert [node["type"] for node in first] == ["text", "hardBreak", "text"]
    assert first[0]["text"] == UNICODE_TEXT
    assert adf_to_text(document) == text


def test_builders_and_reading_back() -> None:
    document = doc(paragraph("Hello"), bullet_list(["one", "two"]), paragraph(""))
    assert document["content"][2] == {"type": "paragraph", "content": []}
    assert adf_to_text(document) == "Hello\n\n- one\n- two"
    assert adf_to_text(None) == ""
    mention = {
        "type": "doc",
        "version": 1,
        "content": [
            {
                "type": "paragraph",
                "content": [
                    {"type": "text", "text": "ask "},
                    {"type": "mention", "attrs": {"id": "1", "text": "@Ana"}},
                ],
            }
        ],
    }
    assert adf_to_text(mention) == "ask @Ana"


# --------------------------------------------------------------------------- issues


async def test_create_issue_with_unicode_adf_description(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    assignee = jira_account("zoe.nunez@example.com")
    created = await jira.create_issue(
        "HR",
        "Task",
        f"Onboarding: {UNICODE_TEXT}",
        f"Welcome {UNICODE_TEXT}\n\n- laptop\n- badge",
        labels=["pf-employee-100001"],
        fields={"customfield_10050": "Engineering"},
        assignee_account_id=assignee,
        due_date="2025-09-02",
        properties={"peopleforce.sync": {"employeeId": 100001, "name": UNICODE_TEXT}},
    )
    assert created.key == "HR-1"

    issue = await jira.get_issue(created.key, properties=["peopleforce.sync"])
    assert issue.id == created.id
    assert issue.summary == f"Onboarding: {UNICODE_TEXT}"
    assert issue.description_text == f"Welcome {UNICODE_TEXT}\n\n- laptop\n- badge"
    assert issue.labels == ["pf-employee-100001"]
    assert issue.assignee_account_id == assignee
    assert issue.status == "To Do"
    assert issue.status_category == "new"
    assert issue.fields["duedate"] == "2025-09-02"
    assert issue.fields["customfield_10050"] == "Engineering"
    assert issue.properties == {"peopleforce.sync": {"employeeId": 100001, "name": UNICODE_TEXT}}
    stored = jira_sim.state.issues["HR-1"]
    assert stored.description == text_to_adf(f"Welcome {UNICODE_TEXT}\n\n- laptop\n- badge")


async def test_get_issue_with_chosen_fields(jira: JiraClient) -> None:
    created = await jira.create_issue("IT", "Task", "Laptop", labels=["a"])
    issue = await jira.get_issue(created.key, fields=["summary", "labels"])
    assert set(issue.fields) == {"summary", "labels"}
    assert issue.properties == {}


async def test_bulk_subtasks_report_a_partial_failure_per_element(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    parent = await jira.create_issue("HR", "Task", "Onboarding")
    payloads = [
        subtask_payload("HR", parent.key, "Laptop"),
        subtask_payload("HR", parent.key, "Badge", fields={"customfield_99999": "x"}),
        subtask_payload("HR", parent.key, "Accounts", labels=["pf-employee-1"]),
    ]
    result = await jira.create_issues_bulk(payloads)

    assert not result.ok
    assert [(item.index, item.key) for item in result.created] == [(0, "HR-2"), (2, "HR-3")]
    [failure] = result.failed
    assert failure.index == 1
    assert failure.status == 400
    assert failure.field_errors == {"customfield_99999": UNKNOWN_FIELD}
    assert failure.error is None
    assert result.key_for(2) == "HR-3"
    assert jira_sim.state.issues["HR-3"].parent_key == parent.key
    assert jira_sim.state.issues["HR-3"].issue_type.subtask


async def test_bulk_where_every_element_fails_is_a_result_not_an_exception(
    jira: JiraClient,
) -> None:
    payloads = [
        issue_payload("HR", "Task", "one", fields={"customfield_99999": 1}),
        subtask_payload("HR", "HR-999", "orphan"),
    ]
    result = await jira.create_issues_bulk(payloads)
    assert result.created == []
    assert [failure.index for failure in result.failed] == [0, 1]
    assert result.failed[0].field_errors == {"customfield_99999": UNKNOWN_FIELD}
    assert "parent" in result.failed[1].field_errors


async def test_bulk_over_fifty_is_chunked_and_indexes_stay_global(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    parent = await jira.create_issue("IT", "Task", "Offboarding")
    payloads = [subtask_payload("IT", parent.key, f"step {n}") for n in range(120)]
    payloads[75] = subtask_payload("IT", parent.key, "bad", fields={"customfield_99999": 1})

    result = await jira.create_issues_bulk(payloads)

    assert jira_sim.state.calls["POST /rest/api/3/issue/bulk"] == 3
    assert [failure.index for failure in result.failed] == [75]
    assert [item.index for item in result.created] == [n for n in range(120) if n != 75]
    assert len({item.key for item in result.created}) == 119
    by_key = jira_sim.state.issues
    assert all(by_key[item.key].summary == f"step {item.index}" for item in result.created)


async def test_bulk_interrupted_after_a_created_chunk_keeps_what_was_created() -> None:
    answers = iter(
        [
            httpx.Response(
                201,
                json={
                    "issues": [
                        {"id": str(10000 + n), "key": f"HR-{n + 1}", "self": "x"} for n in range(50)
                    ],
                    "errors": [],
                },
            ),
            httpx.Response(429, headers={"Retry-After": "3"}, text="<html>slow down</html>"),
        ]
    )
    transport = httpx.MockTransport(lambda request: next(answers))
    payloads = [issue_payload("HR", "Task", f"t{n}") for n in range(60)]
    async with JiraClient("https://acme.atlassian.net", "a@b.c", "t", transport=transport) as jira:
        result = await jira.create_issues_bulk(payloads)
    assert len(result.created) == 50
    assert [failure.index for failure in result.failed] == list(range(50, 60))
    assert isinstance(result.interrupted_by, RateLimitedError)
    assert all(is_transient(failure.error) for failure in result.failed if failure.error)


@pytest.mark.parametrize(
    ("error", "planned", "delay"),
    [
        (RateLimitedError("Jira", "429", retry_after=7), 2.0, 7.0),  # the server asks longer
        (RateLimitedError("Jira", "429", retry_after=1), 2.0, 2.0),  # the backoff is longer
        (RateLimitedError("Jira", "429"), 2.0, 2.0),  # no Retry-After
        (ServerError("Jira", "503", retry_after=3600), 1.0, MAX_RETRY_AFTER_SECONDS),
        (NotFoundError("Jira", "404"), 1.0, 1.0),  # not transient: the hint means nothing
    ],
    ids=["retry-after longer", "backoff longer", "no hint", "capped", "not transient"],
)
def test_retry_delay_honours_retry_after_within_a_limit(
    error: Exception, planned: float, delay: float
) -> None:
    assert retry_delay(error, planned) == delay


async def test_bulk_failing_before_anything_was_created_raises(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    jira_sim.state.set_faults(Faults(error_rate=1, error_statuses=[503], retry_after=None))
    with pytest.raises(ServerError):
        await jira.create_issues_bulk([issue_payload("HR", "Task", "x")])


async def test_current_key_follows_a_moved_issue_and_search_issues_reads_labels(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    kept = await jira.create_issue("HR", "Task", "Stays", labels=["pf-employee-8"])
    moving = await jira.create_issue("HR", "Task", "Moves", labels=["pf-employee-8"])
    moved = jira_sim.state.move_issue(moving.key, "IT")
    assert await jira.current_key(kept.key) == kept.key
    assert await jira.current_key(moving.key) == moved.key
    assert await jira.current_key("HR-99999") is None
    found = await jira.search_issues('labels = "pf-employee-8"')
    assert {(issue.key, tuple(issue.labels)) for issue in found} == {
        (kept.key, ("pf-employee-8",)),
        (moved.key, ("pf-employee-8",)),
    }


async def test_edit_and_add_labels_keep_labels_people_added(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    created = await jira.create_issue("HR", "Task", "Onboarding", labels=["pf-employee-7"])
    jira_sim.state.issues[created.key].labels.append("urgent")  # a person's label

    await jira.add_labels(created.key, ["pf-onboarding", "pf-employee-7"])
    await jira.edit_issue(
        created.key,
        fields={"summary": "Onboarding (moved)", "customfield_10051": 3, "duedate": "2025-10-01"},
    )

    issue = await jira.get_issue(created.key)
    assert issue.labels == ["pf-employee-7", "urgent", "pf-onboarding"]
    assert issue.summary == "Onboarding (moved)"
    assert issue.fields["customfield_10051"] == 3
    assert issue.fields["duedate"] == "2025-10-01"
    with pytest.raises(RequestRejectedError) as rejected:
        await jira.edit_issue(created.key, fields={"customfield_99999": "x"})
    assert rejected.value.field_errors == {"customfield_99999": UNKNOWN_FIELD}
    with pytest.raises(ValueError, match="nothing to edit"):
        await jira.edit_issue(created.key)


async def test_add_comment_as_adf(jira: JiraClient, jira_sim: JiraSandbox) -> None:
    created = await jira.create_issue("HR", "Task", "Onboarding")
    comment_id = await jira.add_comment(created.key, f"Hello {UNICODE_TEXT}\n\nBye")
    [comment] = jira_sim.state.issues[created.key].comments
    assert comment.id == comment_id
    assert comment.body == text_to_adf(f"Hello {UNICODE_TEXT}\n\nBye")
    assert comment.author_id == jira_account(JIRA_EMAIL)
    issue = await jira.get_issue(created.key, fields=["comment"])
    assert (
        adf_to_text(issue.fields["comment"]["comments"][0]["body"])
        == f"Hello {UNICODE_TEXT}\n\nBye"
    )


async def test_transition_by_status_name(jira: JiraClient, jira_sim: JiraSandbox) -> None:
    created = await jira.create_issue("HR", "Task", "Onboarding")
    transitions = await jira.get_transitions(created.key)
    assert {(t.to_status, t.to_category) for t in transitions} == {
        ("In Progress", "indeterminate"),
        ("Cancelled", "done"),
    }

    assert await jira.transition_to(created.key, "in progress") is True
    assert await jira.transition_to(created.key, "DONE") is True
    assert jira_sim.state.issues[created.key].status == "Done"
    # Already there: nothing to do, and no error.
    assert await jira.transition_to(created.key, "Done") is False


async def test_transition_to_an_unreachable_status_names_the_reachable_ones(
    jira: JiraClient,
) -> None:
    created = await jira.create_issue("HR", "Task", "Onboarding")
    with pytest.raises(TransitionNotAvailableError) as error:
        await jira.transition_to(created.key, "Done")
    text = str(error.value)
    assert "'To Do'" in text
    assert "Cancelled, In Progress" in text
    assert not is_transient(error.value)
    with pytest.raises(TransitionNotAvailableError, match="reachable statuses: Cancelled"):
        await jira.transition_to(created.key, "Closed")


async def test_search_follows_page_tokens(jira: JiraClient, jira_sim: JiraSandbox) -> None:
    for n in range(7):
        await jira.create_issue("HR", "Task", f"t{n}", labels=["pf-batch"])
    await jira.create_issue("HR", "Task", "other")

    found = [
        issue
        async for issue in jira.search(
            "project = HR AND labels = pf-batch ORDER BY key", fields=["summary"], max_results=3
        )
    ]

    assert [issue["key"] for issue in found] == [f"HR-{n}" for n in range(1, 8)]
    assert [issue["fields"]["summary"] for issue in found] == [f"t{n}" for n in range(7)]
    assert jira_sim.state.calls["POST /rest/api/3/search/jql"] == 3


async def test_search_default_fields_and_properties(jira: JiraClient) -> None:
    created = await jira.create_issue(
        "IT", "Task", "Laptop", labels=["pf-x"], properties={"peopleforce.sync": {"v": 1}}
    )
    await jira.set_issue_property(created.key, "other", [1])
    [issue] = [
        issue async for issue in jira.search("labels = pf-x", properties=["peopleforce.sync"])
    ]
    assert issue["fields"]["status"]["name"] == "To Do"
    assert "comment" not in issue["fields"]  # navigable fields only
    assert issue["properties"] == {"peopleforce.sync": {"v": 1}}


async def test_search_with_no_match_makes_one_call(jira: JiraClient, jira_sim: JiraSandbox) -> None:
    assert [issue async for issue in jira.search("project = IT")] == []
    assert jira_sim.state.calls["POST /rest/api/3/search/jql"] == 1


async def test_search_stops_on_a_repeated_page_token() -> None:
    page = {"issues": [{"id": "1", "key": "HR-1"}], "isLast": False, "nextPageToken": "same"}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=page))
    async with JiraClient("https://acme.atlassian.net", "a@b.c", "t", transport=transport) as jira:
        with pytest.raises(ApiError, match="same page token"):
            _ = [issue async for issue in jira.search("project = HR")]


# --------------------------------------------------------------------------- users and properties


async def test_find_user_by_email_needs_an_exact_match(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    assert await jira.find_user_by_email("ANA.Garcia@Example.com") == jira_account(
        "ana.garcia@example.com"
    )
    # The simulator, like Jira, matches prefixes: these find someone, but not the person asked for.
    assert await jira.find_user_by_email("ana.garcia@example.co") is None
    assert await jira.find_user_by_email("ana.garcia") is None
    assert await jira.find_user_by_email("nobody@example.com") is None
    # The service account is an app, not a person.
    assert await jira.find_user_by_email(JIRA_EMAIL) is None
    jira_sim.state.add_user("hidden@example.com", "Hidden Person", email_visible=False)
    jira_sim.state.add_user("gone@example.com", "Gone Person", active=False)
    assert await jira.find_user_by_email("hidden@example.com") is None
    assert await jira.find_user_by_email("gone@example.com") is None


async def test_myself(jira: JiraClient) -> None:
    me = await jira.myself()
    assert me.account_id == jira_account(JIRA_EMAIL)
    assert me.email_address == JIRA_EMAIL
    assert me.active


async def test_issue_property_created_then_replaced(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    created = await jira.create_issue("HR", "Task", "Onboarding")
    await jira.set_issue_property(created.key, "peopleforce.sync", {"eventKey": "a", "n": 1})
    await jira.set_issue_property(created.key, "peopleforce.sync", {"eventKey": "b", "n": 2})
    issue = await jira.get_issue(created.key, fields=["summary"], properties=["peopleforce.sync"])
    assert issue.properties == {"peopleforce.sync": {"eventKey": "b", "n": 2}}
    assert (
        jira_sim.state.calls["PUT /rest/api/3/issue/{issueIdOrKey}/properties/{propertyKey}"] == 2
    )


# --------------------------------------------------------------------------- errors

IN_30_S_AS_HTTP_DATE = "<an HTTP date 30 s from now>"  # made when the test runs
ERROR_CASES = [
    # status, headers, body, expected class, transient, retry_after (range), reason
    (
        401,
        {},
        {"errorMessages": ["Client must be authenticated"]},
        AuthenticationError,
        False,
        None,
        None,
    ),
    (403, {}, {"errorMessages": ["No permission"]}, ForbiddenError, False, None, None),
    (404, {}, {"errorMessages": ["Issue does not exist"]}, NotFoundError, False, None, None),
    (409, {}, {"errorMessages": ["Conflict"]}, ConflictError, True, None, None),
    (
        410,
        {},
        {"errorMessages": ["The requested API has been removed."]},
        GoneError,
        False,
        None,
        None,
    ),
    (
        400,
        {},
        {"errorMessages": [], "errors": {"summary": "required"}},
        RequestRejectedError,
        False,
        None,
        None,
    ),
    (422, {}, {"errorMessages": ["Configuration"]}, RequestRejectedError, False, None, None),
    (
        429,
        {"Retry-After": "7", "RateLimit-Reason": "jira-per-issue-on-write"},
        {"errorMessages": ["Rate limited"]},
        RateLimitedError,
        True,
        (7, 7),
        "jira-per-issue-on-write",
    ),
    (
        429,
        {"Retry-After": IN_30_S_AS_HTTP_DATE},
        "<html><body>Too many</body></html>",
        RateLimitedError,
        True,
        (25, 30.5),
        None,
    ),
    (503, {"Retry-After": "5"}, "", RateLimitedError, True, (5, 5), None),
    (503, {}, {"errorMessages": ["Unavailable"]}, ServerError, True, None, None),
    (500, {}, "oops", ServerError, True, None, None),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected", "transient", "retry_after", "reason"),
    ERROR_CASES,
    ids=[f"{case[0]}-{case[3].__name__}-{n}" for n, case in enumerate(ERROR_CASES)],
)
async def test_http_failures_map_to_typed_errors(
    status: int,
    headers: dict[str, str],
    body: Any,
    expected: type[ApiError],
    transient: bool,
    retry_after: tuple[float, float] | None,
    reason: str | None,
) -> None:
    if headers.get("Retry-After") == IN_30_S_AS_HTTP_DATE:
        in_30_s = datetime.now(UTC) + timedelta(seconds=30)
        headers = {**headers, "Retry-After": email.utils.format_datetime(in_30_s, usegmt=True)}

    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.Response(status, headers=headers, json=body)
        return httpx.Response(status, headers={**headers, "content-type": "text/html"}, text=body)

    transport = httpx.MockTransport(answer)
    async with JiraClient("https://acme.atlassian.net", "a@b.c", "t", transport=transport) as jira:
        with pytest.raises(ApiError) as caught:
            await jira.myself()
    error = caught.value
    assert type(error) is expected
    assert error.status == status
    assert error.service == "Jira"
    assert is_transient(error) is transient
    if retry_after is None:
        assert getattr(error, "retry_after", None) is None
    else:
        low, high = retry_after
        assert low <= getattr(error, "retry_after", -1) <= high
    if reason:
        assert getattr(error, "reason", None) == reason
    if isinstance(body, dict):
        messages = body.get("errorMessages") or []
        assert all(message in error.message for message in messages)
        assert error.field_errors == body.get("errors", {})
    if isinstance(body, str) and body.startswith("<html"):
        assert "<html" not in error.message  # the page is kept in `body`, not in the message


async def test_wrong_token_is_an_authentication_error(
    jira_sim: JiraSandbox, jira_contract: SpecContract
) -> None:
    async with jira_sim.client(jira_contract, api_token="wrong") as jira:
        with pytest.raises(AuthenticationError) as caught:
            await jira.myself()
    assert "must be authenticated" in caught.value.message
    assert not is_transient(caught.value)


async def test_unknown_issue_is_not_found(jira: JiraClient) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        await jira.get_issue("HR-404")


async def test_field_errors_come_back_on_the_error(jira: JiraClient) -> None:
    with pytest.raises(RequestRejectedError) as caught:
        await jira.create_issue(
            "HR", "Task", "x", fields={"customfield_99999": 1}, assignee_account_id="nobody"
        )
    assert caught.value.status == 400
    assert caught.value.field_errors["customfield_99999"] == UNKNOWN_FIELD
    assert "assignee" in caught.value.field_errors


async def test_rate_limit_from_the_simulator(jira_sim: JiraSandbox, jira: JiraClient) -> None:
    jira_sim.state.set_faults(Faults(error_rate=1, retry_after="2"))
    with pytest.raises(RateLimitedError) as caught:
        await jira.myself()
    assert caught.value.retry_after == 2
    assert caught.value.reason == "jira-burst-based"


async def test_timeout_is_a_transient_timeout_error(
    jira_sim: JiraSandbox, jira_contract: SpecContract
) -> None:
    jira_sim.state.set_faults(Faults(latency_ms=300))
    async with jira_sim.client(jira_contract, timeout=0.05) as jira:
        with pytest.raises(ApiTimeoutError) as caught:
            await jira.myself()
    assert is_transient(caught.value)


async def test_connection_refused_is_a_transient_transport_error() -> None:
    async with JiraClient(f"http://127.0.0.1:{free_port()}", "a@b.c", "t", timeout=2) as jira:
        with pytest.raises(TransportError) as caught:
            await jira.myself()
    assert not isinstance(caught.value, ApiTimeoutError)
    assert is_transient(caught.value)


# --------------------------------------------------------------------------- failures that leave a write in doubt


async def failure_of(jira: JiraClient) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await jira.create_issue("HR", "Task", "in doubt?")
    return caught.value


@pytest.mark.parametrize(
    ("faults", "in_doubt"),
    [
        # Applied, then the answer lost: a reset connection or a gateway's 5xx.
        ({"after_apply_rate": 1, "after_apply_outcomes": ["reset"]}, True),
        ({"after_apply_rate": 1, "after_apply_outcomes": [500]}, True),
        ({"after_apply_rate": 1, "after_apply_outcomes": [502]}, True),
        ({"after_apply_rate": 1, "after_apply_outcomes": [503]}, True),
        # A 5xx before anything was done looks the same to the client: in doubt too.
        ({"error_rate": 1, "error_statuses": [504]}, True),
        ({"error_rate": 1, "error_statuses": [503], "retry_after": "2"}, True),
        # A 429 is Jira refusing the request: nothing was done.
        ({"error_rate": 1, "error_statuses": [429]}, False),
    ],
)
async def test_which_failures_leave_a_write_in_doubt(
    jira: JiraClient, jira_sim: JiraSandbox, faults: dict[str, Any], in_doubt: bool
) -> None:
    jira_sim.state.set_faults(Faults(**faults))
    error = await failure_of(jira)
    assert may_have_applied(error) is in_doubt
    assert is_transient(error)
    assert bool(jira_sim.state.issues) is (faults.get("after_apply_rate") == 1)


async def test_a_read_timeout_leaves_a_write_in_doubt(
    jira_sim: JiraSandbox, jira_contract: SpecContract
) -> None:
    jira_sim.state.set_faults(
        Faults(after_apply_rate=1, after_apply_outcomes=["timeout"], after_apply_hold_seconds=60)
    )
    async with jira_sim.client(jira_contract, timeout=0.5) as jira:
        error = await failure_of(jira)
    assert isinstance(error, ApiTimeoutError)
    assert may_have_applied(error)


async def test_a_request_that_never_left_is_not_in_doubt(
    jira_sim: JiraSandbox, jira_contract: SpecContract
) -> None:
    # Refused connection: nothing was sent.
    async with JiraClient(f"http://127.0.0.1:{free_port()}", "a@b.c", "t", timeout=2) as jira:
        assert not may_have_applied(await failure_of(jira))
    # No connection free in time (one, held by a slow request): nothing was sent either.
    jira_sim.state.set_faults(Faults(latency_ms=2000))
    one_connection = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    async with JiraClient(
        jira_sim.url,
        JIRA_EMAIL,
        JIRA_API_TOKEN,
        transport=one_connection,
        timeout=httpx.Timeout(10.0, pool=0.2),
    ) as jira:
        holding = asyncio.create_task(jira.myself())
        await asyncio.sleep(0.1)
        error = await failure_of(jira)
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding
    assert isinstance(error, ApiTimeoutError)
    assert not may_have_applied(error)
    assert jira_sim.state.issues == {}


async def test_a_refusal_or_an_unreadable_success_says_what_happened(jira: JiraClient) -> None:
    with pytest.raises(RequestRejectedError) as refused:
        await jira.create_issue("NOPE", "Task", "x")
    assert not may_have_applied(refused.value)

    def garbled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, text="<html>created</html>")

    async with JiraClient(
        "https://acme.atlassian.net", "a@b.c", "t", transport=httpx.MockTransport(garbled)
    ) as mocked:
        error = await failure_of(mocked)
    assert isinstance(error, UnexpectedAnswerError)
    assert may_have_applied(error)  # the issue was created: read it back, never resend


async def test_comments_newest_first_and_subtasks_read_with_the_parent(
    jira: JiraClient, jira_sim: JiraSandbox
) -> None:
    parent = await jira.create_issue("HR", "Task", "parent")
    child = await jira.create_issue("HR", "Sub-task", "child", parent_key=parent.key)
    for text in ("first", "second"):
        await jira.add_comment(parent.key, text)
    comments = await jira.get_comments(parent.key)
    assert [c.text for c in comments] == ["second", "first"]
    assert {c.author_account_id for c in comments} == {(await jira.myself()).account_id}
    assert [c.text for c in await jira.get_comments(parent.key, newest_first=False)] == [
        "first",
        "second",
    ]
    read = await jira.get_issue(parent.key, fields=["subtasks"])
    assert [(s.key, s.summary) for s in read.subtasks] == [(child.key, "child")]


# --------------------------------------------------------------------------- base URLs and settings


async def test_cloud_id_base_url_keeps_its_path_prefix(jira_contract: SpecContract) -> None:
    prefix = "/ex/jira/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
    app = create_app(email=JIRA_EMAIL, api_token=JIRA_API_TOKEN, users=JIRA_USERS)
    gateway = Starlette(routes=[Mount(prefix, app=app)])
    base_url = f"https://api.atlassian.test{prefix}"
    transport = ContractTransport(jira_contract, base_url, httpx.ASGITransport(app=gateway))
    async with JiraClient(base_url + "/", JIRA_EMAIL, JIRA_API_TOKEN, transport=transport) as jira:
        me = await jira.myself()
        created = await jira.create_issue("HR", "Task", "Through the gateway")
        issue = await jira.get_issue(created.key)
    assert me.account_id == jira_account(JIRA_EMAIL)
    assert created.key == "HR-1"
    assert issue.fields["status"]["self"].startswith(f"{base_url}/rest/api/3/status/")
    assert app.state.jira.calls["POST /rest/api/3/issue"] == 1


@pytest.fixture
def no_jira_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings also read the environment and `.env`: these tests see only what they pass."""
    for name in ("JIRA_BASE_URL", "JIRA_CLOUD_ID", "JIRA_EMAIL", "JIRA_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("no_jira_environment")
async def test_from_settings_uses_the_cloud_id_gateway_and_basic_auth() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"accountId": "1", "accountType": "app", "active": True})

    settings = Settings.model_validate(
        {
            "jira_cloud_id": "0f1e2d3c-4b5a-6978",
            "jira_email": "bot@example.com",
            "jira_api_token": "s3cret-token",
        }
    )
    async with JiraClient.from_settings(settings, transport=httpx.MockTransport(answer)) as jira:
        await jira.myself()
    [request] = seen
    assert (
        str(request.url) == "https://api.atlassian.com/ex/jira/0f1e2d3c-4b5a-6978/rest/api/3/myself"
    )
    expected = base64.b64encode(b"bot@example.com:s3cret-token").decode()
    assert request.headers["authorization"] == f"Basic {expected}"


@pytest.mark.usefixtures("no_jira_environment")
@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({"jira_base_url": "https://acme.atlassian.net", "jira_email": "a@b.c"}, "JIRA_API_TOKEN"),
        ({"jira_email": "a@b.c", "jira_api_token": "real-token"}, "JIRA_BASE_URL"),
    ],
)
def test_from_settings_names_what_is_missing(values: dict[str, str], missing: str) -> None:
    settings = Settings.model_validate(values)
    with pytest.raises(SettingsError, match=missing):
        JiraClient.from_settings(settings)


# --------------------------------------------------------------------------- the contract checker itself


def _signed(method: str, path: str, **kwargs: Any) -> httpx.Request:
    """A request as the client would send it, basic auth included."""
    auth = base64.b64encode(b"bot@example.com:token").decode()
    return httpx.Request(
        method,
        f"https://acme.atlassian.net{path}",
        headers={"Authorization": f"Basic {auth}"},
        **kwargs,
    )


REQUESTS_OUTSIDE_THE_SPEC = [
    ("deprecated", "GET", "/rest/api/3/search?jql=project%3DHR", None),
    ("deprecated", "POST", "/rest/api/3/search", {"jql": "project = HR"}),
    ("no such operation", "GET", "/rest/api/3/issue/HR-1/nope", None),
    ("no such operation", "DELETE", "/rest/api/3/myself", None),
    ("query parameters", "GET", "/rest/api/3/myself?bogus=1", None),
    # startAt belongs to the old search; the new body does not allow it.
    ("startAt", "POST", "/rest/api/3/search/jql", {"jql": "project = HR", "startAt": 0}),
    ("maxResults", "POST", "/rest/api/3/search/jql", {"jql": "project = HR", "maxResults": "ten"}),
]


@pytest.mark.parametrize(("expected", "method", "path", "body"), REQUESTS_OUTSIDE_THE_SPEC)
async def test_contract_checker_refuses_requests_outside_the_spec(
    expected: str, method: str, path: str, body: Any
) -> None:
    contract = SpecContract.load("jira-platform-v3.json")  # a fresh one: keeps the shared one clean
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={})

    transport = ContractTransport(
        contract, "https://acme.atlassian.net", httpx.MockTransport(answer)
    )
    request = _signed(method, path, json=body) if body is not None else _signed(method, path)
    with pytest.raises(ContractViolation, match=expected):
        await transport.handle_async_request(request)
    assert sent == []  # refused before it went out
    assert len(contract.violations) == 1


async def test_contract_checker_refuses_a_response_outside_the_spec() -> None:
    contract = SpecContract.load("jira-platform-v3.json", validate_responses=True)
    inner = httpx.MockTransport(
        lambda request: httpx.Response(200, json={"accountId": "1", "favouriteColour": "red"})
    )
    transport = ContractTransport(contract, "https://acme.atlassian.net", inner)
    with pytest.raises(ContractViolation, match="favouriteColour"):
        await transport.handle_async_request(_signed("GET", "/rest/api/3/myself"))


async def test_contract_checker_lets_an_empty_body_through_only_where_any_body_is_allowed() -> None:
    contract = SpecContract.load("jira-platform-v3.json", validate_responses=True)
    inner = httpx.MockTransport(lambda request: httpx.Response(200, content=b""))
    transport = ContractTransport(contract, "https://acme.atlassian.net", inner)
    edit = _signed("PUT", "/rest/api/3/issue/HR-1", json={"fields": {}})
    assert (await transport.handle_async_request(edit)).status_code == 200
    with pytest.raises(ContractViolation, match="Missing response data"):
        await transport.handle_async_request(_signed("GET", "/rest/api/3/myself"))
