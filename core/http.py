"""What both API clients share: timeouts, Retry-After parsing, and mapping HTTP failures to typed errors."""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import httpx

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
)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

# (message, field errors) read out of an error body; each API words its errors differently.
ErrorBodyParser = Callable[[httpx.Response], tuple[str, dict[str, str]]]


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
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_from_response(
    service: str, response: httpx.Response, parse_body: ErrorBodyParser
) -> ApiError:
    """The typed error for a failed response (status >= 400)."""
    try:
        message, field_errors = parse_body(response)
    except ValueError:
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
    if response.status_code >= 400:
        await response.aread()
        raise error_from_response(service, response, parse_body)
    return response


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
