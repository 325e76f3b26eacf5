"""A local PeopleForce: the v3 employee endpoints this service reads, plus signed webhooks.

`create_app(api_key=..., people=seed_people(today=...))` answers, under `/api/public/v3`, only
operations the published spec has (`GET /employees`, `/employees/{id}`, `/employees/terminated`,
`/employees/{id}/assets`) in the shapes of ../shared/fixtures/peopleforce. Everything under
`/_sandbox` drives it: hire, update, start, terminate and revert people (each sends the webhook
PeopleForce would send, signed like PeopleForce signs it), faults, paging quirks, the clock and
the nightly batch, the delivery log and a reset. The same mutations are methods of
`PeopleForceState` (`app.state.peopleforce`) for tests that hold the app in-process.

Webhooks are delivered synchronously, inside the mutation, so a control call returns after the
receiver answered; a failed delivery is recorded, never raised. Routes are plain `def`s so
FastAPI runs them in its thread pool and a delivery never blocks the event loop.
"""

from __future__ import annotations

import copy
import hmac
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, ClassVar, Literal

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, computed_field
from starlette.types import ASGIApp

from core.peopleforce.signature import SIGNATURE_HEADER, sign
from sandbox.faults import CONTROL_PREFIX, FaultInjector, Faults
from sandbox.seed import (
    DEPARTMENTS,
    PROBATION,
    SeedAsset,
    SeedPerson,
    email_local_part,
    seed_people,
)

API_PREFIX = "/api/public/v3"
STATUS_FILTERS = ("active", "all", "employed", "terminated", "hired", "probation")

# The tenant's offset in webhook timestamps (REST uses UTC "Z"); the docs' examples use +03:00.
WEBHOOK_OFFSET = timezone(timedelta(hours=3))

# Custom fields: REST reads them by internal name, webhooks key them by a UUID and a label.
_FIELD_NAMESPACE = uuid.UUID("00000000-0000-4000-8000-00000000f1e1")
CUSTOM_FIELD_LABELS: dict[str, tuple[str, str]] = {
    "github": ("GitHub", "Contact"),
    "laptop_preference": ("Laptop preference", "Equipment"),
    "tshirt_size": ("T-shirt size", "Personal"),
}
_CATALOG_STAMP = "2024-01-01T00:00:00.000Z"
_GENDERS = {"female": {"id": "1", "name": "Female"}, "male": {"id": "2", "name": "Male"}}
_PERSON_JSON = TypeAdapter(SeedPerson)
# Person attributes an edit may change but not clear.
_REQUIRED_ON_PERSON = frozenset(
    {
        "first_name",
        "last_name",
        "email",
        "gender",
        "hired_on",
        "department",
        "division",
        "position",
        "location",
        "employment_type",
        "job_level",
    }
)


def _field_label(internal_name: str) -> tuple[str, str]:
    """(label, group) of a custom field; unknown ones get a label made from the name."""
    return CUSTOM_FIELD_LABELS.get(
        internal_name, (internal_name.replace("_", " ").capitalize(), "Custom")
    )


def custom_field_uuid(internal_name: str) -> str:
    """The UUID a webhook uses for a custom field: stable, and unrelated to the internal name."""
    return str(uuid.uuid5(_FIELD_NAMESPACE, internal_name))


class SandboxError(Exception):
    """A control request that cannot be done (unknown id, bad manager...)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class _ApiFailure(Exception):
    """An API answer other than 200, in PeopleForce's words."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body


# --- control-plane models -------------------------------------------------------------------


class Quirks(BaseModel):
    """Documented PeopleForce oddities, off by default."""

    replay_first_page: bool = Field(False, description="answer page 1 whatever page is asked")
    flat_metadata: bool = Field(
        False, description="`metadata.{page,...}` instead of `metadata.pagination`"
    )
    null_data_when_empty: bool = Field(
        False, description="`data: null` instead of `[]` on an empty page"
    )
    notify_future_terminations: bool = Field(
        True,
        description="send employee_update when a future termination is entered (live: unknown)",
    )


class WebhookTarget(BaseModel):
    url: str | None = None
    secret: str | None = None


class WebhookDelivery(BaseModel):
    """One POST to the webhook URL and what came of it."""

    id: int
    action: str
    employee_id: int
    url: str
    attempted_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    signature: str | None = None
    body: str
    redelivery_of: int | None = None

    @computed_field
    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class NewEmployee(BaseModel):
    """A hire. Unset references fall back to sensible defaults (the department head as manager)."""

    model_config = ConfigDict(extra="forbid")

    first_name: str = Field(min_length=1)
    last_name: str = Field(min_length=1)
    middle_name: str = ""
    email: str | None = None
    personal_email: str | None = None
    gender: Literal["male", "female"] = "female"
    date_of_birth: date | None = None
    hired_on: date | None = Field(None, description="default: today")
    probation_ends_on: date | None = Field(None, description="default: hired_on + 90 days")
    department: str = "Engineering"
    division: str | None = None
    position: str = "Software Engineer"
    location: str = "Remote"
    employment_type: str = "Full-Time"
    job_level: str = "Middle"
    manager_id: int | None = Field(None, description="default: the department head")
    employee_number: str | None = None
    fields: dict[str, str | None] = Field(default_factory=dict)


