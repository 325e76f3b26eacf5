"""Holds our clients and simulators to the published OpenAPI descriptions in ../shared/specs.

`ContractTransport` wraps the transport of a client under test: every request it sends is
checked against the spec (operation exists and is not deprecated, declared query parameters
only, parameters and body valid) before it goes out, and, where asked, every response is
checked against the operation's response schema. A violation raises `ContractViolation`
straight into the test that caused it, and is kept in `SpecContract.violations`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter
from fastapi.routing import APIRoute
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.paths import SPECS


def resolve_ref(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node`, or what its local `$ref` (`#/components/...`) points at, followed to the end."""
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


class ContractViolation(AssertionError):
    """A request or response that the published spec does not allow."""


@dataclass
class _SpecRequest:
    """An httpx request in the shape openapi-core reads."""

    host_url: str
    path: str
    method: str
    body: bytes | None
    content_type: str
    parameters: RequestParameters


@dataclass
class _SpecResponse:
    status_code: int
    data: bytes
    content_type: str
    headers: Headers


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    definition: dict[str, Any]
    parameters: tuple[dict[str, Any], ...]

    @property
    def declared_query(self) -> set[str]:
        return {p["name"] for p in self.parameters if p.get("in") == "query"}


@dataclass
class SpecContract:
    """One published API description and the operations seen against it."""

    name: str
    spec: dict[str, Any]
    validate_responses: bool = False
    seen: list[tuple[str, str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = self.spec["servers"][0]["url"].rstrip("/")
        # The published Jira spec breaks its own enums (default "" outside the enum): skip the
        # spec self-check, validate traffic only.
        self.openapi = OpenAPI.from_dict(self.spec, config=Config(spec_validator_cls=None))  # ty: ignore[invalid-argument-type]
        self._routes: list[tuple[re.Pattern[str], str]] = []
        for template in self.spec["paths"]:
            pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
            self._routes.append((re.compile(f"^{pattern}$"), template))
        # Literal paths win over templated ones (/employees/terminated over /employees/{id}).
        self._routes.sort(key=lambda route: route[1].count("{"))

    @classmethod
    def load(cls, file_name: str, **kwargs: Any) -> SpecContract:
        return cls(file_name, _read_spec(file_name), **kwargs)

    def operation(self, method: str, path: str) -> Operation:
        for pattern, template in self._routes:
            if pattern.match(path):
                definition = self.spec["paths"][template].get(method.lower())
                if definition is None:
                    continue
                declared = [
                    *self.spec["paths"][template].get("parameters", []),
                    *definition.get("parameters", []),
                ]
                parameters = tuple(self._resolve(p) for p in declared)
                return Operation(method.upper(), template, definition, parameters)
        raise self._violate(f"{method} {path}: no such operation in {self.name}")

    def served_operations(self, api: APIRouter) -> list[Operation]:
        """The operation of each (method, path) `api` serves (a simulator's), each checked to
        be in the spec under the very path template the route has."""
        served = {
            (method, route.path)
            for route in api.routes
            if isinstance(route, APIRoute)
            for method in route.methods or ()
        }
        operations = []
        for method, template in sorted(served):
            operation = self.operation(method, template)
            assert operation.template == template, f"{method} {template} is {operation.template}"
            operations.append(operation)
        return operations

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        return resolve_ref(self.spec, node)

    def check_request(self, request: httpx.Request, base_url: str) -> Operation:
        path = _relative_path(request.url, base_url)
        operation = self.operation(request.method, path)
        if operation.definition.get("deprecated"):
            raise self._violate(
                f"{request.method} {operation.template} is deprecated in {self.name}"
            )
        undeclared = set(request.url.params.keys()) - operation.declared_query
        if undeclared:
            raise self._violate(
                f"{request.method} {operation.template}: query parameters {sorted(undeclared)} "
                f"are not in {self.name}"
            )
        spec_request = _SpecRequest(
            host_url=self.server,
            path=urlsplit(self.server).path + path,
            method=request.method.lower(),
            body=request.content or None,
            content_type=request.headers.get("content-type", "application/json"),
            parameters=RequestParameters(
                query=ImmutableMultiDict(list(request.url.params.multi_items())),
                header=Headers(list(request.headers.items())),
                cookie=ImmutableMultiDict(),
            ),
        )
        errors = list(self.openapi.unmarshal_request(spec_request).errors)
        if errors:
            raise self._violate(
                f"{request.method} {operation.template} rejected by {self.name}: "
                + "; ".join(_describe(error) for error in errors)
            )
        self.seen.append((operation.method, operation.template))
        return operation

    def check_response(
        self, request: httpx.Request, response: httpx.Response, base_url: str
    ) -> None:
        path = _relative_path(request.url, base_url)
        spec_request = _SpecRequest(
            host_url=self.server,
            path=urlsplit(self.server).path + path,
            method=request.method.lower(),
            body=request.content or None,
            content_type=request.headers.get("content-type", "application/json"),
            parameters=RequestParameters(
                query=ImmutableMultiDict(list(request.url.params.multi_items())),
                header=Headers(list(request.headers.items())),
                cookie=ImmutableMultiDict(),
            ),
        )
        spec_response = _SpecResponse(
            status_code=response.status_code,
            data=response.content,
            content_type=response.headers.get("content-type", "application/json"),
            headers=Headers(list(response.headers.items())),
        )
        errors = list(self.openapi.unmarshal_response(spec_request, spec_response).errors)
        if errors:
            raise self._violate(
                f"response {response.status_code} to {request.method} {path} breaks {self.name}: "
                + "; ".join(_describe(error) for error in errors)
            )

    def _violate(self, text: str) -> ContractViolation:
        self.violations.append(text)
        return ContractViolation(text)


class ContractTransport(httpx.AsyncBaseTransport):
    """Checks each request (and, if the contract says so, each response) against the spec."""

    def __init__(
        self,
        contract: SpecContract,
        base_url: str,
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.contract = contract
        self.base_url = base_url
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        operation = self.contract.check_request(request, self.base_url)
        response = await self.inner.handle_async_request(request)
        if self.contract.validate_responses and response.status_code < 300:
            await response.aread()
            if not (response.content == b"" and _allows_any_body(operation, response.status_code)):
                self.contract.check_response(request, response, self.base_url)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _allows_any_body(operation: Operation, status: int) -> bool:
    """Jira answers edits and transitions with an empty 204, property writes with an empty 200/201,
    where the spec declares `application/json` with the empty schema `{}`; openapi-core would
    read that as "a body is required". Only such answers may be empty."""
    declared = operation.definition.get("responses", {}).get(str(status), {})
    schemas = [media.get("schema", {}) for media in declared.get("content", {}).values()]
    return all(schema == {} for schema in schemas)


@cache
def _read_spec(file_name: str) -> dict[str, Any]:
    return json.loads((SPECS / file_name).read_text())


def _relative_path(url: httpx.URL, base_url: str) -> str:
    base_path = urlsplit(base_url).path.rstrip("/")
    path = url.path
    if base_path and not path.startswith(base_path):
        raise ContractViolation(f"{url} is outside the client's base URL {base_url}")
    return path[len(base_path) :] or "/"


def _describe(error: Exception) -> str:
    causes = getattr(error, "schema_errors", None) or getattr(error, "__cause__", None)
    if isinstance(causes, (list, tuple)):
        return f"{error} ({'; '.join(str(getattr(c, 'message', c)) for c in causes)})"
    if causes is not None:
        inner = getattr(causes, "schema_errors", None)
        if inner:
            return f"{error}: {'; '.join(str(getattr(c, 'message', c)) for c in inner)}"
        return f"{error}: {causes}"
    return str(error)
