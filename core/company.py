"""Reconciliation: every employee, read in bulk and planned with the same pure plan as a webhook.

Webhooks are fast but not complete: PeopleForce documents no retries, sends starts and future
terminations from a nightly batch, and a webhook is missed while this service is down. The
reconciliation reads the whole company and plans every employee with `core.plan.plan`, so the
two paths cannot disagree.

Reading 10,000 full records one by one would take an hour within PeopleForce's rate limits.
So this reads the list (`GET /employees`, 50 a page, pages at once), the full records of
leavers (`/employees/terminated`) and of people changed lately (`updated_at[gte]`), and plans
everyone else from their list item, taking what the list lacks (custom fields) as last synced.
Whoever's plan then calls for work is read in full and planned again before anything is done.
Jira is read in batches: one label search per 50 mapped employees, and one lookup for each
mapped issue the search did not return (moved, deleted, or not indexed yet).

No I/O of its own: a `Sources` reads, so the flow passes retried Prefect tasks and the CLI the
clients themselves. The safeguard lives here too, and what the inbox's backlog (acknowledged
webhook events no run has done) means for it and which of those events a run has done;
`core.render` turns plans and verdicts into text.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Protocol, TypeVar

from core.errors import NotFoundError
from core.jira.client import Issue, JiraClient
from core.names import employee_label
from core.peopleforce.client import Page, PeopleForceClient
from core.peopleforce.models import (
    CustomFieldValue,
    Employee,
    EmployeeSummary,
    WebhookEnvelope,
)
from core.plan import (
    CancelOffboarding,
    CreateIssue,
    Facts,
    IssueCheck,
    IssueKind,
    MoveDueDate,
    Plan,
    Report,
    linked_issues,
    plan,
)
from core.retry import INTERACTIVE_READ
from core.rules import Rules
from core.store.inbox import EventStatus, InboxRepository, WebhookEvent
from core.store.models import EmployeeLink
from core.store.repository import normalize_email, previous_link

# One Jira search covers at most this many employees (the budget: one read per 50 employees)
# and this many issues (one page of `search/jql` with fields).
SEARCH_EMPLOYEES = 50
SEARCH_ISSUES = 100
# What Jira said of a link whose issues all answer under their keys (frozen: shared).
ALL_ANSWER = IssueCheck()

RecordT = TypeVar("RecordT", EmployeeSummary, Employee)
# (what is being read, done, total when known): the CLI draws progress bars from it.
Progress = Callable[[str, int, int | None], None]


class Sources(Protocol):
    """Where reconciliation reads. Each method is one request (a search: one per page)."""

    async def employees_page(
        self, page: int, updated_since: datetime | None
    ) -> Page[EmployeeSummary]: ...

    async def terminated_page(self, page: int) -> Page[Employee]: ...

    async def employee(self, employee_id: int) -> Employee | None:
        """The full record; None when PeopleForce does not know the id."""
        ...

    async def search_issues(self, jql: str) -> list[Issue]: ...

    async def issue_key(self, key: str) -> str | None:
        """The key the issue answers under now (another one when it was moved); None: gone."""
        ...


class ListingError(Exception):
    """PeopleForce's list of employees cannot be trusted; nothing was planned from it."""


# --- What was read, and what it means --------------------------------------------------------


@dataclass
class ReadCounts:
    peopleforce_requests: int = 0
    full_records: int = 0
    jira_searches: int = 0
    jira_lookups: int = 0


@dataclass
class CompanyPlan:
    """Every employee's plan, with the facts it was made from."""

    today: date
    plans: dict[int, Plan]
    facts: dict[int, Facts]
    returned: int  # employees PeopleForce returned (the safeguard's whole)
    reads: ReadCounts = field(default_factory=ReadCounts)
    # Planned from their full record (not from a list item): their plan can be trusted whole.
    read_in_full: frozenset[int] = frozenset()

    @property
    def needs_work(self) -> list[int]:
        """Employees whose plan changes something (reports alone change nothing)."""
        return [employee_id for employee_id, p in self.plans.items() if not p.is_empty]

    @property
    def reports(self) -> list[tuple[int, Report]]:
        return [
            (employee_id, action)
            for employee_id, p in self.plans.items()
            for action in p.actions
            if isinstance(action, Report)
        ]