class EmployeeChanges(BaseModel):
    """A profile edit: only the keys given change (`manager_id: null` removes the manager)."""

    model_config = ConfigDict(extra="forbid")

    first_name: str | None = Field(None, min_length=1)
    middle_name: str | None = None
    last_name: str | None = Field(None, min_length=1)
    email: str | None = None
    personal_email: str | None = None
    gender: Literal["male", "female"] | None = None
    date_of_birth: date | None = None
    hired_on: date | None = None
    probation_ends_on: date | None = None
    department: str | None = None
    division: str | None = None
    position: str | None = None
    location: str | None = None
    employment_type: str | None = None
    job_level: str | None = None
    manager_id: int | None = None
    employee_number: str | None = None
    fields: dict[str, str | None] | None = Field(None, description="merged into existing fields")


class Termination(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effective_on: date | None = Field(
        None, description="default: today; a future date is scheduled"
    )
    comment: str | None = None
    termination_type: str = "Voluntary"
    termination_reason: str = "New job"
    eligible_for_rehire: bool = True


# How `GET /employees/{id}/assets` answers for one employee (`PUT /_sandbox/employees/{id}/
# assets-answer`): their list; 404, as a tenant without the assets module; or their list with
# two odd records after it (`MALFORMED_ASSETS`).
AssetsAnswer = Literal["list", "not_found", "malformed"]

# One asset with an unreadable date (read without it) and one with no usable id (skipped).
MALFORMED_ASSETS: list[dict[str, Any]] = [
    {"id": 8801, "name": "Docking station", "serial_number": "DS-1", "created_at": "last spring"},
    {"id": {"not": "an id"}, "name": "Monitor", "serial_number": "MON-7"},
]


class AssetsAnswerChange(BaseModel):
    answer: AssetsAnswer


class Clock(BaseModel):
    today: date | None = Field(None, description="null: follow the real date")


# --- state ----------------------------------------------------------------------------------


class _Catalog:
    """Stable ids for reference data (departments, positions...), assigned on first sight."""

    # Each kind has its own id range, so ids look like PeopleForce's and never collide in tests.
    _BASES: ClassVar[dict[str, int]] = {
        "employment_type": 10,
        "department": 30,
        "division": 40,
        "location": 50,
        "termination_type": 70,
        "termination_reason": 80,
        "asset_category": 90,
        "job_level": 100,
        "position": 200,
    }

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self._next = dict(self._BASES)

    def id(self, kind: str, name: str) -> int:
        key = (kind, name)
        if key not in self._ids:
            self._ids[key] = self._next[kind]
            self._next[kind] += 1
        return self._ids[key]

    def ref(self, kind: str, name: str | None) -> dict[str, Any] | None:
        return None if name is None else {"id": self.id(kind, name), "name": name}


class PeopleForceState:
    """The simulated tenant: people, clock, quirks, faults and the webhook delivery log."""

    def __init__(
        self,
        *,
        api_key: str,
        people: Iterable[SeedPerson] = (),
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        page_size: int = 50,
        faults: Faults | None = None,
        today: date | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.api_key = api_key
        self._initial_page_size = page_size
        self._initial_people = copy.deepcopy(list(people))
        self._initial_target = WebhookTarget(url=webhook_url, secret=webhook_secret)
        self._initial_today = today
        self._initial_faults = faults or Faults()
        self.lock = threading.RLock()  # guards people, deliveries and the clock across threads
        self._delivery_lock = threading.Lock()  # deliveries go out one at a time, in order
        self._http: httpx.Client | None = None
        self.injector: FaultInjector | None = None  # set when the app's middleware is built
        # Everyone by id and every department's head, with the key they were found under.
        self._listing: tuple[tuple[Any, ...], list[SeedPerson], dict[str, SeedPerson]] | None = None
        self.reset()

    # -- lifecycle and knobs -------------------------------------------------------------

    def reset(self) -> None:
        """Back to the people, page size, webhook target, clock and faults the app was created with."""
        with self.lock:
            self.people: dict[int, SeedPerson] = {
                p.id: p for p in copy.deepcopy(self._initial_people)
            }
            self._listing = None
            self.deleted: set[int] = set()  # ids of people deleted (see `delete`)
            self.target = self._initial_target.model_copy()
            self.page_size = self._initial_page_size
            self.fixed_today = self._initial_today
            self.quirks = Quirks()
            self.deliveries: list[WebhookDelivery] = []
            self.catalog = _Catalog()
            for person in self.people.values():  # ids in seed order: deterministic
                self._register(person)
            stamps = [p.updated_at for p in self.people.values() if p.updated_at]
            self._last_stamp = max(stamps) if stamps else datetime(2000, 1, 1, tzinfo=UTC)
            self._nightly_done: set[tuple[str, int, date]] = set()
            self.asset_answers: dict[int, AssetsAnswer] = {}  # see `set_assets_answer`
            self.set_faults(self._initial_faults.model_copy(deep=True))

    def close(self) -> None:
        with self._delivery_lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        self._faults = faults
        if self.injector is not None:
            self.injector.set(faults)

    def set_assets_answer(self, employee_id: int, answer: AssetsAnswer) -> None:
        """How the assets endpoint answers for this employee (until `reset`)."""
        with self.lock:
            self.get(employee_id)  # known, or the control's 404
            self.asset_answers[employee_id] = answer

    def set_webhook_target(self, url: str | None, secret: str | None) -> None:
        with self.lock:
            self.target = WebhookTarget(url=url, secret=secret)

    @property
    def today(self) -> date:
        return self.fixed_today or datetime.now(UTC).date()

    def set_today(self, today: date | None) -> None:
        with self.lock:
            self.fixed_today = today

    def _now(self) -> datetime:
        """A new, strictly later instant (ms precision, as rendered) on the simulated day."""
        real = datetime.now(UTC)
        now = datetime.combine(self.fixed_today, real.timetz()) if self.fixed_today else real
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if now <= self._last_stamp:
            now = self._last_stamp + timedelta(milliseconds=1)
        self._last_stamp = now
        return now

    # -- reads ---------------------------------------------------------------------------

    def get(self, employee_id: int) -> SeedPerson:
        person = self.people.get(employee_id)
        if person is None:
            raise SandboxError(404, f"no employee {employee_id}")
        return person

    def status_of(self, person: SeedPerson) -> str:
        return person.status_on(self.today)

    # -- mutations (each sends its webhooks) --------------------------------------------

    def hire(self, **fields: Any) -> SeedPerson:
        """Create an employee: `employee_create`, plus `employee_start` if they start today."""
        new = NewEmployee.model_validate(fields)
        with self.lock:
            today = self.today
            hired_on = new.hired_on or today
            department_head = self._department_head(new.department)
            manager_id = (
                new.manager_id
                if "manager_id" in new.model_fields_set
                else (department_head.id if department_head else None)
            )
            self._check_manager(None, manager_id)
            # Ids are never given again, not even those of people deleted.
            person_id = max([*self.people, *self.deleted], default=1000) + 1
            if "email" in new.model_fields_set and not new.email:
                email = None  # hired without a work email (it comes later, or never)
            else:
                email = new.email or self._free_email(
                    email_local_part(new.first_name, new.last_name) or f"employee{person_id}"
                )
            now = self._now()
            person = SeedPerson(
                id=person_id,
                first_name=new.first_name,
                middle_name=new.middle_name,
                last_name=new.last_name,
                email=email,
                personal_email=new.personal_email,
                gender=new.gender,
                date_of_birth=new.date_of_birth,
                hired_on=hired_on,
                probation_ends_on=new.probation_ends_on or hired_on + PROBATION,
                department=new.department,
                division=new.division or DEPARTMENTS.get(new.department, ("Operations", ()))[0],
                position=new.position,
                location=new.location,
                employment_type=new.employment_type,
                job_level=new.job_level,
                manager_id=manager_id,
                employee_number=new.employee_number or f"E-{person_id:05d}",
                fields=dict(new.fields),
                created_at=now,
                updated_at=now,
            )
            self.people[person_id] = person
            self._register(person)
            events = [self._webhook("employee_create", person)]
            if hired_on == today:  # PeopleForce starts same-day hires immediately
                person.updated_at = self._now()
                events.append(self._webhook("employee_start", person))
                self._nightly_done.add(("employee_start", person_id, today))
        self._send_all(events)
        return person

    def update(self, employee_id: int, **changes: Any) -> SeedPerson:
        """Edit a profile: `employee_update`."""
        edit = EmployeeChanges.model_validate(changes)
        given = edit.model_fields_set
        with self.lock:
            person = self.get(employee_id)
            if "manager_id" in given:
                self._check_manager(person.id, edit.manager_id)
            for name in given:
                value = getattr(edit, name)
                if name == "fields":
                    person.fields.update(value or {})
                elif value is None and name in _REQUIRED_ON_PERSON:
                    raise SandboxError(422, f"{name} cannot be removed")
                else:
                    setattr(person, name, "" if name == "middle_name" and value is None else value)
            if "department" in given and "division" not in given and edit.department in DEPARTMENTS:
                person.division = DEPARTMENTS[edit.department][0]
            person.updated_at = self._now()
            self._register(person)
            events = [self._webhook("employee_update", person)]
        self._send_all(events)
        return person

    def start(self, employee_id: int) -> SeedPerson:
        """The first day: `employee_start`. A future hire date moves to today (an early start)."""
        with self.lock:
            person = self.get(employee_id)
            if self.status_of(person) == "terminated":
                raise SandboxError(422, f"employee {employee_id} is terminated")
            if person.hired_on > self.today:
                person.hired_on = self.today
            person.updated_at = self._now()
            events = [self._webhook("employee_start", person)]
            self._nightly_done.add(("employee_start", person.id, self.today))
        self._send_all(events)
        return person

    def terminate(
        self,
        employee_id: int,
        *,
        effective_on: date | None = None,
        comment: str | None = None,
        termination_type: str = "Voluntary",
        termination_reason: str = "New job",
        eligible_for_rehire: bool = True,
    ) -> SeedPerson:
        """Enter a termination. Effective today or earlier: `employee_terminate` now. Later:
        `employee_update` (if `quirks.notify_future_terminations`), and `employee_terminate`
        from the nightly batch on the day."""
        with self.lock:
            person = self.get(employee_id)
            effective_on = effective_on or self.today
            person.termination_effective_on = effective_on
            person.termination_comment = comment
            person.termination_type = termination_type
            person.termination_reason = termination_reason
            person.termination_eligible_for_rehire = eligible_for_rehire
            person.updated_at = self._now()
            self._register(person)
            events = []
            if effective_on <= self.today:
                events.append(self._webhook("employee_terminate", person))
                self._nightly_done.add(("employee_terminate", person.id, self.today))
            elif self.quirks.notify_future_terminations:
                events.append(self._webhook("employee_update", person))
        self._send_all(events)
        return person

    def revert_termination(self, employee_id: int) -> SeedPerson:
        """Cancel a pending termination or reactivate a leaver: `employee_termination_revert`."""
        with self.lock:
            person = self.get(employee_id)
            if person.termination_effective_on is None:
                raise SandboxError(422, f"employee {employee_id} has no termination to revert")
            person.termination_effective_on = None
            person.termination_comment = None
            person.termination_type = None
            person.termination_reason = None
            person.termination_eligible_for_rehire = None
            person.updated_at = self._now()
            events = [self._webhook("employee_termination_revert", person)]
        self._send_all(events)
        return person

    def delete(self, employee_id: int) -> SeedPerson:
        """Delete the employee, as an admin may (a hire entered by mistake, or withdrawn): the
        API answers 404 for them from now on. No webhook: PeopleForce documents no topic for a
        deletion. Someone who manages others is refused, as their reports would point nowhere."""
        with self.lock:
            person = self.get(employee_id)
            reports = sorted(p.id for p in self.people.values() if p.manager_id == employee_id)
            if reports:
                raise SandboxError(
                    422,
                    f"employee {employee_id} manages {', '.join(map(str, reports))}: give them "
                    "another manager first",
                )
            del self.people[employee_id]
            self.deleted.add(employee_id)
            self.asset_answers.pop(employee_id, None)
        return person

    def run_nightly(self) -> list[tuple[str, int]]:
        """PeopleForce's 01:00 UTC batch for `today`: starts and terminations that fall due."""
        with self.lock:
            today = self.today
            due: list[tuple[str, SeedPerson]] = []
            for person in sorted(self.people.values(), key=lambda p: p.id):
                if person.hired_on == today and person.termination_effective_on != today:
                    due.append(("employee_start", person))
                if person.termination_effective_on == today:
                    due.append(("employee_terminate", person))
            events = []
            fired: list[tuple[str, int]] = []
            for action, person in due:
                if (action, person.id, today) in self._nightly_done:
                    continue
                self._nightly_done.add((action, person.id, today))
                person.updated_at = self._now()
                events.append(self._webhook(action, person))
                fired.append((action, person.id))
        self._send_all(events)
        return fired

    def redeliver(self, delivery_id: int) -> WebhookDelivery | None:
        """Send a recorded delivery's exact body again (a duplicate, as a retrying sender would)."""
        with self.lock:
            original = next((d for d in self.deliveries if d.id == delivery_id), None)
            if original is None:
                raise SandboxError(404, f"no delivery {delivery_id}")
        return self._deliver(
            original.action,
            original.employee_id,
            original.body.encode("utf-8"),
            redelivery_of=original.id,
        )

    # -- helpers -------------------------------------------------------------------------

    def _register(self, person: SeedPerson) -> None:
        """Give every reference the person uses an id, so ids follow seed order."""
        for kind, name in (
            ("department", person.department),
            ("division", person.division),
            ("location", person.location),
            ("position", person.position),
            ("employment_type", person.employment_type),
            ("job_level", person.job_level),
        ):
            self.catalog.id(kind, name)
        for asset in person.assets:
            self.catalog.id("asset_category", asset.category)

    def _check_manager(self, employee_id: int | None, manager_id: int | None) -> None:
        if manager_id is None:
            return
        if manager_id == employee_id:
            raise SandboxError(422, "an employee cannot report to themselves")
        if manager_id not in self.people:
            raise SandboxError(422, f"manager {manager_id} does not exist")

    def _free_email(self, local: str) -> str:
        taken = {p.email.lower() for p in self.people.values() if p.email}
        email, suffix = f"{local}@example.com", 2
        while email in taken:
            email, suffix = f"{local}{suffix}@example.com", suffix + 1
        return email

    def _department_head(self, department: str) -> SeedPerson | None:
        """Whoever in the department reports to someone outside it (or to nobody)."""
        return self._listed()[1].get(department)

    def by_id(self) -> list[SeedPerson]:
        """Everyone, by id (not to be changed: it is kept for the next caller)."""
        return self._listed()[0]

    def _listed(self) -> tuple[list[SeedPerson], dict[str, SeedPerson]]:
        """Everyone by id and every department's head, found again only once something changed:
        a company of 100,000 read 50 a page would otherwise be sorted twice for each of its
        2,000 pages. Every mutation stamps someone (`_now`) or changes the headcount, and the
        heads leave out leavers as of `today`: that is the key."""
        key = (id(self.people), len(self.people), self._last_stamp, self.today)
        if self._listing is None or self._listing[0] != key:
            people = sorted(self.people.values(), key=lambda p: p.id)
            heads: dict[str, SeedPerson] = {}
            for person in people:
                if person.department in heads or self.status_of(person) == "terminated":
                    continue
                manager = self.people.get(person.manager_id) if person.manager_id else None
                if manager is None or manager.department != person.department:
                    heads[person.department] = person
            self._listing = (key, people, heads)
        return self._listing[1], self._listing[2]

    # -- rendering -----------------------------------------------------------------------

    def render_employee(self, person: SeedPerson) -> dict[str, Any]:
        """The REST `Employee` (GET /employees/{id}, /employees/terminated), keys as the fixture."""
        catalog = self.catalog
        return {
            "id": person.id,
            "status": self.status_of(person),
            "access": self.status_of(person) != "terminated",
            "full_name": person.full_name,
            "first_name": person.first_name,
            "middle_name": person.middle_name,
            "last_name": person.last_name,
            "avatar_url": None,
            "email": person.email,
            "personal_email": person.personal_email,
            "date_of_birth": _iso(person.date_of_birth),
            "hired_on": _iso(person.hired_on),
            "probation_ends_on": _iso(person.probation_ends_on),
            "gender": _GENDERS.get(person.gender),
            "position": catalog.ref("position", person.position),
            "job_level": {
                "id": catalog.id("job_level", person.job_level),
                "name": person.job_level,
                "created_at": _CATALOG_STAMP,
                "updated_at": _CATALOG_STAMP,
            },
            "location": catalog.ref("location", person.location),
            "employment_type": {
                "id": catalog.id("employment_type", person.employment_type),
                "name": person.employment_type,
                "created_at": _CATALOG_STAMP,
            },
            "division": catalog.ref("division", person.division),
            "department": self._department_ref(person.department),
            "reporting_to": self._reporting_to(person),
            "direct_reports": [
                self._person_ref(report)
                for report in self.by_id()
                if report.manager_id == person.id and self.status_of(report) != "terminated"
            ],
            "termination_effective_on": _iso(person.termination_effective_on),
            "termination_comment": person.termination_comment,
            "termination_eligible_for_rehire": person.termination_eligible_for_rehire,
            "termination_type": catalog.ref("termination_type", person.termination_type),
            "termination_reason": catalog.ref("termination_reason", person.termination_reason),
            "fields": {name: {"value": value} for name, value in person.fields.items()},
            "created_at": _utc(person.created_at),
            "updated_at": _utc(person.updated_at),
        }

    def render_list_item(self, person: SeedPerson) -> dict[str, Any]:
        """A `GET /employees` item: the fixture's keys plus the spec's `EmployeeSimple` keys.

        No termination fields, custom fields or timestamps, as in the spec; gender is a string.
        """
        catalog = self.catalog
        return {
            "id": person.id,
            "status": self.status_of(person),
            "active": self.status_of(person) != "terminated",
            "access": self.status_of(person) != "terminated",
            "full_name": person.full_name,
            "first_name": person.first_name,
            "middle_name": person.middle_name,
            "last_name": person.last_name,
            "email": person.email,
            "personal_email": person.personal_email,
            "gender": person.gender,
            "date_of_birth": _iso(person.date_of_birth),
            "hired_on": _iso(person.hired_on),
            "probation_ends_on": _iso(person.probation_ends_on),
            "position": catalog.ref("position", person.position),
            "job_level": catalog.ref("job_level", person.job_level),
            "employment_type": catalog.ref("employment_type", person.employment_type),
            "location": catalog.ref("location", person.location),
            "division": catalog.ref("division", person.division),
            "department": self._department_ref(person.department),
            "reporting_to": self._reporting_to(person),
        }

    def render_webhook(self, action: str, person: SeedPerson) -> dict[str, Any]:
        """The webhook envelope, keys as `webhook_employee_create.json`."""
        manager = self.people.get(person.manager_id) if person.manager_id else None
        catalog = self.catalog
        return {
            "action": action,
            "data": {
                "id": person.id,
                "attributes": {
                    "employee_number": person.employee_number,
                    "hired_on": _iso(person.hired_on),
                    "probation_ends_on": _iso(person.probation_ends_on),
                    "first_name": person.first_name,
                    "last_name": person.last_name,
                    "email": person.email,
                    "personal_email": person.personal_email,
                    "gender": person.gender,
                    "mobile_number": "",
                    "work_phone_number": "",
                    "date_of_birth": _iso(person.date_of_birth),
                    "termination_effective_date": _iso(person.termination_effective_on),
                    "termination_comment": person.termination_comment,
                    "avatar_url": None,
                },
                "reporting_to": (
                    {"id": manager.id, "full_name": manager.full_name, "email": manager.email}
                    if manager
                    else None
                ),
                "employment_type": catalog.ref("employment_type", person.employment_type),
                "position": catalog.ref("position", person.position),
                "department": catalog.ref("department", person.department),
                "division": catalog.ref("division", person.division),
                "location": catalog.ref("location", person.location),
                "custom_fields": {
                    custom_field_uuid(name): {
                        "name": _field_label(name)[0],
                        "value": value,
                        "group": _field_label(name)[1],
                    }
                    for name, value in person.fields.items()
                },
                "meta": {
                    "created_at": _local(person.created_at),
                    "updated_at": _local(person.updated_at),
                },
            },
        }

    def render_asset(self, person: SeedPerson, asset: SeedAsset) -> dict[str, Any]:
        """An asset in the spec's `Asset` shape, with this person's assignment."""
        issued = _utc(datetime.combine(asset.issued_on, datetime.min.time(), tzinfo=UTC))
        returned = (
            _utc(datetime.combine(asset.returned_on, datetime.min.time(), tzinfo=UTC))
            if asset.returned_on
            else None
        )
        return {
            "id": asset.id,
            "name": asset.name,
            "code": asset.code,
            "serial_number": asset.serial_number,
            "description": f"{asset.category}: {asset.name}",
            "location_id": self.catalog.id("location", person.location),
            "asset_category_id": self.catalog.id("asset_category", asset.category),
            "asset_assignments": [
                {
                    "id": asset.id * 10,
                    "user_id": person.id,
                    "asset_id": asset.id,
                    "issued_on": _iso(asset.issued_on),
                    "returned_on": _iso(asset.returned_on),
                    "created_at": issued,
                    "updated_at": returned or issued,
                }
            ],
            "created_at": issued,
            "updated_at": returned or issued,
        }

    def _department_ref(self, department: str) -> dict[str, Any]:
        head = self._department_head(department)
        return {
            "id": self.catalog.id("department", department),
            "name": department,
            "parent_id": None,
            "manager_id": head.id if head else None,
        }

    def _reporting_to(self, person: SeedPerson) -> dict[str, Any] | None:
        manager = self.people.get(person.manager_id) if person.manager_id else None
        return self._person_ref(manager) if manager else None

    @staticmethod
    def _person_ref(person: SeedPerson) -> dict[str, Any]:
        return {
            "id": person.id,
            "first_name": person.first_name,
            "last_name": person.last_name,
            "email": person.email,
        }

    # -- listing -------------------------------------------------------------------------

    def page(
        self,
        people: list[SeedPerson],
        page: int,
        render: Callable[[SeedPerson], dict[str, Any]],
    ) -> dict[str, Any]:
        """One page of a list in PeopleForce's envelope, with the quirks switched on."""
        size = self.page_size
        pages = max(1, math.ceil(len(people) / size))
        served = 1 if self.quirks.replay_first_page else page
        chunk = people[(served - 1) * size : served * size]
        pagination = {"page": page, "pages": pages, "count": len(people), "items": len(chunk)}
        data: list[dict[str, Any]] | None = [render(p) for p in chunk]
        if not data and self.quirks.null_data_when_empty:
            data = None
        metadata = pagination if self.quirks.flat_metadata else {"pagination": pagination}
        return {"data": data, "metadata": metadata}

    # -- webhooks ------------------------------------------------------------------------

    def _webhook(self, action: str, person: SeedPerson) -> tuple[str, int, bytes]:
        # Compact UTF-8 JSON, non-ASCII kept: receivers must verify the exact bytes.
        payload = self.render_webhook(action, person)
        raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return action, person.id, raw

    def _send_all(self, events: list[tuple[str, int, bytes]]) -> None:
        for action, employee_id, raw in events:
            self._deliver(action, employee_id, raw)

    def _deliver(
        self, action: str, employee_id: int, raw: bytes, *, redelivery_of: int | None = None
    ) -> WebhookDelivery | None:
        """POST one webhook; record the outcome whatever it is. Nothing is sent without a URL."""
        target = self.target
        if not target.url:
            return None
        headers = {"content-type": "application/json", "user-agent": "pf-sandbox-webhooks"}
        signature = sign(target.secret, raw) if target.secret else None
        if signature:
            headers[SIGNATURE_HEADER] = signature
        with self._delivery_lock:
            if self._http is None:
                # trust_env=False: a proxy from the environment must not swallow loopback calls.
                self._http = httpx.Client(timeout=10.0, trust_env=False)
            attempted_at = datetime.now(UTC)
            started = time.perf_counter()
            status_code: int | None = None
            error: str | None = None
            try:
                response = self._http.post(target.url, content=raw, headers=headers)
                status_code = response.status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            delivery = WebhookDelivery(
                id=len(self.deliveries) + 1,
                action=action,
                employee_id=employee_id,
                url=target.url,
                attempted_at=attempted_at,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                status_code=status_code,
                error=error,
                signature=signature,
                body=raw.decode("utf-8"),
                redelivery_of=redelivery_of,
            )
            with self.lock:
                self.deliveries.append(delivery)
        return delivery


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value else None


def _utc(value: datetime | None) -> str | None:
    """REST timestamps: UTC with milliseconds and `Z`."""
    if value is None:
        return None
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


def _local(value: datetime | None) -> str | None:
    """Webhook timestamps: the tenant's offset, e.g. `2024-08-20T16:29:08.713+03:00`."""
    return value.astimezone(WEBHOOK_OFFSET).isoformat(timespec="milliseconds") if value else None


# --- HTTP -----------------------------------------------------------------------------------


def _parse_list(
    values: list[str], parse: Any, name: str, errors: dict[str, list[str]]
) -> list[Any]:
    parsed = []
    for value in values:
        try:
            parsed.append(parse(value))
        except ValueError:
            errors.setdefault(name, []).append(f"{value!r} is invalid")
    return parsed


def _parse_instant(value: str) -> datetime:
    """`updated_at[gte]` and friends: an ISO date or date-time (naive = UTC)."""
    parsed = datetime.fromisoformat(value.strip())
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _api_router(state: PeopleForceState) -> APIRouter:
    router = APIRouter()

    def authenticate(request: Request) -> None:
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), state.api_key.encode()):
            raise _ApiFailure(401, {"message": "Bad Credentials"})

    def page_number(request: Request) -> int:
        try:
            return max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            raise _ApiFailure(422, {"errors": {"page": ["is not a number"]}}) from None

    @router.get("/employees")
    def list_employees(request: Request) -> JSONResponse:
        authenticate(request)
        query = request.query_params
        errors: dict[str, list[str]] = {}
        status = query.get("status", "active")
        if status not in STATUS_FILTERS:
            errors["status"] = ["is not included in the list"]
        ids = set(_parse_list(query.getlist("ids[]"), int, "ids[]", errors))
        emails = {e.strip().lower() for e in query.getlist("emails[]")}
        numbers = set(query.getlist("employee_numbers[]"))
        manager_ids = set(_parse_list(query.getlist("manager_id"), int, "manager_id", errors))
        bounds: dict[str, Any] = {}
        for name, parse in (
            ("hired_on[gte]", date.fromisoformat),
            ("hired_on[lte]", date.fromisoformat),
            ("created_at[gte]", _parse_instant),
            ("created_at[lte]", _parse_instant),
            ("updated_at[gte]", _parse_instant),
            ("updated_at[lte]", _parse_instant),
        ):
            if name in query:
                values = _parse_list([query[name]], parse, name, errors)
                bounds[name] = values[0] if values else None
        page = page_number(request)
        if errors:
            raise _ApiFailure(422, {"errors": errors})

        def wanted(person: SeedPerson) -> bool:
            current = state.status_of(person)
            if status == "active" and current == "terminated":
                return False
            if status not in ("active", "all") and current != status:
                return False
            if ids and person.id not in ids:
                return False
            if emails and (person.email or "").lower() not in emails:
                return False
            if numbers and person.employee_number not in numbers:
                return False
            if manager_ids and person.manager_id not in manager_ids:
                return False
            for name, bound in bounds.items():
                field, op = name[:-1].split("[")
                value = getattr(person, field)
                if value is None or bound is None:
                    return False
                if (op == "gte" and value < bound) or (op == "lte" and value > bound):
                    return False
            return True

        unfiltered = status == "all" and not (ids or emails or numbers or manager_ids or bounds)
        with state.lock:
            everyone = state.by_id()
            selected = everyone if unfiltered else list(filter(wanted, everyone))
            return JSONResponse(state.page(selected, page, state.render_list_item))

    # Declared before /employees/{employee_id}, which would otherwise capture "terminated".
    @router.get("/employees/terminated")
    def list_terminated(request: Request) -> JSONResponse:
        authenticate(request)
        query = request.query_params
        errors: dict[str, list[str]] = {}
        since = _parse_list(
            query.getlist("terminated_on[gte]")[:1],
            date.fromisoformat,
            "terminated_on[gte]",
            errors,
        )
        until = _parse_list(
            query.getlist("terminated_on[lte]")[:1],
            date.fromisoformat,
            "terminated_on[lte]",
            errors,
        )
        page = page_number(request)
        if errors:
            raise _ApiFailure(422, {"errors": errors})
        with state.lock:
            selected = [
                p
                for p in state.by_id()
                if state.status_of(p) == "terminated"
                and p.termination_effective_on is not None
                and (not since or p.termination_effective_on >= since[0])
                and (not until or p.termination_effective_on <= until[0])
            ]
            return JSONResponse(state.page(selected, page, state.render_employee))

    def known_person(employee_id: int) -> SeedPerson:
        """The person, or PeopleForce's 404 (call with the state lock held)."""
        person = state.people.get(employee_id)
        if person is None:
            raise _ApiFailure(404, {"message": "Not found"})
        return person

    @router.get("/employees/{employee_id}")
    def get_employee(employee_id: int, request: Request) -> JSONResponse:
        authenticate(request)
        with state.lock:
            person = known_person(employee_id)
            return JSONResponse({"data": state.render_employee(person)})

    @router.get("/employees/{employee_id}/assets")
    def list_assets(employee_id: int, request: Request) -> JSONResponse:
        authenticate(request)
        with state.lock:
            person = known_person(employee_id)
            answer = state.asset_answers.get(employee_id, "list")
            if answer == "not_found":  # a tenant without the assets module
                raise _ApiFailure(404, {"message": "Not found"})
            assets = [state.render_asset(person, a) for a in person.assets]
            if answer == "malformed":
                assets += MALFORMED_ASSETS
            return JSONResponse({"data": assets})

    return router


