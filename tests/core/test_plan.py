"""The plan, case by case: (employee, mapping, rules, today) -> actions. Pure, so no fixtures."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from core import render
from core.errors import ApiError, NotFoundError, ServerError, UnexpectedAnswerError
from core.peopleforce.models import Asset, AssetsRead, Employee
from core.plan import (
    AddComment,
    CancelOffboarding,
    CancelOnboarding,
    CreateIssue,
    Facts,
    IssueCheck,
    MoveDueDate,
    RelinkIssue,
    Report,
    UpdateFields,
    mapped_fields,
    plan,
    plan_with_assets,
    process_of,
)
from core.rules import Rules, load_rules
from core.store.models import EmployeeLink, Lifecycle
from tests.paths import RULES_EXAMPLE

RULES = load_rules(RULES_EXAMPLE)
TODAY = date(2026, 11, 26)


def employee(**changes: Any) -> Employee:
    record: dict[str, Any] = {
        "id": 501,
        "status": "employed",
        "full_name": "Zoë Łukasiewicz",
        "first_name": "Zoë",
        "last_name": "Łukasiewicz",
        "email": "zoe@example.com",
        "hired_on": TODAY.isoformat(),
        "position": {"id": 1, "name": "Accountant"},
        "department": {"id": 2, "name": "Finance"},
        "location": {"id": 3, "name": "Kyiv"},
        "reporting_to": {
            "id": 9,
            "first_name": "Ada",
            "last_name": "Boss",
            "email": "ada@example.com",
        },
    }
    record.update(changes)
    return Employee.model_validate(record)


def onboarded(emp: Employee, **changes: Any) -> EmployeeLink:
    _, snapshot = mapped_fields(emp, RULES)
    link = EmployeeLink(
        employee_id=emp.id,
        email=emp.email,
        display_name=emp.display_name,
        lifecycle=Lifecycle.onboarding,
        onboarding_issue_key="HR-1",
    )
    link.set_synced(snapshot)
    for name, value in changes.items():
        setattr(link, name, value)
    return link


def kinds(result) -> list[str]:
    return [
        f"{a.action}:{a.kind}" if isinstance(a, CreateIssue) else a.action for a in result.actions
    ]


def days(n: int) -> str:
    return (TODAY + timedelta(days=n)).isoformat()


CASES = [
    # (name, employee changes, link factory, expected action kinds, note fragment)
    ("hire beyond the lead time", {"hired_on": days(15)}, None, [], "beyond the 14-day lead time"),
    (
        "hire exactly at the lead time",
        {"hired_on": days(14)},
        None,
        ["create_issue:onboarding"],
        None,
    ),
    ("hire tomorrow", {"hired_on": days(1)}, None, ["create_issue:onboarding"], None),
    (
        "started last week, never onboarded",
        {"hired_on": days(-7)},
        None,
        ["create_issue:onboarding"],
        None,
    ),
    (
        "started years ago, first seen now",
        {"hired_on": "2020-01-06"},
        None,
        [],
        "before this service knew them",
    ),
    ("no hire date", {"hired_on": None}, None, [], "no hire date"),
    ("onboarded, nothing changed", {}, "onboarded", [], None),
    (
        "mover: department",
        {"department": {"id": 7, "name": "Sales"}},
        "onboarded",
        ["update_fields", "add_comment"],
        None,
    ),
    (
        "mover: manager",
        {
            "reporting_to": {
                "id": 8,
                "first_name": "Bo",
                "last_name": "New",
                "email": "bo@example.com",
            }
        },
        "onboarded",
        ["update_fields", "add_comment"],
        None,
    ),
    (
        "mover: position",
        {"position": {"id": 4, "name": "Controller"}},
        "onboarded",
        ["update_fields", "add_comment"],
        None,
    ),
    (
        "mover: location",
        {"location": {"id": 5, "name": "Lviv"}},
        "onboarded",
        ["update_fields", "add_comment"],
        None,
    ),
    ("unmapped change only", {"first_name": "Zoe"}, "onboarded", [], None),
    (
        "termination scheduled",
        {"termination_effective_on": days(20)},
        "onboarded",
        ["create_issue:offboarding"],
        None,
    ),
    (
        "fixed-term hire: starts soon, leaves later",
        {"hired_on": days(3), "termination_effective_on": days(90)},
        None,
        ["create_issue:onboarding", "create_issue:offboarding"],
        None,
    ),
    (
        "hire far ahead with a termination already entered",
        {"hired_on": days(40), "termination_effective_on": days(90)},
        None,
        ["create_issue:offboarding"],
        "beyond the 14-day lead time",
    ),
    (
        "termination effective",
        {"status": "terminated", "hired_on": days(-100), "termination_effective_on": days(-1)},
        "onboarded",
        ["create_issue:offboarding"],
        None,
    ),
    (
        "terminated, no date",
        {"status": "terminated"},
        "onboarded",
        ["create_issue:offboarding"],
        None,
    ),
    (
        "leaver never onboarded here",
        {"hired_on": "2019-03-04", "termination_effective_on": days(3)},
        None,
        ["create_issue:offboarding"],
        None,
    ),
    (
        "left within the window, never known here",
        {"status": "terminated", "hired_on": "2019-03-04", "termination_effective_on": days(-30)},
        None,
        ["create_issue:offboarding"],
        None,
    ),
    (
        "left long ago, never known here",
        {"status": "terminated", "hired_on": "2019-03-04", "termination_effective_on": days(-31)},
        None,
        [],
        "before this service knew them): no offboarding created",
    ),
    (
        "left long ago, onboarded here and never offboarded",
        {"status": "terminated", "hired_on": "2024-03-01", "termination_effective_on": days(-200)},
        "onboarded",
        ["create_issue:offboarding"],
        None,
    ),
    (
        "offboarding exists, same date",
        {"termination_effective_on": days(20)},
        "offboarding",
        [],
        "already covers",
    ),
    (
        "offboarding exists, date moved",
        {"termination_effective_on": days(30)},
        "offboarding",
        ["move_due_date"],
        None,
    ),
    ("termination reverted", {}, "offboarding", ["cancel_offboarding"], None),
    (
        "reactivated after leaving, same hire date",
        {"hired_on": "2024-03-01"},
        "offboarded",
        ["cancel_offboarding"],
        None,
    ),
    (
        "rehire: same id, new hire date",
        {"hired_on": days(5)},
        "offboarded",
        ["create_issue:onboarding"],
        None,
    ),
    (
        "termination applied again after its revert",
        {"termination_effective_on": days(20)},
        "onboarded",  # the link after the revert: its offboarding cancelled and forgotten
        ["create_issue:offboarding"],
        None,
    ),
    # A leaver is never left without an offboarding, whatever the order of events.
    (
        "termination entered after its effective date, never onboarded",
        {"status": "terminated", "hired_on": days(-10), "termination_effective_on": days(-2)},
        None,
        ["create_issue:offboarding"],
        None,
    ),
    (
        "termination entered after its effective date, status not yet terminated",
        {"hired_on": days(-10), "termination_effective_on": days(-2)},
        None,
        ["create_issue:offboarding"],
        None,
    ),
    (
        "termination effective today, before the create was seen",
        {"status": "terminated", "hired_on": days(-3), "termination_effective_on": days(0)},
        None,
        ["create_issue:offboarding"],
        None,
    ),
    (
        "termination ahead, delivered before the create",
        {"hired_on": days(-20), "termination_effective_on": days(3)},
        None,
        ["create_issue:onboarding", "create_issue:offboarding"],
        None,
    ),
    (
        "termination after its effective date, known but nothing made yet",
        {"status": "terminated", "hired_on": days(-10), "termination_effective_on": days(-2)},
        "pending",
        ["create_issue:offboarding"],
        None,
    ),
    (
        "terminated on the first day",
        {"status": "terminated", "hired_on": days(0), "termination_effective_on": days(0)},
        None,
        ["create_issue:offboarding"],
        None,
    ),
    # A hire withdrawn before day one: the onboarding is cancelled, nobody is offboarded.
    (
        "withdrawn before day one, not onboarded yet",
        {"hired_on": days(5), "termination_effective_on": days(3)},
        None,
        [],
        "hire withdrawn before day one",
    ),
    (
        "withdrawn before day one, far ahead",
        {"hired_on": days(40), "termination_effective_on": days(39)},
        None,
        [],
        "hire withdrawn before day one",
    ),
    (
        "withdrawn before day one, onboarded",
        {"hired_on": days(5), "termination_effective_on": days(2)},
        "onboarded",
        ["cancel_onboarding"],
        None,
    ),
    (
        "withdrawn before day one, terminated effective today",
        {"status": "terminated", "hired_on": days(3), "termination_effective_on": days(0)},
        "onboarded",
        ["cancel_onboarding"],
        None,
    ),
    (
        "withdrawn before day one, onboarding already cancelled",
        {"hired_on": days(5), "termination_effective_on": days(3)},
        "withdrawn",
        [],
        "hire withdrawn before day one",
    ),
    (
        "withdrawn hire reinstated",
        {"hired_on": days(5)},
        "withdrawn",
        ["create_issue:onboarding"],
        None,
    ),
]


def make_link(kind: str | None, emp: Employee) -> EmployeeLink | None:
    if kind is None:
        return None
    if kind == "onboarded":
        return onboarded(employee())
    if kind in ("pending", "withdrawn"):
        return EmployeeLink(employee_id=emp.id, email=emp.email, lifecycle=Lifecycle(kind))
    termination = (
        date.fromisoformat(days(20)) if kind == "offboarding" else date.fromisoformat(days(-30))
    )
    # Same hire date as the case's employee: only the termination differs.
    return onboarded(
        employee(hired_on=emp.hired_on.isoformat() if emp.hired_on else None),
        lifecycle=Lifecycle(kind),
        offboarding_issue_key="HR-9",
        termination_on=termination,
    )


@pytest.mark.parametrize(
    ("changes", "link_kind", "expected", "note"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_plan_cases(
    changes: dict, link_kind: str | None, expected: list[str], note: str | None
) -> None:
    emp = employee(**changes)
    result = plan(
        Facts(employee_id=emp.id, employee=emp, link=make_link(link_kind, emp)), RULES, TODAY
    )
    assert kinds(result) == expected
    if note:
        assert note in " ".join(result.notes)


def test_plan_is_repeatable() -> None:
    emp = employee(hired_on=days(3))
    facts = Facts(employee_id=emp.id, employee=emp)
    assert plan(facts, RULES, TODAY) == plan(facts, RULES, TODAY)


def test_onboarding_is_routed_and_rendered() -> None:
    emp = employee(hired_on=days(3), department={"id": 1, "name": "Engineering"})
    (create,) = plan(Facts(employee_id=emp.id, employee=emp), RULES, TODAY).actions
    assert isinstance(create, CreateIssue)
    assert create.project == "IT"  # the engineering route
    assert create.summary == f"Onboarding: Zoë Łukasiewicz ({days(3)})"
    assert create.assignee.email == "ada@example.com"  # route: manager
    assert create.due_date == date.fromisoformat(days(3))
    assert create.labels == ("pf-employee-501", "pf-onboarding", create.guard_label)
    assert create.guard_label == f"pf-onboarding-501-{days(3).replace('-', '')}"
    summaries = [subtask.summary for subtask in create.subtasks]
    assert summaries == [
        "Create accounts for Zoë Łukasiewicz",
        "Prepare a laptop for Zoë Łukasiewicz",
        "Welcome meeting with Zoë Łukasiewicz",
        "Grant source code access to Zoë Łukasiewicz",
    ]
    assert create.subtasks[2].assignee.email == "ada@example.com"
    fields = {value.source: (value.jira_field, value.value) for value in create.fields}
    assert fields["manager"] == ("customfield_10052", "ada@example.com")
    assert fields["department"] == ("customfield_10051", "Engineering")
    assert create.snapshot["position"] == "Accountant"


def test_default_route_uses_default_project() -> None:
    emp = employee(hired_on=days(1))
    (create,) = plan(Facts(employee_id=emp.id, employee=emp), RULES, TODAY).actions
    assert isinstance(create, CreateIssue)
    assert create.project == "HR"
    assert create.assignee.is_nobody
    assert len(create.subtasks) == 3


def test_no_manager_no_email_still_plans() -> None:
    emp = employee(hired_on=days(1), reporting_to=None, email=None, full_name=None, department=None)
    (create,) = plan(Facts(employee_id=emp.id, employee=emp), RULES, TODAY).actions
    assert isinstance(create, CreateIssue)
    assert create.subtasks[2].assignee.is_nobody  # "manager" with no manager: unassigned
    assert create.summary.startswith("Onboarding: Zoë Łukasiewicz")
    assert "Manager: none." in (create.description or "")
    assert {v.source: v.value for v in create.fields}["manager"] is None


def test_offboarding_has_a_subtask_per_asset_and_is_due_on_the_last_day() -> None:
    emp = employee(termination_effective_on=days(10))
    assets = [
        Asset(id=1, name="MacBook Pro 14", serial_number="C02XK1"),
        Asset(id=2, name="Badge", code="B-17"),
        Asset(id=3),
    ]
    result = plan(
        Facts(employee_id=emp.id, employee=emp, link=onboarded(emp), assets=assets), RULES, TODAY
    )
    (create,) = result.actions
    assert isinstance(create, CreateIssue)
    assert create.kind == "offboarding"
    assert create.due_date == date.fromisoformat(days(10))
    assert create.related_issue_key == "HR-1"
    assert [s.summary for s in create.subtasks][-3:] == [
        "Collect MacBook Pro 14 (C02XK1) from Zoë Łukasiewicz",
        "Collect Badge (B-17) from Zoë Łukasiewicz",
        "Collect asset 3 (no serial) from Zoë Łukasiewicz",
    ]


@pytest.mark.parametrize(
    ("changes", "linked", "assets_read", "kinds_planned"),
    [
        ({"termination_effective_on": days(10)}, True, 1, ["create_issue:offboarding"]),
        ({}, False, 0, ["create_issue:onboarding"]),
        ({}, True, 0, []),
    ],
    ids=["offboarding reads assets once", "onboarding reads none", "nothing to do reads none"],
)
async def test_assets_are_read_only_when_the_plan_offboards(
    changes: dict[str, Any], linked: bool, assets_read: int, kinds_planned: list[str]
) -> None:
    emp = employee(**changes)
    reads: list[int] = []

    async def read_assets() -> list[Asset]:
        reads.append(emp.id)
        return [Asset(id=7, name="Laptop")]

    link = onboarded(emp) if linked else None
    facts, result = await plan_with_assets(
        Facts(employee_id=emp.id, employee=emp, link=link), RULES, TODAY, read_assets
    )
    assert len(reads) == assets_read
    assert kinds(result) == kinds_planned
    assert list(facts.assets) == ([Asset(id=7, name="Laptop")] if assets_read else [])
    if assets_read:
        (create,) = result.actions
        assert isinstance(create, CreateIssue)
        assert any("Laptop" in subtask.summary for subtask in create.subtasks)


LAPTOP = Asset(id=7, name="Laptop", serial_number="C02XK1")
SKIPPED = "asset 'Monitor' (item 2 of the list) skipped: PeopleForce gave it in a form that cannot be read"


BY_HAND = "The asset list must be checked by hand: "
IN_PART = "The asset list was read only in part: check these assets by hand in PeopleForce.\n- "


@pytest.mark.parametrize(
    ("answer", "asset_subtasks", "check_by_hand", "notes", "comment"),
    [
        (
            AssetsRead(assets=(LAPTOP,)),
            ["Collect Laptop (C02XK1) from Zoë Łukasiewicz"],
            None,
            [],
            None,
        ),
        (
            NotFoundError("peopleforce", "Not Found", status=404),
            [],
            "PeopleForce answered 404 Not Found for this employee's assets (the assets module "
            "may not be enabled for the company)",
            ["the asset list could not be read: PeopleForce answered 404 Not Found"],
            BY_HAND + "PeopleForce answered 404 Not Found for this employee's assets (the assets "
            "module may not be enabled for the company). ",
        ),
        (
            UnexpectedAnswerError("peopleforce", "no list of assets (`data`)", status=200),
            [],
            "PeopleForce's answer 200 for the asset list could not be used (no list of assets "
            "(`data`))",
            ["the asset list could not be read: PeopleForce's answer 200"],
            BY_HAND + "PeopleForce's answer 200 for the asset list could not be used",
        ),
        (
            ServerError("peopleforce", "Service Unavailable", status=503),
            [],
            "PeopleForce did not answer for the asset list, tried again (Service Unavailable)",
            ["the asset list could not be read: PeopleForce did not answer"],
            BY_HAND + "PeopleForce did not answer for the asset list",
        ),
        (
            AssetsRead(assets=(LAPTOP,), notes=(SKIPPED,)),
            ["Collect Laptop (C02XK1) from Zoë Łukasiewicz"],
            None,
            [SKIPPED],
            IN_PART + SKIPPED,
        ),
    ],
    ids=[
        "assets read",
        "404: no assets module",
        "permanent error",
        "retries exhausted",
        "one malformed asset",
    ],
)
async def test_an_offboarding_is_planned_whatever_becomes_of_the_asset_list(
    answer: AssetsRead | ApiError,
    asset_subtasks: list[str],
    check_by_hand: str | None,
    notes: list[str],
    comment: str | None,
) -> None:
    emp = employee(termination_effective_on=days(10))

    async def read_assets() -> AssetsRead:
        if isinstance(answer, ApiError):
            raise answer
        return answer

    facts, result = await plan_with_assets(
        Facts(employee_id=emp.id, employee=emp, link=onboarded(emp)), RULES, TODAY, read_assets
    )
    (create,) = result.actions
    assert isinstance(create, CreateIssue)
    assert create.kind == "offboarding"
    summaries = [subtask.summary for subtask in create.subtasks]
    checklist = ["Revoke access for Zoë Łukasiewicz", "Exit interview with Zoë Łukasiewicz"]
    manual = [f"Check the asset list by hand: {check_by_hand}"] if check_by_hand else []
    assert summaries == checklist + asset_subtasks + manual
    assert facts.assets_unread == check_by_hand
    assert (create.description or "").endswith(
        f"The asset list could not be read: {check_by_hand}. Check it by hand."
    ) == bool(check_by_hand)
    assert len(result.notes) == len(notes)
    for note, start in zip(result.notes, notes, strict=True):
        assert note.startswith(start)
    # The people working the issue are told too, in a comment on it (one, whatever the cause).
    expected = [comment] if comment else []
    assert len(create.comments) == len(expected)
    for text, start in zip(create.comments, expected, strict=True):
        assert text.startswith(start)
    assert render.describe_action(create).endswith(", 1 comment(s)") == bool(comment)


def test_mover_comment_lists_old_and_new() -> None:
    before = employee()
    after = employee(
        department={"id": 7, "name": "Sales"}, position={"id": 4, "name": "Controller"}
    )
    update, comment = plan(
        Facts(employee_id=501, employee=after, link=onboarded(before)), RULES, TODAY
    ).actions
    assert isinstance(update, UpdateFields)
    assert isinstance(comment, AddComment)
    assert update.issue_key == comment.issue_key == "HR-1"
    assert {v.source for v in update.fields} == {"department", "position"}
    assert "- department: Finance -> Sales" in comment.text
    assert "- position: Accountant -> Controller" in comment.text
    assert update.snapshot["department"] == "Sales"


def test_date_moved_and_revert_details() -> None:
    emp = employee(termination_effective_on=days(30))
    (move,) = plan(
        Facts(employee_id=501, employee=emp, link=make_link("offboarding", emp)), RULES, TODAY
    ).actions
    assert isinstance(move, MoveDueDate)
    assert (move.old, move.new) == (date.fromisoformat(days(20)), date.fromisoformat(days(30)))
    (cancel,) = plan(
        Facts(employee_id=501, employee=employee(), link=make_link("offboarding", emp)),
        RULES,
        TODAY,
    ).actions
    assert isinstance(cancel, CancelOffboarding)
    assert cancel.issue_key == "HR-9"
    assert "reverted" in cancel.comment


def test_a_withdrawn_hire_cancels_the_onboarding_and_says_why() -> None:
    emp = employee(hired_on=days(5), termination_effective_on=days(2))
    link = onboarded(emp)
    (cancel,) = plan(Facts(emp.id, emp, link), RULES, TODAY).actions
    assert isinstance(cancel, CancelOnboarding)
    assert cancel.issue_key == "HR-1"
    assert process_of(cancel) == "onboarding"
    assert f"before the first day {days(5)}" in cancel.why
    assert cancel.comment.startswith("The hire of Zoë Łukasiewicz was withdrawn in PeopleForce")
    assert "Remove any account or access already prepared." in cancel.comment
    assert render.applied_line(cancel, "HR-1") == (
        "cancelled onboarding HR-1 (hire withdrawn before day one)"
    )
    assert render.describe_action(cancel) == "HR-1: to Cancelled, with a comment"


def test_rehire_under_a_new_id_links_the_former_record() -> None:
    former = onboarded(employee(), lifecycle=Lifecycle.offboarded, offboarding_issue_key="HR-9")
    emp = employee(id=777, hired_on=days(2))
    (create,) = plan(Facts(employee_id=777, employee=emp, previous=former), RULES, TODAY).actions
    assert isinstance(create, CreateIssue)
    assert create.related_issue_key == "HR-9"
    assert "rehire (former record 501)" in create.why
    assert "pf-employee-777" in create.labels


def test_unknown_employee_is_reported_not_acted_on() -> None:
    result = plan(Facts(employee_id=404, employee=None), RULES, TODAY)
    assert [type(a) for a in result.actions] == [Report]
    assert result.is_empty
    mapped = plan(Facts(employee_id=501, employee=None, link=onboarded(employee())), RULES, TODAY)
    assert "no longer returns" in mapped.actions[0].why


def test_separate_record_issue_gets_the_fields() -> None:
    rules = Rules.model_validate(
        {**RULES.model_dump(), "record": {"issue": "separate", "project": "HR"}}
    )
    emp = employee(hired_on=days(1))
    onboarding, record = plan(Facts(employee_id=emp.id, employee=emp), rules, TODAY).actions
    assert isinstance(onboarding, CreateIssue)
    assert isinstance(record, CreateIssue)
    assert (onboarding.kind, record.kind) == ("onboarding", "record")
    assert onboarding.fields == ()
    assert {v.source for v in record.fields} == set(rules.field_map)
    link = onboarded(emp, record_issue_key="HR-5")
    moved = employee(hired_on=days(1), location={"id": 5, "name": "Lviv"})
    update, _ = plan(Facts(employee_id=emp.id, employee=moved, link=link), rules, TODAY).actions
    assert isinstance(update, UpdateFields)
    assert update.issue_key == "HR-5"


def test_custom_field_mapping() -> None:
    rules = Rules.model_validate(
        {**RULES.model_dump(), "field_map": {"fields.github": {"jira_field": "customfield_10055"}}}
    )
    emp = employee(hired_on=days(1), fields={"github": {"value": "octocat"}})
    (create,) = plan(Facts(employee_id=emp.id, employee=emp), rules, TODAY).actions
    assert isinstance(create, CreateIssue)
    assert [(v.jira_field, v.value) for v in create.fields] == [("customfield_10055", "octocat")]


# --- what reconciliation found in Jira (Facts.jira) ---------------------------------------

JIRA_CASES = [
    # (name, rules' missing_issue, check, employee changes, link kind, expected kinds)
    ("all issues answer", "report", IssueCheck(), {}, "onboarded", []),
    (
        "onboarding issue deleted: report",
        "report",
        IssueCheck(missing=frozenset({"HR-1"})),
        {"hired_on": days(-3)},
        "onboarded",
        ["report"],
    ),
    (
        "onboarding issue deleted: recreate while still due",
        "recreate",
        IssueCheck(missing=frozenset({"HR-1"})),
        {"hired_on": days(-3)},
        "onboarded",
        ["report", "create_issue:onboarding"],
    ),
    (
        "onboarding issue deleted: recreate, but started long ago",
        "recreate",
        IssueCheck(missing=frozenset({"HR-1"})),
        {"hired_on": "2020-01-06"},
        "onboarded",
        ["report"],
    ),
    (
        "onboarding issue moved, fields changed: follow, then update the new key",
        "report",
        IssueCheck(moved={"HR-1": "IT-4"}),
        {"department": {"id": 7, "name": "Sales"}},
        "onboarded",
        ["relink_issue", "update_fields", "add_comment"],
    ),
    (
        "offboarding issue deleted, still leaving: report, no second offboarding",
        "report",
        IssueCheck(missing=frozenset({"HR-9"})),
        {"termination_effective_on": days(20)},
        "offboarding",
        ["report"],
    ),
    (
        "offboarding issue deleted, still leaving: recreate",
        "recreate",
        IssueCheck(missing=frozenset({"HR-9"})),
        {"termination_effective_on": days(20)},
        "offboarding",
        ["report", "create_issue:offboarding"],
    ),
]


@pytest.mark.parametrize(
    ("missing_issue", "check", "changes", "link_kind", "expected"),
    [case[1:] for case in JIRA_CASES],
    ids=[case[0] for case in JIRA_CASES],
)
def test_plan_follows_what_jira_answers(
    missing_issue: str, check: IssueCheck, changes: dict, link_kind: str, expected: list[str]
) -> None:
    rules = RULES.model_copy(update={"missing_issue": missing_issue})
    emp = employee(**changes)
    link = make_link(link_kind, emp)
    result = plan(Facts(emp.id, emp, link, jira=check), rules, TODAY)
    assert kinds(result) == expected


def test_a_moved_issue_is_followed_and_the_update_goes_to_its_new_key() -> None:
    emp = employee(department={"id": 7, "name": "Sales"})
    check = IssueCheck(moved={"HR-1": "IT-4"})
    relink, update, comment = plan(
        Facts(emp.id, emp, onboarded(employee()), jira=check), RULES, TODAY
    ).actions
    assert isinstance(relink, RelinkIssue)
    assert (relink.kind, relink.old_key, relink.new_key) == ("onboarding", "HR-1", "IT-4")
    assert isinstance(update, UpdateFields)
    assert update.issue_key == "IT-4"
    assert isinstance(comment, AddComment)
    assert comment.issue_key == "IT-4"


def test_a_missing_issue_report_says_what_the_rules_say() -> None:
    emp = employee(hired_on=days(-3))
    check = IssueCheck(missing=frozenset({"HR-1"}))
    (report,) = plan(Facts(emp.id, emp, onboarded(emp), jira=check), RULES, TODAY).actions
    assert isinstance(report, Report)
    assert "HR-1 no longer answers in Jira" in report.why
    assert "the rules say report: not created again" in report.why


# --- the scope: who this service works for ------------------------------------------------


def scoped(**scope: Any) -> Rules:
    return Rules.model_validate({**RULES.model_dump(), "scope": scope})


CONTRACTORS = {"exclude": [{"name": "contractors", "employment_type": "Contractor"}]}
CONTRACTOR = {"employment_type": {"id": 5, "name": "contractor"}}


def scope_link(kind: str | None, emp: Employee) -> EmployeeLink | None:
    """`make_link`'s kinds, and two that only the scope needs."""
    if kind == "offboarded on leaving the scope":  # the offboarding made when they left it
        return onboarded(
            employee(),
            lifecycle=Lifecycle.offboarded,
            offboarding_issue_key="HR-9",
            termination_on=TODAY,
        )
    if kind == "offboarded, never onboarded":  # a leaver first seen with their termination
        return EmployeeLink(
            employee_id=emp.id,
            email=emp.email,
            lifecycle=Lifecycle.offboarding,
            offboarding_issue_key="HR-9",
            termination_on=date.fromisoformat(days(20)),
        )
    return make_link(kind, emp)


