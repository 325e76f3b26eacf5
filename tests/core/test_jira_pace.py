"""The Jira rate governor on a controlled clock: endpoint rates, per-issue pacing, and what each
kind of answer does (a burst 429 pauses the class for every run sharing the source, a per-issue
429 only that issue, a 429 without Jira's burst signal nothing, a near-limit answer slows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from core.errors import RateLimitedError, rate_limit_scope
from core.http import error_from_response, parse_reset
from core.jira.client import SERVICE, parse_jira_error
from core.jira.pace import (
    HOLD_SECONDS,
    SLOW_SECONDS,
    Governor,
    Grant,
    JiraCall,
    LocalTokens,
    Rates,
)

T0 = 1_800_000_000.0  # seconds since the epoch
EDIT = JiraCall("PUT", "issue/{issueIdOrKey}", "HR-1")
EDIT_OTHER = JiraCall("PUT", "issue/{issueIdOrKey}", "HR-2")
READ = JiraCall("GET", "issue/{issueIdOrKey}")
BULK_EDIT = JiraCall("PUT", "issue/{issueIdOrKey}")  # the class alone, no one issue
# Slow enough rates that a test's handful of requests shows the pacing.
RATES = Rates(
    per_method={"GET": 40.0, "PUT": 20.0}, burst_seconds=0.5, issue_windows=((5, 2.0), (12, 30.0))
)


class Clock:
    """Wall time that moves only when the governor sleeps."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def governor(clock: Clock, source: LocalTokens | None = None) -> Governor:
    return Governor(RATES, source or LocalTokens(), clock=clock, sleep=clock.sleep)


def answer(status: int, headers: dict[str, str], call: JiraCall = EDIT) -> httpx.Response:
    url = "https://acme.atlassian.net/rest/api/3/" + call.endpoint.format(issueIdOrKey="HR-1")
    return httpx.Response(status, headers=headers, json={}, request=httpx.Request(call.method, url))


def refusal(status: int, headers: dict[str, str], call: JiraCall = EDIT) -> RateLimitedError:
    error = error_from_response(SERVICE, answer(status, headers, call), parse_jira_error)
    assert isinstance(error, RateLimitedError)
    return error


def reset_in(seconds: float) -> str:
    at = datetime.fromtimestamp(T0, UTC) + timedelta(seconds=seconds)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def took(clock: Clock, pacer: Governor, call: JiraCall) -> float:
    """Seconds `before` waited for `call`."""
    started = clock.now
    await pacer.before(call)
    return clock.now - started


BURST = {"retry-after": "3", "ratelimit-reason": "jira-burst-based", "x-ratelimit-reset": ""}


@pytest.mark.parametrize(
    ("status", "headers", "scope"),
    [
        # Jira's burst 429: reason and reset.
        (429, {**BURST, "x-ratelimit-reset": reset_in(3)}, "endpoint"),
        # No reason, but the bucket is empty and Jira says when it refills.
        (429, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset_in(1)}, "endpoint"),
        (429, {"ratelimit-reason": "jira-per-issue-on-write", "retry-after": "2"}, "issue"),
        # What the fault suite's injected 429s carry: the reason, no reset. Only the request.
        (429, {"retry-after": "3", "ratelimit-reason": "jira-burst-based"}, "request"),
        (429, {"retry-after": "3"}, "request"),
        (429, {"x-ratelimit-remaining": "3", "x-ratelimit-reset": reset_in(1)}, "request"),
        (503, {"retry-after": "3"}, "request"),
        (503, {**BURST, "x-ratelimit-reset": reset_in(3)}, "request"),
    ],
)
def test_which_429_reaches_beyond_its_request(
    status: int, headers: dict[str, str], scope: str
) -> None:
    assert rate_limit_scope(refusal(status, headers)) == scope


def test_reset_is_read_as_a_point_in_time() -> None:
    assert parse_reset(reset_in(2.5)) == T0 + 2.5
    assert (
        parse_reset("2027-01-15T10:00:00+02:00") == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    )
    assert parse_reset("soon") is None
    assert parse_reset(None) is None


async def test_requests_keep_to_the_rate_of_their_class(clock: Clock) -> None:
    pacer = governor(clock)
    # The bucket holds half a second of PUTs (10); the other 30 come at 20 a second.
    for _ in range(40):
        await pacer.before(BULK_EDIT)
    assert clock.now - T0 == pytest.approx(30 / 20, abs=0.1)
    # Another class has a bucket of its own: no wait.
    assert await took(clock, pacer, READ) == 0


async def test_writes_to_one_issue_are_paced_and_others_pass(clock: Clock) -> None:
    pacer = governor(clock)
    waits = [await took(clock, pacer, EDIT) for _ in range(6)]
    # Five writes within 2 s; the sixth waits until the first leaves the window.
    assert waits[:5] == [0, 0, 0, 0, 0]
    assert waits[5] == pytest.approx(2.0)
    assert await took(clock, pacer, EDIT_OTHER) == 0


