"""The webhook gateway and its inbox.

The inbox repository and concurrent deliveries run on SQLite and PostgreSQL (the fixtures of
test_store.py); the gateway's checks run in-process (`httpx.ASGITransport` inside
`LifespanManager`) on SQLite, and one test has the PeopleForce simulator post signed webhooks
to the gateway over real HTTP.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from core.database import create_engine
from core.names import WEBHOOK_PATH
from core.peopleforce.signature import SIGNATURE_HEADER, sign
from core.settings import Settings
from core.store import (
    EffectAction,
    EventStatus,
    InboxRepository,
    MappingStore,
    WebhookEvent,
    current_revision,
    downgrade,
    head_revision,
    migrate,
    parse_ref,
)
from core.store.models import StoreModel
from sandbox.peopleforce import create_app as create_peopleforce_app
from sandbox.server import BackgroundServer, free_port
from tests.fixtures_database import table_names
from tests.fixtures_peopleforce import PEOPLEFORCE_API_KEY, PEOPLEFORCE_TODAY
from tests.paths import PEOPLEFORCE_FIXTURES
from webhook_gateway import GatewayConfigError, create_app
from webhook_gateway.app import MAX_BODY_BYTES

SECRET = "gateway-test-secret"


def settings(secret: str | None = SECRET, *, allow_unsigned: bool = False) -> Settings:
    return Settings(
        _env_file=None,
        webhook_secret=SecretStr(secret) if secret else None,
        allow_unsigned_webhooks=allow_unsigned,
    )


def envelope(action: str, record_id: int | None = 1, **data: Any) -> bytes:
    """A compact webhook body, as PeopleForce sends it."""
    payload_data: dict[str, Any] = {} if record_id is None else {"id": record_id}
    payload_data.update(data)
    return json.dumps({"action": action, "data": payload_data}, separators=(",", ":")).encode()


def employee_event(action: str, employee_id: int, updated_at: str) -> bytes:
    return envelope(action, employee_id, meta={"updated_at": updated_at})


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(secret, body), "content-type": "application/json"}


@asynccontextmanager
async def running_gateway(
    store_url: str, gateway_settings: Settings | None = None, **options: Any
) -> AsyncGenerator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(gateway_settings or settings(), store_url=store_url, **options)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway"
        ) as client,
    ):
        yield client, app


@pytest.fixture
async def gateway(sqlite_database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    async with running_gateway(sqlite_database_url) as running:
        yield running


@pytest.fixture
async def client(gateway: tuple[httpx.AsyncClient, FastAPI]) -> httpx.AsyncClient:
    return gateway[0]


@pytest.fixture
def inbox_of(gateway: tuple[httpx.AsyncClient, FastAPI]) -> InboxRepository:
    return gateway[1].state.inbox


@pytest.fixture
async def inbox(database_url: str) -> AsyncIterator[InboxRepository]:
    async with await MappingStore.open(database_url) as store:
        yield InboxRepository(store.engine)


async def post(
    client: httpx.AsyncClient, body: bytes, *, secret: str | None = SECRET, **kwargs: Any
) -> httpx.Response:
    headers = signed(body, secret) if secret else {"content-type": "application/json"}
    return await client.post(WEBHOOK_PATH, content=body, headers=headers, **kwargs)


# The inbox repository, on SQLite and PostgreSQL


def new_event(
    key: str,
    *,
    employee_id: int | None = 1,
    status: EventStatus = EventStatus.pending,
    received_at: datetime | None = None,
) -> WebhookEvent:
    event = WebhookEvent(
        event_key=key,
        action="employee_update",
        employee_id=employee_id,
        status=status,
        body=json.dumps({"key": key}),
    )
    if received_at is not None:
        event.received_at = event.updated_at = received_at
    return event


async def test_add_stores_an_event_once(inbox: InboxRepository) -> None:
    stored, created = await inbox.add(new_event("k1"))
    again, created_again = await inbox.add(
        WebhookEvent(event_key="k1", action="other", employee_id=2, body="{}")
    )

    assert created
    assert not created_again
    assert stored.id is not None
    assert again.id == stored.id
    assert (again.action, again.employee_id, again.body) == ("employee_update", 1, '{"key": "k1"}')
    fetched = await inbox.get("k1")
    assert fetched is not None
    assert fetched.status is EventStatus.pending
    assert fetched.dispatch_attempts == 0
    assert fetched.received_at.utcoffset() == timedelta(0)
    assert await inbox.get("missing") is None


async def test_concurrent_adds_store_each_key_once(inbox: InboxRepository) -> None:
    keys = [f"key-{number % 10}" for number in range(40)]

    async with asyncio.timeout(30):
        results = await asyncio.gather(*(inbox.add(new_event(key)) for key in keys))

    created_keys = sorted(event.event_key for event, created in results if created)
    assert created_keys == sorted(set(keys))
    assert len(await inbox.recent(100)) == 10


async def test_pending_lists_due_events_oldest_first(inbox: InboxRepository) -> None:
    start = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    for minute, key in [(3, "c"), (1, "a"), (2, "b"), (4, "deferred")]:
        await inbox.add(new_event(key, received_at=start + timedelta(minutes=minute)))
    await inbox.add(new_event("ignored", employee_id=None, status=EventStatus.ignored))
    await inbox.mark_attempt_failed(["deferred"], "Prefect down", start + timedelta(hours=1))

    due_now = await inbox.pending(now=start + timedelta(minutes=30))
    due_later = await inbox.pending(now=start + timedelta(hours=1))

    assert [event.event_key for event in due_now] == ["a", "b", "c"]
    assert [event.event_key for event in due_later] == ["a", "b", "c", "deferred"]
    assert [event.event_key for event in await inbox.pending(2)] == ["a", "b"]


async def test_dispatch_then_outcome(inbox: InboxRepository) -> None:
    await inbox.add(new_event("p1"))
    await inbox.add(new_event("p2"))
    await inbox.add(new_event("ignored", employee_id=None, status=EventStatus.ignored))
    before = await inbox.get("p1")
    assert before is not None

    changed = await inbox.mark_dispatched(["p1", "p2", "ignored", "unknown"], "run-1")
    # A second dispatcher finds nothing left to claim.
    assert await inbox.mark_dispatched(["p1"], "run-2") == 0

    assert changed == 2
    dispatched = await inbox.get("p1")
    assert dispatched is not None
    assert (dispatched.status, dispatched.flow_run_id, dispatched.dispatch_attempts) == (
        EventStatus.dispatched,
        "run-1",
        1,
    )
    assert dispatched.updated_at > before.updated_at
    ignored = await inbox.get("ignored")
    assert ignored is not None
    assert ignored.status is EventStatus.ignored

    with pytest.raises(ValueError, match="an outcome ends an event"):
        await inbox.close_run("run-1", EventStatus.pending, None)
    assert await inbox.close_run("run-1", "done", "completed in flow run sync · 2 employees") == 2
    # Closed once: a late second look at the run changes nothing.
    assert await inbox.close_run("run-1", EventStatus.failed, "Crashed") == 0

    for key in ("p1", "p2"):
        event = await inbox.get(key)
        assert event is not None
        assert (event.status, event.outcome) == (
            EventStatus.done,
            "completed in flow run sync · 2 employees",
        )


async def test_a_run_closes_each_employees_events_with_the_jira_issues_it_changed(
    inbox: InboxRepository,
) -> None:
    store = MappingStore(inbox.engine)
    await store.record_effect(
        7, EffectAction.create_onboarding, issue_key="IT-1", flow_run_id="sub-run"
    )
    await store.record_effect(7, EffectAction.create_subtask, issue_key="IT-1", flow_run_id="sub")
    await store.record_effect(7, EffectAction.comment, issue_key="IT-9", flow_run_id="sub-run")
    await store.record_effect(8, EffectAction.comment, issue_key="HR-3", flow_run_id="other-run")
    for key, employee in (("a7", 7), ("b7", 7), ("c8", 8)):
        await inbox.add(new_event(key, employee_id=employee))
    await inbox.mark_dispatched(["a7", "b7", "c8"], "run-1")

    keys = await inbox.jira_keys(["run-1", "sub-run"])
    assert keys == {7: ["IT-1", "IT-9"]}
    closed = await inbox.close_run(
        "run-1", EventStatus.done, "no change in Jira", per_employee={7: "Jira IT-1, IT-9"}
    )

    assert closed == 3
    outcomes = {event.event_key: event.outcome for event in await inbox.recent()}
    assert outcomes == {"a7": "Jira IT-1, IT-9", "b7": "Jira IT-1, IT-9", "c8": "no change in Jira"}


async def test_each_event_has_a_short_reference_and_an_employee_a_latest_event(
    inbox: InboxRepository,
) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    first, _ = await inbox.add(new_event("k-old", employee_id=7, received_at=start))
    latest, _ = await inbox.add(
        new_event("k-new", employee_id=7, received_at=start + timedelta(minutes=1))
    )
    await inbox.add(new_event("k-other", employee_id=8, received_at=start + timedelta(minutes=2)))

    assert first.ref == f"e{first.id}"
    assert parse_ref(first.ref) == first.id
    assert parse_ref(f" E{first.id} ") == first.id
    assert [parse_ref(text) for text in ("17", "e", "ex17", "employee_update:7:x")] == [None] * 4
    found = await inbox.get_by_id(parse_ref(latest.ref) or 0)
    assert found is not None
    assert found.event_key == "k-new"
    assert (await inbox.get_by_id(10_000)) is None
    newest = await inbox.latest_of(7)
    assert newest is not None
    assert newest.event_key == "k-new"
    assert await inbox.latest_of(9) is None


async def test_failed_attempts_count_and_defer(inbox: InboxRepository) -> None:
    await inbox.add(new_event("e1"))
    retry_at = datetime.now(UTC) + timedelta(minutes=5)

    assert await inbox.mark_attempt_failed(["e1"], "ConnectError: refused", retry_at) == 1
    assert await inbox.mark_attempt_failed(["e1"], "ConnectError: refused", retry_at) == 1

    event = await inbox.get("e1")
    assert event is not None
    assert event.status is EventStatus.pending
    assert event.dispatch_attempts == 2
    assert event.next_attempt_at == retry_at
    assert event.outcome == "ConnectError: refused"
    assert await inbox.pending() == []

    await inbox.mark_dispatched(["e1"], "run-9")
    dispatched = await inbox.get("e1")
    assert dispatched is not None
    assert (dispatched.dispatch_attempts, dispatched.next_attempt_at, dispatched.outcome) == (
        3,
        None,
        None,
    )


async def test_a_set_aside_event_keeps_its_reason_and_leaves_the_queue(
    inbox: InboxRepository,
) -> None:
    await inbox.add(new_event("poison", employee_id=7))
    await inbox.add(new_event("next", employee_id=8))
    await inbox.add(new_event("sent", employee_id=9))
    await inbox.mark_dispatched(["sent"], "run-1")
    retry_at = datetime.now(UTC) - timedelta(seconds=1)
    await inbox.mark_attempt_failed(["poison"], "dispatch failed (TypeError: x)", retry_at)

    reasons = {"poison": "set aside, not dispatched: bad", "sent": "no", "unknown": "no"}
    assert await inbox.set_aside(reasons) == 1  # only what is pending

    poison, sent = await inbox.get("poison"), await inbox.get("sent")
    assert poison is not None
    assert sent is not None
    assert (poison.status, poison.outcome, poison.next_attempt_at) == (
        EventStatus.set_aside,
        "set aside, not dispatched: bad",
        None,
    )
    assert sent.status is EventStatus.dispatched
    assert [event.event_key for event in await inbox.pending()] == ["next"]
    assert [e.event_key for e in await inbox.recent(status=EventStatus.set_aside)] == ["poison"]
    # `replay` sends it back, once whatever poisoned it is fixed.
    requeued = await inbox.requeue("poison")
    assert requeued is not None
    assert requeued.status is EventStatus.pending
    assert requeued.outcome == "requeued (was set_aside)"


async def test_requeue_sets_an_event_back_to_pending(inbox: InboxRepository) -> None:
    await inbox.add(new_event("r1", employee_id=7))
    await inbox.mark_dispatched(["r1"], "run-1")
    await inbox.close_run("run-1", EventStatus.failed, "Jira down")
    await inbox.add(new_event("leave", employee_id=None, status=EventStatus.ignored))

    requeued = await inbox.requeue("r1")

    assert requeued is not None
    stored = await inbox.get("r1")
    assert stored is not None
    for event in (requeued, stored):
        assert event.status is EventStatus.pending
        assert (event.flow_run_id, event.dispatch_attempts, event.next_attempt_at) == (
            None,
            0,
            None,
        )
        assert event.outcome == "requeued (was failed, flow run run-1)"
    assert [event.event_key for event in await inbox.pending()] == ["r1"]
    assert await inbox.requeue("unknown") is None
    with pytest.raises(ValueError, match="concerns no employee"):
        await inbox.requeue("leave")


async def test_recent_lists_newest_first_and_filters_by_status(inbox: InboxRepository) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    for minute, key in enumerate(["first", "second", "third"]):
        await inbox.add(new_event(key, received_at=start + timedelta(minutes=minute)))
    await inbox.mark_dispatched(["second"], "run-1")

    assert [event.event_key for event in await inbox.recent()] == ["third", "second", "first"]
    assert [event.event_key for event in await inbox.recent(2)] == ["third", "second"]
    dispatched = await inbox.recent(status="dispatched")
    assert [event.event_key for event in dispatched] == ["second"]


async def test_marking_many_events_at_once(inbox: InboxRepository) -> None:
    keys = [f"bulk-{number}" for number in range(1200)]
    async with inbox.engine.begin() as connection:
        await connection.execute(
            sa.insert(StoreModel.metadata.tables["webhook_event"]),
            [
                {
                    "event_key": key,
                    "action": "employee_update",
                    "employee_id": 1,
                    "status": "pending",
                    "received_at": datetime.now(UTC),
                    "updated_at": datetime.now(UTC),
                    "body": "{}",
                }
                for key in keys
            ],
        )

    assert await inbox.mark_dispatched([*keys, *keys[:10]], "run-big") == len(keys)
    assert await inbox.pending() == []


async def test_prune_removes_only_old_events_that_are_done_or_ignored(
    inbox: InboxRepository,
) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=31), now - timedelta(days=29)
    for status in EventStatus:  # whatever statuses there are: only done and ignored may go
        employee_id = None if status is EventStatus.ignored else 1
        for n in range(3):
            await inbox.add(
                new_event(
                    f"old-{status}-{n}", status=status, employee_id=employee_id, received_at=old
                )
            )
        await inbox.add(
            new_event(
                f"recent-{status}", status=status, employee_id=employee_id, received_at=recent
            )
        )
    # Received long ago, but done only now: its age is its last change.
    await inbox.add(new_event("late", received_at=old))
    await inbox.mark_dispatched(["late"], "run-1")
    await inbox.close_run("run-1", EventStatus.done, "completed")

    # Batches of 2: the six old events go over three transactions.
    removed = await inbox.prune(now - timedelta(days=30), batch=2)

    assert removed == {"done": 3, "ignored": 3}
    left = {event.event_key for event in await inbox.recent(100)}
    expected = {f"recent-{status}" for status in EventStatus} | {"late"}
    expected |= {
        f"old-{status}-{n}"
        for status in EventStatus
        if status not in (EventStatus.done, EventStatus.ignored)
        for n in range(3)
    }
    assert left == expected
    assert await inbox.prune(now - timedelta(days=30)) == {"done": 0, "ignored": 0}
    counts = await inbox.count_by_status()
    assert counts["done"] == 2  # recent-done and late
    assert counts["failed"] == counts["pending"] == counts["dispatched"] == 4


async def test_check_writable_sees_a_read_only_database(
    inbox: InboxRepository, database_url: str
) -> None:
    await inbox.check_writable()

    read_only = read_only_engine(database_url)
    try:
        with pytest.raises(DBAPIError, match=r"(?i)read.?only"):
            await InboxRepository(read_only).check_writable()
    finally:
        await read_only.dispose()


def read_only_engine(database_url: str) -> AsyncEngine:
    """An engine on the same database that may only read (SQLite `mode=ro`, PostgreSQL setting)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return create_async_engine(f"sqlite+aiosqlite:///file:{url.database}?mode=ro&uri=true")
    return create_async_engine(
        url, connect_args={"server_settings": {"default_transaction_read_only": "on"}}
    )