SCOPE_CASES = [
    # (name, scope, employee changes, link kind, expected action kinds, note fragment)
    # Each filter, on a new hire due for onboarding.
    (
        "employment type excluded",
        CONTRACTORS,
        {**CONTRACTOR, "hired_on": days(3)},
        None,
        [],
        'out of scope: scope.exclude.0 "contractors" matches (employment_type contractor); '
        "no onboarding, no offboarding",
    ),
    (
        "employment type not excluded",
        CONTRACTORS,
        {"hired_on": days(3)},
        None,
        ["create_issue:onboarding"],
        None,
    ),
    (
        "department not included",
        {"include": [{"department": ["Engineering", "IT"]}]},
        {"hired_on": days(3)},
        None,
        [],
        "out of scope: no scope.include matches (department Finance)",
    ),
    (
        "department included, any case",
        {"include": [{"department": ["Engineering", "IT"]}]},
        {"hired_on": days(3), "department": {"id": 1, "name": "engineering"}},
        None,
        ["create_issue:onboarding"],
        None,
    ),
    (
        "division excluded",
        {"exclude": [{"division": "R&D"}]},
        {"hired_on": days(3), "division": {"id": 4, "name": "R&D"}},
        None,
        [],
        "scope.exclude.0 matches (division R&D)",
    ),
    (
        "location not included",
        {"include": [{"location": "Lviv"}]},
        {"hired_on": days(3)},
        None,
        [],
        "no scope.include matches (location Kyiv)",
    ),
    (
        "position excluded, one of a list",
        {"exclude": [{"position": ["Intern", "Accountant"]}]},
        {"hired_on": days(3)},
        None,
        [],
        "scope.exclude.0 matches (position Accountant)",
    ),
    (
        "custom field excluded, one of a list",
        {"exclude": [{"fields": {"agency": ["Acme", "Globex"]}}]},
        {"hired_on": days(3), "fields": {"agency": {"value": "GLOBEX"}}},
        None,
        [],
        "scope.exclude.0 matches (fields.agency GLOBEX)",
    ),
    (
        "custom field included, not set",
        {"include": [{"fields": {"onboarding_by_it": "yes"}}]},
        {"hired_on": days(3)},
        None,
        [],
        "no scope.include matches (fields.onboarding_by_it (none))",
    ),
    (
        "custom field included, a TOML boolean against a JSON one",
        {"include": [{"fields": {"remote": True}}]},
        {"hired_on": days(3), "fields": {"remote": {"value": True}}},
        None,
        ["create_issue:onboarding"],
        None,
    ),
    (
        "an entry needs every key it names",
        {"exclude": [{"department": "Finance", "location": "Lviv"}]},
        {"hired_on": days(3)},
        None,
        ["create_issue:onboarding"],
        None,
    ),
    (
        "any include will do",
        {"include": [{"department": "Sales"}, {"location": "Kyiv"}]},
        {"hired_on": days(3)},
        None,
        ["create_issue:onboarding"],
        None,
    ),
    (
        "an exclude wins over an include",
        {"include": [{"department": "Finance"}], **CONTRACTORS},
        {**CONTRACTOR, "hired_on": days(3)},
        None,
        [],
        'scope.exclude.0 "contractors" matches',
    ),
    # Never onboarded here: nothing at all, whatever happens.
    (
        "never onboarded, leaving",
        CONTRACTORS,
        {**CONTRACTOR, "hired_on": "2019-03-04", "termination_effective_on": days(3)},
        None,
        [],
        "no onboarding, no offboarding",
    ),
    (
        "never onboarded, hire withdrawn",
        CONTRACTORS,
        {**CONTRACTOR, "hired_on": days(5), "termination_effective_on": days(3)},
        "withdrawn",
        [],
        "no onboarding, no offboarding",
    ),
    # Onboarded here, then out of the scope (moved to contractor).
    (
        "left the scope: nothing",
        CONTRACTORS,
        CONTRACTOR,
        "onboarded",
        [],
        'on_leaving_scope = "nothing", so no offboarding until they leave; fields are not synced',
    ),
    (
        "left the scope: nothing, and fields changed",
        CONTRACTORS,
        {**CONTRACTOR, "position": {"id": 4, "name": "Controller"}},
        "onboarded",
        [],
        "fields are not synced while out of scope",
    ),
    (
        "left the scope: offboard",
        {**CONTRACTORS, "on_leaving_scope": "offboard"},
        CONTRACTOR,
        "onboarded",
        ["create_issue:offboarding"],
        "fields are not synced while out of scope",
    ),
    (
        "left the scope: offboard, the run after",
        {**CONTRACTORS, "on_leaving_scope": "offboard"},
        CONTRACTOR,
        "offboarded on leaving the scope",
        [],
        'offboarding HR-9 stays as it is (on_leaving_scope = "offboard")',
    ),
    (
        "left the scope: offboard, then a termination",
        {**CONTRACTORS, "on_leaving_scope": "offboard"},
        {**CONTRACTOR, "termination_effective_on": days(40)},
        "offboarded on leaving the scope",
        [],
        "offboarding HR-9 stays as it is",
    ),
    (
        "left the scope: offboard, no second offboarding for a withdrawn hire",
        {**CONTRACTORS, "on_leaving_scope": "offboard"},
        {**CONTRACTOR, "hired_on": days(5), "termination_effective_on": days(2)},
        "onboarded",
        ["cancel_onboarding"],
        None,
    ),
    # Out of scope, what was made here is seen through: a leaver's access is revoked.
    (
        "onboarded here, out of scope, leaving: nothing",
        CONTRACTORS,
        {**CONTRACTOR, "termination_effective_on": days(20)},
        "onboarded",
        ["create_issue:offboarding"],
        "onboarded here, so their offboarding applies",
    ),
    (
        "onboarded here, out of scope, leaving: offboard",
        {**CONTRACTORS, "on_leaving_scope": "offboard"},
        {**CONTRACTOR, "termination_effective_on": days(20)},
        "onboarded",
        ["create_issue:offboarding"],
        None,
    ),
    (
        "out of scope, last day moved: nothing",
        CONTRACTORS,
        {**CONTRACTOR, "termination_effective_on": days(30)},
        "offboarding",
        ["move_due_date"],
        "offboarding HR-9 is seen through",
    ),
    (
        "out of scope, last day moved: offboard",
        {**CONTRACTORS, "on_leaving_scope": "offboard"},
        {**CONTRACTOR, "termination_effective_on": days(30)},
        "offboarding",
        [],
        "offboarding HR-9 stays as it is",
    ),
    (
        "out of scope, same last day",
        CONTRACTORS,
        {**CONTRACTOR, "termination_effective_on": days(20)},
        "offboarding",
        [],
        "already covers the last day",
    ),
    (
        "out of scope, termination reverted: nothing",
        CONTRACTORS,
        CONTRACTOR,
        "offboarding",
        ["cancel_offboarding"],
        None,
    ),
    (
        "out of scope, termination reverted: offboard",
        {**CONTRACTORS, "on_leaving_scope": "offboard"},
        CONTRACTOR,
        "offboarding",
        [],
        "stays as it is",
    ),
    (
        "out of scope, reverted termination of someone never onboarded: offboard",
        {**CONTRACTORS, "on_leaving_scope": "offboard"},
        CONTRACTOR,
        "offboarded, never onboarded",
        ["cancel_offboarding"],
        None,
    ),
    (
        "out of scope, hire withdrawn after onboarding",
        CONTRACTORS,
        {**CONTRACTOR, "hired_on": days(5), "termination_effective_on": days(2)},
        "onboarded",
        ["cancel_onboarding"],
        None,
    ),
    (
        "out of scope, rehired under the same id",
        CONTRACTORS,
        {**CONTRACTOR, "hired_on": days(5)},
        "offboarded",
        [],
        "offboarding HR-9 is seen through",
    ),
]


