"""The PeopleForce client: paging quirks, filters, typed errors, and the record models.

The main path runs against the simulator over real HTTP; shapes the simulator does not produce
come from `httpx.MockTransport`. Either way every request passes the spec contract.
"""

from __future__ import annotations

import copy
import email.utils
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from core.errors import (
    ApiError,
    ApiTimeoutError,
    AuthenticationError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    TransportError,
    is_transient,
)
from core.peopleforce import (
    Employee,
    EmployeeSummary,
    PeopleForceClient,
    WebhookEnvelope,
    parse_error_body,
)
from core.settings import Settings, SettingsError
from sandbox.server import free_port
from tests.contract import ContractTransport, SpecContract
from tests.fixtures_peopleforce import PEOPLEFORCE_TODAY, PeopleForceSandbox
from tests.paths import PEOPLEFORCE_FIXTURES

MOCK_BASE = "https://tenant.example.test/api/public/v3"


def fixture(name: str) -> Any:
    return json.loads((PEOPLEFORCE_FIXTURES / name).read_text())


def employees_requests(contract: SpecContract, since: int) -> int:
    return sum(1 for op in contract.seen[since:] if op == ("GET", "/employees"))


Handler = Callable[[httpx.Request], httpx.Response]


def mock_client(contract: SpecContract, handler: Handler, **kwargs: Any) -> PeopleForceClient:
    """A client whose answers come from `handler`, with requests still checked against the spec."""
    transport = ContractTransport(contract, MOCK_BASE, httpx.MockTransport(handler))
    return PeopleForceClient(MOCK_BASE, "key", transport=transport, **kwargs)


def paged(pages: dict[int, Any]) -> tuple[Handler, list[int]]:
    """A handler answering `pages[page]` as the JSON body; records the pages asked for."""
    asked: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        asked.append(page)
        return httpx.Response(200, json=pages.get(page, {"data": [], "metadata": None}))

    return handler, asked


def items(*ids: int) -> list[dict[str, Any]]:
    return [{"id": i, "full_name": f"Person {i}"} for i in ids]


# --- paging against the simulator ------------------------------------------------------------


async def test_every_page_read_once_and_stops_at_last_page(
    peopleforce: PeopleForceClient,
    peopleforce_sim: PeopleForceSandbox,
    peopleforce_contract: SpecContract,
) -> None:
    peopleforce_sim.state.page_size = 7
    before = len(peopleforce_contract.seen)

    people = [p async for p in peopleforce.iter_employees()]

    assert [p.id for p in people] == [p.id for p in peopleforce_sim.people]
    assert all(isinstance(p, EmployeeSummary) for p in people)
    # 40 people at 7 a page: pages 1..6, and no seventh request for an empty page.
    assert employees_requests(peopleforce_contract, before) == 6


async def test_pages_share_equal_references_and_stay_equal_to_a_fresh_read(
    peopleforce: PeopleForceClient,
    peopleforce_sim: PeopleForceSandbox,
    peopleforce_contract: SpecContract,
) -> None:
    """A company read in pages holds one object per department, position or manager (what
    keeps 100,000 list items small), and each item reads as it would alone."""
    peopleforce_sim.state.page_size = 7
    first, second = await peopleforce.employees_page(1), await peopleforce.employees_page(2)
    items = first.items + second.items
    by_department: dict[str | None, list[EmployeeSummary]] = {}
    for item in items:
        assert item.department is not None
        by_department.setdefault(item.department.name, []).append(item)
    shared = [same for same in by_department.values() if len(same) > 1]
    assert shared, "the seed has departments of more than one person on these pages"
    for same in shared:
        assert all(item.department is same[0].department for item in same)
    read = {item.id: item for item in second.items}
    async with peopleforce_sim.client(peopleforce_contract) as alone:
        for item in (await alone.employees_page(2)).items:
            assert item == read[item.id]
            assert item.model_fields_set == read[item.id].model_fields_set


async def test_flat_metadata_pages_the_same(
    peopleforce: PeopleForceClient,
    peopleforce_sim: PeopleForceSandbox,
    peopleforce_contract: SpecContract,
) -> None:
    peopleforce_sim.state.page_size = 7
    peopleforce_sim.state.quirks.flat_metadata = True
    before = len(peopleforce_contract.seen)

    ids = [p.id async for p in peopleforce.iter_employees()]

    assert len(ids) == len(set(ids)) == 40
    assert employees_requests(peopleforce_contract, before) == 6


