"""Whatever a server answers, the clients return or raise one of their typed errors.

Property-based (hypothesis): for each method of `JiraClient` and `PeopleForceClient`, every
request the method sends is answered over `httpx.MockTransport` with an answer drawn from the
spec's response schema for that operation (`../shared/specs`), or a malformed one (another
shape, a value swapped for any JSON, not JSON, empty, a redirect, an error status with odd
headers, a body its Content-Encoding cannot decode). The method must return, or raise an
`ApiError` subclass; never a bare `TypeError`, `KeyError` or `AttributeError`. A bulk create
must report every issue an answer names as created.

`CLIENT_FUZZ_EXAMPLES` sets the examples per method (default 40).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

from core.errors import ApiError, NotFoundError, UnexpectedAnswerError, is_transient
from core.jira import BulkResult, Issue, JiraClient, JiraUser, issue_payload
from core.peopleforce import PeopleForceClient
from tests.answers import Answer, SchemaValues, answers
from tests.contract import ContractTransport, SpecContract
from tests.paths import SPECS

EXAMPLES = int(os.environ.get("CLIENT_FUZZ_EXAMPLES", "40"))
MAX_ANSWERS = 6  # then the server fails (500): a paging loop ends with a typed error
JIRA_BASE = "https://acme.atlassian.net"
PEOPLEFORCE_BASE = "https://app.peopleforce.io/api/public/v3"
# Names the clients read inside objects that allow any property (an issue's `fields`).
READ_KEYS = ("status", "labels", "summary", "parent", "assignee", "description", "statusCategory")

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def run(coroutine: Awaitable[Any]) -> Any:
    # A loop of its own per example (never set as the thread's loop, so the session loop of
    # pytest-asyncio is left alone).
    async def main() -> Any:
        return await coroutine

    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(main())


class Server:
    """Answers each request with an answer drawn for its operation; records what it served."""

    def __init__(
        self,
        data: st.DataObject,
        contract: SpecContract,
        base_url: str,
        strategy_for: Callable[[str, str], st.SearchStrategy[Answer]],
    ) -> None:
        self.data = data
        self.contract = contract
        self.base_path = httpx.URL(base_url).path.rstrip("/")
        self.strategy_for = strategy_for
        self.served: list[tuple[str, Answer]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix(self.base_path) or "/"
        operation = self.contract.operation(request.method, path)
        if len(self.served) >= MAX_ANSWERS:
            answer = Answer(500, b'{"errorMessages": ["enough"]}')
        else:
            answer = self.data.draw(self.strategy_for(request.method, operation.template))
        self.served.append((operation.template, answer))
        # Header values are bytes on the wire: Latin-1 at most.
        headers = [
            (name.encode(), value.encode("latin-1")) for name, value in answer.headers.items()
        ]
        return httpx.Response(answer.status, content=answer.content, headers=headers)


def declared(
    contract: SpecContract, method: str, template: str
) -> tuple[list[int], dict[str, Any], str]:
    """The success statuses an operation declares, its schema and content type ({} if none)."""
    responses = contract.spec["paths"][template][method.lower()].get("responses", {})
    statuses, schema, content_type = [], {}, "application/json"
    for status, response in responses.items():
        if status.startswith("2"):
            statuses.append(int(status))
            for media, content in response.get("content", {}).items():
                schema, content_type = content.get("schema", {}), media
    return statuses, schema, content_type


_MADE: dict[tuple[str, str, str], st.SearchStrategy[Answer]] = {}
_VALUES: dict[str, SchemaValues] = {}


def answers_of(
    contract: SpecContract, overrides: dict[str, st.SearchStrategy[Any]] | None = None
) -> Callable[[str, str], st.SearchStrategy[Answer]]:
    """The answers to draw for each operation of `contract` (built once per operation); an
    operation in `overrides` also gets the bodies drawn from there."""
    values = _VALUES.setdefault(contract.name, SchemaValues(contract.spec, keys=READ_KEYS))

    def strategy_for(method: str, template: str) -> st.SearchStrategy[Answer]:
        key = (contract.name, method, template)
        if key not in _MADE:
            statuses, schema, content_type = declared(contract, method, template)
            body = values.for_schema(schema)
            if template in (overrides or {}):
                body = body | (overrides or {})[template]
            _MADE[key] = answers(statuses, body, declared_content_type=content_type)
        return _MADE[key]

    return strategy_for


async def collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


def touch(value: Any) -> None:
    """Read what callers read of a result: an accessor must not raise either."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, Issue):
            _ = (item.summary, item.status, item.status_category, item.labels, item.parent_key)
            _ = (item.assignee_account_id, item.description_text)
        elif isinstance(item, JiraUser):
            _ = (item.account_id, item.active)