async def test_upgrade_from_0002_adds_an_empty_inbox_and_keeps_links(database_url: str) -> None:
    await migrate(database_url, "0002")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            # Plain SQL in the 0002 shape, independent of today's models.
            await connection.execute(
                sa.text(
                    "INSERT INTO employee_link (employee_id, lifecycle, onboarding_subtask_keys,"
                    " offboarding_subtask_keys, synced_fields, created_at, updated_at)"
                    " VALUES (5, 'onboarding', '[]', '[]', '{}', :at, :at)"
                ),
                {"at": datetime(2026, 1, 5, tzinfo=UTC)},
            )
            await connection.execute(
                sa.text(
                    "INSERT INTO jira_effect (employee_id, at, action, issue_key, detail)"
                    " VALUES (5, :at, 'create_onboarding', 'HR-5', '{}')"
                ),
                {"at": datetime(2026, 1, 5, tzinfo=UTC)},
            )
    finally:
        await engine.dispose()

    async with await MappingStore.open(database_url) as store:
        assert await current_revision(database_url) == head_revision()
        inbox = InboxRepository(store.engine)
        assert await inbox.recent() == []
        _, created = await inbox.add(new_event("after-upgrade", employee_id=5))
        link = await store.get(5)
        effects = await store.effects(5)
    assert created
    assert link is not None
    assert link.lifecycle == "onboarding"
    assert [effect.issue_key for effect in effects] == ["HR-5"]

    await downgrade(database_url, "0002")
    assert "webhook_event" not in await table_names(database_url)
    async with await MappingStore.open(database_url) as store:
        assert await store.get(5) is not None