async def test_replayed_first_page_stops_instead_of_looping(
    peopleforce: PeopleForceClient,
    peopleforce_sim: PeopleForceSandbox,
    peopleforce_contract: SpecContract,
) -> None:
    peopleforce_sim.state.page_size = 7
    peopleforce_sim.state.quirks.replay_first_page = True
    before = len(peopleforce_contract.seen)

    ids = [p.id async for p in peopleforce.iter_employees()]

    assert ids == [p.id for p in peopleforce_sim.people[:7]]
    assert employees_requests(peopleforce_contract, before) == 2


async def test_null_data_on_an_empty_result(
    peopleforce: PeopleForceClient, peopleforce_sim: PeopleForceSandbox
) -> None:
    peopleforce_sim.state.quirks.null_data_when_empty = True
    assert [p async for p in peopleforce.iter_employees(ids=[999_999])] == []


async def test_terminated_list_pages_full_records(
    peopleforce: PeopleForceClient, peopleforce_sim: PeopleForceSandbox
) -> None:
    peopleforce_sim.state.page_size = 2
    leavers = [e async for e in peopleforce.iter_terminated()]
    expected = [
        p.id
        for p in peopleforce_sim.people
        if p.termination_effective_on and p.termination_effective_on <= PEOPLEFORCE_TODAY
    ]
    assert [e.id for e in leavers] == expected
    assert all(isinstance(e, Employee) and e.termination_effective_on for e in leavers)


# --- paging shapes the simulator does not produce ---------------------------------------------


async def test_nested_pagination_envelope_from_the_spec_example(
    peopleforce_contract: SpecContract,
) -> None:
    envelope = fixture("api_pagination_envelope_v3.json")
    envelope["data"] = [fixture("api_employee_list_item_v3.json")]
    handler, asked = paged({1: envelope, 2: {"data": items(1)}})
    async with mock_client(peopleforce_contract, handler) as client:
        ids = [p.id async for p in client.iter_employees()]
    assert ids == [297352]
    assert asked == [1]  # pages=1: page 2 is never asked for


async def test_without_metadata_reads_until_an_empty_page(
    peopleforce_contract: SpecContract,
) -> None:
    handler, asked = paged({1: {"data": items(1, 2)}, 2: {"data": items(3)}, 3: {"data": []}})
    async with mock_client(peopleforce_contract, handler) as client:
        ids = [p.id async for p in client.iter_employees()]
    assert ids == [1, 2, 3]
    assert asked == [1, 2, 3]


async def test_without_metadata_stops_at_null_data(peopleforce_contract: SpecContract) -> None:
    handler, asked = paged({1: {"data": items(1, 2)}, 2: {"data": None}, 3: {"data": items(3)}})
    async with mock_client(peopleforce_contract, handler) as client:
        ids = [p.id async for p in client.iter_employees()]
    assert ids == [1, 2]
    assert asked == [1, 2]


async def test_duplicate_ids_across_and_within_pages_are_dropped(
    peopleforce_contract: SpecContract,
) -> None:
    meta = {"pagination": {"page": 1, "pages": 3, "count": 5, "items": 2}}
    handler, asked = paged(
        {
            1: {"data": items(1, 2, 2), "metadata": meta},
            2: {"data": items(2, 3), "metadata": meta},  # a record shifted between pages
            3: {"data": items(4, 5), "metadata": meta},
        }
    )
    async with mock_client(peopleforce_contract, handler) as client:
        ids = [p.id async for p in client.iter_employees()]
    assert ids == [1, 2, 3, 4, 5]
    assert asked == [1, 2, 3]


async def test_replayed_page_with_metadata_claiming_more_pages(
    peopleforce_contract: SpecContract,
) -> None:
    page = {"data": items(1, 2), "metadata": {"page": 1, "pages": 9, "count": 18, "items": 2}}
    handler, asked = paged(dict.fromkeys(range(1, 10), page))
    async with mock_client(peopleforce_contract, handler) as client:
        ids = [p.id async for p in client.iter_employees()]
    assert ids == [1, 2]
    assert asked == [1, 2]