def _control_router(state: PeopleForceState) -> APIRouter:
    router = APIRouter(tags=["sandbox control"])

    def person_json(person: SeedPerson) -> dict[str, Any]:
        return {**_PERSON_JSON.dump_python(person, mode="json"), "status": state.status_of(person)}

    @router.get("/employees")
    def all_people() -> list[dict[str, Any]]:
        with state.lock:
            return [person_json(p) for p in sorted(state.people.values(), key=lambda p: p.id)]

    @router.get("/employees/{employee_id}")
    def one_person(employee_id: int) -> dict[str, Any]:
        with state.lock:
            return person_json(state.get(employee_id))

    @router.post("/employees", status_code=201)
    def hire(new: NewEmployee) -> dict[str, Any]:
        return person_json(state.hire(**new.model_dump(exclude_unset=True)))

    @router.patch("/employees/{employee_id}")
    def update(employee_id: int, changes: EmployeeChanges) -> dict[str, Any]:
        return person_json(state.update(employee_id, **changes.model_dump(exclude_unset=True)))

    @router.delete("/employees/{employee_id}")
    def delete(employee_id: int) -> dict[str, Any]:
        return person_json(state.delete(employee_id))  # as they were

    @router.post("/employees/{employee_id}/start")
    def start(employee_id: int) -> dict[str, Any]:
        return person_json(state.start(employee_id))

    @router.post("/employees/{employee_id}/terminate")
    def terminate(employee_id: int, termination: Termination | None = None) -> dict[str, Any]:
        termination = termination or Termination()
        return person_json(
            state.terminate(
                employee_id,
                effective_on=termination.effective_on,
                comment=termination.comment,
                termination_type=termination.termination_type,
                termination_reason=termination.termination_reason,
                eligible_for_rehire=termination.eligible_for_rehire,
            )
        )

    @router.post("/employees/{employee_id}/revert")
    def revert(employee_id: int) -> dict[str, Any]:
        return person_json(state.revert_termination(employee_id))

    @router.get("/faults")
    def get_faults() -> Faults:
        return state.faults

    @router.put("/faults")
    def put_faults(faults: Faults) -> Faults:
        state.set_faults(faults)
        return state.faults

    @router.get("/quirks")
    def get_quirks() -> Quirks:
        return state.quirks

    @router.put("/quirks")
    def put_quirks(quirks: Quirks) -> Quirks:
        state.quirks = quirks
        return state.quirks

    @router.get("/webhooks")
    def deliveries() -> list[WebhookDelivery]:
        with state.lock:
            return list(state.deliveries)

    @router.post("/webhooks/{delivery_id}/redeliver")
    def redeliver(delivery_id: int) -> WebhookDelivery | None:
        return state.redeliver(delivery_id)

    @router.get("/webhook-target")
    def get_target() -> dict[str, Any]:
        return {"url": state.target.url, "secret_set": bool(state.target.secret)}

    @router.put("/webhook-target")
    def put_target(target: WebhookTarget) -> dict[str, Any]:
        state.set_webhook_target(target.url, target.secret)
        return {"url": state.target.url, "secret_set": bool(state.target.secret)}

    @router.get("/clock")
    def get_clock() -> dict[str, Any]:
        return {"today": state.today.isoformat(), "fixed": state.fixed_today is not None}

    @router.put("/clock")
    def put_clock(clock: Clock) -> dict[str, Any]:
        state.set_today(clock.today)
        return {"today": state.today.isoformat(), "fixed": state.fixed_today is not None}

    @router.post("/nightly")
    def nightly() -> list[dict[str, Any]]:
        return [{"action": action, "employee_id": eid} for action, eid in state.run_nightly()]

    @router.post("/reset")
    def reset() -> dict[str, Any]:
        state.reset()
        return {"people": len(state.people)}

    @router.put("/employees/{employee_id}/assets-answer")
    def set_assets_answer(employee_id: int, answer: AssetsAnswerChange) -> dict[str, Any]:
        state.set_assets_answer(employee_id, answer.answer)
        return {"employee_id": employee_id, "answer": answer.answer}

    return router


