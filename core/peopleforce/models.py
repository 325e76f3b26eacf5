"""PeopleForce records as this service reads them: the REST shapes and the webhook envelope.

PeopleForce's published response schemas are unreliable and its payloads differ between the
list, the single record and the webhook (see ../shared/docs/peopleforce-api.md §3 and §8). So
every model keeps unknown keys (`extra="allow"`), almost every field is optional, empty strings
in date fields read as missing, and enumerations (status, gender) stay plain strings.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator


def _blank_to_none(value: Any) -> Any:
    """PeopleForce sends "" as often as null for an unset date."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


OptionalDate = Annotated[date | None, BeforeValidator(_blank_to_none)]
OptionalDateTime = Annotated[datetime | None, BeforeValidator(_blank_to_none)]

# Statuses the v3 spec documents. Others occur (third-party code shows "dismissed", "on_leave"),
# so `status` fields are plain strings and callers compare against these.
KNOWN_STATUSES = frozenset({"hired", "probation", "employed", "terminated"})

# The webhook topics about an employee profile: for these `data.id` is the employee's id.
EMPLOYEE_PROFILE_ACTIONS = frozenset(
    {
        "employee_create",
        "employee_update",
        "employee_start",
        "employee_terminate",
        "employee_termination_revert",
    }
)
# The topics of joiners and leavers: a hire, a first day, a termination and its revert. Their
# work is urgent (someone starts tomorrow, or leaves with access): the dispatcher sends it in a
# lane of its own that a backlog of field updates (`employee_update`, ...) never fills. A
# future termination comes as `employee_update` with its date (`is_joiner_or_leaver`).
JOINER_LEAVER_ACTIONS = frozenset(
    {
        "employee_create",
        "employee_start",
        "employee_terminate",
        "employee_termination_revert",
    }
)


class PeopleForceModel(BaseModel):
    """Base of every PeopleForce record: unknown keys are kept, not rejected."""

    model_config = ConfigDict(extra="allow")


class Ref(PeopleForceModel):
    """A `{id, name}` reference: position, location, division, employment type, job level."""

    id: int | str | None = None
    name: str | None = None


class DepartmentRef(Ref):
    """REST departments also carry the parent department and the department head."""

    parent_id: int | None = None
    manager_id: int | None = None


class Manager(PeopleForceModel):
    """`reporting_to` in REST records: the manager's names and work email."""

    id: int | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None

    @property
    def full_name(self) -> str | None:
        parts = [part for part in (self.first_name, self.last_name) if part]
        return " ".join(parts) or None


class CustomFieldValue(PeopleForceModel):
    """One entry of the REST `fields` object: `{"value": ...}`."""

    value: Any = None


class _EmployeeRecord(PeopleForceModel):
    """What the list item and the single record share."""

    id: int
    status: str | None = None
    access: bool | None = None
    full_name: str | None = None
    first_name: str | None = None
    middle_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    personal_email: str | None = None
    avatar_url: str | None = None
    date_of_birth: OptionalDate = None
    hired_on: OptionalDate = None
    probation_ends_on: OptionalDate = None
    position: Ref | None = None
    department: DepartmentRef | None = None
    division: Ref | None = None
    location: Ref | None = None
    employment_type: Ref | None = None
    job_level: Ref | None = None
    reporting_to: Manager | None = None

    @property
    def display_name(self) -> str:
        """The best name available: full name, else the parts, else the email, else the id."""
        if self.full_name and self.full_name.strip():
            return self.full_name.strip()
        parts = [p.strip() for p in (self.first_name, self.middle_name, self.last_name) if p]
        joined = " ".join(part for part in parts if part)
        return joined or self.email or f"employee {self.id}"


class EmployeeSummary(_EmployeeRecord):
    """An item of `GET /employees`. `gender` is a plain string here, `active` a bool."""

    active: bool | None = None
    gender: str | Ref | None = None
    employee_number: str | None = None
    updated_at: OptionalDateTime = None