async def test_item_without_id_is_a_shape_error(peopleforce_contract: SpecContract) -> None:
    handler, _ = paged({1: {"data": [{"full_name": "nobody"}]}})
    async with mock_client(peopleforce_contract, handler) as client:
        with pytest.raises(ApiError, match="no `id`") as caught:
            _ = [p async for p in client.iter_employees()]
    assert not is_transient(caught.value)


async def test_html_answer_points_at_the_base_url(peopleforce_contract: SpecContract) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html><title>Sign in</title></html>")

    async with mock_client(peopleforce_contract, handler) as client:
        with pytest.raises(ApiError, match="PEOPLEFORCE_BASE_URL") as caught:
            await client.get_employee(1)
    assert not is_transient(caught.value)


# --- filters ----------------------------------------------------------------------------------


async def test_filters_use_the_spec_names(peopleforce_contract: SpecContract) -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={"data": []})

    kyiv = timezone(timedelta(hours=3))
    async with mock_client(peopleforce_contract, handler) as client:
        _ = [
            p
            async for p in client.iter_employees(
                status="hired",
                updated_since=datetime(2025, 6, 1, 12, 30, tzinfo=kyiv),
                hired_from=date(2025, 6, 1),
                hired_to=date(2025, 6, 15),
                ids=[3, 4],
                emails=["a@example.com", "b@example.com"],
            )
        ]
        _ = [
            e
            async for e in client.iter_terminated(
                terminated_from=date(2025, 5, 1), terminated_to=date(2025, 5, 31)
            )
        ]

    assert seen[0].path == "/api/public/v3/employees"
    assert seen[0].params.multi_items() == [
        ("status", "hired"),
        ("updated_at[gte]", "2025-06-01T09:30:00Z"),
        ("hired_on[gte]", "2025-06-01"),
        ("hired_on[lte]", "2025-06-15"),
        ("ids[]", "3"),
        ("ids[]", "4"),
        ("emails[]", "a@example.com"),
        ("emails[]", "b@example.com"),
        ("page", "1"),
    ]
    assert seen[1].path == "/api/public/v3/employees/terminated"
    assert seen[1].params.multi_items() == [
        ("terminated_on[gte]", "2025-05-01"),
        ("terminated_on[lte]", "2025-05-31"),
        ("page", "1"),
    ]


async def test_empty_id_list_matches_nobody_without_a_request(
    peopleforce_contract: SpecContract,
) -> None:
    handler, asked = paged({1: {"data": items(1)}})
    async with mock_client(peopleforce_contract, handler) as client:
        assert [p async for p in client.iter_employees(ids=[])] == []
        assert [p async for p in client.iter_employees(emails=[])] == []
    assert asked == []


async def test_filters_select_on_the_simulator(
    peopleforce: PeopleForceClient, peopleforce_sim: PeopleForceSandbox
) -> None:
    state = peopleforce_sim.state
    today = PEOPLEFORCE_TODAY
    statuses = {p.id: p.status_on(today) for p in peopleforce_sim.people}

    hired = [p.id async for p in peopleforce.iter_employees(status="hired")]
    assert hired == [i for i, s in statuses.items() if s == "hired"]
    assert len(hired) == 4

    active = [p.id async for p in peopleforce.iter_employees(status="active")]
    assert active == [i for i, s in statuses.items() if s != "terminated"]

    horizon = [
        p.id
        async for p in peopleforce.iter_employees(
            hired_from=today + timedelta(days=1), hired_to=today + timedelta(days=14)
        )
    ]
    assert [state.get(i).hired_on - today for i in horizon] == [
        timedelta(days=3),
        timedelta(days=10),
    ]

    by_email = [
        p.email async for p in peopleforce.iter_employees(emails=["ZOE.Lukasiewicz@example.com"])
    ]
    assert by_email == ["zoe.lukasiewicz@example.com"]

    cutoff = datetime.now(UTC) - timedelta(seconds=1)
    state.set_today(None)  # mutations are stamped with the real clock from here
    state.update(1010, position="Account Executive")
    recent = [p.id async for p in peopleforce.iter_employees(updated_since=cutoff)]
    assert recent == [1010]