# --------------------------------------------------------------------------- Jira

# Bulk answers that nearly add up (element numbers in range or just out of it, a few issues),
# so that the partly readable ones the schema alone rarely draws come up often.
PLAUSIBLE_BULK = st.fixed_dictionaries(
    {
        "issues": st.lists(
            st.fixed_dictionaries(
                {
                    "id": st.integers(1, 10**5).map(str),
                    "key": st.integers(1, 999).map("HR-{}".format),
                }
            ),
            max_size=4,
        )
    },
    optional={
        "errors": st.lists(
            st.fixed_dictionaries(
                {"failedElementNumber": st.integers(-1, 4)}, optional={"status": st.just(400)}
            ),
            max_size=2,
        )
    },
)
JIRA_OVERRIDES = {"/rest/api/3/issue/bulk": PLAUSIBLE_BULK}

JIRA_METHODS: dict[str, Callable[[JiraClient], Awaitable[Any]]] = {
    "myself": lambda jira: jira.myself(),
    "find_user_by_email": lambda jira: jira.find_user_by_email("ada@example.com"),
    "create_issue": lambda jira: jira.create_issue("HR", "Task", "Onboarding: Ada"),
    "create_issues_bulk": lambda jira: jira.create_issues_bulk(
        [issue_payload("HR", "Sub-task", f"step {n}") for n in range(3)]
    ),
    "create_issues_bulk over two requests": lambda jira: jira.create_issues_bulk(
        [issue_payload("HR", "Sub-task", f"step {n}") for n in range(52)]
    ),
    "get_issue": lambda jira: jira.get_issue("HR-1"),
    "get_issues": lambda jira: jira.get_issues(["HR-1", "HR-2"], fields=["labels"]),
    "current_key": lambda jira: jira.current_key("HR-1"),
    "edit_issue": lambda jira: jira.edit_issue("HR-1", fields={"summary": "x"}),
    "add_labels": lambda jira: jira.add_labels("HR-1", ["pf-employee-1"]),
    "add_comment": lambda jira: jira.add_comment("HR-1", "hello"),
    "set_issue_property": lambda jira: jira.set_issue_property(
        "HR-1", "peopleforce.sync", {"a": 1}
    ),
    "get_transitions": lambda jira: jira.get_transitions("HR-1"),
    "transition_to": lambda jira: jira.transition_to("HR-1", "Done"),
    "search": lambda jira: collect(jira.search("project = HR")),
    "search_issues": lambda jira: jira.search_issues("project = HR"),
}


def readable_created(answer: Answer) -> set[str]:
    """Keys of the issues a bulk answer names with a usable id and key (what must be reported)."""
    body = answer.json_body()
    if not isinstance(body, dict) or not isinstance(body.get("issues"), list):
        return set()
    read_as_answer = 200 <= answer.status < 300 or (
        answer.status == 400 and isinstance(body.get("errors"), list)
    )
    if not read_as_answer:
        return set()
    return {
        item["key"]
        for item in body["issues"]
        if isinstance(item, dict)
        and isinstance(item.get("key"), str)
        and item["key"]
        and (
            (isinstance(item.get("id"), str) and item["id"])
            or (isinstance(item.get("id"), int) and not isinstance(item.get("id"), bool))
        )
    }


@pytest.mark.parametrize("method", list(JIRA_METHODS))
def test_jira_client_returns_or_raises_a_typed_error_whatever_jira_answers(
    method: str, jira_contract: SpecContract
) -> None:
    strategy_for = answers_of(jira_contract, JIRA_OVERRIDES)

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        server = Server(data, jira_contract, JIRA_BASE, strategy_for)

        async def call() -> Any:
            async with JiraClient(
                JIRA_BASE, "bot@example.com", "token", transport=httpx.MockTransport(server)
            ) as jira:
                return await JIRA_METHODS[method](jira)

        try:
            result = run(call())
        except ApiError as error:
            result = error
        touch(result)
        if method.startswith("create_issues_bulk"):
            created = set().union(*(readable_created(a) for _, a in server.served))
            if isinstance(result, BulkResult):
                reported = {c.key for c in result.created} | {c.key for c in result.unplaced}
                assert created <= reported, (created, result)
            else:
                assert not created, f"raised {result!r} after Jira reported {created} created"

    check()