class Employee(_EmployeeRecord):
    """The full record of `GET /employees/{id}` and `GET /employees/terminated`."""

    gender: Ref | str | None = None
    employee_number: str | None = None
    direct_reports: list[Any] = Field(default_factory=list)
    termination_effective_on: OptionalDate = None
    termination_comment: str | None = None
    termination_eligible_for_rehire: bool | None = None
    termination_type: Ref | None = None
    termination_reason: Ref | None = None
    fields: dict[str, CustomFieldValue] = Field(default_factory=dict)
    created_at: OptionalDateTime = None
    updated_at: OptionalDateTime = None

    @field_validator("direct_reports", mode="before")
    @classmethod
    def _null_is_empty_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("fields", mode="before")
    @classmethod
    def _normalise_fields(cls, value: Any) -> Any:
        # Documented as {internal_name: {"value": ...}}; accept null and bare values too.
        if value is None:
            return {}
        if isinstance(value, dict):
            return {
                name: entry if isinstance(entry, dict) else {"value": entry}
                for name, entry in value.items()
            }
        return value

    def custom_field(self, internal_name: str) -> Any:
        """The value of a custom field by its internal name (e.g. `github`), or None."""
        entry = self.fields.get(internal_name)
        return entry.value if entry is not None else None


class AssetAssignment(PeopleForceModel):
    id: int | str | None = None
    user_id: int | None = None
    asset_id: int | str | None = None
    issued_on: OptionalDate = None
    returned_on: OptionalDate = None
    created_at: OptionalDateTime = None
    updated_at: OptionalDateTime = None


class Asset(PeopleForceModel):
    """An item of `GET /employees/{id}/assets` (the spec types ids as strings; live they may be ints)."""

    id: int | str
    name: str | None = None
    code: str | None = None
    serial_number: str | None = None
    description: str | None = None
    location_id: int | str | None = None
    asset_category_id: int | str | None = None
    asset_assignments: list[AssetAssignment] = Field(default_factory=list)
    created_at: OptionalDateTime = None
    updated_at: OptionalDateTime = None

    @field_validator("asset_assignments", mode="before")
    @classmethod
    def _null_is_empty_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @property
    def label(self) -> str:
        """How an IT admin finds the asset: its name, and its serial number or code."""
        serial = self.serial_number or self.code
        return f"{self.name or f'asset {self.id}'}" + (f" ({serial})" if serial else "")


def asset_item_label(item: Any, position: int) -> str:
    """An asset the list gave but that cannot be read, named by what of it can be."""
    if isinstance(item, dict):
        for name in ("name", "serial_number", "code", "id"):
            value = item.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return f"{str(value)[:80]!r} (item {position} of the list)"
    return f"item {position} of the list"


class AssetsRead(BaseModel):
    """An employee's asset list as read: the assets, and one note for each asset read only in
    part (a field left out) or skipped (nothing usable), naming it: one odd record costs
    neither the list nor the offboarding."""

    model_config = ConfigDict(frozen=True)
    assets: tuple[Asset, ...] = ()
    notes: tuple[str, ...] = ()


# --- Webhooks -------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")


def strict_id(value: object) -> int:
    """An id as a webhook may give it: a JSON integer, or a string of ASCII digits (`"1041"`).

    Anything else is `ValueError`, never coerced: `true` is no employee 1, `3.7` no employee 3,
    `" 9_10_015 "` no employee 910015 (what `int()` would make of them).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise ValueError("an id is a JSON integer or a string of digits")


def _json_integer(value: Any) -> Any:
    """`data.id`: a JSON integer or null, nothing pydantic would coerce into one."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError("`data.id` is a JSON integer")


RecordId = Annotated[int | None, BeforeValidator(_json_integer)]


class WebhookManager(PeopleForceModel):
    """`reporting_to` in webhooks: one `full_name`, unlike the REST record."""

    id: int | None = None
    full_name: str | None = None
    email: str | None = None


class WebhookCustomField(PeopleForceModel):
    """A webhook custom field, keyed by a UUID that does not match the REST internal name."""

    name: str | None = None
    value: Any = None
    group: str | None = None