@pytest.mark.parametrize(
    ("scope", "changes", "link_kind", "expected", "note"),
    [case[1:] for case in SCOPE_CASES],
    ids=[case[0] for case in SCOPE_CASES],
)
def test_scope_cases(
    scope: dict, changes: dict, link_kind: str | None, expected: list[str], note: str | None
) -> None:
    emp = employee(**changes)
    result = plan(Facts(emp.id, emp, scope_link(link_kind, emp)), scoped(**scope), TODAY)
    assert kinds(result) == expected
    notes = " ".join(result.notes)
    if note:
        assert note in notes
    out = result.out_of_scope is not None
    assert out == notes.startswith("out of scope: ")
    assert not any(process_of(action) == "field-sync" for action in result.actions)


def test_a_scope_that_leaves_nobody_out_plans_as_no_scope() -> None:
    everyone = scoped(
        include=[{"department": ["Finance", "Sales"]}], exclude=[{"location": "Mars"}]
    )
    for changes, link_kind in [case[1:3] for case in CASES]:
        emp = employee(**changes)
        facts = Facts(emp.id, emp, make_link(link_kind, emp))
        assert plan(facts, everyone, TODAY) == plan(facts, RULES, TODAY)


def test_leaving_the_scope_offboards_as_for_a_termination_effective_today() -> None:
    rules = scoped(**CONTRACTORS, on_leaving_scope="offboard")
    emp = employee(**CONTRACTOR)
    result = plan(Facts(emp.id, emp, onboarded(employee())), rules, TODAY)
    (create,) = result.actions
    assert isinstance(create, CreateIssue)
    assert (create.kind, create.due_date, create.related_issue_key) == (
        "offboarding",
        TODAY,
        "HR-1",
    )
    assert create.summary == f"Offboarding: Zoë Łukasiewicz (last day {TODAY})"
    assert create.why == (
        'left the scope (scope.exclude.0 "contractors" matches (employment_type contractor)); '
        'the rules say on_leaving_scope = "offboard": offboarding as for a termination '
        "effective today"
    )
    assert (
        result.out_of_scope == 'scope.exclude.0 "contractors" matches (employment_type contractor)'
    )
    assert create.fields == ()