# The gateway: signatures, sizes, shapes


async def test_the_documented_signature_test_vector_is_accepted(sqlite_database_url: str) -> None:
    body = b'{"action":"employee_update","data":{"id":1}}'
    header = "sha256=f3c4866cebb32651fcc87827fe20e40f798e9dd4498b970d45d5cacac44b7b32"

    async with running_gateway(sqlite_database_url, settings("s3cr3t")) as (client, app):
        response = await client.post(
            WEBHOOK_PATH, content=body, headers={"X-PeopleForce-Signature": header}
        )
        stored = await app.state.inbox.get(response.json()["event_key"])

    assert response.status_code == 202
    assert stored is not None
    assert response.json() == {
        "event_key": "sha256:" + hashlib.sha256(body).hexdigest(),
        "ref": stored.ref,
        "status": "pending",
    }
    assert (stored.action, stored.employee_id, stored.body) == (
        "employee_update",
        1,
        body.decode(),
    )


async def test_missing_or_wrong_signature_is_401_and_stores_nothing(
    client: httpx.AsyncClient, inbox_of: InboxRepository
) -> None:
    body = envelope("employee_create", 5)
    attempts = {
        "missing": {},
        "other secret": {SIGNATURE_HEADER: sign("another-secret", body)},
        "other body": {SIGNATURE_HEADER: sign(SECRET, body + b" ")},
        "no prefix": {SIGNATURE_HEADER: sign(SECRET, body).removeprefix("sha256=")},
        "garbage": {SIGNATURE_HEADER: "sha256=zz"},
    }

    for name, headers in attempts.items():
        response = await client.post(WEBHOOK_PATH, content=body, headers=headers)
        assert response.status_code == 401, name
        expected = "missing signature" if name == "missing" else "invalid signature"
        assert response.json() == {"detail": expected}, name

    assert await inbox_of.recent() == []