def mapped_issues(link: EmployeeLink) -> dict[str, IssueKind]:
    """The parent issues a link points at, by key (subtasks follow their parent)."""
    return {key: kind for kind, key in linked_issues(link).items()}


_GIVEN: dict[frozenset[str], set[str]] = {}


def as_employee(summary: EmployeeSummary, link: EmployeeLink | None) -> Employee:
    """A list item as a full record, for planning someone nothing suggests has changed.

    The list carries no custom fields and no termination date: custom fields read as last
    synced (so they never look changed), the termination as none. A plan that calls for work
    is made again from the full record before anything is done.
    """
    # Built from the item's own (validated) values, not validated again: its references stay
    # the objects the item holds, shared with the rest of the company (`PeopleForceClient`),
    # which is most of what 100,000 records weigh.
    data = {
        name: value
        for name, value in summary.__dict__.items()
        if name in Employee.model_fields and name not in ("active", "updated_at")
    }
    synced = link.synced_fields if link else {}
    data["fields"] = {
        source.removeprefix("fields."): CustomFieldValue(value=value)
        for source, value in synced.items()
        if source.startswith("fields.")
    }
    if data.get("status") is None and summary.active is False:
        data["status"] = "terminated"
    extra = summary.__pydantic_extra__ or {}
    given = frozenset({*data, *extra})
    # The names of the fields given, one set for every record given the same (2 KB a record).
    return Employee.model_construct(_GIVEN.setdefault(given, set(given)), **data, **extra)


def needs_full_record(planned: Plan, rules: Rules) -> bool:
    """Whether a plan made from a list item must be made again from the full record before
    anything is done: it calls for work, or the scope left the person out while it reads custom
    fields (which the list lacks) and they would have work in scope."""
    if not planned.is_empty:
        return True
    return planned.withheld and rules.scope.reads_custom_fields


def plan_company(
    summaries: Mapping[int, EmployeeSummary],
    records: Mapping[int, Employee | None],
    links: Mapping[int, EmployeeLink],
    checks: Mapping[int, IssueCheck],
    rules: Rules,
    today: date,
    only: Iterable[int] | None = None,
) -> tuple[dict[int, Facts], dict[int, Plan]]:
    """Plan everyone (or `only` these): from the full record when there is one, else from the
    list item.

    Mapped employees PeopleForce no longer returns are planned too: the plan reports them and
    changes nothing (never a blind delete).
    """
    by_email: dict[str, list[EmployeeLink]] = defaultdict(list)
    for link in sorted(links.values(), key=lambda link: link.employee_id):
        if link.email:
            by_email[link.email].append(link)
    facts: dict[int, Facts] = {}
    plans: dict[int, Plan] = {}
    everyone = set(summaries) | set(records) | set(links)
    for employee_id in sorted(everyone if only is None else set(only)):
        link = links.get(employee_id)
        if employee_id in records:
            employee = records[employee_id]
        elif employee_id in summaries:
            employee = as_employee(summaries[employee_id], link)
        else:
            employee = None
        email = normalize_email(employee.email) if employee else None
        previous = (
            previous_link(employee_id, email, by_email.get(email, ()))
            if link is None and email
            else None
        )
        checked = checks.get(employee_id) if employee is not None else None
        facts[employee_id] = Facts(employee_id, employee, link, previous, jira=checked)
        plans[employee_id] = plan(facts[employee_id], rules, today)
    return facts, plans


# --- Reading -------------------------------------------------------------------------------