async def test_leaving_the_scope_offboards_with_the_assets() -> None:
    rules = scoped(**CONTRACTORS, on_leaving_scope="offboard")
    emp = employee(**CONTRACTOR)

    async def read_assets() -> list[Asset]:
        return [LAPTOP]

    _, result = await plan_with_assets(
        Facts(emp.id, emp, onboarded(employee())), rules, TODAY, read_assets
    )
    (create,) = result.actions
    assert isinstance(create, CreateIssue)
    assert "Collect Laptop (C02XK1) from Zoë Łukasiewicz" in [s.summary for s in create.subtasks]


def test_a_leaver_onboarded_here_is_offboarded_out_of_scope_and_says_why() -> None:
    emp = employee(**CONTRACTOR, termination_effective_on=days(20))
    (create,) = plan(
        Facts(emp.id, emp, onboarded(employee())), scoped(**CONTRACTORS), TODAY
    ).actions
    assert isinstance(create, CreateIssue)
    assert create.due_date == date.fromisoformat(days(20))
    assert create.why == (
        f"termination effective {days(20)}; out of scope, but onboarded here: access must be "
        "revoked"
    )


def test_the_plan_inputs_say_whether_the_person_is_in_scope() -> None:
    emp = employee(**CONTRACTOR)
    inputs = dict(render.describe_inputs(Facts(emp.id, emp), scoped(**CONTRACTORS), TODAY))
    assert inputs["scope"] == (
        'out of scope: scope.exclude.0 "contractors" matches (employment_type contractor)'
    )
    inputs = dict(render.describe_inputs(Facts(emp.id, employee()), scoped(**CONTRACTORS), TODAY))
    assert inputs["scope"] == "in scope"
    assert "scope" not in dict(render.describe_inputs(Facts(emp.id, emp), RULES, TODAY))