async def test_signature_is_checked_over_the_exact_bytes(client: httpx.AsyncClient) -> None:
    # The same JSON re-serialised differs in its bytes: only the bytes that were signed pass.
    original = b'{"action": "employee_update", "data": {"id": 3}}'
    reserialised = json.dumps(json.loads(original), separators=(",", ":")).encode()

    response = await client.post(
        WEBHOOK_PATH, content=reserialised, headers={SIGNATURE_HEADER: sign(SECRET, original)}
    )

    assert response.status_code == 401


async def test_oversize_body_with_content_length_is_413(
    client: httpx.AsyncClient, inbox_of: InboxRepository
) -> None:
    body = padded_envelope(MAX_BODY_BYTES + 1)

    response = await post(client, body)
    unsigned = await post(client, body, secret=None)

    assert response.status_code == 413
    assert "exceeds" in response.json()["detail"]
    assert unsigned.status_code == 413  # the size is checked before the signature
    assert await inbox_of.recent() == []


async def test_oversize_streamed_body_is_413_without_reading_all_of_it(
    client: httpx.AsyncClient,
) -> None:
    chunk = b"x" * 65536
    sent = 0

    async def ten_mebibytes() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(160):
            sent += 1
            yield chunk

    # An async iterator goes out chunked, without Content-Length.
    response = await client.post(WEBHOOK_PATH, content=ten_mebibytes())

    assert response.status_code == 413
    assert "content-length" not in response.request.headers
    assert sent <= MAX_BODY_BYTES // len(chunk) + 2


async def test_a_body_of_exactly_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    body = padded_envelope(MAX_BODY_BYTES)
    assert len(body) == MAX_BODY_BYTES

    response = await post(client, body)

    assert response.status_code == 202


