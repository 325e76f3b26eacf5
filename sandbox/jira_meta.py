"""The Jira simulator's configuration reads: projects, create screens, fields, workflow
statuses per issue type, and assignable users, as Jira Cloud answers them.

`doctor` reads these to hold the rules against Jira. They answer from the simulator's state
(its projects, custom field ids and users) and from a `MetaConfig` a test changes to make Jira
disagree with the rules: the name and type of each custom field, the fields a create screen
requires (without a default) or lacks, the statuses of an issue type's workflow, and accounts
that cannot be assigned in a project. Operations (each answer is spec-shaped):

- `GET /rest/api/3/project/search`, `GET /rest/api/3/project/{projectIdOrKey}`
- `GET /rest/api/3/issue/createmeta/{projectIdOrKey}/issuetypes[/{issueTypeId}]` (paged)
- `GET /rest/api/3/field`
- `GET /rest/api/3/project/{projectIdOrKey}/statuses`
- `GET /rest/api/3/user/assignable/search`

Control (no auth): `GET|PUT /_sandbox/meta` (the whole `MetaConfig`), `DELETE /_sandbox/meta`
(back to the defaults). The config is only read here: creates and transitions do not consult it.

This module does not import `sandbox.jira` (which installs it: no cycle); `install` is handed
the renderer, issue types, statuses and auth dependencies it answers with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, FastAPI, Path, Request, Response
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from sandbox.seed import DEPARTMENTS

CustomFieldType = Literal[
    "text",
    "paragraph",
    "date",
    "datetime",
    "user",
    "users",
    "option",
    "options",
    "labels",
    "number",
]
CUSTOM_PLUGIN = "com.atlassian.jira.plugin.system.customfieldtypes"
# The schema of each custom field type: (type, items, the custom field type's key).
CUSTOM_SCHEMAS: dict[str, tuple[str, str | None, str]] = {
    "text": ("string", None, "textfield"),
    "paragraph": ("string", None, "textarea"),
    "date": ("date", None, "datepicker"),
    "datetime": ("datetime", None, "datetime"),
    "user": ("user", None, "userpicker"),
    "users": ("array", "user", "multiuserpicker"),
    "option": ("option", None, "select"),
    "options": ("array", "option", "multiselect"),
    "labels": ("array", "string", "labels"),
    "number": ("number", None, "float"),
}


class CustomField(BaseModel):
    name: str
    type: CustomFieldType = "text"
    options: list[str] = Field(default_factory=list)  # allowedValues of a select list


def _default_custom_fields() -> dict[str, CustomField]:
    # The ones rules.example.toml maps, then a field of each other kind for tests to point at.
    return {
        "customfield_10050": CustomField(name="Position"),
        "customfield_10051": CustomField(
            name="Department", type="option", options=sorted(DEPARTMENTS)
        ),
        "customfield_10052": CustomField(name="Manager", type="user"),
        "customfield_10053": CustomField(name="Location"),
        "customfield_10054": CustomField(name="Hire date", type="date"),
        "customfield_10055": CustomField(name="Notes", type="paragraph"),
        "customfield_10056": CustomField(name="Start time", type="datetime"),
        "customfield_10057": CustomField(name="Team", type="option", options=["Red", "Blue"]),
        "customfield_10058": CustomField(name="Buddies", type="users"),
        "customfield_10059": CustomField(name="Skills", type="labels"),
    }


class MetaConfig(BaseModel):
    """What the configuration reads answer. Keys of `required` and `off_screen` name an issue
    type (`"Task"`, in every project) or one project's (`"IT/Task"`)."""

    # By id; a custom field id the simulator accepts with no entry here is a text field.
    custom_fields: dict[str, CustomField] = Field(default_factory=_default_custom_fields)
    # Fields the create screen requires, with no default value.
    required: dict[str, list[str]] = Field(default_factory=dict)
    # Fields not on the create screen (Jira refuses them at create).
    off_screen: dict[str, list[str]] = Field(default_factory=dict)
    # Issue type name -> the statuses of its workflow (default: every status).
    statuses: dict[str, list[str]] = Field(default_factory=dict)
    # Project key -> account ids that cannot be assigned issues there.
    unassignable: dict[str, list[str]] = Field(default_factory=dict)

    def for_issue_type(self, table: Mapping[str, list[str]], project: str, name: str) -> set[str]:
        return {*table.get(name, ()), *table.get(f"{project}/{name}", ())}