async def read_pages(
    fetch: Callable[[int], Awaitable[Page[RecordT]]],
    bound: asyncio.Semaphore,
    on_page: Callable[[int, int | None], None] | None = None,
) -> list[RecordT]:
    """Every item of a paged list, each id once: page 1 first, then the others at once.

    Without a page count, pages are read one after another until one is empty or brings no
    new id. With one, a later page made only of ids already seen means PeopleForce replayed
    page 1 (a known quirk): the list is incomplete, and `ListingError` says so.
    """
    done = 0

    async def one(number: int) -> Page[RecordT]:
        nonlocal done
        async with bound:
            page = await fetch(number)
        done += 1
        if on_page:
            on_page(done, page.pages)
        return page

    first = await one(1)
    pages = [first]
    if first.items and first.pages is not None:
        pages += await asyncio.gather(*(one(n) for n in range(2, first.pages + 1)))
    elif first.items:
        seen = {item.id for item in first.items}
        while True:
            page = await one(len(pages) + 1)
            fresh = {item.id for item in page.items} - seen
            if not fresh:
                break
            seen |= fresh
            pages.append(page)
    found: dict[int, RecordT] = {}
    for page in pages:
        fresh = [item for item in page.items if item.id not in found]
        if page.number > 1 and page.items and not fresh and first.pages is not None:
            raise ListingError(
                f"PeopleForce answered page {page.number} with people of earlier pages only "
                "(page 1 replayed?): the list is incomplete, so nothing was planned from it"
            )
        found.update((item.id, item) for item in fresh)
    return list(found.values())


def search_batches(links: Iterable[EmployeeLink]) -> list[list[EmployeeLink]]:
    """Mapped employees in batches of at most 50 employees and 100 issues: one search each."""
    batches: list[list[EmployeeLink]] = []
    batch: list[EmployeeLink] = []
    issues = 0
    for link in sorted(links, key=lambda link: link.employee_id):
        count = len(mapped_issues(link))
        if not count:
            continue
        if batch and (len(batch) >= SEARCH_EMPLOYEES or issues + count > SEARCH_ISSUES):
            batches.append(batch)
            batch, issues = [], 0
        batch.append(link)
        issues += count
    if batch:
        batches.append(batch)
    return batches


def label_search(batch: Sequence[EmployeeLink], rules: Rules) -> str:
    """The batch's issues by their employee label, in any project (a moved issue keeps its
    labels); subtasks left out, so that one page holds them all."""
    labels = ", ".join(f'"{employee_label(link.employee_id)}"' for link in batch)
    subtasks = ", ".join(
        f'"{name}"'
        for name in sorted({rules.onboarding.subtask_type, rules.offboarding.subtask_type})
    )
    return f"labels in ({labels}) AND issuetype not in ({subtasks}) ORDER BY key"


def issue_checks(
    links: Iterable[EmployeeLink], found: set[str], answers: Mapping[str, str | None]
) -> dict[int, IssueCheck]:
    """Per mapped employee, which of their issues are missing or moved.

    `found`: keys the searches returned; `answers`: for the others, the key each answers
    under now (None: it does not answer).
    """
    checks: dict[int, IssueCheck] = {}
    for link in links:
        keys = [key for key in mapped_issues(link) if key not in found]
        missing = frozenset(key for key in keys if key in answers and answers[key] is None)
        moved = {key: now for key in keys if (now := answers.get(key)) and now != key}
        # Nearly everyone's issues answer where the link says: one check for all of them.
        checks[link.employee_id] = (
            IssueCheck(missing=missing, moved=moved) if missing or moved else ALL_ANSWER
        )
    return checks


async def check_jira(
    sources: Sources,
    links: Sequence[EmployeeLink],
    rules: Rules,
    bound: asyncio.Semaphore,
    reads: ReadCounts,
    progress: Progress | None = None,
) -> dict[int, IssueCheck]:
    """Whether the issues the links point at still answer in Jira, read in batches."""
    batches = search_batches(links)
    found: set[str] = set()
    done = 0

    async def search(batch: list[EmployeeLink]) -> None:
        nonlocal done
        async with bound:
            issues = await sources.search_issues(label_search(batch, rules))
        found.update(issue.key for issue in issues)
        done += 1
        if progress:
            progress("Jira searches", done, len(batches))

    await asyncio.gather(*(search(batch) for batch in batches))
    reads.jira_searches += len(batches)
    # Search is eventually consistent and a person may remove a label: only a lookup that
    # finds nothing makes an issue missing.
    unanswered = sorted({key for link in links for key in mapped_issues(link)} - found)

    async def look_up(key: str) -> str | None:
        async with bound:
            return await sources.issue_key(key)

    answers = dict(
        zip(unanswered, await asyncio.gather(*(look_up(k) for k in unanswered)), strict=True)
    )
    reads.jira_lookups += len(unanswered)
    return issue_checks(links, found, answers)


