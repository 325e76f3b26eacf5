"""Typed errors for the two APIs, and the one place that decides what is worth retrying.

Clients raise these; `core.retry` retries what `is_transient` (or, for the store,
`is_transient_store_error`) accepts, and, for a write that is not idempotent, first reads
whether a failure `may_have_applied` before sending it again.
"""

from __future__ import annotations

from typing import Literal

import httpx
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core.lifecycle import LifecycleError
from core.settings import mask_url


class ApiError(Exception):
    """An HTTP call to PeopleForce or Jira failed. `service` names the API, `status` the HTTP status."""

    transient = False

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        method: str | None = None,
        url: str | None = None,
        field_errors: dict[str, str] | None = None,
        body: str | None = None,
    ) -> None:
        self.service = service
        self.message = message
        self.status = status
        self.method = method
        self.url = url
        self.field_errors = field_errors or {}
        self.body = body
        super().__init__(self.__str__())

    def __str__(self) -> str:
        # The URL as every URL is shown: a password or token in it masked.
        where = f" ({self.method} {mask_url(self.url)})" if self.method and self.url else ""
        status = f" {self.status}" if self.status is not None else ""
        fields = "".join(f"; {name}: {text}" for name, text in self.field_errors.items())
        return f"{self.service}{status}{where}: {self.message}{fields}"


class AuthenticationError(ApiError):
    """401: the key or token is wrong, expired or for another host."""


class ForbiddenError(ApiError):
    """403: the credentials are valid but not allowed (permissions, IP allow-list)."""


class NotFoundError(ApiError):
    """404."""


class GoneError(ApiError):
    """410: the endpoint was removed for good (Jira's old /rest/api/3/search)."""


class RequestRejectedError(ApiError):
    """400 or 422: the request itself is wrong; sending it again changes nothing."""


class ConflictError(ApiError):
    """409: Jira reports a concurrent edit; the same request usually succeeds a moment later."""

    transient = True


class RateLimitedError(ApiError):
    """429 (or a 503 that carries Retry-After): wait `retry_after` seconds, then try again.

    Jira says more on its own 429s: `reason` (RateLimit-Reason), `reset_at` (X-RateLimit-Reset,
    seconds since the epoch) and `remaining` (X-RateLimit-Remaining); `rate_limit_scope` reads
    them."""

    transient = True

    def __init__(
        self,
        service: str,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        reset_at: float | None = None,
        remaining: int | None = None,
        **kwargs,
    ) -> None:
        self.retry_after = retry_after
        self.reason = reason
        self.reset_at = reset_at
        self.remaining = remaining
        super().__init__(service, message, **kwargs)


# Jira's RateLimit-Reason values (docs/jira-api.md section 6).
BURST_REASON = "jira-burst-based"
PER_ISSUE_REASON = "jira-per-issue-on-write"

RateLimitScope = Literal["request", "endpoint", "issue"]


def rate_limit_scope(error: BaseException) -> RateLimitScope | None:
    """How far a refusal reaches beyond the one request refused (None: not a rate limit).

    - `endpoint`: Jira's burst limit of the request's endpoint and method is spent, for every
      caller of the tenant: a 429 with X-RateLimit-Reset and either `jira-burst-based` or, with
      no reason given, X-RateLimit-Remaining 0. The rate governor pauses that endpoint class
      until the reset, for every run sharing it.
    - `issue`: a 429 `jira-per-issue-on-write`: writes to that one issue wait.
    - `request`: any other 429, or a 503 with Retry-After (a gateway's, a proxy's, an injected
      fault's: no reset says when the limit passes): only this request waits its Retry-After
      and is sent again; nothing shared is paused or slowed. Pausing a whole endpoint class for
      every run on each such answer stalls them all when refusals are random and frequent.
    """
    if not isinstance(error, RateLimitedError):
        return None
    if error.status != 429:
        return "request"
    if error.reason == PER_ISSUE_REASON:
        return "issue"
    if error.reset_at is not None and (
        error.reason == BURST_REASON or (error.reason is None and error.remaining == 0)
    ):
        return "endpoint"
    return "request"


class ServerError(ApiError):
    """5xx: the other side failed; worth another try."""

    transient = True

    def __init__(self, service: str, message: str, *, retry_after: float | None = None, **kwargs):
        self.retry_after = retry_after
        super().__init__(service, message, **kwargs)