async def test_get_employee_and_assets(
    peopleforce: PeopleForceClient, peopleforce_sim: PeopleForceSandbox
) -> None:
    zoe = next(p for p in peopleforce_sim.people if p.first_name == "Zoë")

    employee = await peopleforce.get_employee(zoe.id)
    assets = await peopleforce.list_assets(zoe.id)

    assert employee.display_name == "Zoë Łukasiewicz"
    assert employee.custom_field("github") == "zoe-lukasiewicz"
    assert employee.reporting_to is not None
    assert employee.reporting_to.id == zoe.manager_id
    assert employee.department is not None
    assert employee.department.manager_id == zoe.manager_id
    assert sorted(a.code or "" for a in assets) == sorted(a.code for a in zoe.assets)
    assert all(a.asset_assignments[0].user_id == zoe.id for a in assets)


async def test_check_reports_active_count(
    peopleforce: PeopleForceClient, peopleforce_sim: PeopleForceSandbox
) -> None:
    active = sum(
        1 for p in peopleforce_sim.people if p.status_on(PEOPLEFORCE_TODAY) != "terminated"
    )
    assert await peopleforce.check() == active


def test_from_settings_requires_the_key() -> None:
    with pytest.raises(SettingsError, match="PEOPLEFORCE_API_KEY"):
        PeopleForceClient.from_settings(Settings(_env_file=None, peopleforce_api_key=None))


async def test_from_settings_sends_the_key(peopleforce_contract: SpecContract) -> None:
    keys: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("x-api-key"))
        return httpx.Response(200, json={"data": items(1)})

    settings = Settings(
        _env_file=None, peopleforce_api_key="real-key-123", peopleforce_base_url=MOCK_BASE
    )
    transport = ContractTransport(peopleforce_contract, MOCK_BASE, httpx.MockTransport(handler))
    async with PeopleForceClient.from_settings(settings, transport=transport) as client:
        assert client.base_url == MOCK_BASE
        await client.check()
    assert keys == ["real-key-123"]


# --- errors -----------------------------------------------------------------------------------


async def test_wrong_key_is_an_authentication_error_with_advice(
    peopleforce_sim: PeopleForceSandbox, peopleforce_contract: SpecContract
) -> None:
    async with peopleforce_sim.client(peopleforce_contract, api_key="wrong") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.check()
    error = caught.value
    assert error.status == 401
    assert "Bad Credentials" in error.message
    assert "PEOPLEFORCE_API_KEY" in error.message
    assert "wrong" not in str(error)  # the key is never echoed
    assert not is_transient(error)


async def test_unknown_employee_is_not_found(peopleforce: PeopleForceClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await peopleforce.get_employee(999_999)
    assert not is_transient(caught.value)
    with pytest.raises(NotFoundError):
        await peopleforce.list_assets(999_999)


def _http_date(seconds_from_now: int) -> str:
    return email.utils.format_datetime(
        datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True
    )


ERROR_CASES = [
    pytest.param(403, {}, "<html><title>Forbidden</title></html>", ForbiddenError, False, "IP allow-list", id="403-html"),
    pytest.param(422, {}, {"errors": {"email": ["has already been taken", "is invalid"]}}, RequestRejectedError, False, "", id="422-field-errors"),
    pytest.param(400, {}, fixture("error_400_note_create.json"), RequestRejectedError, False, "text is required", id="400-errors-list"),
    pytest.param(429, {"Retry-After": "7"}, {"message": "Too many requests"}, RateLimitedError, True, "Too many requests", id="429-seconds"),
    pytest.param(500, {}, {"message": "Internal Server Error"}, ServerError, True, "Internal Server Error", id="500"),
    pytest.param(502, {}, "<html><head><title>502 Bad Gateway</title></head></html>", ServerError, True, "502 Bad Gateway", id="502-html"),
    pytest.param(503, {}, "", ServerError, True, "Service Unavailable", id="503-empty"),
    pytest.param(503, {"Retry-After": "5"}, "", RateLimitedError, True, "", id="503-retry-after"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "headers", "body", "error_type", "transient", "text"), ERROR_CASES
)
async def test_error_statuses_map_to_typed_errors(
    peopleforce_contract: SpecContract,
    status: int,
    headers: dict[str, str],
    body: Any,
    error_type: type[ApiError],
    transient: bool,
    text: str,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, headers=headers, text=body)
        return httpx.Response(status, headers=headers, json=body)

    async with mock_client(peopleforce_contract, handler) as client:
        with pytest.raises(ApiError) as caught:
            await client.get_employee(7)

    error = caught.value
    assert type(error) is error_type
    assert error.status == status
    assert is_transient(error) is transient
    assert text in error.message
    assert error.url == f"{MOCK_BASE}/employees/7"
    if status == 422:
        assert error.field_errors == {"email": "has already been taken; is invalid"}


async def test_retry_after_as_seconds_and_as_http_date(peopleforce_contract: SpecContract) -> None:
    answers = iter([{"Retry-After": "12"}, {"Retry-After": _http_date(30)}, {}])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers=next(answers), json={"message": "slow down"})

    waits = []
    async with mock_client(peopleforce_contract, handler) as client:
        for _ in range(3):
            with pytest.raises(RateLimitedError) as caught:
                _ = [p async for p in client.iter_employees()]
            waits.append(caught.value.retry_after)
    assert waits[0] == 12
    assert waits[1] is not None
    assert 25 <= waits[1] <= 30
    assert waits[2] is None