async def read_records(
    sources: Sources,
    employee_ids: Sequence[int],
    bound: asyncio.Semaphore,
    reads: ReadCounts,
    progress: Progress | None = None,
) -> dict[int, Employee | None]:
    done = 0

    async def one(employee_id: int) -> Employee | None:
        nonlocal done
        async with bound:
            record = await sources.employee(employee_id)
        done += 1
        if progress:
            progress("PeopleForce full records", done, len(employee_ids))
        return record

    records = await asyncio.gather(*(one(employee_id) for employee_id in employee_ids))
    reads.full_records += len(employee_ids)
    reads.peopleforce_requests += len(employee_ids)
    return dict(zip(employee_ids, records, strict=True))


async def plan_reconciliation(
    sources: Sources,
    links: Sequence[EmployeeLink],
    rules: Rules,
    today: date,
    *,
    now: datetime,
    concurrency: int,
    lookback_days: int,
    full: bool = False,
    read_in_full: Iterable[int] = (),
    progress: Progress | None = None,
) -> CompanyPlan:
    """Read the company (PeopleForce and Jira at once, each `concurrency` requests at a time)
    and plan everyone.

    `full` reads every full record instead of only those changed in the last `lookback_days`;
    so does the first run (nothing mapped yet), when a future termination entered long ago is
    as much news as any other. `read_in_full`: these employees' full records are read whatever
    else (those with acknowledged webhook events not worked yet: whether they are in step
    must be known for sure, custom fields included).
    """
    reads = ReadCounts()
    peopleforce, jira = asyncio.Semaphore(concurrency), asyncio.Semaphore(concurrency)
    full = full or not links
    since = None if full else now - timedelta(days=lookback_days)

    def counted(what: str) -> Callable[[int, int | None], None]:
        def on_page(done: int, total: int | None) -> None:
            reads.peopleforce_requests += 1
            if progress:
                progress(what, done, total)

        return on_page

    async def changed() -> list[EmployeeSummary]:
        if since is None:
            return []
        return await read_pages(
            lambda n: sources.employees_page(n, since),
            peopleforce,
            counted("PeopleForce changed lately"),
        )

    summaries, leavers, recent, checks = await asyncio.gather(
        read_pages(
            lambda n: sources.employees_page(n, None), peopleforce, counted("PeopleForce employees")
        ),
        read_pages(sources.terminated_page, peopleforce, counted("PeopleForce leavers")),
        changed(),
        check_jira(sources, links, rules, jira, reads, progress),
    )
    by_id = {summary.id: summary for summary in summaries}
    records: dict[int, Employee | None] = {record.id: record for record in leavers}
    # Leavers come in full already; whoever changed lately (or everyone, `full`) is read now.
    wanted = {summary.id for summary in (summaries if full else recent)} | set(read_in_full)
    wanted -= set(records)
    records |= await read_records(sources, sorted(wanted), peopleforce, reads, progress)
    by_link = {link.employee_id: link for link in links}
    facts, plans = plan_company(by_id, records, by_link, checks, rules, today)
    # Planned from a list item and calling for work, or from their absence from the list (a
    # hire deleted before day one is cancelled): read in full, plan again.
    unsure = [
        employee_id
        for employee_id, p in plans.items()
        if employee_id not in records and needs_full_record(p, rules)
    ]
    if unsure:
        records |= await read_records(sources, unsure, peopleforce, reads, progress)
        replanned = plan_company(by_id, records, by_link, checks, rules, today, only=unsure)
        facts |= replanned[0]
        plans |= replanned[1]
    returned = len(set(by_id) | {i for i, record in records.items() if record is not None})
    return CompanyPlan(today, plans, facts, returned, reads, frozenset(records))