class WebhookMeta(PeopleForceModel):
    """Record timestamps in the tenant's local offset (e.g. `+03:00`)."""

    created_at: OptionalDateTime = None
    updated_at: OptionalDateTime = None


class WebhookAttributes(PeopleForceModel):
    """`data.attributes`: scalars only. Non-employee topics put their own keys here (kept as extras)."""

    employee_number: str | None = None
    hired_on: OptionalDate = None
    probation_ends_on: OptionalDate = None
    first_name: str | None = None
    middle_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    personal_email: str | None = None
    gender: str | None = None
    mobile_number: str | None = None
    work_phone_number: str | None = None
    date_of_birth: OptionalDate = None
    termination_effective_date: OptionalDate = None
    termination_comment: str | None = None
    avatar_url: str | None = None


class WebhookData(PeopleForceModel):
    id: RecordId = None
    attributes: WebhookAttributes = Field(default_factory=WebhookAttributes)
    reporting_to: WebhookManager | None = None
    position: Ref | None = None
    department: Ref | None = None
    division: Ref | None = None
    location: Ref | None = None
    employment_type: Ref | None = None
    custom_fields: dict[str, WebhookCustomField] = Field(default_factory=dict)
    meta: WebhookMeta | None = None

    @field_validator("attributes", "custom_fields", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    def custom_field_by_name(self, name: str) -> Any:
        """A webhook custom field's value by its label (the only stable handle webhooks give)."""
        for field in self.custom_fields.values():
            if field.name == name:
                return field.value
        return None


class WebhookEnvelope(PeopleForceModel):
    """One webhook delivery: `{"action": "<topic>", "data": {...}}`. A hint to re-read, not the truth."""

    action: str
    data: WebhookData = Field(default_factory=WebhookData)

    @property
    def is_employee_event(self) -> bool:
        """True for the `employee_*` topic family (profile, position, salary, status changes)."""
        return self.action.startswith("employee_")

    @property
    def employee_id(self) -> int | None:
        """The employee this event concerns, or None (leave requests, applicants, unknown topics).

        For profile topics `data.id` is the employee. Other `employee_*` topics describe a
        sub-record (position, salary...): their `data.id` is that record's id, so the employee
        comes from `attributes.employee_id` when present [inference: those payloads are
        undocumented].
        """
        if self.action in EMPLOYEE_PROFILE_ACTIONS:
            return self.data.id
        if self.is_employee_event:
            return self.sub_record_employee_id()
        return None

    @property
    def is_joiner_or_leaver(self) -> bool:
        """A hire, a first day, a termination or its revert: `JOINER_LEAVER_ACTIONS`, or a
        profile update that carries a termination date (how a future termination comes)."""
        if self.action in JOINER_LEAVER_ACTIONS:
            return True
        return (
            self.action == "employee_update"
            and self.data.attributes.termination_effective_date is not None
        )

    def sub_record_employee_id(self) -> int | None:
        """`attributes.employee_id` read strictly (`strict_id`): None when absent;
        `ValueError` when it is there but no id."""
        candidate = (self.data.attributes.model_extra or {}).get("employee_id")
        return None if candidate is None else strict_id(candidate)

    def event_key(self, raw_body: bytes) -> str:
        """A deterministic de-duplication key (PeopleForce sends no delivery id).

        `action:data.id:meta.updated_at` (timestamp normalised to UTC, so one instant written in
        two offsets gives one key) when all three are present, else the SHA-256 of the raw body.
        """
        updated_at = self.data.meta.updated_at if self.data.meta else None
        if self.action and self.data.id is not None and updated_at is not None:
            if updated_at.tzinfo is None:
                updated_at = updated_at.replace(tzinfo=UTC)
            stamp = updated_at.astimezone(UTC).isoformat(timespec="microseconds")
            return f"{self.action}:{self.data.id}:{stamp}"
        return "sha256:" + hashlib.sha256(raw_body).hexdigest()