async def test_timeout_is_transient(
    peopleforce_sim: PeopleForceSandbox, peopleforce_contract: SpecContract
) -> None:
    peopleforce_sim.state.set_faults(
        peopleforce_sim.state.faults.model_copy(update={"latency_ms": 1000})
    )
    async with peopleforce_sim.client(peopleforce_contract, timeout=0.1) as client:
        with pytest.raises(ApiTimeoutError) as caught:
            await client.get_employee(1001)
    assert is_transient(caught.value)


async def test_connection_refused_is_transient(peopleforce_contract: SpecContract) -> None:
    base = f"http://127.0.0.1:{free_port()}/api/public/v3"  # nothing listens there
    transport = ContractTransport(peopleforce_contract, base, httpx.AsyncHTTPTransport())
    async with PeopleForceClient(base, "key", transport=transport) as client:
        with pytest.raises(TransportError) as caught:
            await client.check()
    assert not isinstance(caught.value, ApiTimeoutError)
    assert is_transient(caught.value)


@pytest.mark.parametrize(
    ("status", "body", "message", "fields"),
    [
        (401, b'{"message": "Bad Credentials"}', "Bad Credentials (check PEOPLEFORCE_API_KEY", {}),
        (
            400,
            b'{"success": false, "errors": [{"message": "text is required"}]}',
            "text is required",
            {},
        ),
        (422, b'{"errors": {"hired_on": "is not a date"}}', "", {"hired_on": "is not a date"}),
        (422, b'{"errors": "whole thing is wrong"}', "whole thing is wrong", {}),
        (429, b'{"errorMessages": ["injected fault 429"], "errors": {}}', "injected fault 429", {}),
        (500, b"plain text\n  failure", "plain text failure", {}),
        (500, b'["one", {"message": "two"}]', "one; two", {}),
        (500, b"", "", {}),
        (500, b"{not json", "{not json", {}),
    ],
)
def test_error_body_parser_is_defensive(
    status: int, body: bytes, message: str, fields: dict[str, str]
) -> None:
    response = httpx.Response(status, content=body)
    parsed_message, parsed_fields = parse_error_body(response)
    assert parsed_message.startswith(message)
    assert parsed_fields == fields


# --- models -----------------------------------------------------------------------------------


def test_rest_record_v3_parses_with_every_key_known() -> None:
    employee = Employee.model_validate(fixture("api_employee_get_v3.json")["data"])
    assert employee.model_extra == {}
    assert employee.id == 100001
    assert employee.status == "employed"
    assert employee.hired_on == date(2024, 9, 2)
    assert employee.department is not None
    assert employee.department.manager_id == 100000
    assert employee.reporting_to is not None
    assert employee.reporting_to.full_name == "John Manager"
    assert employee.custom_field("github") == "octocat"
    assert employee.custom_field("missing") is None
    assert employee.updated_at == datetime(2024, 8, 20, 13, 29, 8, 713000, tzinfo=UTC)


def test_list_item_v3_parses_with_every_key_known() -> None:
    summary = EmployeeSummary.model_validate(fixture("api_employee_list_item_v3.json"))
    assert summary.model_extra == {}
    assert summary.display_name == "Example User"
    assert summary.position is not None
    assert summary.position.name == "Software Engineer"


