"""The reconciliation's pure parts: reading strategy, per-employee plans, safeguard.

`core.company` does no I/O of its own, so a `Sources` in memory drives it here: no Prefect,
no HTTP. The flow and the commands are tested against the simulators in test_reconcile.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Set as AbstractSet
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from core.company import (
    SEARCH_EMPLOYEES,
    CompanyPlan,
    ListingError,
    acknowledged_by_employee,
    as_employee,
    events_done,
    issue_checks,
    label_search,
    owed_to_webhooks,
    plan_company,
    plan_reconciliation,
    preview_rules,
    read_pages,
    safeguard,
    search_batches,
)
from core.jira.client import Issue
from core.peopleforce.client import Page
from core.peopleforce.models import Employee, EmployeeSummary
from core.plan import (
    CancelOffboarding,
    CreateIssue,
    IssueCheck,
    Plan,
    Report,
    mapped_fields,
    today_in,
)
from core.render import explain
from core.rules import Rules, load_rules
from core.store import EventStatus, WebhookEvent
from core.store.models import EmployeeLink, Lifecycle
from tests.paths import RULES_EXAMPLE

RULES = load_rules(RULES_EXAMPLE)
TODAY = date(2026, 11, 26)
NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def record(employee_id: int, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": employee_id,
        "status": "employed",
        "first_name": "Person",
        "last_name": str(employee_id),
        "email": f"p{employee_id}@example.com",
        "hired_on": "2020-02-03",
        "position": {"id": 1, "name": "Accountant"},
        "department": {"id": 2, "name": "Finance"},
        "location": {"id": 3, "name": "Kyiv"},
    }
    return data | changes


def summary(employee_id: int, **changes: Any) -> EmployeeSummary:
    return EmployeeSummary.model_validate(record(employee_id, **changes))


def full(employee_id: int, **changes: Any) -> Employee:
    return Employee.model_validate(record(employee_id, **changes))


def link_for(employee: Employee, **changes: Any) -> EmployeeLink:
    link = EmployeeLink(
        employee_id=employee.id,
        email=employee.email,
        lifecycle=Lifecycle.onboarding,
        onboarding_issue_key=f"HR-{employee.id}",
    )
    link.set_synced(mapped_fields(employee, RULES)[1])
    for name, value in changes.items():
        setattr(link, name, value)
    return link


class MemorySources:
    """A company in memory, paged like PeopleForce; every read is counted."""

    def __init__(
        self,
        people: list[Employee],
        *,
        changed: AbstractSet[int] = frozenset(),
        issues: dict[str, list[str]] | None = None,  # key -> labels
        moved: dict[str, str] | None = None,
        page_size: int = 2,
    ) -> None:
        self.people = {person.id: person for person in people}
        self.changed = changed
        self.issues = issues or {}
        self.moved = moved or {}
        self.page_size = page_size
        self.calls: Counter[str] = Counter()

    def _page(self, items: list, number: int) -> Page:
        pages = max(1, -(-len(items) // self.page_size))
        chunk = items[(number - 1) * self.page_size : number * self.page_size]
        return Page(number, chunk, pages)

    async def employees_page(self, page: int, updated_since: datetime | None) -> Page:
        self.calls["list" if updated_since is None else "changed"] += 1
        people = [p for p in self.people.values() if updated_since is None or p.id in self.changed]
        items = [EmployeeSummary.model_validate(p.model_dump(exclude={"fields"})) for p in people]
        return self._page(items, page)

    async def terminated_page(self, page: int) -> Page:
        self.calls["terminated"] += 1
        leavers = [p for p in self.people.values() if p.status == "terminated"]
        return self._page(leavers, page)

    async def employee(self, employee_id: int) -> Employee | None:
        self.calls["employee"] += 1
        return self.people.get(employee_id)

    async def search_issues(self, jql: str) -> list[Issue]:
        self.calls["search"] += 1
        return [
            Issue(id=key, key=key, fields={"labels": labels}, properties={})
            for key, labels in self.issues.items()
            if any(f'"{label}"' in jql for label in labels)
        ]

    async def issue_key(self, key: str) -> str | None:
        self.calls["lookup"] += 1
        if key in self.issues:
            return key
        return self.moved.get(key)


async def reconcile_memory(sources: MemorySources, links: list[EmployeeLink], **kwargs: Any):
    return await plan_reconciliation(
        sources, links, RULES, TODAY, now=NOW, concurrency=3, lookback_days=3, **kwargs
    )


# --- reading -------------------------------------------------------------------------------


async def test_pages_are_read_at_once_after_the_first() -> None:
    people = [summary(n) for n in range(1, 8)]
    asked: list[int] = []

    async def fetch(number: int) -> Page[EmployeeSummary]:
        asked.append(number)
        return Page(number, people[(number - 1) * 2 : number * 2], 4)

    found = await read_pages(fetch, asyncio.Semaphore(2))
    assert [person.id for person in found] == list(range(1, 8))
    assert asked[0] == 1
    assert sorted(asked) == [1, 2, 3, 4]


async def test_a_replayed_first_page_makes_the_list_untrustworthy() -> None:
    people = [summary(1), summary(2)]

    async def fetch(number: int) -> Page[EmployeeSummary]:
        return Page(number, people, 3)  # page 1, whatever page is asked

    with pytest.raises(ListingError, match="page 2"):
        await read_pages(fetch, asyncio.Semaphore(2))


async def test_without_a_page_count_pages_are_read_until_one_is_empty() -> None:
    people = [summary(n) for n in range(1, 6)]

    async def fetch(number: int) -> Page[EmployeeSummary]:
        return Page(number, people[(number - 1) * 2 : number * 2], None)

    assert len(await read_pages(fetch, asyncio.Semaphore(2))) == 5


async def test_in_step_company_reads_pages_and_one_search_per_fifty() -> None:
    people = [full(n) for n in range(1, 121)]
    links = [link_for(person) for person in people]
    issues = {f"HR-{n}": [f"pf-employee-{n}", "pf-onboarding"] for n in range(1, 121)}
    sources = MemorySources(people, issues=issues, page_size=50)
    company = await reconcile_memory(sources, links)
    assert company.needs_work == []
    assert sources.calls == Counter(list=3, terminated=1, changed=1, search=3)
    assert company.reads.jira_searches == 3
    assert company.reads.jira_lookups == 0
    assert company.returned == 120


async def test_changed_people_and_people_with_work_are_read_in_full() -> None:
    quiet = full(1)
    changed = full(2, termination_effective_on=(TODAY + timedelta(days=20)).isoformat())
    hire = full(3, hired_on=(TODAY + timedelta(days=3)).isoformat())
    links = [link_for(quiet), link_for(changed)]
    issues = {"HR-1": ["pf-employee-1"], "HR-2": ["pf-employee-2"]}
    sources = MemorySources([quiet, changed, hire], changed={2}, issues=issues)
    company = await reconcile_memory(sources, links)
    # The future termination is only on the full record: read because it changed lately.
    assert [a.kind for a in company.plans[2].actions if isinstance(a, CreateIssue)] == [
        "offboarding"
    ]
    # The hire's plan asked for work from the list item: read in full before it counts.
    assert company.plans[3].actions[0].action == "create_issue"
    assert sources.calls["employee"] == 2
    assert company.needs_work == [2, 3]
    # `full` reads everyone's record.
    sources.calls.clear()
    await reconcile_memory(sources, links, full=True)
    assert sources.calls["employee"] == 3
    assert sources.calls["changed"] == 0


async def test_the_first_run_reads_every_full_record() -> None:
    people = [full(n) for n in range(1, 6)]
    sources = MemorySources(people)
    company = await reconcile_memory(sources, [])  # nothing mapped yet
    assert sources.calls["employee"] == 5
    assert sources.calls["changed"] == 0
    assert company.reads.full_records == 5


async def test_missing_and_moved_issues_are_looked_up_one_by_one() -> None:
    people = [full(1), full(2), full(3)]
    links = [link_for(person) for person in people]
    issues = {"HR-1": ["pf-employee-1"], "IT-7": ["pf-employee-2"]}
    sources = MemorySources(people, issues=issues, moved={"HR-2": "IT-7"})
    company = await reconcile_memory(sources, links)
    assert sources.calls["lookup"] == 2  # HR-2 and HR-3, which the search did not return
    assert company.facts[2].jira == IssueCheck(moved={"HR-2": "IT-7"})
    assert company.facts[3].jira == IssueCheck(missing=frozenset({"HR-3"}))
    assert [a.action for a in company.plans[2].actions] == ["relink_issue"]
    assert [a.action for a in company.plans[3].actions] == ["report"]
    assert company.needs_work == [2]


def test_search_batches_hold_fifty_employees_and_a_page_of_issues() -> None:
    people = [full(n) for n in range(1, 131)]
    links = [link_for(person) for person in people]
    links[0] = link_for(people[0], onboarding_issue_key=None)  # nothing in Jira: not searched
    batches = search_batches(links)
    assert [len(batch) for batch in batches] == [SEARCH_EMPLOYEES, SEARCH_EMPLOYEES, 29]
    two_each = [
        link_for(person, offboarding_issue_key=f"HR-9{person.id}") for person in people[:60]
    ]
    assert [len(batch) for batch in search_batches(two_each)] == [50, 10]
    three_each = [link_for(p, offboarding_issue_key="A-1", record_issue_key="B-1") for p in people]
    assert max(len(batch) for batch in search_batches(three_each)) == 33


def test_label_search_leaves_subtasks_out() -> None:
    jql = label_search([link_for(full(7)), link_for(full(8))], RULES)
    assert jql == (
        'labels in ("pf-employee-7", "pf-employee-8") AND issuetype not in ("Sub-task") '
        "ORDER BY key"
    )


def test_issue_checks_from_searches_and_lookups() -> None:
    link = link_for(full(1), offboarding_issue_key="HR-50", record_issue_key="HR-60")
    checks = issue_checks([link], {"HR-1"}, {"HR-50": None, "HR-60": "IT-3"})
    assert checks[1] == IssueCheck(missing=frozenset({"HR-50"}), moved={"HR-60": "IT-3"})


# --- planning from what was read -------------------------------------------------------------


def test_a_list_item_plans_with_custom_fields_as_last_synced() -> None:
    rules = RULES.model_copy(
        update={"field_map": {**RULES.field_map, "fields.github": RULES.field_map["position"]}}
    )
    employee = full(1, fields={"github": {"value": "octo"}})
    link = link_for(employee)
    link.set_synced(mapped_fields(employee, rules)[1])
    item = EmployeeSummary.model_validate(record(1))
    as_full = as_employee(item, link)
    assert as_full.custom_field("github") == "octo"
    _, plans = plan_company({1: item}, {}, {1: link}, {}, rules, TODAY)
    assert plans[1].is_empty


def test_an_inactive_list_item_without_a_status_reads_as_terminated() -> None:
    item = EmployeeSummary.model_validate(record(1, status=None, active=False))
    assert as_employee(item, None).status == "terminated"


def test_mapped_people_peopleforce_no_longer_returns_are_reported() -> None:
    gone = link_for(full(5), display_name="Gone Person")
    facts, plans = plan_company({}, {}, {5: gone}, {5: IssueCheck()}, RULES, TODAY)
    assert facts[5].employee is None
    assert facts[5].jira is None
    (report,) = plans[5].actions
    assert isinstance(report, Report)
    assert "no longer returns" in report.why
    assert plans[5].is_empty


def test_a_rehire_under_a_new_id_finds_the_former_link_by_email() -> None:
    former = link_for(full(1, email="same@example.com"), lifecycle=Lifecycle.offboarded)
    again = full(9, email="Same@Example.com", hired_on=(TODAY + timedelta(days=2)).isoformat())
    facts, plans = plan_company({}, {9: again}, {1: former}, {}, RULES, TODAY)
    assert facts[9].previous is former
    assert plans[9].actions[0].why.startswith("rehire (former record 1)")


def test_lead_time_counts_days_in_the_rules_time_zone() -> None:
    # 22:30 UTC is already the next day in Kyiv: the hire is 14 days ahead there, 15 in UTC.
    late_evening = datetime(2026, 11, 26, 22, 30, tzinfo=UTC)
    today = today_in(RULES.zone, late_evening)
    assert today == date(2026, 11, 27)
    hire = full(1, hired_on="2026-12-11")
    _, plans = plan_company({}, {1: hire}, {}, {}, RULES, today)
    assert plans[1].actions[0].action == "create_issue"
    _, in_utc = plan_company({}, {1: hire}, {}, {}, RULES, late_evening.date())
    assert in_utc[1].is_empty
    assert "beyond the 14-day lead time" in in_utc[1].notes[0]


# --- the safeguard ---------------------------------------------------------------------------


def company_of(plans: dict[int, Plan], returned: int) -> CompanyPlan:
    return CompanyPlan(TODAY, plans, {}, returned)


def offboarding_plan(employee_id: int) -> Plan:
    leaving = full(employee_id, termination_effective_on=(TODAY + timedelta(days=5)).isoformat())
    _, plans = plan_company({}, {employee_id: leaving}, {}, {}, RULES, TODAY)
    return plans[employee_id]


@pytest.mark.parametrize(
    ("leavers", "employees", "max_share", "max_offboard", "reasons"),
    [
        (2, 10, 0.2, 10, []),  # 20 %: at the limit, not over it
        (3, 10, 0.2, 10, ["would touch 3 of 10 employees (30%)"]),
        (5, 10, 0.2, 10, ["would touch 5 of 10 employees (50%)"]),
        (5, 100, 0.2, 4, ["would offboard 5 employees, more than SAFEGUARD_MAX_OFFBOARD (4)"]),
        (5, 10, 0.2, 4, ["would touch 5 of 10", "would offboard 5 employees"]),
    ],
)
def test_safeguard(
    leavers: int, employees: int, max_share: float, max_offboard: int, reasons: list[str]
) -> None:
    plans = {n: offboarding_plan(n) for n in range(1, leavers + 1)}
    verdict = safeguard(
        company_of(plans, employees), max_share=max_share, max_offboard=max_offboard
    )
    assert verdict.stop == bool(reasons)
    assert len(verdict.reasons) == len(reasons)
    for found, wanted in zip(verdict.reasons, reasons, strict=True):
        assert wanted in found
    if verdict.stop:
        assert "--force" in explain(verdict)
        assert "--dry-run" in explain(verdict)


def test_reports_alone_touch_nobody() -> None:
    plans = {n: Plan(employee_id=n, employee_name=None, actions=(Report(why="x"),)) for n in (1, 2)}
    verdict = safeguard(company_of(plans, 2), max_share=0.2, max_offboard=10)
    assert (verdict.touched, verdict.stop) == (0, False)


# --- acknowledged webhook events: the backlog the webhook path owes -----------------------------


def event(
    event_id: int,
    employee_id: int,
    action: str = "employee_update",
    status: EventStatus = EventStatus.failed,
    *,
    leaving_on: str | None = None,
    received_at: datetime = NOW - timedelta(hours=1),
) -> WebhookEvent:
    body = {
        "action": action,
        "data": {"id": employee_id, "attributes": {"termination_effective_date": leaving_on}},
    }
    return WebhookEvent(
        id=event_id,
        event_key=f"{action}:{employee_id}:{event_id}",
        action=action,
        employee_id=employee_id,
        status=status,
        body=json.dumps(body),
        received_at=received_at,
    )


def hire_plan(employee_id: int) -> Plan:
    hire = full(employee_id, hired_on=(TODAY + timedelta(days=3)).isoformat())
    _, plans = plan_company({}, {employee_id: hire}, {}, {}, RULES, TODAY)
    return plans[employee_id]


def cancel_plan(employee_id: int) -> Plan:
    action = CancelOffboarding(why="reverted", issue_key="HR-1", comment="reverted")
    return Plan(employee_id=employee_id, employee_name=None, actions=(action,))


@pytest.mark.parametrize(
    ("plan_of", "events", "owed"),
    [
        (hire_plan, [event(1, 1, "employee_create")], True),
        (hire_plan, [event(1, 1, "employee_update", EventStatus.pending)], True),
        (hire_plan, [], False),
        (offboarding_plan, [event(1, 1, "employee_terminate")], True),
        # A future termination comes as an update whose record carries the date.
        (offboarding_plan, [event(1, 1, leaving_on="2026-12-01")], True),
        # An event that said nothing of leaving does not vouch for an offboarding.
        (offboarding_plan, [event(1, 1, "employee_update")], False),
        (offboarding_plan, [event(1, 1, "employee_create")], False),
        (cancel_plan, [event(1, 1, "employee_termination_revert")], True),
        (cancel_plan, [event(1, 1, "employee_update")], False),
    ],
)
def test_work_owed_to_acknowledged_webhooks(
    plan_of: Any, events: list[WebhookEvent], owed: bool
) -> None:
    acknowledged = acknowledged_by_employee(events)
    assert owed_to_webhooks(plan_of(1), acknowledged.get(1)) is owed


def test_the_backlog_is_failed_and_pending_events_and_a_broken_body_announces_nothing() -> None:
    broken = event(1, 1, leaving_on="2026-12-01")
    broken.body = broken.body[:-5]  # keyed by its hash: the record did not read
    acknowledged = acknowledged_by_employee(
        [
            broken,
            event(2, 1, status=EventStatus.pending),
            event(3, 2, status=EventStatus.done),
            event(4, 3, status=EventStatus.dispatched),  # left to its run
        ]
    )
    assert list(acknowledged) == [1]
    assert [e.id for e in acknowledged[1].events] == [1, 2]
    assert acknowledged[1].failed == 1
    assert not acknowledged[1].announces_termination


def test_safeguard_counts_only_what_no_acknowledged_webhook_asked_for() -> None:
    plans = {n: offboarding_plan(n) for n in range(1, 6)}
    company = company_of(plans, 10)
    assert safeguard(company, max_share=0.2, max_offboard=4).stop
    acknowledged = acknowledged_by_employee(
        [event(n, n, "employee_terminate") for n in range(1, 6)]
    )
    verdict = safeguard(company, max_share=0.2, max_offboard=4, acknowledged=acknowledged)
    assert (verdict.stop, verdict.touched, verdict.owed, verdict.offboardings) == (False, 5, 5, 5)
    # Three of them with events that never said they leave: those three count.
    acknowledged = acknowledged_by_employee(
        [event(n, n, "employee_terminate" if n <= 2 else "employee_update") for n in range(1, 6)]
    )
    verdict = safeguard(company, max_share=0.2, max_offboard=2, acknowledged=acknowledged)
    assert verdict.owed == 2
    assert verdict.reasons == (
        "it would touch 3 of 10 employees (30%) besides the 2 that acknowledged webhooks asked "
        "for, more than SAFEGUARD_MAX_SHARE (20%)",
        "it would offboard 3 employees besides the 2 that acknowledged webhooks asked for, more "
        "than SAFEGUARD_MAX_OFFBOARD (2)",
    )


def test_events_done_are_those_of_people_in_step_read_before_the_run() -> None:
    in_step = Plan(employee_id=3, employee_name=None)
    company = CompanyPlan(
        TODAY,
        {1: hire_plan(1), 2: hire_plan(2), 3: in_step, 4: in_step},
        {},
        4,
        read_in_full=frozenset({1, 2, 3}),
    )
    fresh = NOW - timedelta(seconds=20)
    acknowledged = acknowledged_by_employee(
        [
            event(10, 1, "employee_create"),  # worked: done
            event(11, 1, status=EventStatus.pending),  # pending long before the read: done
            event(12, 1, status=EventStatus.pending, received_at=fresh),  # the dispatcher's
            event(20, 2, "employee_create"),  # its work failed: stays
            event(30, 3),  # found in step, from the full record: done
            event(40, 4),  # in step as far as a list item tells: stays
        ]
    )
    done = events_done(company, acknowledged, [1], read_at=NOW)
    assert {employee: [e.id for e in events] for employee, events in done.items()} == {
        1: [10, 11],
        3: [30],
    }


# --- the rules preview -----------------------------------------------------------------------


def created_kinds(p: Plan) -> list[str]:
    return [a.kind for a in p.actions if isinstance(a, CreateIssue)]


class ListWithoutTerminations(MemorySources):
    """As PeopleForce's list: its items carry no termination date."""

    async def employees_page(self, page: int, updated_since: datetime | None) -> Page:
        read = await super().employees_page(page, updated_since)
        items = [
            EmployeeSummary.model_validate(item.model_dump(exclude={"termination_effective_on"}))
            for item in read.items
        ]
        return Page(read.number, items, read.pages)