def padded_envelope(size: int) -> bytes:
    """A valid employee_update of exactly `size` bytes."""
    empty = envelope("employee_update", 8, padding="")
    return envelope("employee_update", 8, padding="p" * (size - len(empty)))


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"action": "employee_create"', b"\xff\xfe\x00", b"[" * 200_000, b""],
    ids=["syntax", "truncated", "not-utf8", "too-deep", "empty"],
)
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, inbox_of: InboxRepository, body: bytes
) -> None:
    response = await post(client, body)

    assert response.status_code == 400
    assert response.json()["detail"].startswith("body is not UTF-8 JSON")
    assert await inbox_of.recent() == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], "not a JSON object"),
        ("employee_create", "not a JSON object"),
        ({"data": {"id": 1}}, "`action` must be a non-empty string"),
        ({"action": 5, "data": {"id": 1}}, "`action` must be a non-empty string"),
        ({"action": " ", "data": {"id": 1}}, "`action` must be a non-empty string"),
        ({"action": "x" * 101, "data": {"id": 1}}, "`action` is longer than 100"),
        ({"action": "employee_create"}, "`data` must be an object"),
        ({"action": "employee_create", "data": [1]}, "`data` must be an object"),
        ({"action": "employee_create", "data": {"id": "12"}}, "`data.id` must be a positive"),
        ({"action": "employee_create", "data": {"id": True}}, "`data.id` must be a positive"),
        ({"action": "employee_create", "data": {"id": 0}}, "`data.id` must be a positive"),
        ({"action": "employee_create", "data": {"id": 2**40}}, "`data.id` must be a positive"),
        (
            {"action": "employee_position_create", "data": {"attributes": {"employee_id": -5}}},
            "the employee id must be a positive integer",
        ),
    ],
)
async def test_json_that_is_not_an_envelope_is_422(
    client: httpx.AsyncClient, inbox_of: InboxRepository, payload: Any, reason: str
) -> None:
    response = await post(client, json.dumps(payload).encode())

    assert response.status_code == 422
    assert response.json()["detail"].startswith("not a PeopleForce webhook: ")
    assert reason in response.json()["detail"]
    assert await inbox_of.recent() == []


# The gateway: storing and acknowledging


async def test_employee_create_is_stored_pending_and_a_repeat_changes_nothing(
    client: httpx.AsyncClient, inbox_of: InboxRepository
) -> None:
    body = (PEOPLEFORCE_FIXTURES / "webhook_employee_create.json").read_bytes()

    first = await post(client, body)
    repeat = await post(client, body)

    # meta.updated_at 16:29:08.713+03:00, in UTC.
    key = "employee_create:100001:2024-08-20T13:29:08.713000+00:00"
    events = await inbox_of.recent()
    assert len(events) == 1
    # The short reference `events` shows and `replay` takes.
    answer = {"event_key": key, "ref": f"e{events[0].id}", "status": "pending"}
    assert (first.status_code, first.json()) == (202, answer)
    assert (repeat.status_code, repeat.json()) == (200, answer)
    assert (events[0].event_key, events[0].employee_id, events[0].action) == (
        key,
        100001,
        "employee_create",
    )
    assert events[0].body.encode() == body


async def test_a_signed_body_with_a_byte_order_mark_is_stored_like_any_other(
    client: httpx.AsyncClient, inbox_of: InboxRepository, log_lines: list[str]
) -> None:
    plain = (PEOPLEFORCE_FIXTURES / "webhook_employee_create.json").read_bytes()
    with_bom = codecs.BOM_UTF8 + plain

    # Signed over the bytes as sent, BOM included: a signature of the body without it is wrong.
    forged = await client.post(WEBHOOK_PATH, content=with_bom, headers=signed(plain))
    response = await post(client, with_bom)

    assert forged.status_code == 401
    assert response.status_code == 202, response.text
    key = "employee_create:100001:2024-08-20T13:29:08.713000+00:00"
    assert (response.json()["event_key"], response.json()["status"]) == (key, "pending")
    (event,) = await inbox_of.recent()
    assert (event.employee_id, event.action, event.status) == (
        100001,
        "employee_create",
        EventStatus.pending,
    )
    # Stored as the JSON it carries, so the dispatcher reads it like any other body.
    assert event.body.encode() == plain
    assert [e.event_key for e in await inbox_of.pending()] == [key]
    assert f"webhook {key} accepted as pending (employee 100001, ref {event.ref})" in "\n".join(
        log_lines
    )
    # The same delivery without the BOM is a repeat, not a second event.
    assert (await post(client, plain)).status_code == 200


async def test_a_repeat_answers_with_the_status_the_event_has_now(
    client: httpx.AsyncClient, inbox_of: InboxRepository
) -> None:
    body = employee_event("employee_update", 4, "2026-05-01T10:00:00+03:00")
    key = (await post(client, body)).json()["event_key"]
    await inbox_of.mark_dispatched([key], "run-4")

    repeat = await post(client, body)

    assert (repeat.status_code, repeat.json()["event_key"], repeat.json()["status"]) == (
        200,
        key,
        "dispatched",
    )