# --------------------------------------------------------------------------- PeopleForce

ASSET = st.fixed_dictionaries(
    {"id": st.integers(min_value=1) | st.text(min_size=1, max_size=6)},
    optional={
        name: st.text(max_size=10) | st.none()
        for name in ("name", "code", "serial_number", "description")
    }
    | {
        "created_at": st.datetimes().map(lambda when: when.isoformat()) | st.text(max_size=10),
        "asset_assignments": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "issued_on": st.dates().map(lambda day: day.isoformat()) | st.text(max_size=10),
                    "user_id": st.integers(min_value=1),
                },
            ),
            max_size=2,
        ),
    },
)
# The spec declares no answer for the assets: the shape of every other list, or a bare list.
PEOPLEFORCE_OVERRIDES = {
    "/employees/{employee_id}/assets": st.fixed_dictionaries({"data": st.lists(ASSET, max_size=3)})
    | st.lists(ASSET, max_size=3)
}

PEOPLEFORCE_METHODS: dict[str, Callable[[PeopleForceClient], Awaitable[Any]]] = {
    "get_employee": lambda pf: pf.get_employee(1),
    "iter_employees": lambda pf: collect(pf.iter_employees()),
    "iter_terminated": lambda pf: collect(pf.iter_terminated()),
    "employees_page": lambda pf: pf.employees_page(1),
    "terminated_page": lambda pf: pf.terminated_page(1),
    "list_assets": lambda pf: pf.list_assets(1),
    "check": lambda pf: pf.check(),
}


@pytest.mark.parametrize("method", list(PEOPLEFORCE_METHODS))
def test_peopleforce_client_returns_or_raises_a_typed_error_whatever_peopleforce_answers(
    method: str, peopleforce_contract: SpecContract
) -> None:
    strategy_for = answers_of(peopleforce_contract, PEOPLEFORCE_OVERRIDES)

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        server = Server(data, peopleforce_contract, PEOPLEFORCE_BASE, strategy_for)

        async def call() -> Any:
            async with PeopleForceClient(
                PEOPLEFORCE_BASE, "key", transport=httpx.MockTransport(server)
            ) as peopleforce:
                return await PEOPLEFORCE_METHODS[method](peopleforce)

        with contextlib.suppress(ApiError):  # a typed error is a right answer too
            run(call())

    check()


# --------------------------------------------------------------------------- examples
# Answers that broke the clients before (issue 17, points 8 and 9), each pinned down.


def jira_answering(*bodies: tuple[int, Any]) -> JiraClient:
    """A Jira client whose requests get `bodies` in turn (status, JSON body or raw bytes)."""
    queue = list(bodies)

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = queue.pop(0)
        if isinstance(body, bytes):
            return httpx.Response(status, content=body)
        return httpx.Response(status, json=body)

    return JiraClient(JIRA_BASE, "bot@example.com", "token", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("myself", (200, {"displayName": "no account id"})),
        ("find_user_by_email", (200, {"values": []})),
        ("create_issue", (201, {"self": "https://acme.atlassian.net/rest/api/3/issue/1"})),
        ("get_issue", (200, {"key": "HR-1"})),
        ("add_comment", (201, {"body": "no id"})),
        ("get_transitions", (200, {"transitions": [{"name": "Done", "to": {"name": "Done"}}]})),
        ("get_transitions", (200, {"transitions": "Done"})),
        ("search", (200, {"issues": [{"id": "1", "fields": {}}]})),
        ("search_issues", (200, {"issues": {"id": "1"}})),
        ("create_issue", (201, b"")),
        ("edit_issue", (302, b"")),
    ],
)
async def test_unusual_jira_answers_are_a_typed_error_naming_the_method(
    method: str, answer: tuple[int, Any]
) -> None:
    async with jira_answering(answer) as jira:
        with pytest.raises(UnexpectedAnswerError) as caught:
            await JIRA_METHODS[method](jira)
    assert not is_transient(caught.value)
    if answer[0] < 300:  # the method that read it (search_issues reads through search)
        operation = caught.value.operation
        assert operation
        assert method.startswith(operation)
        assert f": {operation}: " in str(caught.value)


async def test_issue_fields_in_unusual_shapes_read_as_absent() -> None:
    fields = {
        "status": "Done",
        "labels": "a-label",
        "summary": 5,
        "parent": ["HR-0"],
        "assignee": 1,
    }
    async with jira_answering((200, {"id": "1", "key": "HR-1", "fields": fields})) as jira:
        issue = await jira.get_issue("HR-1")
    assert (issue.status, issue.status_category, issue.labels, issue.summary) == (
        None,
        None,
        [],
        None,
    )
    assert (issue.parent_key, issue.assignee_account_id) == (None, None)