# --------------------------------------------------------------------------- what install is given


class IssueTypeLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def subtask(self) -> bool: ...


class UserLike(Protocol):
    @property
    def account_id(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def active(self) -> bool: ...
    @property
    def account_type(self) -> str: ...
    @property
    def email_visible(self) -> bool: ...


class RendererLike(Protocol):
    base: str

    def user(self, user: Any, *, full: bool = True) -> dict[str, Any]: ...
    def status(self, name: str) -> dict[str, Any]: ...
    def issue_type(self, issue_type: Any) -> dict[str, Any]: ...


class JiraMeta:
    """The config, and what `install` was handed (held on `app.state.jira_meta`)."""

    def __init__(
        self,
        renderer: Callable[[Any, Request], RendererLike],
        issue_types: Iterable[IssueTypeLike],
        statuses: Iterable[str],
        config: MetaConfig | None = None,
    ) -> None:
        self.renderer = renderer
        self.issue_types = list(issue_types)
        self.statuses = list(statuses)
        self.config = config or MetaConfig()

    def reset(self) -> None:
        self.config = MetaConfig()


def install(
    app: FastAPI,
    renderer: Callable[[Any, Request], RendererLike],
    issue_types: Iterable[IssueTypeLike],
    statuses: Iterable[str],
    dependencies: Sequence[Depends],
) -> None:
    """Add the configuration reads (behind `dependencies`: auth and call counting) and their
    control endpoint to the simulator `app`, whose `app.state.jira` is its state."""
    app.state.jira_meta = JiraMeta(renderer, issue_types, statuses)
    app.exception_handler(MetaError)(_error)
    app.include_router(rest_api, dependencies=list(dependencies))
    app.include_router(sandbox_control)


# --------------------------------------------------------------------------- helpers


class MetaError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _meta(request: Request) -> JiraMeta:
    return request.app.state.jira_meta


def _state(request: Request) -> Any:
    return request.app.state.jira


def _renderer(request: Request) -> RendererLike:
    return _meta(request).renderer(_state(request), request)


def _project(request: Request, reference: str) -> str:
    key = _state(request).project_key(reference)
    if key is None:
        raise MetaError(404, f"No project could be found with key '{reference}'.")
    return key


def _int(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    try:
        return default if value is None else max(0, int(value))
    except ValueError:
        raise MetaError(400, f"'{name}' must be a number.") from None


def _page(request: Request, items: Sequence[Any], default_size: int = 50) -> dict[str, Any]:
    start = _int(request, "startAt", 0)
    size = max(1, min(_int(request, "maxResults", default_size), 100))
    return {
        "startAt": start,
        "maxResults": size,
        "total": len(items),
        "items": list(items[start : start + size]),
    }


async def _error(_: Request, error: MetaError) -> JSONResponse:
    """Jira's error body."""
    return JSONResponse({"errorMessages": [error.message], "errors": {}}, status_code=error.status)


def _project_json(request: Request, key: str, *, with_issue_types: bool) -> dict[str, Any]:
    renderer = _renderer(request)
    project_id = _state(request).projects[key]
    body: dict[str, Any] = {
        "self": f"{renderer.base}/project/{project_id}",
        "id": project_id,
        "key": key,
        "name": key,
        "projectTypeKey": "business",
        "simplified": False,
        "style": "classic",
        "isPrivate": False,
    }
    if with_issue_types:
        body["issueTypes"] = [renderer.issue_type(t) for t in _meta(request).issue_types]
    return body


def _custom_field(request: Request, field_id: str) -> CustomField:
    return _meta(request).config.custom_fields.get(field_id) or CustomField(name=field_id)


def _custom_schema(field_id: str, custom: CustomField) -> dict[str, Any]:
    kind, items, plugin = CUSTOM_SCHEMAS[custom.type]
    schema: dict[str, Any] = {
        "type": kind,
        "custom": f"{CUSTOM_PLUGIN}:{plugin}",
        "customId": int(field_id.removeprefix("customfield_")),
    }
    if items:
        schema["items"] = items
    return schema


# System fields: id -> (name, schema type, schema items, operations).
SYSTEM_FIELDS: dict[str, tuple[str, str, str | None, list[str]]] = {
    "summary": ("Summary", "string", None, ["set"]),
    "issuetype": ("Issue Type", "issuetype", None, []),
    "project": ("Project", "project", None, ["set"]),
    "parent": ("Parent", "issuelink", None, ["set"]),
    "reporter": ("Reporter", "user", None, ["set"]),
    "description": ("Description", "string", None, ["set"]),
    "labels": ("Labels", "array", "string", ["add", "set", "remove"]),
    "assignee": ("Assignee", "user", None, ["set"]),
    "duedate": ("Due date", "date", None, ["set"]),
}
# Only in `GET /field`: not on any create screen.
READ_ONLY_FIELDS: dict[str, tuple[str, str]] = {
    "status": ("Status", "status"),
    "created": ("Created", "datetime"),
    "updated": ("Updated", "datetime"),
}


def _system_schema(field_id: str, kind: str, items: str | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind, "system": field_id}
    if items:
        schema["items"] = items
    return schema


def _all_custom_ids(request: Request) -> list[str]:
    ids = {*_state(request).custom_fields, *_meta(request).config.custom_fields}
    return sorted(ids, key=lambda field_id: int(field_id.removeprefix("customfield_")))


# --------------------------------------------------------------------------- the reads

rest_api = APIRouter(prefix="/rest/api/3")
ProjectRef = Annotated[str, Path(alias="projectIdOrKey")]
IssueTypeRef = Annotated[str, Path(alias="issueTypeId")]


@rest_api.get("/project/search")
async def search_projects(request: Request) -> JSONResponse:
    keys = list(_state(request).projects)
    page = _page(request, keys)
    values = [_project_json(request, key, with_issue_types=False) for key in page.pop("items")]
    return JSONResponse(
        {
            "self": str(request.url),
            **page,
            "isLast": page["startAt"] + len(values) >= len(keys),
            "values": values,
        }
    )


@rest_api.get("/project/{projectIdOrKey}")
async def get_project(request: Request, reference: ProjectRef) -> JSONResponse:
    key = _project(request, reference)
    return JSONResponse(_project_json(request, key, with_issue_types=True))


@rest_api.get("/issue/createmeta/{projectIdOrKey}/issuetypes")
async def create_issue_types(request: Request, reference: ProjectRef) -> JSONResponse:
    _project(request, reference)
    renderer = _renderer(request)
    page = _page(request, _meta(request).issue_types)
    types = [
        {**renderer.issue_type(t), "description": "", "iconUrl": f"{renderer.base}/icon/{t.id}"}
        for t in page.pop("items")
    ]
    return JSONResponse({**page, "issueTypes": types})


@rest_api.get("/issue/createmeta/{projectIdOrKey}/issuetypes/{issueTypeId}")
async def create_fields(
    request: Request, reference: ProjectRef, issue_type_id: IssueTypeRef
) -> JSONResponse:
    meta = _meta(request)
    project = _project(request, reference)
    issue_type = next((t for t in meta.issue_types if t.id == issue_type_id), None)
    if issue_type is None:
        raise MetaError(404, f"The issue type with id '{issue_type_id}' does not exist.")
    renderer = _renderer(request)
    config = meta.config
    required = config.for_issue_type(config.required, project, issue_type.name)
    off_screen = config.for_issue_type(config.off_screen, project, issue_type.name)
    fields: list[dict[str, Any]] = []
    for field_id, (name, kind, items, operations) in SYSTEM_FIELDS.items():
        if field_id == "parent" and not issue_type.subtask:
            continue
        entry: dict[str, Any] = {
            "fieldId": field_id,
            "key": field_id,
            "name": name,
            "required": field_id in ("summary", "issuetype", "project", "parent", "reporter")
            or field_id in required,
            "hasDefaultValue": field_id == "reporter",  # Jira fills in the caller
            "operations": operations,
            "schema": _system_schema(field_id, kind, items),
        }
        if field_id == "issuetype":
            entry["allowedValues"] = [renderer.issue_type(issue_type)]
        elif field_id == "project":
            entry["allowedValues"] = [_project_json(request, project, with_issue_types=False)]
        fields.append(entry)
    for field_id in sorted(_state(request).custom_fields):
        custom = _custom_field(request, field_id)
        entry = {
            "fieldId": field_id,
            "key": field_id,
            "name": custom.name,
            "required": field_id in required,
            "hasDefaultValue": False,
            "operations": ["add", "set", "remove"]
            if custom.type in ("users", "options", "labels")
            else ["set"],
            "schema": _custom_schema(field_id, custom),
        }
        if custom.options:
            number = int(field_id.removeprefix("customfield_"))
            entry["allowedValues"] = [
                {
                    "self": f"{renderer.base}/customFieldOption/{number}{n:02d}",
                    "value": value,
                    "id": f"{number}{n:02d}",
                }
                for n, value in enumerate(custom.options)
            ]
        fields.append(entry)
    fields = [
        f
        for f in fields
        if f["fieldId"] not in off_screen or f["fieldId"] in ("summary", "issuetype", "project")
    ]
    page = _page(request, fields)
    return JSONResponse({**page, "fields": page.pop("items")})


@rest_api.get("/field")
async def all_fields(request: Request) -> JSONResponse:
    fields: list[dict[str, Any]] = []
    system = {
        **{
            field_id: (name, kind, items)
            for field_id, (name, kind, items, _) in SYSTEM_FIELDS.items()
        },
        **{field_id: (name, kind, None) for field_id, (name, kind) in READ_ONLY_FIELDS.items()},
    }
    for field_id, (name, kind, items) in system.items():
        fields.append(
            {
                "id": field_id,
                "key": field_id,
                "name": name,
                "custom": False,
                "orderable": field_id not in READ_ONLY_FIELDS,
                "navigable": True,
                "searchable": True,
                "clauseNames": [field_id],
                "schema": _system_schema(field_id, kind, items),
            }
        )
    for field_id in _all_custom_ids(request):
        custom = _custom_field(request, field_id)
        number = field_id.removeprefix("customfield_")
        fields.append(
            {
                "id": field_id,
                "key": field_id,
                "name": custom.name,
                "custom": True,
                "orderable": True,
                "navigable": True,
                "searchable": True,
                "clauseNames": [f"cf[{number}]", custom.name],
                "schema": _custom_schema(field_id, custom),
            }
        )
    return JSONResponse(fields)


@rest_api.get("/project/{projectIdOrKey}/statuses")
async def project_statuses(request: Request, reference: ProjectRef) -> JSONResponse:
    _project(request, reference)
    meta = _meta(request)
    renderer = _renderer(request)
    return JSONResponse(
        [
            {
                "self": f"{renderer.base}/issuetype/{t.id}",
                "id": t.id,
                "name": t.name,
                "subtask": t.subtask,
                "statuses": [
                    renderer.status(name)
                    for name in meta.config.statuses.get(t.name, meta.statuses)
                ],
            }
            for t in meta.issue_types
        ]
    )


@rest_api.get("/user/assignable/search")
async def assignable_users(request: Request) -> JSONResponse:
    params = request.query_params
    reference = params.get("project")
    if reference is None:
        raise MetaError(400, "The project or issue key is required to find assignable users.")
    project = _project(request, reference)
    excluded = set(_meta(request).config.unassignable.get(project, ()))
    account_id = params.get("accountId")
    query = (params.get("query") or "").strip().casefold()

    def matches(user: UserLike) -> bool:
        if not user.active or user.account_type != "atlassian" or user.account_id in excluded:
            return False
        if account_id:
            return user.account_id == account_id
        names = [user.display_name.casefold(), *user.display_name.casefold().split()]
        emails = [user.email.casefold()] if user.email_visible else []
        return not query or any(name.startswith(query) for name in [*names, *emails])

    renderer = _renderer(request)
    found = [user for user in _state(request).users.values() if matches(user)]
    page = _page(request, found)
    return JSONResponse([renderer.user(user) for user in page["items"]])


# --------------------------------------------------------------------------- control

sandbox_control = APIRouter(prefix="/_sandbox", tags=["sandbox"])


@sandbox_control.get("/meta")
async def read_meta(request: Request) -> MetaConfig:
    return _meta(request).config


@sandbox_control.put("/meta")
async def replace_meta(request: Request, config: MetaConfig) -> MetaConfig:
    meta = _meta(request)
    unknown = {s for names in config.statuses.values() for s in names} - set(meta.statuses)
    if unknown:
        raise MetaError(422, f"unknown statuses {sorted(unknown)}; known: {meta.statuses}")
    meta.config = config
    return config


@sandbox_control.delete("/meta", status_code=204)
async def reset_meta(request: Request) -> Response:
    _meta(request).reset()
    return Response(status_code=204)
