"""The PeopleForce simulator and webhook signatures.

Webhooks go over real HTTP to a small receiver that keeps the raw bytes, so signatures are
checked exactly as the gateway will check them. Response shapes are compared with the fixtures
in ../shared/fixtures/peopleforce.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from core.errors import NotFoundError, RateLimitedError, ServerError, is_transient
from core.peopleforce import SIGNATURE_HEADER, PeopleForceClient, WebhookEnvelope, sign, verify
from sandbox.peopleforce import create_app
from sandbox.seed import SeedPerson, seed_people
from sandbox.server import BackgroundServer, free_port
from tests.contract import SpecContract
from tests.fixtures_peopleforce import PEOPLEFORCE_API_KEY, PEOPLEFORCE_TODAY, PeopleForceSandbox
from tests.paths import PEOPLEFORCE_FIXTURES, SPECS

SPEC = SPECS / "peopleforce-v3.json"
SECRET = "hook-secret"

VECTOR_SECRET = "s3cr3t"
VECTOR_BODY = b'{"action":"employee_update","data":{"id":1}}'
VECTOR_SIGNATURE = "sha256=f3c4866cebb32651fcc87827fe20e40f798e9dd4498b970d45d5cacac44b7b32"


def fixture(name: str) -> Any:
    return json.loads((PEOPLEFORCE_FIXTURES / name).read_text())


# --- signatures -------------------------------------------------------------------------------


def test_signature_matches_the_documented_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_BODY) == VECTOR_SIGNATURE
    assert verify(VECTOR_SECRET, VECTOR_BODY, VECTOR_SIGNATURE)


@pytest.mark.parametrize(
    "header",
    [
        VECTOR_SIGNATURE.upper().replace("SHA256=", "sha256="),
        VECTOR_SIGNATURE.upper(),
        f"  {VECTOR_SIGNATURE} ",
    ],
    ids=["upper-hex", "upper-prefix", "whitespace"],
)
def test_verify_accepts_case_and_whitespace_variants(header: str) -> None:
    assert verify(VECTOR_SECRET, VECTOR_BODY, header)


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        ("wrong", VECTOR_BODY, VECTOR_SIGNATURE),
        (VECTOR_SECRET, VECTOR_BODY.replace(b"1", b"2"), VECTOR_SIGNATURE),
        (VECTOR_SECRET, VECTOR_BODY + b" ", VECTOR_SIGNATURE),
        (VECTOR_SECRET, VECTOR_BODY, None),
        (VECTOR_SECRET, VECTOR_BODY, ""),
        (VECTOR_SECRET, VECTOR_BODY, VECTOR_SIGNATURE.removeprefix("sha256=")),
        (VECTOR_SECRET, VECTOR_BODY, VECTOR_SIGNATURE.replace("sha256=", "sha1=")),
        (VECTOR_SECRET, VECTOR_BODY, VECTOR_SIGNATURE[:-2]),
        (VECTOR_SECRET, VECTOR_BODY, VECTOR_SIGNATURE[:-1] + "é"),
    ],
    ids=[
        "wrong-secret",
        "tampered",
        "trailing-space",
        "missing",
        "empty",
        "no-prefix",
        "other-algorithm",
        "truncated",
        "non-ascii",
    ],
)
def test_verify_rejects(secret: str, body: bytes, header: str | None) -> None:
    assert not verify(secret, body, header)


# --- a webhook receiver -----------------------------------------------------------------------


@dataclass
class Receiver:
    """Keeps every webhook's raw bytes and headers; answers `status`."""

    url: str
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    status: int = 202

    def envelopes(self) -> list[WebhookEnvelope]:
        return [WebhookEnvelope.model_validate_json(raw) for raw, _ in self.received]

    def actions(self) -> list[str]:
        return [envelope.action for envelope in self.envelopes()]


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[Receiver]:
    app = FastAPI()
    with BackgroundServer(app) as server:
        receiver = Receiver(url=server.url + "/hooks/peopleforce")

        @app.post("/hooks/peopleforce")
        async def hook(request: Request) -> Response:
            receiver.received.append((await request.body(), dict(request.headers)))
            return Response(status_code=receiver.status)

        yield receiver


@pytest.fixture
def receiver(receiver_server: Receiver, peopleforce_sim: PeopleForceSandbox) -> Receiver:
    """A clean receiver, and the simulator pointed at it with `SECRET`."""
    receiver_server.received.clear()
    receiver_server.status = 202
    peopleforce_sim.state.set_webhook_target(receiver_server.url, SECRET)
    return receiver_server


