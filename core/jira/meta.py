"""What Jira says about its own configuration: projects, the issue types and fields of create
screens, all fields, workflow statuses per issue type, and who may be assigned.

`JiraClient`'s configuration reads (`get_project`, `create_issue_types`, `create_fields`, ...)
return these types; `core.rules_check` holds the rules against them. The answer models read
as leniently as those of `core.jira.answers`: unknown keys are ignored, and only what a read
cannot do without (an id, a name) is insisted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from pydantic import Field, TypeAdapter

from core.jira.answers import Answer, IdText, Key, StatusAnswer

# Offset-paged reads ask for this many items a page, and give up after this many pages.
PAGE_SIZE = 50
MAX_PAGES = 200

# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Project:
    id: str
    key: str
    name: str


@dataclass(frozen=True)
class IssueTypeInfo:
    """An issue type as a project offers it to create (createmeta)."""

    id: str
    name: str
    subtask: bool


@dataclass(frozen=True)
class FieldSchema:
    """A field's `schema`: `type` (string, date, user, option, array, ...), the `items` of an
    array, and which system field (`system`) or custom field type (`custom`) it is."""

    type: str
    items: str | None = None
    system: str | None = None
    custom: str | None = None


@dataclass(frozen=True)
class CreateField:
    """A field on the create screen of one issue type in one project."""

    field_id: str
    name: str
    required: bool
    has_default: bool
    schema: FieldSchema | None


@dataclass(frozen=True)
class JiraField:
    """A field of the site (`GET /field`), system or custom."""

    id: str
    name: str
    custom: bool
    schema: FieldSchema | None


@dataclass(frozen=True)
class IssueTypeStatuses:
    """The statuses of an issue type's workflow in a project."""

    issue_type: str
    subtask: bool
    statuses: tuple[str, ...]


# --------------------------------------------------------------------------- answers


class SchemaAnswer(Answer):
    type: str
    items: str | None = None
    system: str | None = None
    custom: str | None = None

    def read(self) -> FieldSchema:
        return FieldSchema(self.type, self.items, self.system, self.custom)


class OffsetPage(Answer):
    """The paging keys of Jira's offset-paged answers (any may be missing)."""

    startAt: int | None = None
    maxResults: int | None = None
    total: int | None = None
    isLast: bool | None = None

    def items(self) -> Sequence[Answer]:
        raise NotImplementedError

    def is_last(self, start: int) -> bool:
        """Whether no page follows this one, which began at `start`: Jira says so, the total
        is reached, or the page came back empty or (with neither said) short."""
        count = len(self.items())
        return (
            count == 0
            or self.isLast is True
            or (self.total is not None and start + count >= self.total)
            or (self.isLast is None and self.total is None and count < PAGE_SIZE)
        )


PageT = TypeVar("PageT", bound=OffsetPage)


class ProjectAnswer(Answer):
    id: IdText
    key: Key
    name: str | None = None

    def read(self) -> Project:
        return Project(self.id, self.key, self.name or self.key)


class ProjectPage(OffsetPage):
    """`GET /project/search`."""

    values: list[ProjectAnswer] | None = None

    def items(self) -> list[ProjectAnswer]:
        return self.values or []


class IssueTypeAnswer(Answer):
    id: IdText
    name: Key
    subtask: bool | None = None

    def read(self) -> IssueTypeInfo:
        return IssueTypeInfo(self.id, self.name, self.subtask is True)


class IssueTypesPage(OffsetPage):
    """`GET /issue/createmeta/{project}/issuetypes`. Jira Cloud answers `issueTypes`; the spec
    also names `createMetaIssueType`, and Data Center answers `values`."""

    issueTypes: list[IssueTypeAnswer] | None = None
    createMetaIssueType: list[IssueTypeAnswer] | None = None
    values: list[IssueTypeAnswer] | None = None

    def items(self) -> list[IssueTypeAnswer]:
        return self.issueTypes or self.createMetaIssueType or self.values or []


class CreateFieldAnswer(Answer):
    fieldId: Key
    name: str | None = None
    required: bool = False
    hasDefaultValue: bool | None = None
    schema_: SchemaAnswer | None = Field(None, alias="schema")  # `schema` is taken by BaseModel

    def read(self) -> CreateField:
        return CreateField(
            self.fieldId,
            self.name or self.fieldId,
            self.required,
            self.hasDefaultValue is True,
            self.schema_.read() if self.schema_ else None,
        )


class CreateFieldsPage(OffsetPage):
    """`GET /issue/createmeta/{project}/issuetypes/{id}`: Cloud answers `fields`; the spec also
    names `results`, and Data Center answers `values`."""

    fields: list[CreateFieldAnswer] | None = None
    results: list[CreateFieldAnswer] | None = None
    values: list[CreateFieldAnswer] | None = None

    def items(self) -> list[CreateFieldAnswer]:
        return self.fields or self.results or self.values or []


class FieldAnswer(Answer):
    id: Key
    name: str | None = None
    custom: bool | None = None
    schema_: SchemaAnswer | None = Field(None, alias="schema")

    def read(self) -> JiraField:
        return JiraField(
            self.id,
            self.name or self.id,
            self.custom is True,
            self.schema_.read() if self.schema_ else None,
        )


class IssueTypeStatusesAnswer(Answer):
    """One item of `GET /project/{project}/statuses`."""

    name: Key
    subtask: bool | None = None
    statuses: list[StatusAnswer] | None = None

    def read(self) -> IssueTypeStatuses:
        names = tuple(status.name for status in self.statuses or [] if status.name)
        return IssueTypeStatuses(self.name, self.subtask is True, names)


PROJECT = TypeAdapter(ProjectAnswer)
PROJECT_PAGE = TypeAdapter(ProjectPage)
ISSUE_TYPES_PAGE = TypeAdapter(IssueTypesPage)
CREATE_FIELDS_PAGE = TypeAdapter(CreateFieldsPage)
FIELD_LIST = TypeAdapter(list[FieldAnswer])
PROJECT_STATUSES = TypeAdapter(list[IssueTypeStatusesAnswer])
