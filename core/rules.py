"""The rules file: which Jira work each employee event means, validated with pydantic.

The file is TOML (see rules.example.toml, documented line by line). A mistake is reported
as `<file>: <field>: <what is wrong>`.
"""

from __future__ import annotations

import string
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# What a summary or description template may use: `{full_name}`, `{department}` ...
EMPLOYEE_TEMPLATE_FIELDS = frozenset(
    {
        "id",
        "full_name",
        "first_name",
        "last_name",
        "email",
        "employee_number",
        "position",
        "department",
        "division",
        "location",
        "manager_name",
        "manager_email",
        "hired_on",
        "termination_effective_on",
    }
)
ASSET_TEMPLATE_FIELDS = frozenset({"asset_name", "asset_serial", "asset_category"})

# Employee fields a field map may read; custom fields are `fields.<internal_name>`.
MAPPABLE_FIELDS = frozenset(
    {
        "full_name",
        "email",
        "position",
        "department",
        "division",
        "location",
        "manager",
        "hired_on",
        "employment_type",
        "job_level",
        "termination_effective_on",
    }
)


class RulesError(Exception):
    """The rules file is missing or wrong; the text names the file, the field and the problem."""


def _template_checker(allowed: frozenset[str]):
    def check(template: str) -> str:
        try:
            names = {
                name for _, name, _, _ in string.Formatter().parse(template) if name is not None
            }
        except ValueError as error:
            raise ValueError(f"template {template!r} is malformed: {error}") from None
        unknown = sorted(name for name in names if name not in allowed)
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
                f"use one of {', '.join(sorted(allowed))}"
            )
        if "" in names:
            raise ValueError("empty placeholder {} is not allowed; name the field")
        return template

    return check


EmployeeTemplate = Annotated[
    str, Field(min_length=1), AfterValidator(_template_checker(EMPLOYEE_TEMPLATE_FIELDS))
]
AssetTemplate = Annotated[
    str,
    Field(min_length=1),
    AfterValidator(_template_checker(EMPLOYEE_TEMPLATE_FIELDS | ASSET_TEMPLATE_FIELDS)),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_assignee(value: str) -> str:
    if value in ("manager", "unassigned") or (value.startswith("account:") and len(value) > 8):
        return value
    raise ValueError("must be 'manager', 'unassigned' or 'account:<Jira accountId>'")


# Who gets an issue: the employee's manager (resolved by email), nobody, or a fixed account.
Assignee = Annotated[str, AfterValidator(_check_assignee)]


class ChecklistItem(_Strict):
    summary: EmployeeTemplate
    assignee: Assignee = "unassigned"


class IssueRules(_Strict):
    """One kind of work (onboarding or offboarding): the parent issue and its subtasks."""

    project: str | None = Field(None, pattern=r"^[A-Z][A-Z0-9_]+$")
    issue_type: str = "Task"
    subtask_type: str = "Sub-task"
    summary: EmployeeTemplate
    description: EmployeeTemplate | None = None
    assignee: Assignee = "unassigned"
    checklist: tuple[ChecklistItem, ...] = ()


class OffboardingRules(IssueRules):
    # One subtask per asset assigned in PeopleForce; None turns them off.
    asset_subtask: AssetTemplate | None = "Collect {asset_name} from {full_name}"


# How many days before the hire date onboarding work is made (0: on the day).
LeadDays = Annotated[int, Field(ge=0, le=365)]


class RouteMatch(_Strict):
    """Exact, case-insensitive names; every given key must match."""

    department: str | None = None
    division: str | None = None
    location: str | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> RouteMatch:
        if not (self.department or self.division or self.location):
            raise ValueError("give at least one of department, division, location")
        return self


class Route(_Strict):
    name: str
    match: RouteMatch
    project: str | None = Field(None, pattern=r"^[A-Z][A-Z0-9_]+$")
    # Onboarding work for this route's hires starts this many days before the hire date;
    # None: the rules' `prehire_lead_days`.
    prehire_lead_days: LeadDays | None = None
    onboarding_assignee: Assignee | None = None
    offboarding_assignee: Assignee | None = None
    onboarding_checklist: tuple[ChecklistItem, ...] = ()
    offboarding_checklist: tuple[ChecklistItem, ...] = ()


class FieldType(StrEnum):
    text = "text"
    date = "date"
    user = "user"  # a person's email, resolved to a Jira accountId
    option = "option"
    labels = "labels"


class FieldMapping(_Strict):
    jira_field: str = Field(pattern=r"^(customfield_\d+|[a-z][a-zA-Z]*)$")
    type: FieldType = FieldType.text


class RecordIssue(_Strict):
    """Which issue field sync keeps current for each employee."""

    issue: Literal["onboarding", "separate"] = "onboarding"
    project: str | None = Field(None, pattern=r"^[A-Z][A-Z0-9_]+$")
    issue_type: str = "Task"
    summary: EmployeeTemplate = "Employee record: {full_name}"


class Rules(_Strict):
    timezone: str = "UTC"
    prehire_lead_days: LeadDays = 14
    # Employees who started longer ago than this get no onboarding when first seen: they were
    # onboarded before this service existed.
    onboard_started_within_days: int = Field(30, ge=0)
    # Likewise, people whose last day passed longer ago than this, and whom this service never
    # onboarded, get no offboarding when first seen (reconciliation reads every past leaver).
    offboard_left_within_days: int = Field(30, ge=0)
    # A mapped issue that no longer answers in Jira (deleted): report it, or create it again
    # when the work is still due. A moved issue is followed either way.
    missing_issue: Literal["report", "recreate"] = "report"
    default_project: str = Field(pattern=r"^[A-Z][A-Z0-9_]+$")
    onboarding: IssueRules
    offboarding: OffboardingRules
    record: RecordIssue = RecordIssue()
    routes: tuple[Route, ...] = ()
    field_map: dict[str, FieldMapping] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as Europe/Kyiv"
            ) from None
        return value

    @field_validator("field_map")
    @classmethod
    def _known_sources(cls, value: dict[str, FieldMapping]) -> dict[str, FieldMapping]:
        for source in value:
            if source not in MAPPABLE_FIELDS and not source.startswith("fields."):
                raise ValueError(
                    f"{source!r} is not a PeopleForce field this service reads; use one of "
                    f"{', '.join(sorted(MAPPABLE_FIELDS))} or fields.<internal_name>"
                )
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def route_for(
        self, *, department: str | None, division: str | None, location: str | None
    ) -> Route | None:
        """The first route whose every given key matches; None means the defaults apply."""
        actual = {"department": department, "division": division, "location": location}
        for route in self.routes:
            wanted = route.match.model_dump(exclude_none=True)
            if all(
                (actual[key] or "").casefold() == name.casefold() for key, name in wanted.items()
            ):
                return route
        return None


def load_rules(path: Path) -> Rules:
    """Read and validate the rules file, or raise `RulesError` naming the file and the field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RulesError(f"{path}: no such rules file (set RULES_FILE)") from None
    except tomllib.TOMLDecodeError as error:
        raise RulesError(f"{path}: not valid TOML: {error}") from None
    try:
        return Rules.model_validate(raw)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(part) for part in item['loc']) or '(top level)'}: "
            f"{item['msg'].removeprefix('Value error, ')}"
            for item in error.errors()
        ]
        raise RulesError(f"{path}: " + "; ".join(problems)) from None