def assert_signed(receiver: Receiver) -> None:
    for raw, headers in receiver.received:
        assert headers["content-type"] == "application/json"
        assert verify(SECRET, raw, headers[SIGNATURE_HEADER]), raw


# --- webhooks from mutations ------------------------------------------------------------------


async def test_control_endpoints_send_signed_webhooks(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox, peopleforce: PeopleForceClient
) -> None:
    control = peopleforce_sim.url + "/_sandbox"
    async with httpx.AsyncClient(base_url=control, trust_env=False) as http:
        hired = await http.post(
            "/employees",
            json={
                "first_name": "Zoë",
                "last_name": "Łukasiewicz-Nowak",
                "department": "IT",
                "hired_on": str(PEOPLEFORCE_TODAY + timedelta(days=5)),
                "fields": {"github": "zln"},
            },
        )
        assert hired.status_code == 201, hired.text
        new_id = hired.json()["id"]
        updated = await http.patch(
            f"/employees/{new_id}", json={"department": "Engineering", "position": "SRE"}
        )
        terminated = await http.post(
            f"/employees/{new_id}/terminate", json={"effective_on": str(PEOPLEFORCE_TODAY)}
        )
        reverted = await http.post(f"/employees/{new_id}/revert")
        started = await http.post(f"/employees/{new_id}/start")
        deliveries = (await http.get("/webhooks")).json()

    assert [r.status_code for r in (updated, terminated, reverted, started)] == [200] * 4
    expected = [
        "employee_create",
        "employee_update",
        "employee_terminate",
        "employee_termination_revert",
        "employee_start",
    ]
    assert receiver.actions() == expected
    assert_signed(receiver)
    assert [d["action"] for d in deliveries] == expected
    assert all(
        d["ok"] and d["status_code"] == 202 and d["employee_id"] == new_id for d in deliveries
    )

    envelopes = receiver.envelopes()
    assert {e.employee_id for e in envelopes} == {new_id}
    assert (
        len({e.event_key(raw) for e, (raw, _) in zip(envelopes, receiver.received, strict=True)})
        == 5
    )
    created, update, terminate, revert, start = envelopes
    assert created.data.attributes.first_name == "Zoë"
    assert "Zoë".encode() in receiver.received[0][0]  # UTF-8 on the wire, not \u escapes
    assert created.data.custom_field_by_name("GitHub") == "zln"
    assert created.data.reporting_to is not None  # the IT head, by default
    assert update.data.department is not None
    assert update.data.department.name == "Engineering"
    assert terminate.data.attributes.termination_effective_date == PEOPLEFORCE_TODAY
    assert revert.data.attributes.termination_effective_date is None
    assert start.data.attributes.hired_on == PEOPLEFORCE_TODAY  # an early start moves the date

    # The webhook is a hint; the REST record it points at agrees with the last one.
    record = await peopleforce.get_employee(new_id)
    assert record.status == "probation"
    assert record.position is not None
    assert record.position.name == "SRE"
    assert start.data.meta is not None
    assert record.updated_at == start.data.meta.updated_at


async def test_a_deleted_employee_is_gone_from_the_api_silently_and_for_good(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox, peopleforce: PeopleForceClient
) -> None:
    control = peopleforce_sim.url + "/_sandbox"
    async with httpx.AsyncClient(base_url=control, trust_env=False) as http:
        hired = await http.post(
            "/employees",
            json={
                "first_name": "Mis",
                "last_name": "Take",
                "hired_on": str(PEOPLEFORCE_TODAY + timedelta(days=5)),
            },
        )
        gone_id = hired.json()["id"]
        deleted = await http.delete(f"/employees/{gone_id}")
        again = await http.delete(f"/employees/{gone_id}")
        manager = hired.json()["manager_id"]
        refused = await http.delete(f"/employees/{manager}")  # they manage others
        next_hire = await http.post("/employees", json={"first_name": "Next", "last_name": "One"})

    assert (deleted.status_code, deleted.json()["id"], deleted.json()["status"]) == (
        200,
        gone_id,
        "hired",
    )
    assert again.status_code == 404
    assert refused.status_code == 422
    assert "manages" in refused.text
    # None for the delete (the second hire starts today: create and start).
    assert receiver.actions() == ["employee_create", "employee_create", "employee_start"]
    with pytest.raises(NotFoundError):
        await peopleforce.get_employee(gone_id)
    assert gone_id not in [e.id async for e in peopleforce.iter_employees()]
    assert next_hire.json()["id"] == gone_id + 1  # an id is never given again