async def test_leave_request_is_stored_as_ignored(
    client: httpx.AsyncClient, inbox_of: InboxRepository
) -> None:
    body = (PEOPLEFORCE_FIXTURES / "webhook_leave_request_create.json").read_bytes()

    response = await post(client, body)

    key = "leave_request_create:500001:2024-02-01T15:43:50.878000+00:00"
    assert (response.status_code, response.json()["event_key"], response.json()["status"]) == (
        202,
        key,
        "ignored",
    )
    stored = await inbox_of.get(key)
    assert stored is not None
    assert (stored.status, stored.employee_id) == (EventStatus.ignored, None)
    assert await inbox_of.pending() == []


@pytest.mark.parametrize(
    ("body", "status", "employee_id"),
    [
        (envelope("vacancy_create", 3), "ignored", None),
        (envelope("applicant_create", 3), "ignored", None),
        (envelope("employee_salary_update", 77), "ignored", None),
        (envelope("employee_salary_update", 77, attributes={"employee_id": 12}), "pending", 12),
        (envelope("employee_update", None), "ignored", None),
    ],
    ids=["unknown", "applicant", "salary-without-employee", "salary-of-employee", "no-id"],
)
async def test_what_is_pending_and_what_is_ignored(
    client: httpx.AsyncClient,
    inbox_of: InboxRepository,
    body: bytes,
    status: str,
    employee_id: int | None,
) -> None:
    response = await post(client, body)

    assert (response.status_code, response.json()["status"]) == (202, status)
    stored = await inbox_of.get(response.json()["event_key"])
    assert stored is not None
    assert stored.employee_id == employee_id


async def test_a_record_in_an_unexpected_shape_is_still_accepted(
    client: httpx.AsyncClient, log_lines: list[str]
) -> None:
    # The webhook is a hint: a field the models cannot read must not lose the event.
    body = envelope(
        "employee_update",
        9,
        attributes={"hired_on": "02.09.2024"},
        meta={"updated_at": "2026-05-01T10:00:00+03:00"},
    )

    response = await post(client, body)

    assert response.status_code == 202
    assert response.json() == {
        "event_key": "sha256:" + hashlib.sha256(body).hexdigest(),
        "ref": "e1",
        "status": "pending",
    }
    assert any("unexpected shape of data.attributes.hired_on" in line for line in log_lines)


# Sender-controlled text: what cannot be stored or shown is refused, the rest is escaped


@pytest.mark.parametrize(
    "raw_action",
    [
        r"employee_update\ud800",  # a lone surrogate: valid as a JSON escape, not as UTF-8
        r"employee_update\n12:00:00.000 ERROR   forged line",
        r"employee_update\u0000",  # PostgreSQL text cannot hold NUL
        r"employee_update\u2028forged",
    ],
    ids=["lone-surrogate", "newline", "nul", "line-separator"],
)
async def test_an_action_that_is_not_printable_text_is_422_not_500(
    client: httpx.AsyncClient, inbox_of: InboxRepository, log_lines: list[str], raw_action: str
) -> None:
    # The escape is written into the JSON text, as a sender would: the body is valid UTF-8.
    body = ('{"action":"' + raw_action + '","data":{"id":7}}').encode()

    response = await post(client, body)

    # A 5xx would have a sender that retries on errors deliver it forever.
    assert response.status_code == 422, response.text
    assert "`action` must be printable text" in response.json()["detail"]
    assert await inbox_of.recent() == []
    assert not any("forged" in line for line in log_lines)


async def test_sender_keys_in_a_log_line_are_escaped_and_bounded(
    client: httpx.AsyncClient, log_lines: list[str]
) -> None:
    # Custom field keys are the sender's: a bad value under a key with a newline in it puts
    # that key into the "unexpected shape" warning.
    forged = "x\n12:00:00.000 ERROR   webhook_gateway forged line"
    long_key = "z" * 50_000  # sorts last: the keys before it are in the line
    body = envelope(
        "employee_update",
        9,
        custom_fields={forged: {"name": 5}, long_key: {"name": 6}, "ok\ud800": {"name": 7}},
        meta={"updated_at": "2026-05-01T10:00:00+03:00"},
    )

    response = await post(client, body)

    assert response.status_code == 202, response.text
    (warning,) = [line.rstrip("\n") for line in log_lines if "unexpected shape" in line]
    assert "\n" not in warning
    assert "x\\n12:00:00.000 ERROR" in warning
    warning.encode()  # no lone surrogate left in it: any sink can write it
    assert len(warning) < 1000
    assert not any(line.startswith("12:00:00.000") for line in "\n".join(log_lines).splitlines())


@pytest.mark.parametrize(
    "employee_ref",
    [True, False, 3.7, 12.0, " 9_10_015 ", "9_10_015", " 12", "12a", "", "-5", "١٢", 0, 2**40,
     "99999999999999999999", [12], {"id": 12}],
)  # fmt: skip
async def test_an_employee_id_is_a_json_integer_or_a_string_of_digits_else_422(
    client: httpx.AsyncClient, inbox_of: InboxRepository, employee_ref: Any
) -> None:
    body = envelope("employee_position_create", 77, attributes={"employee_id": employee_ref})

    response = await post(client, body)

    assert response.status_code == 422, response.text
    assert "the employee id must be a positive integer" in response.json()["detail"]
    assert "a JSON integer or a string of digits" in response.json()["detail"]
    assert await inbox_of.recent() == []


@pytest.mark.parametrize("employee_ref", [12, "12", "0012"])
async def test_an_employee_id_as_an_integer_or_digits_is_that_employee(
    client: httpx.AsyncClient, inbox_of: InboxRepository, employee_ref: Any
) -> None:
    body = envelope("employee_position_create", 77, attributes={"employee_id": employee_ref})

    response = await post(client, body)

    assert (response.status_code, response.json()["status"]) == (202, "pending")
    stored = await inbox_of.get(response.json()["event_key"])
    assert stored is not None
    assert stored.employee_id == 12