class TransportError(ApiError):
    """No HTTP answer at all: timeout, refused or reset connection, DNS failure."""

    transient = True


class ApiTimeoutError(TransportError):
    """The request timed out. For a create this does not mean it failed: guard before retrying."""


class UnexpectedAnswerError(ApiError):
    """The server answered, but not in a shape the client can read: not JSON, a field it needs
    missing or of another type, a status that is neither success nor failure (a redirect).

    Permanent: the same answer will not read better on a retry. `operation` names the client
    method that could not read it; the message says what was wrong. After a create, the answer
    being unreadable does not mean nothing was created: guard before creating again.
    """

    def __init__(self, service: str, message: str, *, operation: str | None = None, **kwargs):
        self.operation = operation
        super().__init__(service, f"{operation}: {message}" if operation else message, **kwargs)


def is_transient(error: BaseException) -> bool:
    """True when the same call may succeed if made again later.

    The single decision for the whole service: `core.retry` retries what it accepts, the
    gateway's dispatcher and the CLI use it to tell operators whether to wait or to fix.
    """
    return isinstance(error, ApiError) and error.transient


def is_permanent(error: BaseException) -> bool:
    """True when the same work fails the same way until someone changes something: Jira or
    PeopleForce refused what the rules or settings ask for (`ConfigurationError`), or an API
    refused the request for good (credentials, permission, a 400, a 404, an answer it cannot
    read), or the store refused a lifecycle move it does not know. The dispatcher then ends the
    webhook event `failed` at once, with the cause, instead of sending it back to work; anything
    else (a passing outage, a lease held too long, an error nobody foresaw) is tried again, a
    bounded number of times."""
    return isinstance(error, ConfigurationError | LifecycleError) or (
        isinstance(error, ApiError) and not error.transient
    )


# The request never reached the server: no connection was made, or none was free in time.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def may_have_applied(error: BaseException) -> bool:
    """True when a write that failed with `error` may have been applied all the same: the
    request may have reached the server, and no answer says it was refused.

    - a read timeout, or a connection dropped or reset once the request was on its way (the
      server may have done the work and lost the answer, or may still be doing it);
    - a 5xx (500, 502, 503, 504, ...; with or without Retry-After): a gateway in front of Jira
      answers these while Jira itself goes on;
    - a success answer the client cannot read: the write happened.

    Not ambiguous, so resent as any transient failure: a refused connection, a connect or pool
    timeout (nothing was sent), a 429 (Jira refused it before doing it), any other 4xx.
    The single decision for the whole service; `core.retry` acts on it (`RetryPolicy.call`).
    """
    if isinstance(error, UnexpectedAnswerError):
        return error.status is not None and 200 <= error.status < 300
    if isinstance(error, ServerError | RateLimitedError):
        return error.status is not None and error.status >= 500
    if isinstance(error, TransportError):
        return not isinstance(error.__cause__, _NEVER_SENT)
    return False


class WriteInDoubtError(ApiError):
    """A write may have been applied, and the read that should tell could not (yet): nothing
    was sent again. Transient: search catches up within minutes, so a later try can tell."""

    transient = True


def is_transient_store_error(error: BaseException) -> bool:
    """True for a database error that passes by itself (a lock, a dropped connection, a
    restart); a refused write (a constraint, an undeclared lifecycle move) is not retried."""
    return isinstance(
        error, OperationalError | InterfaceError | PoolTimeout | OSError | TimeoutError
    ) or bool(getattr(error, "connection_invalidated", False))


def retry_after_hint(error: BaseException) -> float | None:
    """The server's own advice on how long to wait, when it gave one."""
    return getattr(error, "retry_after", None)


# A Retry-After longer than this is not waited out in full (a retry then fails again, later).
MAX_RETRY_AFTER_SECONDS = 300.0


def retry_delay(error: BaseException, planned: float) -> float:
    """How long to wait before retrying after `error`: the planned backoff, or what the server
    asked for (Retry-After on a 429 or 503) when that is longer, up to a limit."""
    wanted = retry_after_hint(error) if is_transient(error) else None
    return max(planned, min(wanted, MAX_RETRY_AFTER_SECONDS)) if wanted else planned


class ConfigurationError(Exception):
    """Jira or PeopleForce refused what the rules or settings asked for; retrying cannot help.

    The message says what to fix, e.g. "Jira rejected customfield_10050 (...): check
    field_map.position in rules.toml".
    """
