"""Async client for the PeopleForce public API v3: auth, paging quirks and typed errors.

It knows HTTP and PeopleForce's shapes, nothing of Prefect or of business rules. Every call goes
through `core.http.send`, so a failure always surfaces as a `core.errors.ApiError` subclass and
`core.errors.is_transient` decides whether it is worth retrying.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar

import httpx
from loguru import logger
from pydantic import BaseModel, ValidationError

from core.errors import NotFoundError, UnexpectedAnswerError
from core.http import DEFAULT_TIMEOUT, ApiClient, answer_error, describe, read_json, send
from core.peopleforce.models import Asset, AssetsRead, Employee, EmployeeSummary, asset_item_label

if TYPE_CHECKING:
    from core.settings import Settings

SERVICE = "PeopleForce"

EmployeeStatusFilter = Literal["active", "all", "employed", "terminated", "hired", "probation"]

# Appended to the server's own words, because PeopleForce's 401/403 bodies say little.
_ADVICE = {
    401: "check PEOPLEFORCE_API_KEY: it must be a Company API key (Settings → Open API keys), "
    "not a Career key, and not deleted; and PEOPLEFORCE_BASE_URL must be this tenant's API",
    403: "the key is valid but not allowed here: the key may hide this data, or its IP "
    "allow-list or disabled API access blocks this host",
}

# What an answer that is not JSON, or a 404 on the employee list, most likely means.
_BASE_URL_ADVICE = (
    "PEOPLEFORCE_BASE_URL must be the API root, the spec's server with its prefix "
    "(https://app.peopleforce.io/api/public/v3); a mock that serves the spec's paths at its "
    "root (Prism) takes its bare address"
)
_NOT_JSON_HINT = (
    "; the live API answers JSON whatever Content-Type its spec declares (form-urlencoded for "
    "GET /employees), so this is not it: " + _BASE_URL_ADVICE
)

_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)

ModelT = TypeVar("ModelT", bound=BaseModel)
# Query parameters as ordered pairs: PeopleForce repeats array keys (`ids[]=1&ids[]=2`).
QueryPairs = list[tuple[str, str]]


@dataclass(frozen=True)
class Page(Generic[ModelT]):
    """One page of a list, for callers that read pages concurrently (reconciliation).

    `pages` is the page count PeopleForce reports, None when it reports none. Items are as
    PeopleForce sent them: de-duplicating across pages is the caller's job.
    """

    number: int
    items: list[ModelT]
    pages: int | None


def parse_error_body(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """(message, field errors) from a PeopleForce error body, whatever its shape.

    Seen or documented: `{"message": ...}`, `{"success": false, "errors": [{"message": ...}]}`,
    `{"errors": {"field": ["..."]}}`, plain text and HTML pages from proxies.
    """
    messages: list[str] = []
    field_errors: dict[str, str] = {}
    try:
        body: Any = response.json()
    except ValueError:
        body = None

    if isinstance(body, dict):
        for key in ("message", "error", "error_description"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                messages.append(value.strip())
        errors = body.get("errors")
        if isinstance(errors, dict):
            for name, value in errors.items():
                field_errors[str(name)] = _as_text(value)
        elif isinstance(errors, list):
            messages.extend(text for text in (_as_text(item) for item in errors) if text)
        elif isinstance(errors, str) and errors.strip():
            messages.append(errors.strip())
        # The simulators' fault injector answers in Jira's words; accept them too.
        extra = body.get("errorMessages")
        if isinstance(extra, list):
            messages.extend(str(item) for item in extra if item)
    elif isinstance(body, list):
        messages.extend(text for text in (_as_text(item) for item in body) if text)
    elif isinstance(body, str) and body.strip():
        messages.append(body.strip())
    elif body is None and response.text.strip():
        messages.append(_summarise_text(response.text))

    message = "; ".join(dict.fromkeys(messages))  # de-duplicated, order kept
    advice = _ADVICE.get(response.status_code)
    if advice:
        message = f"{message} ({advice})" if message else advice
    return message, field_errors


def _as_text(value: Any) -> str:
    if isinstance(value, dict):
        inner = value.get("message") or value.get("detail") or value.get("error")
        return str(inner) if inner else ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_as_text(item) for item in value)
    return "" if value is None else str(value)


def _summarise_text(text: str) -> str:
    title = _HTML_TITLE.search(text)
    if title:
        return "HTML page: " + " ".join(title.group(1).split())[:200]
    return " ".join(text.split())[:200]


def _query_datetime(value: datetime) -> str:
    """ISO-8601 in UTC; a naive datetime is taken as UTC. (The live format is unconfirmed.)"""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PeopleForceClient(ApiClient):
    """`async with PeopleForceClient(base_url, api_key) as pf: await pf.get_employee(42)`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(
            base_url, headers={"X-API-KEY": api_key}, transport=transport, timeout=timeout
        )
        # The references list items share (a department, a position, a manager), one object
        # each: a company of 100,000 read in pages would otherwise hold 700,000 copies of a few
        # hundred references (`_shared`).
        self._references: dict[tuple[Any, ...], BaseModel] = {}
        self._field_sets: dict[frozenset[str], set[str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Self:
        settings.require("peopleforce_api_key")
        api_key = settings.peopleforce_api_key
        assert api_key is not None  # require() raised otherwise
        return cls(str(settings.peopleforce_base_url), api_key.get_secret_value(), **kwargs)

    # --- operations -------------------------------------------------------------------------

    async def get_employee(self, employee_id: int) -> Employee:
        """`GET /employees/{id}`: the full record, the only one with custom fields."""
        operation = "get_employee"
        response = await self._get(f"employees/{int(employee_id)}")
        body = self._json(response, operation)
        record = body.get("data") if isinstance(body, dict) else None
        if not isinstance(record, dict):
            raise self._shape_error(response, operation, "no employee object under `data`")
        return self._parse(Employee, record, response, operation)

    async def iter_employees(
        self,
        *,
        status: EmployeeStatusFilter = "all",
        updated_since: datetime | None = None,
        hired_from: date | None = None,
        hired_to: date | None = None,
        ids: Iterable[int] | None = None,
        emails: Iterable[str] | None = None,
    ) -> AsyncIterator[EmployeeSummary]:
        """`GET /employees`, every page, each employee once.

        `status` defaults to `all` (the API's own default is `active`). An empty `ids` or
        `emails` collection matches nobody rather than dropping the filter.
        """
        params = _employee_filters(status, updated_since, hired_from, hired_to)
        if ids is not None:
            id_list = [int(i) for i in ids]
            if not id_list:
                return
            params.extend(("ids[]", str(i)) for i in id_list)
        if emails is not None:
            email_list = list(emails)
            if not email_list:
                return
            params.extend(("emails[]", e) for e in email_list)
        async for item in self._paginate("employees", params, EmployeeSummary, "iter_employees"):
            yield item

    async def iter_terminated(
        self,
        *,
        terminated_from: date | None = None,
        terminated_to: date | None = None,
    ) -> AsyncIterator[Employee]:
        """`GET /employees/terminated`: full records of people whose termination took effect."""
        params: QueryPairs = []
        if terminated_from is not None:
            params.append(("terminated_on[gte]", terminated_from.isoformat()))
        if terminated_to is not None:
            params.append(("terminated_on[lte]", terminated_to.isoformat()))
        async for item in self._paginate(
            "employees/terminated", params, Employee, "iter_terminated"
        ):
            yield item

    async def employees_page(
        self,
        page: int,
        *,
        status: EmployeeStatusFilter = "all",
        updated_since: datetime | None = None,
    ) -> Page[EmployeeSummary]:
        """One page of `GET /employees` (filters as `iter_employees`)."""
        params = _employee_filters(status, updated_since, None, None)
        items, pages = await self._read_page(
            "employees", params, page, EmployeeSummary, "employees_page"
        )
        return Page(page, [self._shared(item) for item in items], pages)

    async def terminated_page(self, page: int) -> Page[Employee]:
        """One page of `GET /employees/terminated`: full records, termination dates included."""
        items, pages = await self._read_page(
            "employees/terminated", [], page, Employee, "terminated_page"
        )
        return Page(page, items, pages)

    async def list_assets(self, employee_id: int) -> list[Asset]:
        """The employee's assets (`read_assets` without its notes)."""
        return list((await self.read_assets(employee_id)).assets)

    async def read_assets(self, employee_id: int) -> AssetsRead:
        """`GET /employees/{id}/assets` (one request: the spec declares no paging here).

        The spec declares no answer for this operation; what is read: `{"data": [...]}` (the
        shape of every other list, `data: null` for none), a bare list, or a 204. An asset
        with a field that cannot be read keeps the rest (the field is left out); one without a
        readable id is skipped: one odd record does not cost the whole list. Either way a note
        names it (and a warning is logged). Any other answer is an `UnexpectedAnswerError`.
        """
        operation = "list_assets"
        response = await self._get(f"employees/{int(employee_id)}/assets")
        if response.status_code == 204:
            return AssetsRead()
        body = self._json(response, operation)
        items = body.get("data") if isinstance(body, dict) else body
        if items is None and isinstance(body, dict) and "data" in body:
            return AssetsRead()
        if not isinstance(items, list):
            raise self._shape_error(response, operation, "no list of assets (`data`)")
        assets: list[Asset] = []
        notes: list[str] = []
        for position, item in enumerate(items, 1):
            asset, note = _read_asset(item, employee_id, position)
            if asset is not None:
                assets.append(asset)
            if note:
                notes.append(note)
        return AssetsRead(assets=tuple(assets), notes=tuple(notes))

    async def check(self) -> int | None:
        """A cheap authenticated call for `doctor`: the first page of active employees.

        Returns the total PeopleForce reports, when it reports one; raises the typed error
        (AuthenticationError, ForbiddenError, TransportError...) otherwise.
        """
        try:
            response = await self._get("employees", params=[("page", "1")])
        except NotFoundError as error:  # the employee list is never missing from the API
            raise NotFoundError(
                SERVICE,
                f"{error.message} ({_BASE_URL_ADVICE})",
                status=error.status,
                method=error.method,
                url=error.url,
                body=error.body,
            ) from error
        body = self._json(response, "check")
        pagination = _pagination(body.get("metadata") if isinstance(body, dict) else None)
        count = pagination.get("count")
        return count if isinstance(count, int) and not isinstance(count, bool) else None

    # --- plumbing ---------------------------------------------------------------------------

    def _shared(self, item: ModelT) -> ModelT:
        """`item` with each reference it holds replaced by an equal one already read, if any,
        and the names of the fields it was given (pydantic's set of them, 2 KB an item) shared
        with every item given the same.

        References are never changed once read (a plan copies a record to change it, and
        `model_copy` copies that set), so equal ones can be one object. One whose values cannot
        be hashed is left as it is."""
        given = frozenset(item.model_fields_set)
        object.__setattr__(
            item, "__pydantic_fields_set__", self._field_sets.setdefault(given, set(given))
        )
        for name, value in item.__dict__.items():
            if not isinstance(value, BaseModel):
                continue
            try:
                key = (
                    type(value),
                    tuple(value.__dict__.items()),
                    tuple((value.__pydantic_extra__ or {}).items()),
                    frozenset(value.model_fields_set),
                )
                shared = self._references.setdefault(key, value)
            except TypeError:  # a list or a dict among its values
                continue
            item.__dict__[name] = shared
        return item

    async def _get(self, path: str, params: QueryPairs | None = None) -> httpx.Response:
        # A tuple, not the list: httpx types its list form invariantly.
        request = self._http.build_request("GET", path, params=tuple(params or ()))
        return await send(self._http, SERVICE, request, parse_error_body)

    async def _paginate(
        self, path: str, params: QueryPairs, model: type[ModelT], operation: str
    ) -> AsyncIterator[ModelT]:
        """The items of every page, read into `model`, de-duplicated by id.

        Stops at the last page per `metadata` (nested `pagination` or flat), at an empty or null
        `data`, or at a page that brings no new id: some tenants answer page 1 for any page.
        """
        seen: set[Any] = set()
        page = 1
        while True:
            items, pages = await self._read_page(path, params, page, model, operation)
            if not items:
                return
            fresh = 0
            for item in items:
                item_id = getattr(item, "id", None)
                if item_id in seen:
                    continue
                seen.add(item_id)
                fresh += 1
                yield item
            if fresh == 0:
                return
            if pages is not None and page >= pages:
                return
            page += 1

    async def _read_page(
        self, path: str, params: QueryPairs, page: int, model: type[ModelT], operation: str
    ) -> tuple[list[ModelT], int | None]:
        """The items of one page read into `model` (an empty or null `data` reads as no items)
        and the page count from `metadata` (nested `pagination` or flat), when there is one."""
        response = await self._get(path, params=[*params, ("page", str(page))])
        body = self._json(response, operation)
        if not isinstance(body, dict):
            raise self._shape_error(response, operation, "expected an object with `data`")
        items = body.get("data") or []
        if not isinstance(items, list):
            raise self._shape_error(response, operation, "`data` is not a list")
        for item in items:
            if not isinstance(item, dict) or "id" not in item:
                raise self._shape_error(response, operation, "a list item has no `id`")
        pages = _pagination(body.get("metadata")).get("pages")
        readable_pages = pages if isinstance(pages, int) and not isinstance(pages, bool) else None
        return [self._parse(model, item, response, operation) for item in items], readable_pages

    def _json(self, response: httpx.Response, operation: str) -> Any:
        return read_json(SERVICE, operation, response, hint=_NOT_JSON_HINT)

    def _parse(
        self, model: type[ModelT], item: Any, response: httpx.Response, operation: str
    ) -> ModelT:
        try:
            return model.model_validate(item)
        except (ValidationError, RecursionError) as error:
            raise self._shape_error(
                response, operation, f"unexpected {model.__name__} shape: {describe(error)}"
            ) from error

    @staticmethod
    def _shape_error(
        response: httpx.Response, operation: str, detail: str
    ) -> UnexpectedAnswerError:
        # Not transient: a body we cannot read will not read better on a retry.
        return answer_error(SERVICE, operation, response, detail)


def _read_asset(item: Any, employee_id: int, position: int) -> tuple[Asset | None, str | None]:
    """One asset of a list: the fields that can be read, or None when not even its id can;
    and the note (also logged as a warning) naming what was left out."""
    try:
        return Asset.model_validate(item), None
    except (ValidationError, RecursionError) as error:
        return _salvage_asset(item, employee_id, position, error)


def _salvage_asset(
    item: Any, employee_id: int, position: int, error: Exception
) -> tuple[Asset | None, str | None]:
    problem = describe(error)
    unreadable = (
        {str(e["loc"][0]) for e in error.errors() if e["loc"]}
        if isinstance(error, ValidationError)
        else set()
    )
    if isinstance(item, dict) and unreadable and "id" not in unreadable:
        try:
            asset = Asset.model_validate(
                {name: value for name, value in item.items() if name not in unreadable}
            )
        except (ValidationError, RecursionError):
            asset = None
        if asset is not None:
            logger.warning(
                "PeopleForce asset {!r} of employee {}: left out unreadable {} ({})",
                asset.id,
                employee_id,
                ", ".join(sorted(unreadable)),
                problem,
            )
            fields = ", ".join(sorted(unreadable))
            return asset, f"asset {asset.label}: its {fields} could not be read and was left out"
    logger.warning(
        "PeopleForce asset of employee {} skipped, it cannot be read: {}", employee_id, problem
    )
    label = asset_item_label(item, position)
    return None, (
        f"asset {label} skipped: PeopleForce gave it in a form that cannot be read ({problem}); "
        "check it by hand"
    )


def _employee_filters(
    status: EmployeeStatusFilter,
    updated_since: datetime | None,
    hired_from: date | None,
    hired_to: date | None,
) -> QueryPairs:
    params: QueryPairs = [("status", status)]
    if updated_since is not None:
        params.append(("updated_at[gte]", _query_datetime(updated_since)))
    # Trust the bracket names: the spec's descriptions of these two are swapped.
    if hired_from is not None:
        params.append(("hired_on[gte]", hired_from.isoformat()))
    if hired_to is not None:
        params.append(("hired_on[lte]", hired_to.isoformat()))
    return params


def _pagination(metadata: Any) -> dict[str, Any]:
    """`metadata.pagination` (spec example, clients) or flat `metadata` (spec schema)."""
    if not isinstance(metadata, dict):
        return {}
    nested = metadata.get("pagination")
    return nested if isinstance(nested, dict) else metadata


__all__ = [
    "SERVICE",
    "EmployeeStatusFilter",
    "Page",
    "PeopleForceClient",
    "parse_error_body",
]
