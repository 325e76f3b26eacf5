"""The mapping store's tables: what this service did in Jira for each PeopleForce employee.

The models use their own metadata (not SQLModel's global one), so the store's migrations and
schema checks see exactly these tables, whatever else in the process defines SQLModel tables.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from enum import Enum, StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from core.lifecycle import INITIAL_LIFECYCLE, Lifecycle

# Deterministic constraint names, so migrations and both backends agree on them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class StoreModel(
    SQLModel, registry=registry(metadata=sa.MetaData(naming_convention=NAMING_CONVENTION))
):
    """Base of the store's tables; `StoreModel.metadata` is what the migrations must produce."""


def dialect_insert(engine: AsyncEngine, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
    """The dialect's INSERT, which knows ON CONFLICT (SQLite and PostgreSQL spell it alike)."""
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)


def utc_now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps `timestamptz`; SQLite has no time zones, so values are stored as naive UTC
    and given back their UTC zone when read. Naive input is refused rather than guessed.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store timestamps with a time zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json_default(value: object) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable: {value!r}")


def to_json_value(value: Any) -> Any:
    """`value` as it will read back from a JSON column: dates become ISO strings, enums their values.

    Raises `TypeError` for anything else JSON cannot hold.
    """
    return json.loads(json.dumps(value, default=_json_default))


def snapshot_hash(fields: Mapping[str, Any]) -> str:
    """A stable hash of a field snapshot: key order and date types do not change it."""
    canonical = json.dumps(fields, default=_json_default, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# Stored as plain strings (no database enum type, no CHECK), so adding a state needs no migration;
# SQLAlchemy still refuses values outside the enum when writing.
LIFECYCLE_TYPE = sa.Enum(
    Lifecycle,
    native_enum=False,
    create_constraint=False,
    length=32,
    values_callable=lambda members: [member.value for member in members],
)


class EffectAction(StrEnum):
    """The Jira effects the flows record; `JiraEffect.action` also accepts other strings."""

    create_onboarding = "create_onboarding"
    create_offboarding = "create_offboarding"
    create_record = "create_record"
    create_subtask = "create_subtask"
    update_fields = "update_fields"
    comment = "comment"
    transition = "transition"
    adopt_existing = "adopt_existing"
    relink = "relink"  # the issue was moved in Jira: the link follows its new key


class EmployeeLink(StoreModel, table=True):
    """One PeopleForce employee and the Jira work this service created for them."""

    __tablename__ = "employee_link"

    employee_id: int = Field(
        primary_key=True, sa_type=sa.Integer, sa_column_kwargs={"autoincrement": False}
    )
    # Lower-cased by the store; not unique: a rehire under a new id keeps the same address.
    email: str | None = Field(default=None, index=True)
    display_name: str | None = None
    jira_account_id: str | None = None
    # Moved only by `core.lifecycle` (`apply`), along its declared transitions.
    lifecycle: Lifecycle = Field(default=INITIAL_LIFECYCLE, sa_type=LIFECYCLE_TYPE)

    onboarding_issue_key: str | None = None
    onboarding_subtask_keys: list[str] = Field(
        default_factory=list, sa_type=sa.JSON, nullable=False
    )
    # A separate employee record issue, when the rules create one besides the onboarding issue.
    record_issue_key: str | None = None
    offboarding_issue_key: str | None = None
    offboarding_subtask_keys: list[str] = Field(
        default_factory=list, sa_type=sa.JSON, nullable=False
    )
    # The termination date the offboarding work was planned for: a changed date means re-planning.
    termination_on: date | None = None
    # The hire date the onboarding work was planned for (None: made before it was kept).
    hired_on: date | None = None
    # A rehire's earlier PeopleForce id. No foreign key: the earlier record may predate the store.
    previous_employee_id: int | None = None

    # The mapped fields as last written to Jira, and their `snapshot_hash`.
    synced_fields: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)
    synced_hash: str | None = None

    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, nullable=False)

    def set_synced(self, fields: Mapping[str, Any]) -> None:
        """Remember `fields` as the snapshot last written to Jira, with its hash."""
        self.synced_fields = to_json_value(dict(fields))
        self.synced_hash = snapshot_hash(self.synced_fields)


class JiraEffect(StoreModel, table=True):
    """Audit: one row for every change this service made in Jira."""

    __tablename__ = "jira_effect"

    id: int | None = Field(default=None, primary_key=True)
    employee_id: int = Field(foreign_key="employee_link.employee_id", index=True)
    at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, nullable=False)
    # The Prefect flow run that caused it, when there was one.
    flow_run_id: str | None = None
    action: str
    issue_key: str | None = Field(default=None, index=True)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)