def payloads(count: int) -> list[dict[str, Any]]:
    return [issue_payload("HR", "Sub-task", f"step {n}") for n in range(count)]


def created(first: int, count: int) -> list[dict[str, str]]:
    return [{"id": str(10000 + n), "key": f"HR-{n}"} for n in range(first, first + count)]


async def test_bulk_answer_with_an_unusable_element_number_keeps_the_issues_it_created() -> None:
    garbled = {"issues": created(1, 2), "errors": [{"failedElementNumber": 7, "status": 400}]}
    async with jira_answering((201, garbled)) as jira:
        result = await jira.create_issues_bulk(payloads(3))
    assert [issue.key for issue in result.unplaced] == ["HR-1", "HR-2"]
    assert isinstance(result.interrupted_by, UnexpectedAnswerError)
    assert not is_transient(result.interrupted_by)
    assert [failure.index for failure in result.failed] == [0, 1, 2]  # in doubt: not resent blindly


async def test_bulk_answer_that_does_not_add_up_after_a_good_chunk_keeps_both() -> None:
    short = {"issues": created(50, 1), "errors": []}  # 2 elements sent, 1 issue, no error
    async with jira_answering((201, {"issues": created(0, 50)}), (201, short)) as jira:
        result = await jira.create_issues_bulk(payloads(52))
    assert [c.index for c in result.created] == list(range(50))
    assert [issue.key for issue in result.unplaced] == ["HR-50"]
    assert [failure.index for failure in result.failed] == [50, 51]
    assert isinstance(result.interrupted_by, UnexpectedAnswerError)


async def test_bulk_answer_naming_nothing_created_is_raised() -> None:
    async with jira_answering((201, {"issues": "none"})) as jira:
        with pytest.raises(UnexpectedAnswerError, match="create_issues_bulk"):
            await jira.create_issues_bulk(payloads(2))


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    yield lines
    logger.remove(sink)


def peopleforce_answering(
    contract: SpecContract, answer: httpx.Response, base_url: str = PEOPLEFORCE_BASE
) -> PeopleForceClient:
    def handler(request: httpx.Request) -> httpx.Response:  # a fresh copy for each request
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    transport = ContractTransport(contract, base_url, httpx.MockTransport(handler))
    return PeopleForceClient(base_url, "key", transport=transport)


async def test_an_asset_with_an_unreadable_field_does_not_cost_the_list(
    peopleforce_contract: SpecContract, warnings: list[str]
) -> None:
    data = [
        {"id": 1, "name": "Laptop", "created_at": "last Tuesday"},
        {"id": {"oops": 1}, "name": "no readable id"},
        {"id": 3, "name": "Badge", "asset_assignments": [{"issued_on": "2024-02-30"}]},
        "not an asset",
        {"id": 4, "name": "Phone"},
    ]
    answer = httpx.Response(200, json={"data": data})
    async with peopleforce_answering(peopleforce_contract, answer) as peopleforce:
        assets = await peopleforce.list_assets(7)
    assert [(a.id, a.name) for a in assets] == [(1, "Laptop"), (3, "Badge"), (4, "Phone")]
    assert assets[0].created_at is None
    assert assets[1].asset_assignments == []
    assert len(warnings) == 4
    assert "left out unreadable created_at" in warnings[0]
    assert all("employee 7" in line for line in warnings)
    async with peopleforce_answering(peopleforce_contract, answer) as peopleforce:
        read = await peopleforce.read_assets(7)
    assert read.assets == tuple(assets)
    assert read.notes == (  # what the offboarding's notes say: each odd asset, named
        "asset Laptop: its created_at could not be read and was left out",
        "asset 'no readable id' (item 2 of the list) skipped: PeopleForce gave it in a form "
        "that cannot be read (id.int: Input should be a valid integer; id.str: Input should be a "
        "valid string); check it by hand",
        "asset Badge: its asset_assignments could not be read and was left out",
        "asset item 4 of the list skipped: PeopleForce gave it in a form that cannot be read "
        "(the answer: Input should be a valid dictionary or instance of Asset); check it by hand",
    )