# --- field map policies: when PeopleForce's value is empty, and `when` ---------------------


def with_github(**policy: Any) -> Rules:
    """The example rules, mapping the GitHub login too with `policy`."""
    mapping = {"jira_field": "customfield_10060", **policy}
    return Rules.model_validate(
        {
            **RULES.model_dump(),
            "field_map": {**RULES.model_dump()["field_map"], "fields.github": mapping},
        }
    )


ENGINEERING = {"id": 1, "name": "Engineering"}
SALES = {"id": 7, "name": "Sales"}
NO_GITHUB: dict[str, Any] = {}
OCTOCAT = {"github": {"value": "octocat"}}
ABSENT = object()  # not written to Jira at all

CREATE_CASES = [
    # (name, policy, employee changes, what the onboarding writes to customfield_10060)
    ("clear (the default): empty is written empty", {}, {"fields": NO_GITHUB}, None),
    ("clear: a value is written", {"when_empty": "clear"}, {"fields": OCTOCAT}, "octocat"),
    ("skip: empty is not written", {"when_empty": "skip"}, {"fields": NO_GITHUB}, ABSENT),
    ("skip: a value is written", {"when_empty": "skip"}, {"fields": OCTOCAT}, "octocat"),
    (
        "default: empty writes the default",
        {"when_empty": "default", "default": "none yet"},
        {"fields": {"github": {"value": ""}}},
        "none yet",
    ),
    (
        "default: a value is written",
        {"when_empty": "default", "default": "none yet"},
        {"fields": OCTOCAT},
        "octocat",
    ),
    (
        "when holds",
        {"when": {"department": "engineering"}},
        {"fields": OCTOCAT, "department": ENGINEERING},
        "octocat",
    ),
    (
        "when holds, one of a list",
        {"when": {"department": ["IT", "Engineering"]}},
        {"fields": OCTOCAT, "department": ENGINEERING},
        "octocat",
    ),
    (
        "when does not hold: not written",
        {"when": {"department": "Engineering"}},
        {"fields": OCTOCAT},
        ABSENT,
    ),
    (
        "when on several fields needs all",
        {"when": {"department": "Engineering", "location": "Lviv"}},
        {"fields": OCTOCAT, "department": ENGINEERING},
        ABSENT,
    ),
    (
        "when does not hold beats the default",
        {"when": {"department": "Engineering"}, "when_empty": "default", "default": "none yet"},
        {"fields": NO_GITHUB},
        ABSENT,
    ),
    (
        "when on a custom field",
        {"when": {"fields.team": "platform"}},
        {"fields": {**OCTOCAT, "team": {"value": "Platform"}}},
        "octocat",
    ),
]