def create_app(
    *,
    api_key: str,
    people: list[SeedPerson] | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    page_size: int = 50,
    faults: Faults | None = None,
    today: date | None = None,
) -> FastAPI:
    """The simulator app; its state is `app.state.peopleforce` (a `PeopleForceState`).

    `people=None` seeds the default company (`seed_people`); pass `[]` for an empty tenant.
    `today=None` follows the real date; a fixed date makes statuses and timestamps repeatable.
    """
    if people is None:
        people = seed_people(today=today or datetime.now(UTC).date())
    state = PeopleForceState(
        api_key=api_key,
        people=people,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        page_size=page_size,
        faults=faults,
        today=today,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncGenerator[None]:
        yield
        state.close()

    app = FastAPI(title="PeopleForce sandbox", lifespan=lifespan)
    app.state.peopleforce = state

    class StateFaultInjector(FaultInjector):
        """The fault middleware, registered with the state so `PUT /_sandbox/faults` reaches it."""

        def __init__(self, app: ASGIApp) -> None:
            super().__init__(app, state.faults)
            state.injector = self

    app.add_middleware(StateFaultInjector)

    @app.exception_handler(_ApiFailure)
    async def api_failure(_: Request, error: _ApiFailure) -> JSONResponse:
        return JSONResponse(error.body, status_code=error.status)

    @app.exception_handler(SandboxError)
    async def sandbox_error(_: Request, error: SandboxError) -> JSONResponse:
        return JSONResponse({"message": error.message}, status_code=error.status)

    app.include_router(_api_router(state), prefix=API_PREFIX)
    app.include_router(_control_router(state), prefix=CONTROL_PREFIX)
    return app