def test_hire_starting_today_also_sends_employee_start(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox
) -> None:
    person = peopleforce_sim.state.hire(
        first_name="Lena", last_name="Neu", hired_on=PEOPLEFORCE_TODAY
    )
    assert receiver.actions() == ["employee_create", "employee_start"]
    assert_signed(receiver)
    # The nightly batch starts today's seeded starter, but not this hire a second time.
    assert peopleforce_sim.state.run_nightly() == [("employee_start", 1018)]
    assert person.id == max(p.id for p in peopleforce_sim.people) + 1


async def test_future_termination_waits_for_the_nightly_batch(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox, peopleforce: PeopleForceClient
) -> None:
    state = peopleforce_sim.state
    last_day = PEOPLEFORCE_TODAY + timedelta(days=2)  # a day with no seeded start
    state.terminate(1024, effective_on=last_day)

    assert receiver.actions() == ["employee_update"]
    pending = await peopleforce.get_employee(1024)
    assert pending.status == "employed"
    assert pending.termination_effective_on == last_day
    assert 1024 not in [e.id async for e in peopleforce.iter_terminated()]

    state.set_today(last_day)
    assert state.run_nightly() == [("employee_terminate", 1024)]
    assert state.run_nightly() == []  # once a day
    assert receiver.actions() == ["employee_update", "employee_terminate"]
    assert_signed(receiver)
    assert (await peopleforce.get_employee(1024)).status == "terminated"
    assert 1024 in [e.id async for e in peopleforce.iter_terminated(terminated_from=last_day)]


def test_future_termination_can_stay_silent(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox
) -> None:
    peopleforce_sim.state.quirks.notify_future_terminations = False
    peopleforce_sim.state.terminate(1024, effective_on=PEOPLEFORCE_TODAY + timedelta(days=3))
    assert receiver.received == []


def test_nightly_batch_starts_future_hires_on_their_day(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox
) -> None:
    state = peopleforce_sim.state
    ravi = next(p for p in peopleforce_sim.people if p.first_name == "Ravi")
    state.set_today(ravi.hired_on)
    assert ("employee_start", ravi.id) in state.run_nightly()
    assert state.status_of(state.get(ravi.id)) != "hired"
    assert "employee_start" in receiver.actions()


def test_failed_deliveries_are_recorded_not_raised(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox
) -> None:
    state = peopleforce_sim.state
    receiver.status = 500
    state.update(1010, position="Account Executive")
    state.set_webhook_target(f"http://127.0.0.1:{free_port()}/nobody-listens", SECRET)
    state.update(1010, position="Sales Lead")

    (refused,) = [d for d in state.deliveries if d.status_code is None]
    (failed,) = [d for d in state.deliveries if d.status_code == 500]
    assert not failed.ok
    assert not refused.ok
    assert refused.error
    assert "Connect" in refused.error
    assert state.get(1010).position == "Sales Lead"  # the mutation itself went through


def test_no_secret_means_no_signature_header(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox
) -> None:
    peopleforce_sim.state.set_webhook_target(receiver.url, None)
    peopleforce_sim.state.update(1010, location="Remote")
    ((_, headers),) = receiver.received
    assert SIGNATURE_HEADER not in headers


def test_redelivery_repeats_the_exact_body(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox
) -> None:
    state = peopleforce_sim.state
    state.update(1011, location="Remote")
    first = state.deliveries[0]
    again = state.redeliver(first.id)

    assert again is not None
    assert again.redelivery_of == first.id
    (raw_one, _), (raw_two, _) = receiver.received
    assert raw_one == raw_two
    envelope = WebhookEnvelope.model_validate_json(raw_one)
    assert envelope.event_key(raw_one) == envelope.event_key(raw_two)
    assert envelope.data.attributes.first_name == "雷"


def test_clock_nightly_quirks_and_reset_over_http(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox
) -> None:
    ravi = next(p for p in peopleforce_sim.people if p.first_name == "Ravi")
    with httpx.Client(base_url=peopleforce_sim.url + "/_sandbox", trust_env=False) as http:
        assert http.get("/clock").json() == {"today": str(PEOPLEFORCE_TODAY), "fixed": True}
        assert http.put("/clock", json={"today": str(ravi.hired_on)}).status_code == 200
        fired = http.post("/nightly").json()
        assert {"action": "employee_start", "employee_id": ravi.id} in fired
        # Terminate with no body: effective today, so employee_terminate at once.
        assert http.post(f"/employees/{ravi.id}/terminate").json()["status"] == "terminated"
        assert http.put("/quirks", json={"flat_metadata": True}).json()["flat_metadata"] is True
        assert http.get("/webhook-target").json() == {"url": receiver.url, "secret_set": True}

        assert http.post("/reset").json() == {"people": len(peopleforce_sim.people)}
        assert http.get("/clock").json()["today"] == str(PEOPLEFORCE_TODAY)
        assert http.get("/quirks").json()["flat_metadata"] is False
        assert http.get("/webhooks").json() == []
        assert http.get(f"/employees/{ravi.id}").json()["status"] == "hired"
    assert receiver.actions()[-1] == "employee_terminate"


