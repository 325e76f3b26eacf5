"""The one retry engine: what it retries, how long it waits, and what it says."""

from __future__ import annotations

import pytest
from loguru import logger
from sqlalchemy.exc import IntegrityError, OperationalError

from core.errors import (
    ApiTimeoutError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    UnexpectedAnswerError,
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


# --------------------------------------------------------------------------- writes in doubt


def lost(status: int | None = 502) -> ServerError:
    """A 5xx answer to a write: it may have been applied all the same."""
    return ServerError("jira", "bad gateway", status=status)


class Confirm:
    """A strongly consistent read: answers each of `found` in turn (None: it did not happen)."""

    def __init__(self, *found: str | Exception | None) -> None:
        self.found = list(found)
        self.calls = 0

    async def __call__(self) -> str | None:
        self.calls += 1
        answer = self.found.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


CONFIRMING = RetryPolicy(retries=3, delays=[0.0])


async def test_a_write_in_doubt_is_read_back_and_not_sent_again_when_it_happened() -> None:
    write, confirm = Flaky(lost()), Confirm("HR-7")
    assert await CONFIRMING.call("create", write, confirm) == "HR-7"
    assert (write.calls, confirm.calls) == (1, 1)


async def test_a_write_in_doubt_that_did_not_happen_is_sent_again() -> None:
    write, confirm = Flaky(lost(), lost(500)), Confirm(None, None)
    assert await CONFIRMING.call("create", write, confirm) == "done"
    assert (write.calls, confirm.calls) == (3, 2)


@pytest.mark.parametrize(
    "error",
    [
        RateLimitedError("jira", "429", status=429),  # refused before anything was done
        ConflictError("jira", "409", status=409),
    ],
)
async def test_a_failure_that_says_nothing_happened_is_resent_without_reading(error) -> None:
    write, confirm = Flaky(error), Confirm()
    assert await CONFIRMING.call("create", write, confirm) == "done"
    assert (write.calls, confirm.calls) == (2, 0)


async def test_when_the_read_cannot_tell_nothing_is_sent_again() -> None:
    write, confirm = Flaky(lost()), Confirm(NotFoundError("jira", "no such project"))
    with pytest.raises(NotFoundError):
        await CONFIRMING.call("create", write, confirm)
    assert write.calls == 1


async def test_a_write_in_doubt_is_read_back_even_when_no_retry_is_left() -> None:
    write = Flaky(lost(), lost())
    assert await RetryPolicy(retries=0, delays=[0.0]).call("create", write, Confirm("HR-1")) == (
        "HR-1"
    )
    with pytest.raises(ServerError):
        await RetryPolicy(retries=0, delays=[0.0]).call("create", write, Confirm(None))
    assert write.calls == 2


async def test_an_unreadable_success_is_read_back_and_never_resent() -> None:
    garbled = UnexpectedAnswerError("jira", "not JSON", operation="create_issue", status=201)
    write, confirm = Flaky(garbled, garbled), Confirm("HR-3", None)
    assert await CONFIRMING.call("create", write, confirm) == "HR-3"
    with pytest.raises(UnexpectedAnswerError):
        await CONFIRMING.call("create", write, confirm)  # not there: still not resent
    assert write.calls == 2


async def test_the_read_back_waits_for_a_write_still_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("core.retry.asyncio.sleep", sleep)
    policy = RetryPolicy(retries=3, delays=[0.5], confirm_after=2.0)
    await policy.call("create", Flaky(lost()), Confirm(None))
    await policy.call("create", Flaky(RateLimitedError("jira", "429", status=429)), Confirm())
    assert waits == [2.0, 0.5]  # a write in doubt waits at least confirm_after; a 429 does not
    assert API_CALL.confirm_after >= 1.0


async def test_a_decorated_write_is_confirmed_with_its_own_arguments() -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    flaky = Flaky(lost())
    asked: list[tuple[str, str]] = []

    async def already(summary: str, who: str) -> str | None:
        asked.append((summary, who))
        return "HR-9"

    @CONFIRMING("create {summary} · {who}", confirm=already)
    async def create(summary: str, who: str) -> str:
        return await flaky()

    try:
        assert await create("Onboarding", who="1042 Ada") == "HR-9"
    finally:
        logger.remove(sink)
    assert asked == [("Onboarding", "1042 Ada")]
    assert lines == [
        "create Onboarding · 1042 Ada may have happened all the same (ServerError: jira 502: "
        "bad gateway); reading whether it did in 0.0s, before anything is sent again",
        "create Onboarding · 1042 Ada: it had happened; not sent again",
    ]


async def test_a_confirm_is_handed_only_the_parameters_it_names() -> None:
    flaky = Flaky(lost())
    asked: list[str] = []

    async def already(who: str) -> str | None:
        asked.append(who)
        return "HR-9"

    @CONFIRMING("create {summary} · {who}", confirm=already)
    async def create(summary: str, who: str, assignee: str | None = None) -> str:
        return await flaky()

    assert await create("Onboarding", "1042 Ada") == "HR-9"
    assert asked == ["1042 Ada"]

    async def unrelated(employee: int) -> str | None:
        return None

    with pytest.raises(TypeError, match="employee"):
        CONFIRMING("create", confirm=unrelated)(create)