@pytest.mark.parametrize(
    ("policy", "changes", "written"),
    [case[1:] for case in CREATE_CASES],
    ids=[case[0] for case in CREATE_CASES],
)
def test_an_onboarding_writes_what_the_policy_says(
    policy: dict, changes: dict, written: object
) -> None:
    rules = with_github(**policy)
    emp = employee(hired_on=days(3), **changes)
    (create,) = plan(Facts(emp.id, emp), rules, TODAY).actions
    assert isinstance(create, CreateIssue)
    fields = {value.jira_field: value.value for value in create.fields}
    assert fields.get("customfield_10060", ABSENT) == written
    assert create.snapshot.get("fields.github", ABSENT) == written
    assert fields["customfield_10050"] == "Accountant"  # the other fields, as always
    # The issue made, the next run finds nothing changed.
    link = onboarded(emp)
    link.set_synced(create.snapshot)
    assert plan(Facts(emp.id, emp, link), rules, TODAY).actions == ()


SYNC_CASES = [
    # (name, policy, synced github, employee changes now, update written (None: no update))
    (
        "clear: emptied in PeopleForce, emptied in Jira",
        {},
        "octocat",
        {"fields": NO_GITHUB},
        {"fields.github": None},
    ),
    (
        "skip: emptied in PeopleForce, kept in Jira",
        {"when_empty": "skip"},
        "octocat",
        {"fields": NO_GITHUB},
        None,
    ),
    (
        "skip: changed",
        {"when_empty": "skip"},
        "octocat",
        {"fields": {"github": {"value": "hubber"}}},
        {"fields.github": "hubber"},
    ),
    (
        "default: emptied in PeopleForce, the default in Jira",
        {"when_empty": "default", "default": "none yet"},
        "octocat",
        {"fields": NO_GITHUB},
        {"fields.github": "none yet"},
    ),
    (
        "default: still empty, the default already written",
        {"when_empty": "default", "default": "none yet"},
        "none yet",
        {"fields": NO_GITHUB},
        None,
    ),
    (
        "default: PeopleForce now says what the default wrote",
        {"when_empty": "default", "default": "none yet"},
        "none yet",
        {"fields": {"github": {"value": "None Yet"}}},
        {"fields.github": "None Yet"},
    ),
    (
        "when no longer holds: the field stays, the department follows",
        {"when": {"department": "Engineering"}},
        "octocat",
        {"fields": {"github": {"value": "hubber"}}, "department": SALES},
        {"department": "Sales"},
    ),
    (
        "when holds again: the field catches up",
        {"when": {"department": "Finance"}},
        "octocat",
        {"fields": {"github": {"value": "hubber"}}},
        {"fields.github": "hubber"},
    ),
]