def test_employee_webhook_parses_with_every_key_known() -> None:
    envelope = WebhookEnvelope.model_validate(fixture("webhook_employee_create.json"))
    assert envelope.model_extra == {}
    assert envelope.data.model_extra == {}
    assert envelope.data.attributes.model_extra == {}
    assert envelope.is_employee_event
    assert envelope.employee_id == 100001
    assert envelope.data.attributes.termination_effective_date is None


def test_leave_request_webhook_is_not_about_an_employee_profile() -> None:
    envelope = WebhookEnvelope.model_validate(fixture("webhook_leave_request_create.json"))
    assert not envelope.is_employee_event
    assert envelope.employee_id is None
    assert (envelope.data.attributes.model_extra or {})["employee_id"] == 100001


@pytest.mark.parametrize("name", ["api_employee_get_v1.json", "api_employee_list_v1.json"])
def test_v1_records_are_tolerated(name: str) -> None:
    body = fixture(name)
    records = body["data"] if isinstance(body["data"], list) else [body["data"]]
    for record in records:
        employee = Employee.model_validate(record)
        summary = EmployeeSummary.model_validate(record)
        assert employee.display_name == summary.display_name == "Jane Doe"
        assert employee.status is None
        assert summary.active is True
        assert employee.division is None
        assert "custom_fields" in (employee.model_extra or {})  # the v1 array, kept as is
        assert employee.custom_field("Some custom field") is None


def test_every_fixture_is_understood() -> None:
    """A new fixture file fails here until a parser for it is chosen."""
    parsers: dict[str, Callable[[Any], object]] = {
        "api_employee_get_v1.json": lambda b: Employee.model_validate(b["data"]),
        "api_employee_get_v3.json": lambda b: Employee.model_validate(b["data"]),
        "api_employee_list_item_v3.json": EmployeeSummary.model_validate,
        "api_employee_list_v1.json": lambda b: [
            EmployeeSummary.model_validate(i) for i in b["data"]
        ],
        "api_pagination_envelope_v3.json": lambda b: b["metadata"]["pagination"]["pages"],
        "error_401.json": lambda b: parse_error_body(httpx.Response(401, json=b)),
        "error_400_note_create.json": lambda b: parse_error_body(httpx.Response(400, json=b)),
        "webhook_employee_create.json": WebhookEnvelope.model_validate,
        "webhook_leave_request_create.json": WebhookEnvelope.model_validate,
    }
    assert {p.name for p in PEOPLEFORCE_FIXTURES.glob("*.json")} == set(parsers)
    for name, parse in parsers.items():
        assert parse(fixture(name)), name


def test_webhook_and_rest_shapes_describe_the_same_employee() -> None:
    rest = Employee.model_validate(fixture("api_employee_get_v3.json")["data"])
    hook = fixture("webhook_employee_create.json")
    hook["action"] = "employee_terminate"
    hook["data"]["attributes"]["termination_effective_date"] = "2024-12-31"
    envelope = WebhookEnvelope.model_validate(hook)
    rest_terminated = rest.model_copy(update={"termination_effective_on": date(2024, 12, 31)})

    # Termination date: `termination_effective_date` vs `termination_effective_on`.
    assert (
        envelope.data.attributes.termination_effective_date
        == rest_terminated.termination_effective_on
    )
    assert not hasattr(envelope.data.attributes, "termination_effective_on")
    # Manager: one full_name vs first and last names.
    assert envelope.data.reporting_to is not None
    assert rest.reporting_to is not None
    assert envelope.data.reporting_to.full_name == rest.reporting_to.full_name == "John Manager"
    assert envelope.data.reporting_to.id == rest.reporting_to.id
    # Custom fields: by UUID with a label vs by internal name.
    assert "00000000-0000-4000-8000-000000000002" in envelope.data.custom_fields
    assert envelope.data.custom_field_by_name("HR manager") == "100002"
    assert "github" not in envelope.data.custom_fields
    assert rest.custom_field("github") == "octocat"
    # Gender: a string vs a reference.
    assert envelope.data.attributes.gender == "female"
    assert rest.gender is not None
    assert not isinstance(rest.gender, str)
    assert rest.gender.name == "Female"
    # Timestamps: local offset vs UTC, the same instant.
    assert envelope.data.meta is not None
    assert envelope.data.meta.updated_at is not None
    assert envelope.data.meta.updated_at.utcoffset() == timedelta(hours=3)
    assert envelope.data.meta.updated_at == rest.updated_at


