"""What both API clients share: timeouts, Retry-After parsing, and mapping HTTP failures to typed errors."""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from core.errors import (
    ApiError,
    ApiTimeoutError,
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    GoneError,
    NotFoundError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    TransportError,
    UnexpectedAnswerError,
)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

# (message, field errors) read out of an error body; each API words its errors differently.
ErrorBodyParser = Callable[[httpx.Response], tuple[str, dict[str, str]]]

AnswerT = TypeVar("AnswerT")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: either delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except Exception:  # whatever the header holds, a bad one is only no advice
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_reset(value: str | None) -> float | None:
    """X-RateLimit-Reset (an ISO-8601 time; Jira's, with a `Z` or an offset) as seconds since
    the epoch; None when absent or unreadable (a bad one is only no advice)."""
    if value is None or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _integer(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def error_from_response(
    service: str, response: httpx.Response, parse_body: ErrorBodyParser
) -> ApiError:
    """The typed error for a failed response (status >= 400)."""
    try:
        message, field_errors = parse_body(response)
    except Exception:  # an unreadable error body must not hide the status behind another error
        message, field_errors = "", {}
    message = message or response.reason_phrase or "request failed"
    common = {
        "status": response.status_code,
        "method": response.request.method,
        "url": str(response.request.url.copy_with(query=None)),
        "field_errors": field_errors,
        "body": response.text[:2000],
    }
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 429 or (status == 503 and retry_after is not None):
        return RateLimitedError(
            service,
            message,
            retry_after=retry_after,
            reason=response.headers.get("ratelimit-reason"),
            reset_at=parse_reset(response.headers.get("x-ratelimit-reset")),
            remaining=_integer(response.headers.get("x-ratelimit-remaining")),
            **common,
        )
    if status >= 500:
        return ServerError(service, message, retry_after=retry_after, **common)
    error_class: type[ApiError] = {
        401: AuthenticationError,
        403: ForbiddenError,
        404: NotFoundError,
        409: ConflictError,
        410: GoneError,
    }.get(status, RequestRejectedError)
    return error_class(service, message, **common)


async def send(
    client: httpx.AsyncClient,
    service: str,
    request: httpx.Request,
    parse_body: ErrorBodyParser,
) -> httpx.Response:
    """Send one request; any failure comes back as a typed `ApiError`."""
    try:
        response = await client.send(request)
    except httpx.TimeoutException as exc:
        raise ApiTimeoutError(
            service, f"timed out: {exc!r}", method=request.method, url=str(request.url)
        ) from exc
    except httpx.TransportError as exc:
        raise TransportError(
            service, f"no answer: {exc!r}", method=request.method, url=str(request.url)
        ) from exc
    except httpx.DecodingError as exc:  # a body its own Content-Encoding cannot decode
        raise UnexpectedAnswerError(
            service, f"unreadable answer: {exc!r}", method=request.method, url=str(request.url)
        ) from exc
    except httpx.HTTPError as exc:  # anything else httpx refuses (too many redirects ...)
        raise TransportError(
            service, f"no usable answer: {exc!r}", method=request.method, url=str(request.url)
        ) from exc
    if response.status_code >= 400:
        await response.aread()
        raise error_from_response(service, response, parse_body)
    if not 200 <= response.status_code < 300:
        # Redirects are not followed: one means the base URL is not the API's (http for
        # https, a login page); treating it as success would drop a write unnoticed.
        location = response.headers.get("location")
        raise answer_error(
            service,
            None,
            response,
            f"answered {response.status_code} {response.reason_phrase}"
            + (f" (to {location}): check the base URL" if location else ""),
        )
    return response


def answer_error(
    service: str, operation: str | None, response: httpx.Response, what: str
) -> UnexpectedAnswerError:
    """The typed error for an answer the client cannot read."""
    return UnexpectedAnswerError(
        service,
        what,
        operation=operation,
        status=response.status_code,
        method=response.request.method,
        url=str(response.request.url.copy_with(query=None)),
        body=response.text[:2000],
    )


def read_json(service: str, operation: str, response: httpx.Response, *, hint: str = "") -> Any:
    """The answer's JSON, whatever its Content-Type says (a label alone fails nothing);
    `UnexpectedAnswerError` naming the content type when the body is not JSON."""
    try:
        return response.json()
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond reason
        content_type = response.headers.get("content-type") or "no Content-Type"
        size = len(response.content)
        raise answer_error(
            service,
            operation,
            response,
            f"the answer is not JSON ({content_type}, {size} bytes){hint}",
        ) from None


def read_answer(
    service: str,
    operation: str,
    response: httpx.Response,
    shape: TypeAdapter[AnswerT],
    *,
    hint: str = "",
) -> AnswerT:
    """The answer read into `shape` (a pydantic model or type); `UnexpectedAnswerError` saying
    what did not fit otherwise."""
    data = read_json(service, operation, response, hint=hint)
    return validate_answer(service, operation, response, shape, data, hint=hint)


def validate_answer(
    service: str,
    operation: str,
    response: httpx.Response,
    shape: TypeAdapter[AnswerT],
    data: Any,
    *,
    what: str = "unexpected answer",
    hint: str = "",
) -> AnswerT:
    """`data` (from `response`) read into `shape`, or `UnexpectedAnswerError`."""
    try:
        return shape.validate_python(data)
    except (ValidationError, RecursionError) as error:
        raise answer_error(
            service, operation, response, f"{what}: {describe(error)}{hint}"
        ) from None


def describe(error: Exception, limit: int = 3) -> str:
    """Where a validation failed and why, without the values (they may be large or private)."""
    if not isinstance(error, ValidationError):
        return type(error).__name__
    problems = [
        f"{'.'.join(map(str, item['loc'])) or 'the answer'}: {item['msg']}"
        for item in error.errors(include_url=False, include_input=False)
    ]
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


class ApiClient:
    """What each API client shares: one `httpx.AsyncClient` under a base URL (any path prefix
    kept), and closing it (`async with Client(...) as client`)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        auth: httpx.Auth | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            # The trailing slash makes relative paths land under the base path (/api/public/v3).
            base_url=self.base_url + "/",
            headers={"Accept": "application/json", "User-Agent": "pf-jira-sync", **headers},
            auth=auth,
            transport=transport,
            timeout=timeout,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