async def test_concurrent_deliveries_with_duplicates(database_url: str) -> None:
    employee_bodies = [
        employee_event("employee_update", employee_id, "2026-05-01T10:00:00Z")
        for employee_id in range(1, 21)
    ]
    ignored_bodies = [envelope("leave_request_create", number) for number in range(1, 6)]
    deliveries = [*employee_bodies, *ignored_bodies] * 2
    random.Random(4).shuffle(deliveries)
    wakeups: list[None] = []

    async with running_gateway(database_url, on_stored=lambda: wakeups.append(None)) as (
        client,
        app,
    ):
        async with asyncio.timeout(60):
            responses = await asyncio.gather(*(post(client, body) for body in deliveries))
        events = await app.state.inbox.recent(100)

    by_key: dict[str, list[int]] = {}
    for response in responses:
        by_key.setdefault(response.json()["event_key"], []).append(response.status_code)
    assert len(responses) == 50
    assert all(sorted(codes) == [200, 202] for codes in by_key.values())
    assert len(by_key) == len(events) == 25
    assert sum(event.status is EventStatus.pending for event in events) == 20
    assert sum(event.status is EventStatus.ignored for event in events) == 5
    assert len(wakeups) == 20


async def test_on_stored_runs_once_per_new_pending_event(sqlite_database_url: str) -> None:
    calls: list[str] = []

    async with running_gateway(sqlite_database_url, on_stored=lambda: calls.append("wake")) as (
        client,
        _,
    ):
        first = employee_event("employee_create", 1, "2026-05-01T10:00:00Z")
        await post(client, first)
        await post(client, first)  # repeat
        await post(client, envelope("leave_request_create", 2))  # ignored
        await post(client, envelope("employee_create", 1, meta={"updated_at": "bad"}))  # 202
        assert len(calls) == 2
        await post(client, b"{}")  # 422
        await post(client, first, secret="wrong")  # 401

    assert calls == ["wake", "wake"]


async def test_a_failing_on_stored_does_not_fail_the_delivery(sqlite_database_url: str) -> None:
    def broken() -> None:
        raise RuntimeError("dispatcher gone")

    async with running_gateway(sqlite_database_url, on_stored=broken) as (client, app):
        response = await post(client, envelope("employee_create", 1))
        stored = await app.state.inbox.get(response.json()["event_key"])

    assert response.status_code == 202
    assert stored is not None
    assert stored.status is EventStatus.pending


# The gateway: configuration, readiness, failures, logs


def test_the_gateway_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match="WEBHOOK_SECRET is not set"):
        create_app(settings(None), store_url=f"sqlite+aiosqlite:///{tmp_path / 's.db'}")


async def test_unsigned_webhooks_when_explicitly_allowed(
    sqlite_database_url: str, log_lines: list[str]
) -> None:
    unsigned = settings(None, allow_unsigned=True)

    async with running_gateway(sqlite_database_url, unsigned) as (client, _):
        started_warnings = [line for line in log_lines if "UNSIGNED WEBHOOKS ARE ACCEPTED" in line]
        response = await post(client, envelope("employee_create", 1), secret=None)

    assert response.status_code == 202
    assert len(started_warnings) == 1
    assert started_warnings[0].startswith("WARNING")
    assert any(line.startswith("WARNING accepting an UNSIGNED webhook") for line in log_lines)


async def test_with_a_secret_set_unsigned_deliveries_stay_refused(
    sqlite_database_url: str,
) -> None:
    both = settings(SECRET, allow_unsigned=True)

    async with running_gateway(sqlite_database_url, both) as (client, _):
        response = await post(client, envelope("employee_create", 1), secret=None)

    assert response.status_code == 401


async def test_health_and_readiness(sqlite_database_url: str) -> None:
    prefect_up = True

    async def prefect_api() -> None:
        if not prefect_up:
            raise ConnectionError("connection refused")

    async def jira() -> bool:
        return True

    async with running_gateway(sqlite_database_url, readiness_checks=[prefect_api, jira]) as (
        client,
        _,
    ):
        healthy = await client.get("/healthz")
        ready = await client.get("/readyz")
        prefect_up = False
        not_ready = await client.get("/readyz")
        still_alive = await client.get("/healthz")

    assert (healthy.status_code, healthy.json()) == (200, {"status": "alive"})
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"store": "ok", "prefect_api": "ok", "jira": "ok"},
    }
    assert not_ready.status_code == 503
    assert not_ready.json() == {
        "detail": "not ready: prefect_api failed",
        "checks": {
            "store": "ok",
            "prefect_api": "ConnectionError: connection refused",
            "jira": "ok",
        },
    }
    assert still_alive.status_code == 200


async def test_a_readiness_check_answering_false_fails(sqlite_database_url: str) -> None:
    async def answers_false() -> bool:
        return False

    async with running_gateway(sqlite_database_url, readiness_checks=[answers_false]) as (
        client,
        _,
    ):
        response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["answers_false"] == "failed"