def test_bad_control_requests_are_refused(peopleforce_sim: PeopleForceSandbox) -> None:
    control = peopleforce_sim.url + "/_sandbox"
    with httpx.Client(base_url=control, trust_env=False) as http:
        assert http.patch("/employees/999999", json={"position": "x"}).status_code == 404
        assert http.patch("/employees/1010", json={"manager_id": 999999}).status_code == 422
        assert http.patch("/employees/1010", json={"manager_id": 1010}).status_code == 422
        assert http.patch("/employees/1010", json={"department": None}).status_code == 422
        assert http.patch("/employees/1010", json={"salary": 1}).status_code == 422
        assert http.post("/employees/1010/revert").status_code == 422
        assert http.post("/employees", json={"first_name": "No last name"}).status_code == 422


# --- shapes -----------------------------------------------------------------------------------


def keys(value: dict[str, Any]) -> set[str]:
    return set(value)


def test_single_record_has_the_fixture_keys(peopleforce_sim: PeopleForceSandbox) -> None:
    expected = fixture("api_employee_get_v3.json")
    # Someone with every value the fixture has set: a manager and a personal email.
    person = next(p for p in peopleforce_sim.people if p.manager_id and p.personal_email)
    with httpx.Client(trust_env=False, headers={"X-API-KEY": PEOPLEFORCE_API_KEY}) as http:
        body = http.get(f"{peopleforce_sim.base_url}/employees/{person.id}").json()
    assert keys(body) == {"data"}
    record, sample = body["data"], expected["data"]
    assert keys(record) == keys(sample)
    for name in (
        "gender",
        "position",
        "job_level",
        "location",
        "employment_type",
        "division",
        "department",
        "reporting_to",
    ):
        assert keys(record[name]) == keys(sample[name]), name
    for name, value in sample.items():  # same JSON types where the fixture has a value
        if value is not None and name != "direct_reports":
            assert type(record[name]) is type(value), name
    assert keys(record["fields"]["github"]) == keys(sample["fields"]["github"])
    assert record["updated_at"].endswith("Z")


def test_list_page_has_the_fixture_keys_and_only_spec_extras(
    peopleforce_sim: PeopleForceSandbox,
) -> None:
    sample = fixture("api_employee_list_item_v3.json")
    envelope = fixture("api_pagination_envelope_v3.json")
    spec_item_keys = set(
        json.loads(SPEC.read_text())["components"]["schemas"]["EmployeeSimple"]["properties"]
    )
    with httpx.Client(trust_env=False, headers={"X-API-KEY": PEOPLEFORCE_API_KEY}) as http:
        body = http.get(f"{peopleforce_sim.base_url}/employees").json()

    assert keys(body) == keys(envelope)
    assert keys(body["metadata"]["pagination"]) == keys(envelope["metadata"]["pagination"])
    assert body["metadata"]["pagination"] == {"page": 1, "pages": 1, "count": 37, "items": 37}
    item = next(i for i in body["data"] if i["reporting_to"])  # the CEO reports to nobody
    assert keys(sample) <= keys(item)
    assert keys(item) - keys(sample) <= spec_item_keys
    assert not {"termination_effective_on", "fields", "updated_at"} & keys(item)
    for name in ("position", "department", "reporting_to"):
        assert keys(item[name]) >= keys(sample[name])
    assert isinstance(item["gender"], str)


def test_webhook_body_has_the_fixture_keys(
    receiver: Receiver, peopleforce_sim: PeopleForceSandbox
) -> None:
    sample = fixture("webhook_employee_create.json")
    peopleforce_sim.state.update(1009, job_level="Senior")
    ((raw, _),) = receiver.received
    body = json.loads(raw)

    assert keys(body) == keys(sample)
    assert keys(body["data"]) == keys(sample["data"])
    assert keys(body["data"]["attributes"]) == keys(sample["data"]["attributes"])
    assert keys(body["data"]["reporting_to"]) == keys(sample["data"]["reporting_to"])
    assert keys(body["data"]["meta"]) == keys(sample["data"]["meta"])
    for entry in body["data"]["custom_fields"].values():
        assert keys(entry) == {"name", "value", "group"}
    assert body["data"]["meta"]["updated_at"].endswith("+03:00")


