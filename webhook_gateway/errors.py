"""The gateway's errors: refusing to start, refusing a delivery, and the inbox being unavailable."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

# Errors that mean "the inbox cannot be written right now": answer 503 so PeopleForce retries.
# OSError and TimeoutError cover a database server that refuses or drops the connection.
STORE_UNAVAILABLE = (SQLAlchemyError, OSError, TimeoutError)


class GatewayConfigError(Exception):
    """The gateway cannot run with these settings; the text says what to set."""


class Rejection(Exception):
    """A delivery refused with an HTTP status; `reason` goes in the log and the answer."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(status_code, reason)
        self.status_code = status_code
        self.reason = reason


def describe_error(error: BaseException) -> str:
    """The error's type and message, without the SQL parameters (they hold the body)."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        return f"{type(error.orig).__name__}: {error.orig}"
    if isinstance(error, StatementError):
        # Its text appends the statement and its parameters: keep only the first line.
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return f"{type(error).__name__}: {error}"
