"""Fuzzing the webhook route: whatever is posted, the gateway never fails, stores nothing
unsigned, and stores every signed employee event as dispatchable work or refuses it with a 4xx.

Hypothesis draws deliveries to `POST /webhooks/peopleforce` of `create_app` (in-process,
`httpx.ASGITransport`, the inbox on a temporary SQLite file, as in test_gateway.py): envelopes
with odd actions, ids, names and timestamps (control characters, forged log lines, lone
surrogates escaped in JSON or raw), any JSON, bytes that are not UTF-8, a byte-order mark,
bodies over the size limit; signed with the secret (as sent, upper-case hex, padded) or not
(no header, another secret, another body's signature, garbage). Each delivery must answer
below 500; an unsigned one must leave the inbox as it was; a signed employee event (an
`employee_*` action with an employee id) must be answered 4xx or be stored `pending`, with
an employee id the dispatcher can name a flow run after.

`WEBHOOK_FUZZ_EXAMPLES` sets the number of deliveries (default 300, 3 to 8 s here; the
README's Testing section shows a run of 5,000).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from core.names import WEBHOOK_PATH
from core.peopleforce.models import EMPLOYEE_PROFILE_ACTIONS
from core.peopleforce.signature import SIGNATURE_HEADER, sign
from core.settings import Settings
from core.store import EventStatus, InboxRepository, WebhookEvent
from tests.answers import ANY_JSON
from webhook_gateway import create_app
from webhook_gateway.app import MAX_BODY_BYTES
from webhook_gateway.dispatch import _run_name, _run_tags, _work_of

EXAMPLES = int(os.environ.get("WEBHOOK_FUZZ_EXAMPLES", "300"))
SECRET = "fuzz-secret"
MAX_RECORD_ID = 2**31 - 1

# --------------------------------------------------------------------------- deliveries

LONE_SURROGATES = st.tuples(st.text(max_size=4), st.sampled_from(["\ud800", "\udfff", "\udc80"]))
TEXT = (
    st.text(max_size=30)
    | st.sampled_from(
        [
            "",
            " ",
            "\n",
            "x\nERROR forged log line",
            "\r\n\t",
            "\x00",
            "\u202e",
            "Zoë 李雷 🚀",
            "a" * 5000,
        ]
    )
    | LONE_SURROGATES.map("".join)
)
IDS = (
    st.integers(min_value=1, max_value=MAX_RECORD_ID)  # most often an id the gateway takes
    | st.integers(min_value=1, max_value=MAX_RECORD_ID)
    | st.integers(min_value=-3, max_value=2**40)
    | st.sampled_from([0, 1, MAX_RECORD_ID, MAX_RECORD_ID + 1, 2**63, True, False, 1.0, 2.5])
    | st.sampled_from(["12", " 9_10_015 ", "0x1f", "١٢", "-4", ""])
    | st.none()
    | ANY_JSON
)
ACTIONS = (
    st.sampled_from(
        [
            *sorted(EMPLOYEE_PROFILE_ACTIONS),
            "employee_position_update",
            "employee_salary_create",
            "leave_request_create",
            "applicant_create",
        ]
    )
    | TEXT
    | ANY_JSON
)
ATTRIBUTES = (
    st.fixed_dictionaries(
        {},
        optional={
            "first_name": TEXT,
            "last_name": TEXT,
            "email": TEXT,
            "employee_id": IDS,
            "hired_on": st.dates().map(str) | TEXT,
        },
    )
    | ANY_JSON
)
META = st.fixed_dictionaries(
    {}, optional={"updated_at": st.datetimes().map(lambda when: when.isoformat()) | TEXT | ANY_JSON}
)
DATA = (
    st.fixed_dictionaries(
        {},
        optional={"id": IDS, "attributes": ATTRIBUTES, "meta": META, "custom_fields": ANY_JSON},
    )
    | ANY_JSON
)
ENVELOPE = st.fixed_dictionaries({"action": ACTIONS}, optional={"data": DATA})
# An employee event the gateway stores as work, with odd attributes: the case that matters most.
EMPLOYEE_EVENT = st.fixed_dictionaries(
    {
        "action": st.sampled_from(sorted(EMPLOYEE_PROFILE_ACTIONS)),
        "data": st.fixed_dictionaries(
            {"id": st.integers(min_value=1, max_value=MAX_RECORD_ID), "attributes": ATTRIBUTES},
            optional={"meta": META},
        ),
    }
)
PAYLOADS = st.one_of(EMPLOYEE_EVENT, EMPLOYEE_EVENT, ENVELOPE, ENVELOPE, ANY_JSON)


def encode(payload: Any, how: str) -> bytes:
    if how == "escaped":  # lone surrogates as \ud800 escapes: valid JSON, valid UTF-8
        return json.dumps(payload).encode()
    if how == "bom":
        return codecs.BOM_UTF8 + json.dumps(payload, separators=(",", ":")).encode()
    # raw: non-ASCII as is; a lone surrogate becomes bytes that are not UTF-8
    return json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Delivery:
    body: bytes
    payload: Any  # what the body holds, None for bytes that are not JSON
    signing: str
    content_type: str | None

    @property
    def signed(self) -> bool:
        return self.signing in {"as sent", "upper-case", "padded"}

    def headers(self) -> dict[str, str]:
        signature = {
            "as sent": sign(SECRET, self.body),
            "upper-case": "sha256=" + sign(SECRET, self.body).removeprefix("sha256=").upper(),
            "padded": f"  {sign(SECRET, self.body)} ",
            "another secret": sign("not-the-secret", self.body),
            "another body": sign(SECRET, self.body + b" "),
            "prefix only": "sha256=",
            "garbage": "md5=0123",
        }.get(self.signing)
        headers = {SIGNATURE_HEADER: signature} if signature is not None else {}
        if self.content_type is not None:
            headers["content-type"] = self.content_type
        return headers


JSON_BODIES = st.tuples(PAYLOADS, st.sampled_from(["escaped", "bom", "raw"])).map(
    lambda drawn: (encode(drawn[0], drawn[1]), drawn[0])
)
RAW_BODIES = st.tuples(
    st.binary(max_size=64)
    | st.just(b"")
    | st.just(b"{" * 100_000)
    | st.just(b'{"action": "employee_update", "data": {"id": 1}}' + b" " * MAX_BODY_BYTES),
    st.none(),
)
DELIVERIES = st.builds(
    lambda body, signing, content_type: Delivery(body[0], body[1], signing, content_type),
    st.one_of(JSON_BODIES, JSON_BODIES, JSON_BODIES, RAW_BODIES),
    st.sampled_from(
        [
            "as sent",
            "upper-case",
            "padded",
            "none",
            "another secret",
            "another body",
            "prefix only",
            "garbage",
        ]
    ),
    st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", None]),
)

# --------------------------------------------------------------------------- what must hold


def employee_reference(payload: Any) -> bool:
    """True for an employee event the gateway can tie to an employee: a profile action with a
    `data.id`, another `employee_*` action with `attributes.employee_id`; an id is a JSON
    integer or a string of digits."""
    if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
        return False
    action, data = payload["action"], payload.get("data")
    if not action.startswith("employee_") or not isinstance(data, dict):
        return False
    if action in EMPLOYEE_PROFILE_ACTIONS:
        return _is_id(data.get("id"))
    attributes = data.get("attributes")
    return isinstance(attributes, dict) and _is_id(attributes.get("employee_id"))


def _is_id(value: Any) -> bool:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_RECORD_ID


def assert_dispatchable(event: WebhookEvent) -> None:
    """What the dispatcher does with a pending event before Prefect sees it: group it by
    employee, name the flow run and tag it; all of it must work and be sendable as UTF-8.
    (Anything it cannot turn into work is set aside instead, never left pending.)"""
    assert isinstance(event.employee_id, int)
    assert 0 < event.employee_id <= MAX_RECORD_ID
    works = [_work_of(event)]
    name = _run_name([event.employee_id], works)
    tags = _run_tags([event.employee_id], works)
    json.dumps({"name": name, "tags": tags}, ensure_ascii=False).encode()


# --------------------------------------------------------------------------- the suite


@pytest.fixture
async def gateway(sqlite_database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(
        Settings(
            _env_file=None,
            webhook_secret=SecretStr(SECRET),
            gateway_reject_limit=0,  # one client sends every case: no 429 for its refusals
        ),
        store_url=sqlite_database_url,
    )
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            # An exception in the app is answered 500, as a server would, not raised here.
            transport=httpx.ASGITransport(app=manager.app, raise_app_exceptions=False),
            base_url="http://gateway",
        ) as client,
    ):
        yield client, app


async def stored_count(app: FastAPI) -> int:
    async with app.state.store.engine.connect() as connection:
        return (
            await connection.execute(sa.text("select count(*) from webhook_event"))
        ).scalar_one()


async def test_whatever_is_posted_no_5xx_nothing_unsigned_stored_signed_employee_events_dispatchable(
    gateway: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, app = gateway
    inbox: InboxRepository = app.state.inbox
    loop = asyncio.get_running_loop()

    async def deliver(delivery: Delivery) -> None:
        before = await stored_count(app)
        response = await client.post(
            WEBHOOK_PATH, content=delivery.body, headers=delivery.headers()
        )
        after = await stored_count(app)
        assert response.status_code < 500, (response.status_code, response.text, delivery)
        if not delivery.signed:
            assert response.status_code in (401, 413), (response.status_code, delivery)
            assert after == before, f"an unsigned delivery was stored: {delivery}"
            return
        if response.status_code >= 400:
            assert after == before, (response.status_code, delivery)
            return
        assert response.status_code in (200, 202), (response.status_code, delivery)
        event = await inbox.get(response.json()["event_key"])
        assert event is not None
        assert after - before == (1 if response.status_code == 202 else 0)
        if employee_reference(delivery.payload):
            assert event.status is EventStatus.pending, (event.status, delivery)
        if event.status is EventStatus.pending:
            assert_dispatchable(event)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(delivery=DELIVERIES)
    def check(delivery: Delivery) -> None:
        done: Future[None] = asyncio.run_coroutine_threadsafe(deliver(delivery), loop)
        done.result(timeout=60)

    # Hypothesis drives from a worker thread; every delivery runs on this loop, where the
    # app's lifespan (and its inbox) lives.
    await asyncio.to_thread(check)