def test_wrong_or_missing_key_gets_the_documented_401(peopleforce_sim: PeopleForceSandbox) -> None:
    with httpx.Client(trust_env=False) as http:
        for headers in ({}, {"X-API-KEY": "nope"}):
            response = http.get(f"{peopleforce_sim.base_url}/employees", headers=headers)
            assert response.status_code == 401
            assert response.json() == fixture("error_401.json")


def test_invalid_filters_are_rejected(peopleforce_sim: PeopleForceSandbox) -> None:
    with httpx.Client(trust_env=False, headers={"X-API-KEY": PEOPLEFORCE_API_KEY}) as http:
        response = http.get(
            f"{peopleforce_sim.base_url}/employees",
            params={"status": "gone", "hired_on[gte]": "soon", "ids[]": "x"},
        )
    assert response.status_code == 422
    assert set(response.json()["errors"]) == {"status", "hired_on[gte]", "ids[]"}


# --- faults -----------------------------------------------------------------------------------


async def test_faults_make_the_api_fail_but_not_the_control_plane(
    peopleforce_sim: PeopleForceSandbox, peopleforce: PeopleForceClient
) -> None:
    control = peopleforce_sim.url + "/_sandbox/faults"
    async with httpx.AsyncClient(trust_env=False) as http:
        put = await http.put(
            control, json={"error_rate": 1, "error_statuses": [429], "retry_after": "3"}
        )
        assert put.status_code == 200
        assert (await http.get(control)).json()["error_rate"] == 1

    with pytest.raises(RateLimitedError) as limited:
        await peopleforce.get_employee(1001)
    assert limited.value.retry_after == 3
    assert is_transient(limited.value)

    peopleforce_sim.state.set_faults(
        peopleforce_sim.state.faults.model_copy(update={"error_statuses": [500]})
    )
    with pytest.raises(ServerError):
        await peopleforce.check()

    peopleforce_sim.state.reset()
    assert (await peopleforce.get_employee(1001)).id == 1001


async def test_faults_given_at_creation_apply(peopleforce_contract: SpecContract) -> None:
    from sandbox.faults import Faults

    app = create_app(
        api_key="k", people=[], faults=Faults(error_rate=1, error_statuses=[503], retry_after=None)
    )
    with BackgroundServer(app) as server:
        base = server.url + "/api/public/v3"
        async with PeopleForceClient(base, "k") as client:
            with pytest.raises(ServerError) as caught:
                await client.check()
    assert caught.value.status == 503


# --- seed -------------------------------------------------------------------------------------


def test_seed_is_deterministic_and_covers_the_cases() -> None:
    today = PEOPLEFORCE_TODAY
    people = seed_people(today=today)
    assert people == seed_people(today=today)
    assert people != seed_people(today=today, seed=8)
    assert len(people) == 40
    assert len({p.id for p in people}) == 40
    assert len({p.email for p in people}) == 40
    assert all(p.email and p.email.endswith("@example.com") and p.email.isascii() for p in people)

    by_id = {p.id: p for p in people}
    ceo = [p for p in people if p.manager_id is None]
    assert len(ceo) == 1
    heads = [p for p in people if p.manager_id == ceo[0].id]
    assert {h.department for h in heads} >= {"Engineering", "Sales", "Finance", "People", "IT"}
    assert all(p.manager_id in by_id for p in people if p.manager_id is not None)

    horizon = today + timedelta(days=14)
    future = [p.hired_on for p in people if p.hired_on > today]
    assert any(d <= horizon for d in future)
    assert any(d > horizon for d in future)
    assert sum(p.status_on(today) == "terminated" for p in people) >= 3
    assert (
        sum(1 for p in people if p.termination_effective_on and p.termination_effective_on > today)
        == 1
    )
    names = {p.full_name for p in people}
    assert {"Zoë Łukasiewicz", "José Núñez"} <= names
    assert any("李" in name for name in names)
    assert {a.category for p in people for a in p.assets} == {"Laptop", "Badge", "Phone"}
    assert all(not p.assets for p in people if p.hired_on > today)


def test_small_seed_keeps_managers() -> None:
    people: list[SeedPerson] = seed_people(3, today=PEOPLEFORCE_TODAY)
    assert len(people) == 3
    ids = {p.id for p in people}
    assert all(p.manager_id is None or p.manager_id in ids for p in people)
