"""The mapping store on SQLite and on PostgreSQL: migrations, schema, reads, writes, concurrency.

PostgreSQL tests run in a database created for the test run on the server named by
PF_JIRA_SYNC_TEST_POSTGRES_URL (default: the local server as `postgres`), emptied before each
test and dropped at the end.
They are skipped when no server answers, unless PF_JIRA_SYNC_TEST_REQUIRE_POSTGRES is set.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from core import lifecycle
from core.database import SQLITE_BUSY_TIMEOUT_MS, create_engine
from core.store import (
    EffectAction,
    EmployeeLink,
    JiraEffect,
    Lifecycle,
    LifecycleError,
    MappingStore,
    current_revision,
    downgrade,
    head_revision,
    migrate,
    snapshot_hash,
)
from core.store.migrate import HEAD_REVISION, VERSION_TABLE, migration_connection
from core.store.models import StoreModel
from tests.fixtures_database import table_names

STORE_TABLES = {
    "employee_link",
    "jira_effect",
    "webhook_event",
    "employee_lease",
    "jira_intent",
    "breaker_write",
    "breaker_hold",
    "jira_rate_bucket",
}


# Migrations and schema


async def test_migrate_from_empty_database_to_head(database_url: str) -> None:
    assert await current_revision(database_url) is None

    await migrate(database_url)
    await migrate(database_url)  # a second run finds nothing to do

    assert await current_revision(database_url) == head_revision() == HEAD_REVISION == "0010"
    assert await table_names(database_url) == STORE_TABLES | {VERSION_TABLE}


async def test_concurrent_migrations_upgrade_once(database_url: str) -> None:
    # Without the migration lock this deadlocks rather than fails: bound it.
    async with asyncio.timeout(30):
        await asyncio.gather(*(migrate(database_url) for _ in range(3)))

    assert await current_revision(database_url) == head_revision()


async def test_upgrade_from_0001_keeps_links(database_url: str) -> None:
    await migrate(database_url, "0001")
    assert await table_names(database_url) == {"employee_link", VERSION_TABLE}
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            # Plain SQL in the 0001 shape, independent of today's models.
            await connection.execute(
                sa.text(
                    "INSERT INTO employee_link (employee_id, email, lifecycle, onboarding_issue_key,"
                    " onboarding_subtask_keys, offboarding_subtask_keys, synced_fields,"
                    " created_at, updated_at) VALUES (7, 'ada@example.com', 'onboarding', 'HR-1',"
                    " :subtasks, '[]', :fields, :at, :at)"
                ),
                {
                    "subtasks": '["HR-2", "HR-3"]',
                    "fields": '{"title": "Engineer"}',
                    "at": datetime(2026, 1, 5, 9, 30, tzinfo=UTC),
                },
            )
    finally:
        await engine.dispose()

    async with await MappingStore.open(database_url) as store:
        assert await current_revision(database_url) == head_revision()
        link = await store.get(7)
        assert link is not None
        assert (link.email, link.lifecycle, link.onboarding_issue_key) == (
            "ada@example.com",
            Lifecycle.onboarding,
            "HR-1",
        )
        assert link.onboarding_subtask_keys == ["HR-2", "HR-3"]
        assert link.synced_fields == {"title": "Engineer"}
        assert link.created_at == datetime(2026, 1, 5, 9, 30, tzinfo=UTC)

        await store.record_effect(7, EffectAction.comment, issue_key="HR-1")
        assert [effect.action for effect in await store.effects(7)] == ["comment"]


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    async def schema_differences() -> list:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda sync_connection: compare_metadata(
                        MigrationContext.configure(
                            sync_connection,
                            opts={"version_table": VERSION_TABLE, "compare_type": True},
                        ),
                        StoreModel.metadata,
                    )
                )
        finally:
            await engine.dispose()

    await migrate(database_url, "0001")
    # The comparison does see a schema behind the models...
    missing = {
        (diff[0], diff[3].name if diff[0] == "add_column" else diff[1].name)
        for diff in await schema_differences()
    }
    assert missing == {
        ("add_table", "jira_effect"),
        ("add_index", "ix_jira_effect_employee_id"),
        ("add_index", "ix_jira_effect_issue_key"),
        ("add_table", "webhook_event"),
        ("add_index", "ix_webhook_event_employee_id"),
        ("add_index", "ix_webhook_event_status_employee_id"),
        ("add_index", "ix_webhook_event_status_urgent"),
        ("add_table", "employee_lease"),
        ("add_table", "jira_intent"),
        ("add_index", "ix_jira_intent_employee_id"),
        ("add_column", "hired_on"),
        ("add_table", "breaker_write"),
        ("add_index", "ix_breaker_write_employee_id"),
        ("add_index", "ix_breaker_write_counted_as_at"),
        ("add_table", "breaker_hold"),
        ("add_index", "ix_breaker_hold_employee_id"),
        ("add_table", "jira_rate_bucket"),
    }

    await migrate(database_url)
    # ...and none once the migrations have run.
    assert await schema_differences() == []


async def test_downgrade_to_base_removes_the_store(database_url: str) -> None:
    await migrate(database_url)

    await downgrade(database_url, "0001")
    assert await current_revision(database_url) == "0001"
    await downgrade(database_url, "base")

    assert await current_revision(database_url) is None
    assert await table_names(database_url) == {VERSION_TABLE}


async def test_failed_migration_leaves_nothing_behind(database_url: str) -> None:
    async def fail_halfway() -> None:
        async with migration_connection(database_url) as connection:
            await connection.execute(sa.text("CREATE TABLE half_done (id INTEGER)"))
            raise RuntimeError("failed halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        await fail_halfway()

    assert "half_done" not in await table_names(database_url)


async def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path) -> None:
    store = await MappingStore.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    async with store, store.engine.connect() as connection:

        async def pragma(name: str) -> object:
            return (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar_one()

        assert await pragma("journal_mode") == "wal"
        assert await pragma("busy_timeout") == SQLITE_BUSY_TIMEOUT_MS
        assert await pragma("foreign_keys") == 1


async def test_foreign_key_keeps_effects_tied_to_a_link(store: MappingStore) -> None:
    async with AsyncSession(store.engine) as session:
        session.add(JiraEffect(employee_id=404, action="comment"))
        with pytest.raises(IntegrityError):
            await session.commit()


# Reading and saving links


async def test_save_and_get_a_link(store: MappingStore) -> None:
    saved = await store.save(
        EmployeeLink(
            employee_id=1,
            email="  Ada.Lovelace@Example.COM ",
            display_name="Ada Lovelace",
            jira_account_id="712020:abc",
            termination_on=date(2026, 3, 31),
            previous_employee_id=0,
        )
    )
    assert saved.email == "ada.lovelace@example.com"

    link = await store.get(1)

    assert link is not None
    assert link.model_dump() == saved.model_dump()
    assert link.lifecycle is Lifecycle.pending
    assert link.termination_on == date(2026, 3, 31)
    assert await store.get(2) is None


async def test_save_replaces_fields_keeps_created_at_and_bumps_updated_at(
    store: MappingStore,
) -> None:
    first = await store.save(EmployeeLink(employee_id=1, display_name="Ada", jira_account_id="a1"))
    created_at, updated_at = first.created_at, first.updated_at

    await store.save(
        EmployeeLink(
            employee_id=1, display_name="Ada L.", created_at=created_at + timedelta(days=9)
        )
    )

    link = await store.get(1)
    assert link is not None
    assert (link.display_name, link.jira_account_id) == ("Ada L.", None)
    assert link.created_at == created_at
    assert link.updated_at > updated_at


async def test_get_many_reads_large_id_lists_in_chunks(store: MappingStore) -> None:
    for employee_id in (3, 600, 1199):
        await store.save(EmployeeLink(employee_id=employee_id))

    found = await store.get_many([*range(1200), 3, 3])

    assert sorted(found) == [3, 600, 1199]
    assert all(found[employee_id].employee_id == employee_id for employee_id in found)
    assert await store.get_many([]) == {}


async def test_find_by_email_ignores_case_and_returns_every_match(store: MappingStore) -> None:
    await store.save(EmployeeLink(employee_id=20, email="Grace@Example.com"))
    await store.save(EmployeeLink(employee_id=10, email="grace@example.com"))
    await store.save(EmployeeLink(employee_id=30, email="someone.else@example.com"))

    found = await store.find_by_email("GRACE@EXAMPLE.COM")

    assert [link.employee_id for link in found] == [10, 20]
    assert await store.find_by_email("nobody@example.com") == []
    assert await store.find_by_email("  ") == []


async def test_all_links_pages_through_every_link(store: MappingStore) -> None:
    for employee_id in (5, 1, 4, 2, 3, 7, 6):
        await store.save(EmployeeLink(employee_id=employee_id))

    seen = [link.employee_id async for link in store.all_links(page_size=3)]

    assert seen == [1, 2, 3, 4, 5, 6, 7]


async def test_save_refuses_an_undeclared_lifecycle_move_and_writes_nothing(
    store: MappingStore,
) -> None:
    await store.save(
        EmployeeLink(employee_id=8, display_name="Ada", lifecycle=Lifecycle.onboarding)
    )

    with pytest.raises(
        LifecycleError, match="employee 8: onboarding -> pending is not a declared transition"
    ):
        await store.save(EmployeeLink(employee_id=8, display_name="Ada L."))
    # A declared move (the termination took effect) is saved.
    await store.save(EmployeeLink(employee_id=8, lifecycle=Lifecycle.offboarded))

    link = await store.get(8)
    assert link is not None
    assert (link.display_name, link.lifecycle) == (None, Lifecycle.offboarded)


async def test_concurrent_saves_of_one_employee_do_not_fail(store: MappingStore) -> None:
    names = [f"name {number}" for number in range(20)]

    await asyncio.gather(
        *(store.save(EmployeeLink(employee_id=9, display_name=name)) for name in names)
    )

    assert list((await store.get_many([9])).keys()) == [9]
    link = await store.get(9)
    assert link is not None
    assert link.display_name in names


# Recording Jira effects


async def test_record_effect_writes_the_audit_and_the_link_change(store: MappingStore) -> None:
    link = await store.record_effect(
        11,
        EffectAction.create_onboarding,
        issue_key="HR-10",
        flow_run_id="run-1",
        detail={"summary": "Onboarding: Ada", "start": date(2026, 2, 2)},
        link_update=lifecycle.onboarding_created(
            "HR-10", lifecycle.Person("Ada@Example.com", "Ada", "712020:ada")
        ),
    )
    await store.record_effect(
        11,
        EffectAction.create_subtask,
        issue_key="HR-11",
        flow_run_id="run-1",
        link_update=lifecycle.subtasks_recorded("onboarding", ["HR-11"]),
    )

    assert link.lifecycle is Lifecycle.onboarding
    stored = await store.get(11)
    assert stored is not None
    assert stored.onboarding_issue_key == "HR-10"
    assert stored.onboarding_subtask_keys == ["HR-11"]
    assert stored.lifecycle is Lifecycle.onboarding
    assert (stored.email, stored.jira_account_id) == ("ada@example.com", "712020:ada")
    effects = await store.effects(11)
    assert [(e.action, e.issue_key, e.flow_run_id) for e in effects] == [
        ("create_onboarding", "HR-10", "run-1"),
        ("create_subtask", "HR-11", "run-1"),
    ]
    assert effects[0].detail == {"summary": "Onboarding: Ada", "start": "2026-02-02"}
    assert effects[0].at <= effects[1].at
    assert stored.updated_at == effects[1].at


async def test_record_effect_creates_a_missing_link_as_pending(store: MappingStore) -> None:
    await store.record_effect(12, EffectAction.adopt_existing, issue_key="HR-77")

    link = await store.get(12)
    assert link is not None
    assert link.lifecycle is Lifecycle.pending
    assert [effect.issue_key for effect in await store.effects(12)] == ["HR-77"]


async def test_undeclared_transition_writes_nothing(store: MappingStore) -> None:
    onboarded = lifecycle.onboarding_created("HR-1", lifecycle.Person(None, "Ada", None))
    await store.record_effect(13, EffectAction.create_onboarding, link_update=onboarded)
    before = await store.get(13)
    assert before is not None
    # Onboarding work is never forgotten: onboarding -> pending is not declared.
    forget = lifecycle.LinkChange(lifecycle=Lifecycle.pending, onboarding_issue_key=None)

    for change in (forget, lifecycle.offboarding_cancelled(onboarded=False)):
        with pytest.raises(
            LifecycleError,
            match=r"^employee 13: onboarding -> pending is not a declared transition$",
        ):
            await store.record_effect(13, EffectAction.transition, link_update=change)

    # Neither the audit rows nor any part of the changes.
    assert [effect.action for effect in await store.effects(13)] == ["create_onboarding"]
    after = await store.get(13)
    assert after is not None
    assert after.model_dump() == before.model_dump()


async def test_failing_record_of_an_unknown_employee_leaves_no_link(store: MappingStore) -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        await store.record_effect(
            14,
            EffectAction.create_offboarding,
            detail={"unstorable": object()},
            link_update=lifecycle.issue_relinked("offboarding", "HR-99"),
        )

    assert await store.get(14) is None
    assert await store.effects(14) == []


async def test_failing_audit_write_rolls_back_the_link_change(store: MappingStore) -> None:
    await store.save(EmployeeLink(employee_id=15))

    with pytest.raises(TypeError, match="not JSON serializable"):
        await store.record_effect(
            15,
            EffectAction.create_onboarding,
            issue_key="HR-5",
            detail={"unstorable": object()},
            link_update=lifecycle.issue_relinked("onboarding", "HR-5"),
        )

    link = await store.get(15)
    assert link is not None
    assert link.onboarding_issue_key is None
    assert await store.effects(15) == []


async def test_concurrent_effects_on_one_employee_lose_no_update(store: MappingStore) -> None:
    # Each change sets other columns: a change applied to a stale read would undo another.
    changes = [
        lifecycle.issue_relinked("onboarding", "HR-1"),
        lifecycle.subtasks_recorded("onboarding", ["HR-2", "HR-3"]),
        lifecycle.issue_relinked("record", "HR-4"),
        lifecycle.subtasks_recorded("offboarding", ["HR-5"]),
        lifecycle.fields_synced({"title": "Engineer"}),
        lifecycle.LinkChange(display_name="Ada"),
        lifecycle.LinkChange(previous_employee_id=6),
        lifecycle.LinkChange(jira_account_id="712020:ada"),
    ]

    async with asyncio.timeout(30):
        await asyncio.gather(
            *(
                store.record_effect(16, EffectAction.relink, link_update=change)
                for change in changes
            )
        )

    link = await store.get(16)
    assert link is not None
    assert (link.onboarding_issue_key, link.record_issue_key) == ("HR-1", "HR-4")
    assert (link.onboarding_subtask_keys, link.offboarding_subtask_keys) == (
        ["HR-2", "HR-3"],
        ["HR-5"],
    )
    assert link.synced_fields == {"title": "Engineer"}
    assert link.synced_hash == snapshot_hash({"title": "Engineer"})
    assert (link.display_name, link.previous_employee_id, link.jira_account_id) == (
        "Ada",
        6,
        "712020:ada",
    )
    assert len(await store.effects(16)) == len(changes)


# Values: time zones, JSON, hashes, lifecycle


async def test_timestamps_are_timezone_aware_utc(store: MappingStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    await store.save(
        EmployeeLink(employee_id=17, created_at=datetime(2026, 1, 1, 12, 0, tzinfo=plus_two))
    )
    await store.record_effect(17, EffectAction.comment)

    link = await store.get(17)
    assert link is not None
    assert link.created_at == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    for moment in (link.created_at, link.updated_at, (await store.effects(17))[0].at):
        assert moment.utcoffset() == timedelta(0)
    with pytest.raises(StatementError, match="naive datetime"):
        await store.save(EmployeeLink(employee_id=18, created_at=datetime(2026, 1, 1)))


async def test_json_fields_round_trip(store: MappingStore) -> None:
    link = EmployeeLink(
        employee_id=19,
        onboarding_subtask_keys=["HR-1", "HR-2"],
        offboarding_subtask_keys=["HR-9"],
    )
    link.set_synced(
        {"hired_on": date(2026, 2, 2), "team": {"id": 4, "name": "Platform"}, "tags": ["a", "b"]}
    )
    await store.save(link)

    stored = await store.get(19)

    assert stored is not None
    assert stored.onboarding_subtask_keys == ["HR-1", "HR-2"]
    assert stored.offboarding_subtask_keys == ["HR-9"]
    assert stored.synced_fields == {
        "hired_on": "2026-02-02",
        "team": {"id": 4, "name": "Platform"},
        "tags": ["a", "b"],
    }
    assert stored.synced_hash == snapshot_hash(stored.synced_fields) == link.synced_hash


def test_snapshot_hash_ignores_key_order_and_sees_changes() -> None:
    snapshot = {"title": "Engineer", "hired_on": date(2026, 2, 2)}

    assert snapshot_hash(snapshot) == snapshot_hash({"hired_on": "2026-02-02", "title": "Engineer"})
    assert snapshot_hash(snapshot) != snapshot_hash({**snapshot, "title": "Manager"})


def test_lifecycle_transitions() -> None:
    assert Lifecycle.pending.can_move_to(Lifecycle.onboarding)
    assert Lifecycle.onboarding.can_move_to(Lifecycle.offboarding)
    assert Lifecycle.offboarding.can_move_to(Lifecycle.onboarding)  # termination reverted
    assert Lifecycle.offboarding.can_move_to(Lifecycle.offboarded)
    assert Lifecycle.offboarded.can_move_to(Lifecycle.onboarding)  # reactivated
    assert Lifecycle.onboarding.can_move_to(Lifecycle.onboarding)
    # Reverted termination of someone this service never onboarded: back to nothing done.
    assert Lifecycle.offboarding.can_move_to(Lifecycle.pending)
    # Onboarding work, once created, is never forgotten.
    assert not Lifecycle.onboarding.can_move_to(Lifecycle.pending)