# --- Work the circuit breaker holds ----------------------------------------------------------

HELD_NOTE = (
    "held by the circuit breaker on the webhook path: an operator releases or drops it "
    "(`pf-jira-sync held`), not the reconciliation"
)


def leave_held(company: CompanyPlan, held: Iterable[int]) -> CompanyPlan:
    """The plan without the work of employees the webhook path's circuit breaker holds
    (`core.store.breaker`): applying it here would send the mass change the breaker stopped,
    unasked, and an operator's drop would undo nothing. Their reports stay (they change
    nothing); the safeguard then counts only what is the reconciliation's to do."""
    plans = dict(company.plans)
    for employee_id in sorted(set(held) & set(plans)):
        planned = plans[employee_id]
        if planned.is_empty:
            continue
        plans[employee_id] = planned.model_copy(
            update={
                "actions": tuple(a for a in planned.actions if isinstance(a, Report)),
                "notes": (*planned.notes, HELD_NOTE),
            }
        )
    return replace(company, plans=plans)


# --- The safeguard -------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Whether a run may apply its plan: `reasons` is empty when it may.

    `owed`: employees among the `touched` whose work acknowledged webhook events asked for
    (`owed_to_webhooks`), not counted against the limits."""

    employees: int
    touched: int
    offboardings: int
    reasons: tuple[str, ...] = ()
    owed: int = 0

    @property
    def stop(self) -> bool:
        return bool(self.reasons)


def safeguard(
    company: CompanyPlan,
    *,
    max_share: float,
    max_offboard: int,
    acknowledged: Mapping[int, Acknowledged] | None = None,
) -> Verdict:
    """Stop a run that would change too many people at once: a mass change is more often a
    mistake (a wrong key or filter, a rules change, PeopleForce answering oddly) than news.

    Work that acknowledged webhook events asked for (`acknowledged`, see `owed_to_webhooks`)
    is not counted: after a crash it is the backlog the webhook path owes, not a change the
    reconciliation found."""
    acknowledged = acknowledged or {}
    owed = {
        employee_id
        for employee_id in company.needs_work
        if owed_to_webhooks(company.plans[employee_id], acknowledged.get(employee_id))
    }
    touched = len(company.needs_work)
    counted = touched - len(owed)
    offboardings = {
        employee_id: sum(
            1
            for action in p.actions
            if isinstance(action, CreateIssue) and action.kind == "offboarding"
        )
        for employee_id, p in company.plans.items()
    }
    counted_offboardings = sum(n for e, n in offboardings.items() if e not in owed)
    besides = f" besides the {len(owed)} that acknowledged webhooks asked for" if owed else ""
    whole = max(company.returned, 1)
    reasons = []
    if counted / whole > max_share:
        reasons.append(
            f"it would touch {counted} of {company.returned} employees "
            f"({counted / whole:.0%}){besides}, more than SAFEGUARD_MAX_SHARE ({max_share:.0%})"
        )
    if counted_offboardings > max_offboard:
        reasons.append(
            f"it would offboard {counted_offboardings} employees{besides}, more than "
            f"SAFEGUARD_MAX_OFFBOARD ({max_offboard})"
        )
    return Verdict(
        company.returned, touched, sum(offboardings.values()), tuple(reasons), owed=len(owed)
    )


# --- Acknowledged webhook events the reconciliation finds not worked -----------------------

# The statuses of events whose work no run has done: failed (a run crashed or failed) or not
# dispatched yet. A dispatched event is left to its run.
BACKLOG_STATUSES = (EventStatus.failed, EventStatus.pending)
# Read at most this many of each (newest first); the rest waits for the next run.
BACKLOG_LIMIT = 10_000
# A pending event this young is left to the dispatcher, which is about to send it: closed by
# the reconciliation only once older than this before its read (PeopleForce's API may answer a
# moment behind the webhooks it sends).
PENDING_STALE_AFTER = timedelta(minutes=1)


async def read_backlog(inbox: InboxRepository) -> list[WebhookEvent]:
    """The inbox's backlog, newest first, at most `BACKLOG_LIMIT` of each status (the rest
    waits for the next reconciliation): what the run and its dry run read alike."""
    return [
        event for status in BACKLOG_STATUSES for event in await inbox.recent(BACKLOG_LIMIT, status)
    ]


@dataclass(frozen=True)
class Acknowledged:
    """One employee's acknowledged webhook events that no run has done, as the inbox held them
    before the reconciliation read PeopleForce: so every change they announce was made
    before that read, and the records read show it."""

    events: tuple[WebhookEvent, ...]
    # Some event's own payload announces a termination: `employee_terminate`, or a record
    # carrying a termination date (a future termination comes as `employee_update`).
    announces_termination: bool = False
    announces_revert: bool = False  # `employee_termination_revert`

    @property
    def failed(self) -> int:
        return sum(1 for event in self.events if event.status == EventStatus.failed)


def acknowledged_by_employee(events: Iterable[WebhookEvent]) -> dict[int, Acknowledged]:
    """The inbox's backlog (events in `BACKLOG_STATUSES`) per employee."""
    by_employee: dict[int, list[WebhookEvent]] = defaultdict(list)
    for event in events:
        if event.employee_id is not None and event.status in BACKLOG_STATUSES:
            by_employee[event.employee_id].append(event)
    found: dict[int, Acknowledged] = {}
    for employee_id, held in sorted(by_employee.items()):
        found[employee_id] = Acknowledged(
            tuple(sorted(held, key=lambda event: event.id or 0)),
            announces_termination=any(_announces_termination(event) for event in held),
            announces_revert=any(e.action == "employee_termination_revert" for e in held),
        )
    return found