@pytest.mark.parametrize(
    ("policy", "synced", "changes", "update"),
    [case[1:] for case in SYNC_CASES],
    ids=[case[0] for case in SYNC_CASES],
)
def test_field_sync_writes_what_the_policy_says_and_settles(
    policy: dict, synced: str, changes: dict, update: dict | None
) -> None:
    rules = with_github(**policy)
    before = employee(fields={"github": {"value": synced}})
    link = onboarded(before)
    _, snapshot = mapped_fields(before, RULES)
    link.set_synced({**snapshot, "fields.github": synced})
    now = employee(**changes)
    actions = plan(Facts(now.id, now, link), rules, TODAY).actions
    if update is None:
        assert actions == ()
        return
    write, comment = actions
    assert isinstance(write, UpdateFields)
    assert isinstance(comment, AddComment)
    assert {value.source: value.value for value in write.fields} == update
    assert {source: new for source, _, new in write.changes} == update
    # The synced snapshot: what was written, and for a field left alone what Jira still has.
    assert write.snapshot["fields.github"] == update.get("fields.github", synced)
    # Recorded, it settles: the next run writes nothing.
    link.set_synced(write.snapshot)
    assert plan(Facts(now.id, now, link), rules, TODAY).actions == ()


def test_a_field_skipped_while_empty_is_not_written_back_when_it_returns() -> None:
    """Jira kept "octocat" while PeopleForce had nothing: the value coming back is no change."""
    rules = with_github(when_empty="skip")
    link = onboarded(employee(fields=OCTOCAT))
    link.set_synced({**link.synced_fields, "fields.github": "octocat"})
    for fields in (NO_GITHUB, OCTOCAT, NO_GITHUB):
        emp = employee(fields=fields)
        assert plan(Facts(emp.id, emp, link), rules, TODAY).actions == ()


# --- the first day moves, or the hire is deleted before it (issue 16) ---------------------

FIRST_DAY = date.fromisoformat(days(10))


def onboarded_for(first_day: date | None, **changes: Any) -> EmployeeLink:
    """Onboarded when the hire date was `FIRST_DAY`; the link keeps `first_day` as the date
    (None: made before the link kept it)."""
    return onboarded(employee(hired_on=FIRST_DAY.isoformat()), hired_on=first_day, **changes)


# The example rules map hired_on to a Jira field too: the field sync follows the move.
MOVED = ["move_due_date", "update_fields", "add_comment"]