@pytest.mark.parametrize(
    ("status", "headers", "edit_waits", "other_issue_waits", "read_waits"),
    [
        # Burst 429 until a reset 3 s away: every PUT to the endpoint waits, for every run.
        (429, {**BURST, "x-ratelimit-reset": reset_in(3)}, 3.0, 3.0, 0.0),
        # Per-issue 429: only writes to HR-1 wait (2 s, its Retry-After).
        (429, {"ratelimit-reason": "jira-per-issue-on-write", "retry-after": "2"}, 2.0, 0, 0),
        # A lone 429 (no reset, as the fault suite sends), or a 503: nothing shared waits.
        (429, {"ratelimit-reason": "jira-burst-based", "retry-after": "3"}, 0, 0, 0),
        (429, {"retry-after": "3"}, 0, 0, 0),
        (503, {"retry-after": "3"}, 0, 0, 0),
    ],
)
async def test_what_a_refusal_pauses_for_this_run_and_another(
    clock: Clock,
    status: int,
    headers: dict[str, str],
    edit_waits: float,
    other_issue_waits: float,
    read_waits: float,
) -> None:
    shared = LocalTokens()  # standing for the store: two runs, one source
    run, other_run = governor(clock, shared), governor(clock, shared)
    await run.before(EDIT)
    await run.after(EDIT, refusal(status, headers))

    assert await took(clock, run, EDIT) == pytest.approx(edit_waits)
    clock.now = T0
    assert await took(clock, run, EDIT_OTHER) == pytest.approx(other_issue_waits)
    clock.now = T0
    # The other run has no tokens held: it hears the pause at once.
    assert await took(clock, other_run, EDIT_OTHER) == pytest.approx(other_issue_waits)
    clock.now = T0
    assert await took(clock, other_run, READ) == pytest.approx(read_waits)


async def test_another_run_hears_a_pause_once_its_held_tokens_run_out(clock: Clock) -> None:
    shared = LocalTokens()
    run, other_run = governor(clock, shared), governor(clock, shared)
    await other_run.before(READ)  # takes a batch (2 tokens at 40/s), spends one, holds one
    await run.before(READ)
    await run.after(READ, refusal(429, {**BURST, "x-ratelimit-reset": reset_in(3)}, READ))
    # The token it holds goes (a batch at most); then it asks the source and hears the pause.
    assert await took(clock, other_run, READ) == 0
    assert await took(clock, other_run, READ) == pytest.approx(3.0)
    assert other_run.paused_until("GET issue/{issueIdOrKey}") == T0 + 3


async def test_held_tokens_not_spent_in_time_are_dropped(clock: Clock) -> None:
    pacer = governor(clock)
    for _ in range(20):  # the bucket's 20 tokens, 2 per take
        await pacer.before(READ)
    await pacer.before(READ)  # waits for a batch of 2, spends one, holds one
    clock.now += HOLD_SECONDS + 0.01
    # The held token expired; the bucket refilled meanwhile, so no wait, but a fresh take.
    assert await took(clock, pacer, READ) == 0
    source = pacer.source
    assert isinstance(source, LocalTokens)
    bucket = source.buckets["GET issue/{issueIdOrKey}"]
    assert bucket.at == clock.now


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-nearlimit": "true"},
        {"x-ratelimit-limit": "50", "x-ratelimit-remaining": "2"},
    ],
)
async def test_a_near_limit_answer_halves_the_rate_for_everyone(
    clock: Clock, headers: dict[str, str]
) -> None:
    shared = LocalTokens()
    run, other_run = governor(clock, shared), governor(clock, shared)
    for _ in range(20):  # the bucket's 20 tokens (half a second of 40/s), at once
        await run.before(READ)
    await run.after(READ, answer(200, headers, READ))
    # 20 more reads by the other run: at half of 40 a second, 1 s, not 0.5 s.
    for _ in range(20):
        await other_run.before(READ)
    assert clock.now - T0 == pytest.approx(20 / 20, abs=0.1)
    assert clock.now - T0 < SLOW_SECONDS


async def test_an_answer_with_room_left_slows_nothing(clock: Clock) -> None:
    pacer = governor(clock)
    for _ in range(20):
        await pacer.before(READ)
    await pacer.after(READ, answer(200, {"x-ratelimit-limit": "50", "x-ratelimit-remaining": "30"}))
    for _ in range(20):
        await pacer.before(READ)
    assert clock.now - T0 == pytest.approx(20 / 40, abs=0.1)


async def test_a_method_without_a_rate_is_not_paced(clock: Clock) -> None:
    pacer = Governor(Rates(per_method={"GET": 0}), clock=clock, sleep=clock.sleep)
    for _ in range(500):
        await pacer.before(READ)
    assert clock.now == T0


class BrokenSource(LocalTokens):
    """A store that cannot answer (locked past its busy timeout, restarting)."""

    async def take(
        self, endpoint_class: str, rate: float, capacity: float, want: int, now: float
    ) -> Grant:
        raise OperationalError("UPDATE jira_rate_bucket", {}, Exception("database is locked"))

    async def pause(self, endpoint_class: str, until: float) -> None:
        raise OperationalError("UPDATE jira_rate_bucket", {}, Exception("database is locked"))


async def test_a_source_that_cannot_answer_leaves_the_run_pacing_alone(clock: Clock) -> None:
    pacer = governor(clock, BrokenSource())
    for _ in range(30):  # still at the class's rate: 10 at once, then 20 a second
        await pacer.before(BULK_EDIT)
    assert clock.now - T0 == pytest.approx(20 / 20, abs=0.1)
    # A burst 429 still pauses this run, though it cannot be shared.
    await pacer.after(BULK_EDIT, refusal(429, {**BURST, "x-ratelimit-reset": reset_in(5)}))
    assert pacer.paused_until(BULK_EDIT.endpoint_class) == T0 + 5