async def test_the_rules_preview_plans_both_rules_from_the_same_full_record() -> None:
    """Whom the proposed rules give work is read in full, as a run would, and planned again
    under both rules: what only the full record shows (a future termination) is no change."""
    from core.render import preview_differences

    quiet = full(1)
    leaving = full(4, termination_effective_on=(TODAY + timedelta(days=20)).isoformat())
    sources = ListWithoutTerminations([quiet, leaving], issues={"HR-1": ["pf-employee-1"]})
    company = await reconcile_memory(sources, [link_for(quiet)])
    assert company.plans[4].is_empty  # from the list item, which has no termination date
    proposed = RULES.model_copy(update={"onboard_started_within_days": 10_000})
    sources.calls.clear()
    preview = await preview_rules(sources, company, proposed, RULES, concurrency=3)
    assert sources.calls == {"employee": 1}  # the company is not read again
    assert created_kinds(preview.current[4]) == ["offboarding"]
    assert created_kinds(preview.proposed[4]) == ["onboarding", "offboarding"]
    assert preview.current[1] == company.plans[1]
    assert preview.proposed[1].is_empty
    ((employee_id, name, gone, new),) = preview_differences(preview)
    assert (employee_id, name, gone) == (4, "Person 4", [])
    assert new[0].startswith("create_issue (onboarding): HR: 'Onboarding: Person 4")
    assert [line.split(": ", 1)[0] for line in new[1:]] == ["subtask of onboarding"] * 3


