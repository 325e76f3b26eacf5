"""The one retry engine: what it retries, how long it waits, and what it says."""

from __future__ import annotations

import pytest
from loguru import logger
from sqlalchemy.exc import IntegrityError, OperationalError

from core.errors import (
    ApiTimeoutError,
    ConfigurationError,
    NotFoundError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    is_transient_store_error,
)
from core.retry import ACTION, API_CALL, STORE_CALL, RetryPolicy

FAST = RetryPolicy(retries=3, delays=[0.0])


class Flaky:
    """Fails with the given errors, one per call, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


@pytest.mark.parametrize(
    ("errors", "calls", "outcome"),
    [
        ([], 1, "done"),
        ([ServerError("jira", "502")], 2, "done"),
        ([ApiTimeoutError("jira", "timed out"), RateLimitedError("jira", "429")], 3, "done"),
        ([ServerError("jira", "502")] * 4, 4, ServerError),  # 3 retries, then the error
        ([NotFoundError("jira", "gone")], 1, NotFoundError),  # permanent: at once
        ([RequestRejectedError("jira", "bad field")], 1, RequestRejectedError),
        ([ConfigurationError("check rules.toml")], 1, ConfigurationError),
        ([ValueError("a bug")], 1, ValueError),
    ],
)
async def test_retries_only_transient_errors_and_only_so_often(errors, calls, outcome) -> None:
    flaky = Flaky(*errors)
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            await FAST.call("step", flaky)
    else:
        assert await FAST.call("step", flaky) == outcome
    assert flaky.calls == calls


@pytest.mark.parametrize(
    ("policy", "retry", "error", "low", "high"),
    [
        # Backoff doubles from 0.5 s, +/- 50 % jitter, and stops growing at 10 s.
        (API_CALL, 0, ServerError("jira", "502"), 0.25, 0.75),
        (API_CALL, 3, ServerError("jira", "502"), 2.0, 6.0),
        (API_CALL, 9, ServerError("jira", "502"), 5.0, 15.0),
        # Never less than the server's Retry-After, and never more than 300 s of it.
        (API_CALL, 0, RateLimitedError("jira", "429", retry_after=20), 20.0, 20.0),
        (API_CALL, 0, RateLimitedError("jira", "429", retry_after=3600), 300.0, 300.0),
        (STORE_CALL, 2, OperationalError("stmt", {}, Exception("locked")), 5.0, 5.0),
        (ACTION, 0, ServerError("jira", "503"), 30.0, 30.0),
        (ACTION, 5, ServerError("jira", "503"), 120.0, 120.0),  # the last delay repeats
    ],
)
def test_waits_the_backoff_or_the_servers_retry_after(policy, retry, error, low, high) -> None:
    for _ in range(50):
        assert low <= policy.wait_before(retry, error) <= high


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError("stmt", {}, Exception("database is locked")), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (IntegrityError("stmt", {}, Exception("duplicate key")), False),
        (ValueError("not a database error"), False),
    ],
)
def test_the_store_retries_a_lock_or_a_lost_connection_not_a_refused_write(
    error, transient
) -> None:
    assert is_transient_store_error(error) is transient


async def test_a_decorated_step_is_retried_and_named_after_its_arguments() -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="WARNING")
    flaky = Flaky(ServerError("jira", "502"))

    @FAST("find Jira user · {who}")
    async def find_user(email: str, who: str) -> str:
        return f"{email}: {await flaky()}"

    try:
        assert await find_user("ada@example.com", who="1042 Ada Lovelace") == (
            "ada@example.com: done"
        )
    finally:
        logger.remove(sink)
    assert find_user.__name__ == "find_user"
    assert lines == [
        "find Jira user · 1042 Ada Lovelace failed (ServerError: jira: 502); retry 1/3 in 0.0s"
    ]
