"""The rules file: which Jira work each employee event means, validated with pydantic.

The file is TOML (see rules.example.toml, documented line by line). A mistake is reported
as `<file>: <field>: <what is wrong>`.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Callable
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
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


def _check_source(source: str) -> str:
    """A PeopleForce field this service reads: a `MAPPABLE_FIELDS` name or `fields.<name>`."""
    if source in MAPPABLE_FIELDS or (source.startswith("fields.") and len(source) > 7):
        return source
    raise ValueError(
        f"{source!r} is not a PeopleForce field this service reads; use one of "
        f"{', '.join(sorted(MAPPABLE_FIELDS))} or fields.<internal_name>"
    )


def _quoted_custom_fields(value: object) -> object:
    """Refuse `fields.github = ...` unquoted, which TOML reads as a table `fields`."""
    if isinstance(value, dict) and isinstance(nested := value.get("fields"), dict):
        name = next(iter(nested), "<internal_name>")
        raise ValueError(
            f'write a custom field in quotes, "fields.{name}" = ...: unquoted, TOML reads '
            f"fields.{name} as a table named fields"
        )
    return value


def _one_or_many(value: object) -> object:
    """A value or a list of values, each as text: TOML numbers and booleans compare as
    PeopleForce's JSON ones read (`5`, `True`)."""
    values = value if isinstance(value, list | tuple) else [value]
    return tuple(str(v) if isinstance(v, bool | int | float) else v for v in values)


# One name or a list of names (any of them matches), compared exactly but case-insensitively.
Values = Annotated[
    tuple[Annotated[str, Field(min_length=1)], ...],
    BeforeValidator(_one_or_many),
    Field(min_length=1),
]


def _one_of(wanted: tuple[str, ...], actual: str | None) -> bool:
    """Whether a PeopleForce value is one of `wanted` (exact, case-insensitive; none: no)."""
    return actual is not None and actual.casefold() in {name.casefold() for name in wanted}


class FieldMapping(_Strict):
    jira_field: str = Field(pattern=r"^(customfield_\d+|[a-z][a-zA-Z]*)$")
    type: FieldType = FieldType.text
    # PeopleForce's value is empty: write the Jira field empty ("clear", what an empty value
    # always did), leave it as it is ("skip"), or write `default` ("default").
    when_empty: Literal["clear", "skip", "default"] = "clear"
    default: str | None = Field(None, min_length=1)
    # Written only while every PeopleForce field named here has one of its values; otherwise
    # left as it is in Jira (as "skip").
    when: Annotated[
        Annotated[dict[Annotated[str, AfterValidator(_check_source)], Values], Field(min_length=1)]
        | None,
        BeforeValidator(_quoted_custom_fields),
    ] = None

    @model_validator(mode="after")
    def _default_goes_with_its_policy(self) -> FieldMapping:
        if self.default is not None and self.when_empty != "default":
            raise ValueError(
                'a default is used only with when_empty = "default": add that, or drop the default'
            )
        if self.default is None and self.when_empty == "default":
            raise ValueError('when_empty = "default" needs a default = "<value>"')
        if self.default is not None and self.type == FieldType.date:
            try:
                date.fromisoformat(self.default)
            except ValueError:
                raise ValueError(
                    f"default {self.default!r} is no date; write it as YYYY-MM-DD"
                ) from None
        if self.default is not None and self.type == FieldType.user and "@" not in self.default:
            raise ValueError(f"default {self.default!r}: a user field's default is an email")
        return self

    def applies(self, read: Callable[[str], str | None]) -> bool:
        """Whether `when` holds for a person (`read` gives their value of a source)."""
        return all(_one_of(wanted, read(source)) for source, wanted in (self.when or {}).items())


# --- Scope: who this service works for ---------------------------------------------------

# The employee fields a scope entry may name; custom fields go in its `fields` table.
SCOPE_KEYS = ("employment_type", "department", "division", "location", "position")


class ScopeMatch(_Strict):
    """Some people: every key given must match (a list: any of its names), exactly but
    case-insensitively; custom fields by internal name, `fields = {github = "octocat"}`."""

    name: str | None = Field(None, min_length=1)  # shown in the plan's note, beside the entry
    employment_type: Values | None = None
    department: Values | None = None
    division: Values | None = None
    location: Values | None = None
    position: Values | None = None
    fields: dict[Annotated[str, Field(min_length=1)], Values] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _not_empty(self) -> ScopeMatch:
        if not self.wanted:
            raise ValueError(f"give at least one of {', '.join(SCOPE_KEYS)}, fields")
        return self

    @property
    def wanted(self) -> dict[str, tuple[str, ...]]:
        """The sources this entry reads (`department`, `fields.github`) and their names."""
        keys = {key: getattr(self, key) for key in SCOPE_KEYS if getattr(self, key) is not None}
        custom = {f"fields.{name}": names for name, names in (self.fields or {}).items()}
        return keys | custom

    def matches(self, read: Callable[[str], str | None]) -> bool:
        return all(_one_of(names, read(source)) for source, names in self.wanted.items())


class Scope(_Strict):
    """In scope: matching any `include` (or there is none) and no `exclude`."""

    include: tuple[ScopeMatch, ...] = ()
    exclude: tuple[ScopeMatch, ...] = ()
    # Someone this service onboarded who is now out of scope: "nothing" (fields are no longer
    # synced), or "offboard" (offboarded as for a termination effective today).
    on_leaving_scope: Literal["nothing", "offboard"] = "nothing"

    @property
    def reads_custom_fields(self) -> bool:
        return any(entry.fields for entry in (*self.include, *self.exclude))

    def left_out_by(self, read: Callable[[str], str | None]) -> str | None:
        """Why a person is out of scope, naming the entry and the values read (`read` gives
        the person's value of a source); None when they are in scope."""

        def values(sources: list[str]) -> str:
            return ", ".join(f"{source} {read(source) or '(none)'}" for source in sources)

        for number, entry in enumerate(self.exclude):
            if entry.matches(read):
                label = f'"{entry.name}" ' if entry.name else ""
                return f"scope.exclude.{number} {label}matches ({values(list(entry.wanted))})"
        if self.include and not any(entry.matches(read) for entry in self.include):
            read_by_includes = list(dict.fromkeys(s for e in self.include for s in e.wanted))
            return f"no scope.include matches ({values(read_by_includes)})"
        return None


class RecordIssue(_Strict):
    """Which issue field sync keeps current for each employee."""

    issue: Literal["onboarding", "separate"] = "onboarding"
    project: str | None = Field(None, pattern=r"^[A-Z][A-Z0-9_]+$")
    issue_type: str = "Task"
    summary: EmployeeTemplate = "Employee record: {full_name}"


class Rules(_Strict):
    timezone: str = "UTC"
    prehire_lead_days: int = Field(14, ge=0, le=365)
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
    field_map: Annotated[dict[str, FieldMapping], BeforeValidator(_quoted_custom_fields)] = Field(
        default_factory=dict
    )
    scope: Scope = Scope()

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
            _check_source(source)
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
            f"{'.'.join(str(part) for part in item['loc'] if part != '[key]') or '(top level)'}: "
            f"{item['msg'].removeprefix('Value error, ')}"
            for item in error.errors()
        ]
        raise RulesError(f"{path}: " + "; ".join(problems)) from None