def _announces_termination(event: WebhookEvent) -> bool:
    if event.action == "employee_terminate":
        return True
    try:
        envelope = WebhookEnvelope.model_validate_json(event.body)
    except ValueError:  # keyed by its hash: the record inside did not read; it says nothing
        return False
    return envelope.data.attributes.termination_effective_date is not None


def owed_to_webhooks(employee_plan: Plan, acknowledged: Acknowledged | None) -> bool:
    """Whether this plan is work acknowledged webhook events already asked for, so that the
    safeguard need not count it.

    Why this is safe: the safeguard guards what the reconciliation finds by itself, where a
    mass change is more likely a mistake than news. A webhook the gateway verified, stored
    and acknowledged is PeopleForce itself saying "this employee changed"; the webhook path
    acts on it with no safeguard at all (it re-reads the record and applies the whole plan,
    as this run does), and a crash only delayed it: a re-drive (`pf-jira-sync replay --status
    failed`) would do exactly this work, unguarded. Counting it would turn every crash into
    a refusal and leave the crash's people behind.

    What keeps it a guard: only events stored before this run read PeopleForce count, and the
    changes the guard is most for need the event's own word. An offboarding or a moved last
    day is owed only if an event announced a termination (in its action or its payload), a
    cancelled offboarding only if one announced the revert: PeopleForce answering oddly, a
    wrong filter or a rules change that offboards someone whose event said nothing of
    leaving is still counted. Other work (onboarding, field updates, relinks) follows any
    event about the employee, as on the webhook path.
    """
    if acknowledged is None or employee_plan.is_empty:
        return False
    for action in employee_plan.actions:
        leaving = isinstance(action, (CreateIssue, MoveDueDate)) and action.kind == "offboarding"
        if leaving and not acknowledged.announces_termination:
            return False
        if isinstance(action, CancelOffboarding) and not acknowledged.announces_revert:
            return False
    return True