HIRE_DATE_CASES = [
    # (name, employee changes (None: PeopleForce no longer returns them), link, expected, note)
    ("first day moved later", {"hired_on": days(12)}, onboarded_for(FIRST_DAY), MOVED, None),
    ("first day moved earlier", {"hired_on": days(5)}, onboarded_for(FIRST_DAY), MOVED, None),
    (
        "first day moved beyond the lead time after the onboarding was made",
        {"hired_on": days(40)},
        onboarded_for(FIRST_DAY),
        MOVED,
        None,
    ),
    (
        "first day moved to a day already past",
        {"hired_on": days(-3)},
        onboarded_for(FIRST_DAY),
        MOVED,
        None,
    ),
    ("first day as before", {"hired_on": days(10)}, onboarded_for(FIRST_DAY), [], None),
    (
        "first day moved, and a termination entered for later",
        {"hired_on": days(12), "termination_effective_on": days(60)},
        onboarded_for(FIRST_DAY),
        ["move_due_date", "create_issue:offboarding"],
        None,
    ),
    (
        "first day moved while still beyond the lead time: no issue yet, nothing to move",
        {"hired_on": days(40)},
        None,
        [],
        "beyond the 14-day lead time",
    ),
    (
        "first day moved, link made before the hire date was kept: no move",
        {"hired_on": days(12)},
        onboarded_for(None),
        ["update_fields", "add_comment"],
        None,
    ),
    (
        "deleted in PeopleForce before day one",
        None,
        onboarded_for(FIRST_DAY),
        ["cancel_onboarding"],
        None,
    ),
    (
        "deleted in PeopleForce on day one",
        None,
        onboarded_for(TODAY),
        ["report"],
        None,
    ),
    (
        "deleted in PeopleForce after day one",
        None,
        onboarded_for(date.fromisoformat(days(-20))),
        ["report"],
        None,
    ),
    (
        "deleted in PeopleForce, first day not known",
        None,
        onboarded_for(None),
        ["report"],
        None,
    ),
    (
        "deleted in PeopleForce before day one, onboarding already cancelled",
        None,
        onboarded_for(FIRST_DAY, lifecycle=Lifecycle.withdrawn, onboarding_issue_key=None),
        ["report"],
        None,
    ),
    (
        "deleted in PeopleForce before day one of a fixed term with its offboarding made",
        None,
        onboarded_for(FIRST_DAY, lifecycle=Lifecycle.offboarding, offboarding_issue_key="HR-9"),
        ["report"],
        None,
    ),
]


@pytest.mark.parametrize(
    ("changes", "link", "expected", "note"),
    [case[1:] for case in HIRE_DATE_CASES],
    ids=[case[0] for case in HIRE_DATE_CASES],
)
def test_the_onboarding_follows_the_first_day(
    changes: dict | None, link: EmployeeLink | None, expected: list[str], note: str | None
) -> None:
    emp = None if changes is None else employee(**changes)
    result = plan(Facts(501, emp, link), RULES, TODAY)
    assert kinds(result) == expected
    if note:
        assert note in " ".join(result.notes)


def test_a_moved_first_day_moves_the_due_date_summary_and_says_so() -> None:
    emp = employee(hired_on=days(12))
    move = plan(Facts(501, emp, onboarded_for(FIRST_DAY)), RULES, TODAY).actions[0]
    assert isinstance(move, MoveDueDate)
    assert (move.kind, move.issue_key, move.old, move.new) == (
        "onboarding",
        "HR-1",
        FIRST_DAY,
        date.fromisoformat(days(12)),
    )
    assert move.summary == f"Onboarding: Zoë Łukasiewicz ({days(12)})"  # the template names it
    assert move.comment == f"The first day moved from {days(10)} to {days(12)}."
    assert move.why == f"the first day moved from {days(10)} to {days(12)}"
    assert process_of(move) == "onboarding"
    assert render.applied_line(move, "HR-1") == (
        f"moved the first day on HR-1 from {days(10)} to {days(12)}"
    )


def test_a_summary_that_does_not_name_the_first_day_stays() -> None:
    onboarding = RULES.onboarding.model_copy(update={"summary": "Onboarding: {full_name}"})
    rules = RULES.model_copy(update={"onboarding": onboarding})
    emp = employee(hired_on=days(12))
    move = plan(Facts(501, emp, onboarded_for(FIRST_DAY)), rules, TODAY).actions[0]
    assert isinstance(move, MoveDueDate)
    assert move.summary is None


def test_a_moved_last_day_is_still_the_offboarding_s() -> None:
    emp = employee(termination_effective_on=days(30))
    (move,) = plan(Facts(501, emp, make_link("offboarding", emp)), RULES, TODAY).actions
    assert isinstance(move, MoveDueDate)
    assert (move.kind, move.summary) == ("offboarding", None)
    assert move.comment == f"The last day moved from {days(20)} to {days(30)}."
    assert process_of(move) == "offboarding"


def test_a_hire_deleted_before_day_one_cancels_the_onboarding_and_says_why() -> None:
    (cancel,) = plan(Facts(501, None, onboarded_for(FIRST_DAY)), RULES, TODAY).actions
    assert isinstance(cancel, CancelOnboarding)
    assert cancel.issue_key == "HR-1"
    assert process_of(cancel) == "onboarding"
    assert cancel.why == (
        f"the hire was deleted in PeopleForce before day one (first day {days(10)})"
    )
    assert cancel.comment == (
        f"Zoë Łukasiewicz was deleted in PeopleForce before day one (first day {days(10)}): "
        "onboarding cancelled. Remove any account or access already prepared."
    )
    after_day_one = plan(Facts(501, None, onboarded_for(TODAY)), RULES, TODAY)
    assert "no longer returns this employee; nothing changed in Jira" in (
        after_day_one.actions[0].why
    )


# --- the lead time per route --------------------------------------------------------------

FINANCE = {"id": 2, "name": "Finance"}

LEAD_TIME_CASES = [
    # (name, the Engineering route's lead time, department, starts in, expected, note)
    ("route's lead time: within it", 21, ENGINEERING, 20, ["create_issue:onboarding"], None),
    ("route's lead time: at it", 21, ENGINEERING, 21, ["create_issue:onboarding"], None),
    ("route's lead time: beyond it", 21, ENGINEERING, 22, [], "beyond the 21-day lead time"),
    ("route's lead time shorter than the global", 3, ENGINEERING, 5, [], "the 3-day lead time"),
    ("route's lead time 0: on the day", 0, ENGINEERING, 0, ["create_issue:onboarding"], None),
    ("route's lead time 0: not the day before", 0, ENGINEERING, 1, [], "the 0-day lead time"),
    ("route without one: the global", None, ENGINEERING, 15, [], "the 14-day lead time"),
    (
        "route without one: within the global",
        None,
        ENGINEERING,
        14,
        ["create_issue:onboarding"],
        None,
    ),
    ("no route: the global, not the route's", 21, FINANCE, 20, [], "the 14-day lead time"),
]


@pytest.mark.parametrize(
    ("route_lead", "department", "starts_in", "expected", "note"),
    [case[1:] for case in LEAD_TIME_CASES],
    ids=[case[0] for case in LEAD_TIME_CASES],
)
def test_a_route_may_have_its_own_lead_time(
    route_lead: int | None,
    department: dict,
    starts_in: int,
    expected: list[str],
    note: str | None,
) -> None:
    raw = RULES.model_dump()
    raw["routes"][0]["prehire_lead_days"] = route_lead  # "engineering"
    rules = Rules.model_validate(raw)
    emp = employee(hired_on=days(starts_in), department=department)
    result = plan(Facts(emp.id, emp), rules, TODAY)
    assert kinds(result) == expected
    if note:
        assert note in " ".join(result.notes)