@pytest.mark.parametrize(
    ("answer", "names"),
    [
        (httpx.Response(204), []),
        (httpx.Response(200, json={"data": None}), []),
        (httpx.Response(200, json=[{"id": "A-1", "name": "Laptop"}]), ["Laptop"]),
        (httpx.Response(200, json={"data": [{"id": 1, "name": "Desk"}], "metadata": {}}), ["Desk"]),
    ],
)
async def test_list_assets_reads_the_shapes_of_an_undeclared_answer(
    peopleforce_contract: SpecContract, answer: httpx.Response, names: list[str]
) -> None:
    """The spec declares no answer for `GET /employees/{id}/assets`: these are the ones read."""
    async with peopleforce_answering(peopleforce_contract, answer) as peopleforce:
        assert [asset.name for asset in await peopleforce.list_assets(1)] == names


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(200), httpx.Response(200, json={"assets": []}), httpx.Response(200, json="x")],
)
async def test_list_assets_refuses_other_answers_with_a_typed_error(
    peopleforce_contract: SpecContract, answer: httpx.Response
) -> None:
    """An empty 200 is not "no assets": an offboarding would lose the equipment to return."""
    async with peopleforce_answering(peopleforce_contract, answer) as peopleforce:
        with pytest.raises(UnexpectedAnswerError, match="list_assets"):
            await peopleforce.list_assets(1)


FORM = "application/x-www-form-urlencoded"


async def test_json_labelled_with_the_content_type_the_spec_declares_is_read(
    peopleforce_contract: SpecContract,
) -> None:
    """The spec declares form-urlencoded for `GET /employees`; the live API sends JSON: the
    label alone changes nothing."""
    body = {
        "data": [{"id": 1, "full_name": "Ada"}],
        "metadata": {"pagination": {"count": 1, "pages": 1}},
    }
    answer = httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": FORM})
    async with peopleforce_answering(peopleforce_contract, answer) as peopleforce:
        assert await peopleforce.check() == 1
        assert [e.id async for e in peopleforce.iter_employees()] == [1]


async def test_a_form_encoded_body_is_a_typed_error_that_says_why(
    peopleforce_contract: SpecContract,
) -> None:
    """What a mock serving the spec's declared content type sends (Prism): not the live API."""
    answer = httpx.Response(
        200, content=b"data=%5Bobject+Object%5D&metadata=x", headers={"content-type": FORM}
    )
    async with peopleforce_answering(peopleforce_contract, answer) as peopleforce:
        with pytest.raises(UnexpectedAnswerError) as caught:
            await peopleforce.check()
    message = str(caught.value)
    assert FORM in message
    assert "answers JSON" in message
    assert "PEOPLEFORCE_BASE_URL" in message
    assert not is_transient(caught.value)


SERVER = json.loads((SPECS / "peopleforce-v3.json").read_text())["servers"][0]["url"]


@pytest.mark.parametrize(
    ("base_url", "prefix"),
    [
        (SERVER, "/api/public/v3"),  # the published server: its prefix, then the spec's paths
        (SERVER + "/", "/api/public/v3"),
        ("http://127.0.0.1:4010", ""),  # a mock serving the spec's paths at its root (Prism)
    ],
)
async def test_paths_are_the_base_url_then_the_spec_path(
    base_url: str, prefix: str, peopleforce_contract: SpecContract
) -> None:
    """PEOPLEFORCE_BASE_URL is the API root, taken as given: the client neither adds the
    spec's `/api/public/v3` nor strips it, so every request is `<base URL><spec path>`."""
    contract = peopleforce_contract
    checked_before = len(contract.seen)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"data": []})

    transport = ContractTransport(contract, base_url, httpx.MockTransport(handler))
    async with PeopleForceClient(base_url, "key", transport=transport) as peopleforce:
        await peopleforce.check()
        await collect(peopleforce.iter_employees())
        await collect(peopleforce.iter_terminated())
        await peopleforce.list_assets(5)
    assert seen == [
        f"{prefix}{path}"
        for path in ("/employees", "/employees", "/employees/terminated", "/employees/5/assets")
    ]
    assert {template for _, template in contract.seen[checked_before:]} == {
        "/employees",
        "/employees/terminated",
        "/employees/{employee_id}/assets",
    }


async def test_doctor_check_on_a_404_says_what_the_base_url_must_be(
    peopleforce_contract: SpecContract,
) -> None:
    answer = httpx.Response(404, text="Not Found")
    async with peopleforce_answering(peopleforce_contract, answer) as peopleforce:
        with pytest.raises(NotFoundError, match="must be the API root"):
            await peopleforce.check()