def events_done(
    company: CompanyPlan,
    acknowledged: Mapping[int, Acknowledged],
    brought_in_step: Iterable[int],
    *,
    read_at: datetime,
) -> dict[int, list[WebhookEvent]]:
    """Per employee now in step, the acknowledged events whose work is done: to be closed.

    In step: brought there by this run (`brought_in_step`: their work succeeded), or found
    there, planned from their full record with nothing to do. Their failed events are done,
    and so are their pending ones received `PENDING_STALE_AFTER` before the run read
    PeopleForce (`read_at`); younger ones are left to the dispatcher. Every event here was
    read before PeopleForce was, so none was received after this run read the record.
    """
    worked = set(brought_in_step)
    done: dict[int, list[WebhookEvent]] = {}
    for employee_id, held in acknowledged.items():
        employee_plan = company.plans.get(employee_id)
        if employee_plan is None:
            continue
        found_in_step = employee_plan.is_empty and employee_id in company.read_in_full
        if employee_id not in worked and not found_in_step:
            continue
        events = [
            event
            for event in held.events
            if event.status == EventStatus.failed
            or event.received_at < read_at - PENDING_STALE_AFTER
        ]
        if events:
            done[employee_id] = events
    return done


# --- Reading with the clients alone (the CLI: no Prefect) ----------------------------------


class ClientSources:
    """`Sources` over the two clients, for the command line: transient errors (429 with its
    Retry-After, 5xx, timeouts) are tried again by `core.retry.INTERACTIVE_READ`."""

    def __init__(self, peopleforce: PeopleForceClient, jira: JiraClient) -> None:
        self.peopleforce = peopleforce
        self.jira = jira

    async def employees_page(
        self, page: int, updated_since: datetime | None
    ) -> Page[EmployeeSummary]:
        return await INTERACTIVE_READ.call(
            f"read employees page {page}",
            lambda: self.peopleforce.employees_page(page, updated_since=updated_since),
        )

    async def terminated_page(self, page: int) -> Page[Employee]:
        return await INTERACTIVE_READ.call(
            f"read leavers page {page}", lambda: self.peopleforce.terminated_page(page)
        )

    async def employee(self, employee_id: int) -> Employee | None:
        try:
            return await INTERACTIVE_READ.call(
                f"read employee {employee_id}",
                lambda: self.peopleforce.get_employee(employee_id),
            )
        except NotFoundError:
            return None

    async def search_issues(self, jql: str) -> list[Issue]:
        return await INTERACTIVE_READ.call(
            "search Jira", lambda: self.jira.search_issues(jql, SEARCH_ISSUES)
        )

    async def issue_key(self, key: str) -> str | None:
        return await INTERACTIVE_READ.call(f"look up {key}", lambda: self.jira.current_key(key))


# --- The rules preview: the same company planned with other rules ----------------------------


@dataclass(frozen=True)
class RulesPreview:
    """Every employee planned twice from one read of the company: with the rules in force and
    with proposed ones (`pf-jira-sync preview-rules`); `core.render` tells the difference."""

    current: dict[int, Plan]
    proposed: dict[int, Plan]
    names: dict[int, str]


async def preview_rules(
    sources: Sources,
    company: CompanyPlan,
    proposed: Rules,
    current: Rules,
    concurrency: int,
    progress: Progress | None = None,
) -> RulesPreview:
    """Plan the company again with `proposed` from the facts `company` was planned from.

    As the reconciliation does, whoever was planned from a list item and calls for work under
    the proposed rules is read in full, and planned again under both rules from that record, so
    the two plans of each employee always come from the same facts.
    """
    facts = dict(company.facts)
    plans = {employee_id: plan(f, proposed, company.today) for employee_id, f in facts.items()}
    unsure = sorted(
        employee_id
        for employee_id, p in plans.items()
        if employee_id not in company.read_in_full
        and facts[employee_id].employee is not None
        and needs_full_record(p, proposed)
    )
    before = dict(company.plans)
    if unsure:
        records = await read_records(
            sources, unsure, asyncio.Semaphore(concurrency), company.reads, progress
        )
        for employee_id, record in records.items():
            facts[employee_id] = replace(facts[employee_id], employee=record)
            before[employee_id] = plan(facts[employee_id], current, company.today)
            plans[employee_id] = plan(facts[employee_id], proposed, company.today)
    names = {
        employee_id: p.employee_name or plans[employee_id].employee_name or ""
        for employee_id, p in before.items()
    }
    return RulesPreview(before, plans, names)