# --- the scope ------------------------------------------------------------------------------


def scoped(**scope: Any) -> Rules:
    return Rules.model_validate({**RULES.model_dump(), "scope": scope})


async def test_a_scope_on_a_custom_field_reads_in_full_whom_it_leaves_out_with_work() -> None:
    """The list carries no custom fields: a hire it would leave out on one is read in full, and
    onboarded when the full record puts them in scope; nobody else is read for it."""
    rules = scoped(include=[{"fields": {"onboarding_by_it": "yes"}}])
    soon = (TODAY + timedelta(days=3)).isoformat()
    quiet = full(1)  # started long ago, onboarded here: no work in scope or out
    hire = full(3, hired_on=soon, fields={"onboarding_by_it": {"value": "yes"}})
    stranger = full(5, hired_on=soon)
    sources = MemorySources([quiet, hire, stranger], issues={"HR-1": ["pf-employee-1"]})
    company = await plan_reconciliation(
        sources, [link_for(quiet)], rules, TODAY, now=NOW, concurrency=3, lookback_days=3
    )
    assert sources.calls["employee"] == 2  # the hire and the stranger, not the quiet one
    assert created_kinds(company.plans[3]) == ["onboarding"]
    assert company.plans[5].actions == ()
    assert (
        company.plans[5]
        .notes[0]
        .startswith("out of scope: no scope.include matches (fields.onboarding_by_it (none))")
    )
    assert company.needs_work == [3]


