"""Answers a server can give, as hypothesis strategies: ones the spec's response schemas allow,
and malformed ones (other shapes, not JSON, empty, redirects and errors).

`SchemaValues(spec).for_schema(schema)` draws JSON values valid for an OpenAPI 3.0 or 3.1
schema (`$ref`, `allOf`/`oneOf`/`anyOf`, `nullable` and type lists, enums, the common
formats). Every property is optional in the two specs, so each one is drawn or left out, and
objects that allow extra properties get some, keyed mostly by names the clients read (an issue's
`fields.status` may be a number). Below `max_depth` only required properties are drawn, so the
recursive schemas of Jira (an issue's changelog holds issues ...) stay finite.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from hypothesis import strategies as st

from tests.contract import resolve_ref

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
ANY_JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/x-www-form-urlencoded",  # what the PeopleForce spec declares for GET /employees
        "text/html; charset=utf-8",
        "text/plain; charset=not-a-charset",
        None,
    ]
)


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, as the mock server will send it."""

    status: int
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def json_body(self) -> Any:
        try:
            return json.loads(self.content)
        except (ValueError, RecursionError):
            return None


class SchemaValues:
    """Strategies for the values a spec's schemas allow."""

    def __init__(
        self, spec: dict[str, Any], *, max_depth: int = 4, keys: tuple[str, ...] = ()
    ) -> None:
        self.spec = spec
        self.max_depth = max_depth
        self.extra_keys = (
            st.sampled_from(keys) | st.text(max_size=8) if keys else st.text(max_size=8)
        )
        self._made: dict[tuple[int, int], st.SearchStrategy[Any]] = {}

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        return resolve_ref(self.spec, node)

    def for_schema(self, schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
        made = self._made.get((id(schema), depth))
        if made is None:
            made = self._build(schema, depth)
            self._made[(id(schema), depth)] = made
        return made

    def _build(self, schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        schema = self.resolve(schema)
        if "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part)
                merged.setdefault("properties", {}).update(part.get("properties", {}))
                merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                for key, value in part.items():
                    merged.setdefault(key, value)
            if not merged.get("properties"):
                merged.pop("properties", None)
            strategy = self._build(merged, depth)
        elif "oneOf" in schema or "anyOf" in schema:
            strategy = st.one_of(
                [self.for_schema(part, depth) for part in schema.get("oneOf", schema.get("anyOf"))]
            )
        elif "enum" in schema:
            strategy = st.sampled_from(schema["enum"])
        else:
            kinds = schema.get("type")
            if isinstance(kinds, list):
                strategy = st.one_of([self._typed(schema, kind, depth) for kind in kinds])
            else:
                strategy = self._typed(schema, kinds, depth)
        return strategy | st.none() if schema.get("nullable") else strategy

    def _typed(
        self, schema: dict[str, Any], kind: str | None, depth: int
    ) -> st.SearchStrategy[Any]:
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        match kind:
            case "null":
                return st.none()
            case "boolean":
                return st.booleans()
            case "integer":
                bits = 31 if schema.get("format") == "int32" else 53
                return st.integers(
                    min_value=schema.get("minimum", -(2**bits)),
                    max_value=schema.get("maximum", 2**bits),
                )
            case "number":
                return st.floats(
                    min_value=schema.get("minimum"),
                    max_value=schema.get("maximum"),
                    allow_nan=False,
                    allow_infinity=False,
                )
            case "string":
                return _string(schema)
            case "array":
                low = schema.get("minItems", 0)
                high = (
                    low if depth >= self.max_depth else max(low, min(schema.get("maxItems", 3), 3))
                )
                return st.lists(
                    self.for_schema(schema.get("items", {}), depth + 1), min_size=low, max_size=high
                )
            case "object":
                return self._object(schema, depth)
            case _:
                return ANY_JSON if depth < self.max_depth else JSON_LEAVES

    def _object(self, schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        shallow = depth < self.max_depth
        fixed = st.fixed_dictionaries(
            {
                name: self.for_schema(sub, depth + 1)
                for name, sub in properties.items()
                if name in required
            },
            optional={
                name: self.for_schema(sub, depth + 1)
                for name, sub in properties.items()
                if name not in required and shallow
            },
        )
        extra = schema.get("additionalProperties", not properties)
        if not shallow or extra is False:
            return fixed
        values = self.for_schema(extra, depth + 1) if isinstance(extra, dict) else ANY_JSON
        extras = st.dictionaries(self.extra_keys, values, max_size=3)
        return st.tuples(fixed, extras).map(lambda parts: {**parts[1], **parts[0]})


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    match schema.get("format"):
        case "date":
            return st.dates().map(lambda day: day.isoformat())
        case "date-time":
            return st.datetimes(timezones=st.just(UTC)).map(lambda when: when.isoformat())
        case "email":
            return st.emails()
        case "uri" | "url":
            return st.just("https://example.test/x")
    return st.text(
        min_size=schema.get("minLength", 0), max_size=max(schema.get("minLength", 0), 20)
    )


@st.composite
def mutated(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> Any:
    """A value from `values` with one part of it (or all of it) replaced by any JSON."""
    value = copy.deepcopy(draw(values))
    paths = list(_paths(value))
    if not paths:
        return draw(ANY_JSON)
    path = draw(st.sampled_from(paths))
    replacement = draw(ANY_JSON)
    if not path:
        return replacement
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = replacement
    return value


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def json_answer(status: int, body: Any, content_type: str | None) -> Answer:
    headers = {"content-type": content_type} if content_type else {}
    return Answer(status, json.dumps(body).encode(), headers)


def answers(
    statuses: list[int],
    body: st.SearchStrategy[Any],
    *,
    declared_content_type: str = "application/json",
) -> st.SearchStrategy[Answer]:
    """Valid answers (a declared status, a body from `body`, the declared content type or another
    label) and malformed ones."""
    success = st.sampled_from(statuses or [200])
    valid = st.builds(json_answer, success, body, st.just(declared_content_type) | CONTENT_TYPES)
    odd_shape = st.builds(
        json_answer, st.sampled_from([200, 201, 204]), mutated(body) | ANY_JSON, CONTENT_TYPES
    )
    not_json = st.builds(
        lambda status, content, content_type: Answer(
            status, content, {"content-type": content_type} if content_type else {}
        ),
        st.sampled_from([200, 201, 204]),
        st.binary(max_size=40)
        | st.just(b"")
        | st.just(b"data=%5Bobject+Object%5D&metadata=x")
        | st.just(b"<html><title>Sign in</title></html>")
        | st.just(b"[" * 5000),
        CONTENT_TYPES,
    )
    other_status = st.builds(
        lambda status, content, retry_after, location: Answer(
            status,
            content,
            {
                **({"retry-after": retry_after} if retry_after is not None else {}),
                **({"location": location} if location is not None else {}),
            },
        ),
        st.sampled_from(
            [
                100,
                202,
                301,
                302,
                303,
                304,
                307,
                400,
                401,
                403,
                404,
                409,
                410,
                413,
                422,
                429,
                500,
                502,
                503,
            ]
        )
        | st.integers(min_value=100, max_value=599),
        ANY_JSON.map(lambda value: json.dumps(value).encode()) | st.binary(max_size=30),
        st.none()
        | st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30)
        | st.sampled_from(["5", "-1", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT"]),
        st.none() | st.just("https://elsewhere.example/login"),
    )
    gzip_lie = st.just(Answer(200, b"not gzip", {"content-encoding": "gzip"}))
    return st.one_of(valid, valid, odd_shape, not_json, other_status, gzip_lie)