def test_unknown_fields_and_values_are_tolerated() -> None:
    record = copy.deepcopy(fixture("api_employee_get_v3.json")["data"])
    record.update(
        status="dismissed",
        brand_new={"nested": [1, 2]},
        probation_ends_on="",
        fields={"github": "bare-value", "shoe_size": None},
        direct_reports=None,
    )
    record["department"]["cost_centre"] = "CC-1"
    employee = Employee.model_validate(record)
    assert employee.status == "dismissed"
    assert (employee.model_extra or {})["brand_new"] == {"nested": [1, 2]}
    assert employee.probation_ends_on is None
    assert employee.custom_field("github") == "bare-value"
    assert employee.direct_reports == []
    assert employee.department is not None
    assert (employee.department.model_extra or {}) == {"cost_centre": "CC-1"}

    unknown = WebhookEnvelope.model_validate(
        {"action": "vacancy_create", "data": {"id": 5, "attributes": None}}
    )
    assert unknown.employee_id is None
    assert not unknown.is_employee_event


def test_sub_record_topics_point_at_the_employee_in_attributes() -> None:
    position = WebhookEnvelope.model_validate(
        {
            "action": "employee_position_create",
            "data": {"id": 77, "attributes": {"employee_id": "100001"}},
        }
    )
    assert position.is_employee_event
    assert position.employee_id == 100001
    bare = WebhookEnvelope.model_validate({"action": "employee_salary_update", "data": {"id": 78}})
    assert bare.employee_id is None


def test_display_name_falls_back() -> None:
    assert (
        EmployeeSummary(id=1, full_name="  ", first_name="Ana", last_name="Silva").display_name
        == "Ana Silva"
    )
    assert EmployeeSummary(id=2, email="x@example.com").display_name == "x@example.com"
    assert EmployeeSummary(id=3).display_name == "employee 3"


# --- event keys -------------------------------------------------------------------------------


def _raw(body: dict[str, Any], **dumps: Any) -> bytes:
    return json.dumps(body, **dumps).encode()


def test_event_key_is_deterministic_and_ignores_formatting() -> None:
    body = fixture("webhook_employee_create.json")
    compact = _raw(body, separators=(",", ":"))
    pretty = _raw(body, indent=2)
    key = WebhookEnvelope.model_validate_json(compact).event_key(compact)
    assert key == WebhookEnvelope.model_validate_json(compact).event_key(compact)
    assert key == WebhookEnvelope.model_validate_json(pretty).event_key(pretty)
    assert key == "employee_create:100001:2024-08-20T13:29:08.713000+00:00"


def test_event_key_is_one_instant_whatever_the_offset() -> None:
    body = fixture("webhook_employee_create.json")
    utc = copy.deepcopy(body)
    utc["data"]["meta"]["updated_at"] = "2024-08-20T13:29:08.713Z"
    assert WebhookEnvelope.model_validate(body).event_key(b"") == WebhookEnvelope.model_validate(
        utc
    ).event_key(b"")


def test_event_keys_differ_by_action_employee_and_time() -> None:
    body = fixture("webhook_employee_create.json")
    variants = [body]
    for path, value in (
        (("action",), "employee_update"),
        (("data", "id"), 100002),
        (("data", "meta", "updated_at"), "2024-08-20T16:29:08.714+03:00"),
    ):
        variant = copy.deepcopy(body)
        target = variant
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        variants.append(variant)
    keys = {WebhookEnvelope.model_validate(v).event_key(_raw(v)) for v in variants}
    assert len(keys) == len(variants)


def test_event_key_falls_back_to_the_body_hash() -> None:
    first = {"action": "employee_update", "data": {"id": 1}}
    second = {"action": "employee_update", "data": {"id": 1, "attributes": {"first_name": "B"}}}
    key_one = WebhookEnvelope.model_validate(first).event_key(_raw(first))
    key_two = WebhookEnvelope.model_validate(second).event_key(_raw(second))
    assert key_one.startswith("sha256:")
    assert len(key_one) == len("sha256:") + 64
    assert key_one != key_two
    assert key_one == WebhookEnvelope.model_validate(first).event_key(_raw(first))