async def test_a_scope_on_plain_fields_plans_from_the_list() -> None:
    rules = scoped(exclude=[{"employment_type": "Contractor"}])
    contractor = full(
        3,
        hired_on=(TODAY + timedelta(days=3)).isoformat(),
        employment_type={"id": 5, "name": "Contractor"},
    )
    sources = MemorySources([full(1), contractor], issues={"HR-1": ["pf-employee-1"]})
    company = await plan_reconciliation(
        sources, [link_for(full(1))], rules, TODAY, now=NOW, concurrency=3, lookback_days=3
    )
    assert sources.calls["employee"] == 0
    assert company.plans[3].out_of_scope == "scope.exclude.0 matches (employment_type Contractor)"


async def test_the_rules_preview_shows_the_work_an_exclude_takes_away() -> None:
    from core.render import preview_differences, preview_summary

    contractor = full(
        3,
        hired_on=(TODAY + timedelta(days=3)).isoformat(),
        employment_type={"id": 5, "name": "Contractor"},
    )
    sources = MemorySources([full(1), contractor], issues={"HR-1": ["pf-employee-1"]})
    company = await reconcile_memory(sources, [link_for(full(1))])
    proposed = scoped(exclude=[{"name": "contractors", "employment_type": "Contractor"}])
    preview = await preview_rules(sources, company, proposed, RULES, concurrency=3)
    ((employee_id, _, gone, new),) = differences = preview_differences(preview)
    assert (employee_id, new) == (3, [])
    assert gone[0].startswith("create_issue (onboarding): HR: 'Onboarding: Person 3")
    assert len(gone) == 4  # the onboarding and its three subtasks
    assert preview_summary(differences, 2) == (
        "1 of 2 employees would change: 0 line(s) appear (+), 4 disappear (-)"
    )