async def test_store_down_answers_503_and_a_redelivery_later_is_stored(
    client: httpx.AsyncClient, gateway: tuple[httpx.AsyncClient, FastAPI]
) -> None:
    app = gateway[1]
    working_inbox = app.state.inbox
    # A database server that refuses connections.
    unreachable = create_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/inbox")
    app.state.inbox = InboxRepository(unreachable)
    body = envelope("employee_create", 3)
    try:
        down = await post(client, body)
        readiness = await client.get("/readyz")
        health = await client.get("/healthz")
    finally:
        app.state.inbox = working_inbox
        await unreachable.dispose()
    redelivered = await post(client, body)

    assert (down.status_code, down.json()) == (
        503,
        {"detail": "inbox unavailable, deliver again later"},
    )
    assert readiness.status_code == 503
    assert readiness.json()["detail"] == "not ready: store failed"
    assert health.status_code == 200
    assert redelivered.status_code == 202


async def test_a_failing_insert_answers_503_and_keeps_the_body_out_of_the_log(
    client: httpx.AsyncClient, inbox_of: InboxRepository, log_lines: list[str]
) -> None:
    # As if the store had been downgraded under the running gateway.
    async with inbox_of.engine.begin() as connection:
        await connection.execute(sa.text("DROP TABLE webhook_event"))
    marker = "Grace-Hopper-private-address"

    response = await post(
        client, envelope("employee_create", 6, attributes={"personal_email": marker})
    )

    assert response.status_code == 503
    text = "\n".join(log_lines)
    assert "inbox unavailable (OperationalError: no such table: webhook_event)" in text
    assert marker not in text


async def test_errors_are_json(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/nowhere"),
        await client.get(WEBHOOK_PATH),
        await post(client, b"{", secret=None),
    ):
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"detail"}


async def test_logs_give_reasons_and_keys_but_never_bodies_signatures_or_secrets(
    sqlite_database_url: str, log_lines: list[str]
) -> None:
    marker = "Ada-Lovelace-private-address"
    accepted = envelope(
        "employee_create",
        1,
        attributes={"personal_email": f"{marker}@example.com"},
        meta={"updated_at": "2026-05-01T10:00:00Z"},
    )
    wrong_signature = sign("not-the-secret", accepted)
    # Every refusal logged here (by default, one line per 100 of them: test_bounds.py).
    every_refusal = Settings(
        _env_file=None, webhook_secret=SecretStr(SECRET), gateway_reject_log_every=1
    )

    async with running_gateway(sqlite_database_url, every_refusal) as (client, _app):
        await post(client, accepted)
        await client.post(
            WEBHOOK_PATH, content=accepted, headers={SIGNATURE_HEADER: wrong_signature}
        )
        await post(client, padded_envelope(MAX_BODY_BYTES + 10))
        await post(client, b'{"action": "' + marker.encode())
        await post(client, json.dumps({"action": marker, "data": [marker]}).encode())

    text = "\n".join(log_lines)
    assert "accepted as pending" in text
    assert "employee_create:1:2026-05-01T10:00:00" in text
    for reason in ("401 invalid signature", "413 body of", "400 body is not", "422 not a"):
        assert reason in text, reason
    for secret_material in (marker, SECRET, sign(SECRET, accepted), wrong_signature):
        assert secret_material not in text


async def test_extra_lifespan_runs_while_the_inbox_is_open(sqlite_database_url: str) -> None:
    seen: list[str] = []

    @asynccontextmanager
    async def dispatcher(app: FastAPI) -> AsyncGenerator[None]:
        seen.append(f"started with {len(await app.state.inbox.recent())} events")
        yield
        await app.state.inbox.check_writable()  # the inbox is still open while this one ends
        seen.append("stopped")

    async with running_gateway(sqlite_database_url, extra_lifespan=dispatcher):
        assert seen == ["started with 0 events"]

    assert seen == ["started with 0 events", "stopped"]


# Over real HTTP: the PeopleForce simulator posts signed webhooks to a running gateway


async def test_the_simulator_delivers_signed_webhooks_over_http(sqlite_database_url: str) -> None:
    gateway_app = create_app(settings(), store_url=sqlite_database_url)
    with BackgroundServer(gateway_app) as gateway_server:
        peopleforce_app = create_peopleforce_app(
            api_key=PEOPLEFORCE_API_KEY,
            people=[],
            webhook_url=gateway_server.url + WEBHOOK_PATH,
            webhook_secret=SECRET,
            today=PEOPLEFORCE_TODAY,
        )
        with BackgroundServer(peopleforce_app):
            tenant = peopleforce_app.state.peopleforce
            steps: list[Callable[[], object]] = [
                lambda: tenant.hire(first_name="Ada", last_name="Lovelace"),
                lambda: tenant.update(1001, position="Analyst"),
                lambda: tenant.terminate(1001),
                lambda: tenant.revert_termination(1001),
                lambda: tenant.redeliver(1),
            ]
            for step in steps:
                await asyncio.to_thread(step)
            deliveries = list(tenant.deliveries)

    async with await MappingStore.open(sqlite_database_url) as store:
        events = await InboxRepository(store.engine).recent()

    assert [(d.action, d.status_code) for d in deliveries] == [
        ("employee_create", 202),
        ("employee_start", 202),
        ("employee_update", 202),
        ("employee_terminate", 202),
        ("employee_termination_revert", 202),
        ("employee_create", 200),
    ]
    assert all(delivery.signature for delivery in deliveries)
    assert sorted(event.action for event in events) == sorted(d.action for d in deliveries[:5])
    assert {(event.employee_id, event.status) for event in events} == {(1001, EventStatus.pending)}
    assert {event.body for event in events} == {d.body for d in deliveries[:5]}
