"""Renderings: plans, verdicts, outcomes and inputs as text, Markdown and table rows.

Byte for byte: the artifacts, the log lines and the CLI show these texts, and operators (and
their searches) read them.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from core import render
from core.company import CompanyPlan, ReadCounts, Verdict, plan_company
from core.errors import (
    AuthenticationError,
    ConfigurationError,
    ForbiddenError,
    NotFoundError,
    ServerError,
)
from core.lifecycle import LifecycleError
from core.peopleforce.models import Asset, Employee
from core.plan import (
    Action,
    AddComment,
    Assignee,
    CancelOffboarding,
    CreateIssue,
    Facts,
    IssueCheck,
    MoveDueDate,
    Plan,
    RelinkIssue,
    Report,
    Subtask,
    UpdateFields,
)
from core.rules import Rules
from core.store.lease import LeaseTimeout
from core.store.models import EmployeeLink, Lifecycle
from flows.outcome import EmployeeOutcome
from tests.core.test_company import RULES, TODAY, company_of, full, link_for, offboarding_plan

SITE = "https://acme.atlassian.net"


def create(kind: Any = "onboarding", due: date | None = date(2026, 12, 1)) -> CreateIssue:
    return CreateIssue(
        why="hired on 2026-12-01",
        kind=kind,
        project="HR",
        issue_type="Task",
        subtask_type="Sub-task",
        summary="Onboarding: Ada | Lovelace",
        description=None,
        assignee=Assignee(email="boss@example.com"),
        due_date=due,
        labels=("pf-employee-1",),
        guard_label="pf-onboarding-1-20261201",
        subtasks=(Subtask(summary="Step 1"), Subtask(summary="Step 2")) if due else (),
    )


UPDATE = UpdateFields(
    why="fields changed",
    issue_key="HR-2",
    fields=(),
    changes=(("position", "Accountant", "Auditor"), ("fields.github", None, "ada")),
    snapshot={},
)
COMMENT = AddComment(why="asset list changed", issue_key="HR-3", text="hello")
MOVE = MoveDueDate(
    why="last day moved",
    kind="offboarding",
    issue_key="HR-4",
    old=None,
    new=date(2026, 12, 9),
    comment="The last day moved from None to 2026-12-09.",
)
FIRST_DAY = MoveDueDate(
    why="first day moved",
    kind="onboarding",
    issue_key="HR-1",
    old=date(2026, 12, 1),
    new=date(2026, 12, 9),
    summary="Onboarding: Ada Lovelace (2026-12-09)",
    comment="The first day moved from 2026-12-01 to 2026-12-09.",
)
CANCEL = CancelOffboarding(why="termination reverted", issue_key="HR-5", comment="back")
RELINK = RelinkIssue(why="moved in Jira", kind="onboarding", old_key="HR-6", new_key="IT-6")
GONE = Report(why="PeopleForce no longer returns this employee")


def company(returned: int = 10) -> CompanyPlan:
    plans = {
        1: Plan(employee_id=1, employee_name="Ada Lovelace", actions=(create(),)),
        2: Plan(employee_id=2, employee_name="Bo | Pipe", actions=(UPDATE, COMMENT)),
        4: Plan(employee_id=4, employee_name="Cy", actions=(MOVE, CANCEL)),
        6: Plan(employee_id=6, employee_name=None, actions=(RELINK,)),
        7: Plan(employee_id=7, employee_name=None, actions=(GONE,)),
        8: Plan(
            employee_id=8, employee_name="Dee\nNew", actions=(Report(why="no | email\n here"),)
        ),
        9: Plan(employee_id=9, employee_name="In Step"),
    }
    return CompanyPlan(TODAY, plans, {}, returned, ReadCounts(12, 3, 2, 1))


def nothing() -> CompanyPlan:
    return CompanyPlan(TODAY, {9: Plan(employee_id=9, employee_name="In Step")}, {}, 1)


WITHIN = Verdict(10, 4, 1)
STOPPED = Verdict(10, 4, 1, ("it would touch 4 of 10 employees (40%)", "it would offboard 1"))
COUNTS = (
    "add_comment 1, cancel_offboarding 1, create_issue (onboarding) 1, move_due_date 1, "
    "relink_issue 1, report 2, update_fields 1"
)
READS = (
    "Read 10 employees from PeopleForce (12 requests, 3 full records); 2 Jira searches, 1 lookups."
)
FORCE_HINT = (
    ". Look at the dry run (`pf-jira-sync reconcile --dry-run`); if the plan is right, run it "
    "with force (`pf-jira-sync reconcile --force`, or force=true in the Prefect UI)."
)
REPORTED = [
    "",
    "### Reported (nothing changed in Jira)",
    "",
    "- 7 -: PeopleForce no longer returns this employee",
    "- 8 Dee New: no \\| email here",
]


def outcomes() -> list[EmployeeOutcome]:
    return [
        EmployeeOutcome(
            2,
            "Bo | Pipe",
            applied=["update_fields HR-2", "add_comment HR-3"],
            notes=["line one\nline two"],
            jira_keys=["HR-2", "HR-3", "HR-2"],
        ),
        EmployeeOutcome(1, "Ada Lovelace", applied=["create_issue HR-1"], jira_keys=["HR-1"]),
        EmployeeOutcome(5, None, error="ApiError: 502 | bad gateway"),
        EmployeeOutcome(9, "In Step", left_for_others=["offboarding: create_issue"]),
    ]


# --- actions and plans ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "label", "what"),
    [
        (
            create(),
            "create_issue (onboarding)",
            "HR: 'Onboarding: Ada | Lovelace', due 2026-12-01, 2 subtask(s)",
        ),
        (
            create("offboarding", None),
            "create_issue (offboarding)",
            "HR: 'Onboarding: Ada | Lovelace', 0 subtask(s)",
        ),
        (
            UPDATE,
            "update_fields",
            "HR-2: position Accountant -> Auditor, fields.github (none) -> ada",
        ),
        (COMMENT, "add_comment", "HR-3: comment"),
        (MOVE, "move_due_date", "HR-4: due None -> 2026-12-09 (the last day)"),
        (
            FIRST_DAY,
            "move_due_date",
            "HR-1: due 2026-12-01 -> 2026-12-09 (the first day), summary "
            "'Onboarding: Ada Lovelace (2026-12-09)'",
        ),
        (CANCEL, "cancel_offboarding", "HR-5: to Cancelled, with a comment"),
        (RELINK, "relink_issue", "onboarding issue HR-6 -> IT-6 (store only)"),
        (GONE, "report", "nothing changes"),
    ],
)
def test_an_action_is_labelled_and_described_on_one_line(
    action: Action, label: str, what: str
) -> None:
    assert render.action_label(action) == label
    assert render.describe_action(action) == what


def test_plan_rows_hold_every_action_in_the_plan_columns() -> None:
    rows = render.plan_rows(company())
    assert all(tuple(row) == render.PLAN_COLUMNS for row in rows)
    assert [(row["employee"], row["name"], row["action"]) for row in rows] == [
        ("1", "Ada Lovelace", "create_issue (onboarding)"),
        ("2", "Bo | Pipe", "update_fields"),
        ("2", "Bo | Pipe", "add_comment"),
        ("4", "Cy", "move_due_date"),
        ("4", "Cy", "cancel_offboarding"),
        ("6", "", "relink_issue"),
        ("7", "", "report"),
        ("8", "Dee\nNew", "report"),
    ]
    assert rows[-1] | {"employee": "", "name": "", "action": ""} == {
        "employee": "",
        "name": "",
        "action": "",
        "what": "nothing changes",
        "why": "no | email\n here",
    }


@pytest.mark.parametrize(
    ("counts", "line"),
    [
        (render.action_counts(company()), COUNTS),
        (render.action_counts(nothing()), "nothing"),
        ({"b": 2, "a": 1}, "a 1, b 2"),
    ],
)
def test_counts_line(counts: dict[str, int], line: str) -> None:
    assert render.counts_line(counts) == line


def test_plan_rows_and_inputs_say_what_and_why() -> None:
    plans = {7: offboarding_plan(7)}
    (row,) = render.plan_rows(company_of(plans, 1))
    assert row["action"] == "create_issue (offboarding)"
    assert row["what"].startswith(
        "HR: 'Offboarding: Person 7 (last day 2026-12-01)', due 2026-12-01"
    )
    assert row["why"] == "termination effective 2026-12-01"
    employee = full(7)
    link = link_for(employee, offboarding_issue_key="HR-70", termination_on=TODAY)
    facts, _ = plan_company(
        {}, {7: employee}, {7: link}, {7: IssueCheck(missing=frozenset({"HR-70"}))}, RULES, TODAY
    )
    inputs = dict(render.describe_inputs(facts[7], RULES, TODAY))
    assert inputs["today"] == "2026-11-26 in Europe/Kyiv"
    assert inputs["onboarding issue"] == "HR-7 (answers in Jira)"
    assert inputs["offboarding issue"] == "HR-70, last day 2026-11-26 (no longer answers in Jira)"
    assert "missing issues: report" in inputs["rules"]


# --- inputs of `plan EMPLOYEE_ID` ------------------------------------------------------------


def employee(**changes: Any) -> Employee:
    data: dict[str, Any] = {
        "id": 7,
        "status": "employed",
        "first_name": "Person",
        "last_name": "7",
        "email": "p7@example.com",
        "hired_on": "2020-02-03",
        "position": {"id": 1, "name": "Accountant"},
        "department": {"id": 2, "name": "Finance"},
        "location": {"id": 3, "name": "Kyiv"},
        "reporting_to": {"id": 9, "first_name": "Boss", "email": "boss@example.com"},
    }
    return Employee.model_validate(data | changes)


def mapped(**changes: Any) -> EmployeeLink:
    link = EmployeeLink(
        employee_id=7,
        email="p7@example.com",
        lifecycle=Lifecycle.offboarding,
        onboarding_issue_key="HR-7",
        offboarding_issue_key="HR-70",
        record_issue_key="HR-700",
        termination_on=date(2026, 12, 1),
    )
    link.set_synced({"position": "Accountant", "fields.github": "p7"})
    for name, value in changes.items():
        setattr(link, name, value)
    return link


TODAY_LINE = ("today", "2026-11-26 in Europe/Kyiv")
RULES_LINE = (
    "rules",
    "onboarding from 14 days before the hire date; none for people who started over 30 days "
    "ago or left over 30 days ago unknown to this service; missing issues: report",
)
PERSON_7 = [
    ("PeopleForce", "Person 7 <p7@example.com>"),
    ("status", "employed"),
    ("hired on", "2020-02-03"),
    ("last day", "(none)"),
    ("department / position", "Finance / Accountant"),
    ("location", "Kyiv"),
    ("manager", "boss@example.com"),
]
UNMAPPED = ("mapping", "none: this service has done nothing for them yet")
SYNCED = ("fields as last synced", "fields.github=p7, position=Accountant")


@pytest.mark.parametrize(
    ("facts", "lines"),
    [
        pytest.param(
            Facts(7, None),
            [("PeopleForce", "does not return this employee"), UNMAPPED],
            id="unknown and unmapped",
        ),
        pytest.param(
            Facts(
                7,
                employee(),
                mapped(),
                jira=IssueCheck(missing=frozenset({"HR-70"}), moved={"HR-700": "IT-700"}),
            ),
            [
                *PERSON_7,
                ("mapping", "lifecycle offboarding"),
                ("onboarding issue", "HR-7 (answers in Jira)"),
                ("offboarding issue", "HR-70, last day 2026-12-01 (no longer answers in Jira)"),
                ("record issue", "HR-700 (moved in Jira: now IT-700)"),
                SYNCED,
            ],
            id="mapped, Jira read",
        ),
        pytest.param(
            Facts(
                7, employee(reporting_to=None, email=None, status=None, department=None), mapped()
            ),
            [
                ("PeopleForce", "Person 7 <no email>"),
                ("status", "(not given)"),
                ("hired on", "2020-02-03"),
                ("last day", "(none)"),
                ("department / position", "(none) / Accountant"),
                ("location", "Kyiv"),
                ("manager", "(none)"),
                ("mapping", "lifecycle offboarding"),
                ("onboarding issue", "HR-7"),
                ("offboarding issue", "HR-70, last day 2026-12-01"),
                ("record issue", "HR-700"),
                SYNCED,
            ],
            id="mapped, Jira not read, little known",
        ),
        pytest.param(
            Facts(
                7,
                employee(termination_effective_on="2026-12-01"),
                None,
                previous=mapped(employee_id=3),
                assets=(Asset(id=1, name="Laptop"), Asset(id="a2")),
            ),
            [
                *PERSON_7[:3],
                ("last day", "2026-12-01"),
                *PERSON_7[4:],
                UNMAPPED,
                ("former record (rehire)", "3"),
                ("assets", "Laptop, a2"),
            ],
            id="rehire with assets",
        ),
    ],
)
def test_inputs_say_what_the_plan_read(facts: Facts, lines: list[tuple[str, str]]) -> None:
    assert render.describe_inputs(facts, RULES, TODAY) == [TODAY_LINE, *lines, RULES_LINE]


def test_inputs_name_the_first_day_and_the_lead_time_of_the_route() -> None:
    raw = RULES.model_dump()
    raw["routes"][0]["prehire_lead_days"] = 21  # "engineering"
    rules = Rules.model_validate(raw)
    engineer = employee(department={"id": 1, "name": "Engineering"})
    link = mapped(hired_on=date(2020, 2, 3))
    inputs = render.describe_inputs(Facts(7, engineer, link), rules, TODAY)
    assert ("onboarding issue", "HR-7, first day 2020-02-03") in inputs
    assert inputs[-1][1].startswith("onboarding from 21 days before the hire date;")
    # Someone the route does not take: the rules' own lead time.
    assert render.describe_inputs(Facts(7, employee(), link), rules, TODAY)[-1] == RULES_LINE


# --- the reconciliation: verdict, log, CLI, artifacts --------------------------------------


@pytest.mark.parametrize(
    ("verdict", "text"),
    [
        (WITHIN, "within the safeguard: touches 4 of 10 employees, creates 1 offboarding(s)"),
        (
            STOPPED,
            "stopped by the safeguard before applying anything: it would touch 4 of 10 "
            "employees (40%); it would offboard 1" + FORCE_HINT,
        ),
    ],
)
def test_explain_a_verdict(verdict: Verdict, text: str) -> None:
    assert render.explain(verdict) == text


def test_log_lines_of_a_reconciliation() -> None:
    assert render.plan_log_line(company()) == (
        "reconcile 2026-11-26: 10 employees from PeopleForce (12 requests, 3 full records), "
        f"2 Jira searches and 1 lookups; 4 need work: {COUNTS}"
    )
    assert render.report_lines(company()) == [
        "7: PeopleForce no longer returns this employee",
        "8 Dee\nNew: no | email\n here",
    ]
    assert render.report_lines(nothing()) == []


@pytest.mark.parametrize(
    ("plan", "line"),
    [
        (
            company(),
            f"2026-11-26: 4 of 10 employees need work ({COUNTS}). Read 12 PeopleForce requests "
            "(3 full records), 2 Jira searches and 1 lookups.",
        ),
        (
            nothing(),
            "2026-11-26: 0 of 1 employees need work (nothing). Read 0 PeopleForce requests "
            "(0 full records), 0 Jira searches and 0 lookups.",
        ),
    ],
)
def test_company_line_under_the_cli_table(plan: CompanyPlan, line: str) -> None:
    assert render.company_line(plan) == line


@pytest.mark.parametrize(
    ("plan", "verdict", "max_rows", "shown", "description"),
    [
        (
            company(),
            STOPPED,
            1000,
            8,
            f"Dry run 2026-11-26: 4 of 10 employees need work ({COUNTS}). "
            + render.explain(STOPPED),
        ),
        (
            company(),
            WITHIN,
            3,
            3,
            f"Dry run 2026-11-26: 4 of 10 employees need work ({COUNTS}) (first 3 of 8 rows). "
            + render.explain(WITHIN),
        ),
        (
            nothing(),
            WITHIN,
            1000,
            0,
            "Dry run 2026-11-26: 0 of 1 employees need work (nothing). " + render.explain(WITHIN),
        ),
    ],
)
def test_plan_table_artifact(
    plan: CompanyPlan, verdict: Verdict, max_rows: int, shown: int, description: str
) -> None:
    rows, text = render.plan_table(plan, verdict, "Dry run", max_rows)
    assert text == description
    if shown:
        assert rows == render.plan_rows(plan)[:shown]
    else:
        assert rows == [
            {"employee": "", "name": "", "action": "nothing to do", "what": "", "why": ""}
        ]
        assert tuple(rows[0]) == render.PLAN_COLUMNS


def test_reads_and_reports() -> None:
    assert render.reads_line(company()) == READS
    assert render.reports_markdown(company()) == REPORTED
    assert render.reports_markdown(nothing()) == []


APPLIED_HEAD = [
    "## Reconciliation 2026-11-26",
    "",
    READS,
    "",
    f"Applied to 2 of 10 employees: {COUNTS}.",
]
FAILED = [
    "",
    "### Failed (retry the run from the Prefect UI)",
    "",
    "- 5: ApiError: 502 \\| bad gateway",
]


@pytest.mark.parametrize(
    ("verdict", "site", "forced", "lines"),
    [
        pytest.param(
            WITHIN,
            SITE,
            False,
            [
                *APPLIED_HEAD,
                "",
                "| employee | done | Jira |",
                "|---|---|---|",
                "| 2 Bo \\| Pipe | update_fields HR-2; add_comment HR-3 | "
                f"[HR-2]({SITE}/browse/HR-2), [HR-3]({SITE}/browse/HR-3), "
                f"[HR-2]({SITE}/browse/HR-2) |",
                f"| 1 Ada Lovelace | create_issue HR-1 | [HR-1]({SITE}/browse/HR-1) |",
                *REPORTED,
                *FAILED,
            ],
            id="linked",
        ),
        pytest.param(
            STOPPED,
            None,
            True,
            [
                *APPLIED_HEAD,
                "",
                "**Forced past the safeguard**: it would touch 4 of 10 employees (40%); "
                "it would offboard 1.",
                "",
                "| employee | done | Jira |",
                "|---|---|---|",
                "| 2 Bo \\| Pipe | update_fields HR-2; add_comment HR-3 | HR-2, HR-3, HR-2 |",
                "| 1 Ada Lovelace | create_issue HR-1 | HR-1 |",
                *REPORTED,
                *FAILED,
            ],
            id="forced, no site",
        ),
    ],
)
def test_reconcile_summary_markdown(
    verdict: Verdict, site: str | None, forced: bool, lines: list[str]
) -> None:
    markdown = render.reconcile_summary_markdown(
        company(), verdict, outcomes(), site, forced=forced
    )
    assert markdown == "\n".join(lines)


def test_reconcile_summary_of_nothing() -> None:
    assert render.reconcile_summary_markdown(nothing(), WITHIN, [], None, forced=False) == (
        "## Reconciliation 2026-11-26\n\n"
        "Read 1 employees from PeopleForce (0 requests, 0 full records); 0 Jira searches, "
        "0 lookups.\n\nApplied to 0 of 1 employees: nothing."
    )


@pytest.mark.parametrize(
    ("plan", "planned", "reads", "reported"),
    [
        (company(), COUNTS, READS, REPORTED),
        (
            nothing(),
            "nothing",
            "Read 1 employees from PeopleForce (0 requests, 0 full records); 0 Jira searches, "
            "0 lookups.",
            [],
        ),
    ],
)
def test_stopped_markdown(plan: CompanyPlan, planned: str, reads: str, reported: list[str]) -> None:
    assert render.stopped_markdown(plan, STOPPED, "reconcile-plan") == "\n".join(
        [
            "## Reconciliation 2026-11-26: stopped by the safeguard",
            "",
            "Nothing was applied: it would touch 4 of 10 employees (40%); it would offboard 1.",
            "",
            f"Planned: {planned}. The whole plan is in the `reconcile-plan` table artifact.",
            "",
            "If the plan is right, run the `reconcile` deployment again with `force` set "
            "(Prefect UI: Run > Custom run), or `pf-jira-sync reconcile --force`.",
            "",
            reads,
            *reported,
        ]
    )


# --- runs of many employees ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cell"),
    [("", "-"), ("   ", "-"), ("a | b", "a \\| b"), (" x\n  y ", "x y"), ("plain", "plain")],
)
def test_markdown_cell(text: str, cell: str) -> None:
    assert render.markdown_cell(text) == cell


@pytest.mark.parametrize(("site", "link"), [(None, "HR-1"), (SITE, f"[HR-1]({SITE}/browse/HR-1)")])
def test_issue_link(site: str | None, link: str) -> None:
    assert render.issue_link(site, "HR-1") == link
    assert render.browse_url(SITE, "HR-1") == f"{SITE}/browse/HR-1"


@pytest.mark.parametrize(
    ("key", "description"),
    [
        ("HR-2", "field-sync · 2 Bo | Pipe: update_fields HR-2"),
        ("HR-3", "field-sync · 2 Bo | Pipe: add_comment HR-3"),
        ("HR-9", "field-sync · 2 Bo | Pipe: "),
    ],
)
def test_link_description(key: str, description: str) -> None:
    assert render.link_description("field-sync", outcomes()[0], key) == description


@pytest.mark.parametrize(
    ("process", "site", "title", "jira_1", "jira_2"),
    [
        (None, None, "## sync · 4 employees", "HR-1", "HR-2, HR-3"),
        (
            "field-sync",
            SITE,
            "## field-sync · 4 employees",
            f"[HR-1]({SITE}/browse/HR-1)",
            f"[HR-2]({SITE}/browse/HR-2), [HR-3]({SITE}/browse/HR-3)",
        ),
    ],
)
def test_summary_markdown_lists_failures_first(
    process: str | None, site: str | None, title: str, jira_1: str, jira_2: str
) -> None:
    assert render.summary_markdown(process, outcomes(), site) == "\n".join(
        [
            title,
            "",
            "2 changed in Jira, 1 unchanged, 1 failed.",
            "",
            "| employee | applied | Jira | notes | error |",
            "|---|---|---|---|---|",
            "| 5 | - | - | - | ApiError: 502 \\| bad gateway |",
            f"| 1 Ada Lovelace | create_issue HR-1 | {jira_1} | - | - |",
            f"| 2 Bo \\| Pipe | update_fields HR-2; add_comment HR-3 | {jira_2} | line one line two | - |",
            "| 9 In Step | - | - | offboarding: create_issue | - |",
        ]
    )


@pytest.mark.parametrize(
    ("routed", "employee_ids", "rows"),
    [
        (
            {"onboarding": [1, 2], "field-sync": [3], "offboarding": []},
            [1, 2, 3, 4, 5],
            ["| onboarding | 2: 1, 2 |", "| field-sync | 1: 3 |", "| nothing to do | 2: 4, 5 |"],
        ),
        ({"onboarding": [1, 2]}, [1, 2], ["| onboarding | 2: 1, 2 |", "| nothing to do | 0: - |"]),
    ],
)
def test_routing_markdown(
    routed: dict[str, list[int]], employee_ids: list[int], rows: list[str]
) -> None:
    head = [f"## sync · {len(employee_ids)} employees", "", "| process | employees |", "|---|---|"]
    assert render.routing_markdown(routed, employee_ids) == "\n".join(head + rows)


# --- What a run did, and what to do when it failed --------------------------------------------


@pytest.mark.parametrize(
    ("action", "key", "line"),
    [
        (create(), "HR-1", "created onboarding HR-1 (starts 2026-12-01)"),
        (
            create("offboarding", date(2026, 12, 31)),
            "HR-9",
            "created offboarding HR-9 (last day 2026-12-31)",
        ),
        (create("record", None), "HR-7", "created the employee record HR-7"),
        (UPDATE, "HR-2", "updated position, fields.github on HR-2"),
        (COMMENT, "HR-3", "commented on HR-3"),
        (MOVE, "HR-4", "moved the last day on HR-4 from none to 2026-12-09"),
        (FIRST_DAY, "HR-1", "moved the first day on HR-1 from 2026-12-01 to 2026-12-09"),
        (CANCEL, "HR-5", "cancelled offboarding HR-5 (termination reverted)"),
        (RELINK, "IT-6", "followed the onboarding issue HR-6 to its new key IT-6"),
    ],
)
def test_applied_lines_read_as_an_admin_says_them(action: Action, key: str, line: str) -> None:
    assert render.applied_line(action, key) == line


@pytest.mark.parametrize(
    ("outcome", "line"),
    [
        (EmployeeOutcome(1, "Ada Lovelace"), "1 Ada Lovelace: nothing to do in Jira"),
        (
            EmployeeOutcome(
                1,
                "Ada Lovelace",
                applied=["created onboarding HR-1 (starts 2026-12-01)"],
                left_for_others=[render.left_line(UPDATE, "field-sync")],
                notes=["no email in PeopleForce"],
            ),
            "1 Ada Lovelace: created onboarding HR-1 (starts 2026-12-01) | left: update fields "
            "(done by the field-sync run) | notes: no email in PeopleForce",
        ),
        (
            EmployeeOutcome(2, error="Jira rejected duedate"),
            "2: nothing to do in Jira | FAILED: Jira rejected duedate",
        ),
    ],
)
def test_outcome_lines(outcome: EmployeeOutcome, line: str) -> None:
    assert render.outcome_line(outcome) == line


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (
            ConfigurationError("check field_map.position in rules.toml"),
            "fix what it names, then Retry",
        ),
        (
            AuthenticationError("jira", "401"),
            "Jira refused the credentials: check them with `pf-jira-sync doctor`, then Retry",
        ),
        (
            ForbiddenError("peopleforce", "403"),
            "PeopleForce refused the service account a permission (for PeopleForce, also its IP allow-list): check with `pf-jira-sync doctor`, then Retry",
        ),
        (
            ServerError("jira", "503"),
            "Jira kept failing although each call was retried: wait until it answers again, then Retry (the nightly reconciliation also catches up)",
        ),
        (
            NotFoundError("jira", "404"),
            "Jira no longer has what this work needs (deleted or moved?): look at it there; the nightly reconciliation reports it too",
        ),
        (
            LeaseTimeout("held"),
            "another run was working on this person for too long: Retry in a few minutes",
        ),
        (
            LifecycleError("employee 1: onboarding -> pending"),
            "the store refused a move it does not know: report this (Retry will not help)",
        ),
        (
            KeyError("x"),
            "an unexpected error (the traceback is in this run's log): Retry, and report it if it fails again",
        ),
    ],
)
def test_what_to_do_about_each_kind_of_failure(error: Exception, advice: str) -> None:
    assert render.what_to_do(error) == advice


def test_a_failed_run_says_what_failed_for_whom_and_what_to_do() -> None:
    failed = EmployeeOutcome(
        1042,
        "Ada Lovelace",
        error="Jira rejected customfield_10050 (not on screen): check field_map.position in rules.toml",
        advice="fix what it names, then Retry",
    )
    where = "this run (r-1) has the Retry button in the Prefect UI"
    one = render.failure_message("onboarding", [failed], where)
    assert one == (
        "onboarding failed for 1042 Ada Lovelace. 1042 Ada Lovelace: Jira rejected "
        "customfield_10050 (not on screen): check field_map.position in rules.toml. What to do: "
        "fix what it names, then Retry. Retry: this run (r-1) has the Retry button in the "
        "Prefect UI."
    )
    fine = EmployeeOutcome(7, "Bo")
    many = render.failure_message("onboarding", [failed, fine], where)
    assert many.startswith("onboarding failed for 1 of 2 employee(s). 1042 Ada Lovelace: ")
    markdown = render.failure_markdown(one, [failed, fine], where)
    assert "| 1042 Ada Lovelace | Jira rejected customfield_10050" in markdown
    assert "| 7 Bo |" not in markdown


def test_an_event_outcome_names_the_jira_issues_first() -> None:
    run = "sync · Ada Lovelace (1041)"
    assert render.event_outcome(run, ["IT-1", "IT-2", "IT-1"]) == (
        f"Jira IT-1, IT-2; completed in flow run {run}"
    )
    assert render.event_outcome(run, [], state="Failed", message="Jira answered 400") == (
        f"no change in Jira; Failed in flow run {run}: Jira answered 400"
    )
    assert (
        render.event_outcome(run, ["IT-1"], state="Crashed")
        == f"Jira IT-1; Crashed in flow run {run}"
    )


# --- the circuit breaker ------------------------------------------------------------------


def _breaker(holds: int, counted: int) -> Any:
    from datetime import UTC, datetime

    from core.store import BreakerHold, BreakerState

    at = datetime(2026, 12, 8, 10, 0, 4, tzinfo=UTC)
    reason = "4 offboardings planned within 10 min on the webhook path, more than X (3)"
    return BreakerState(
        holds=[
            BreakerHold(
                employee_id=n,
                who=f"{n} Person",
                kinds=["offboarding"],
                reason=reason,
                tripped_at=at,
                since=at,
            )
            for n in range(holds)
        ],
        held_events={0: 2},
        counted={"offboarding": counted, "creation": 0},
        window_start=at,
    )


@pytest.mark.parametrize(
    ("holds", "limits", "headline"),
    [
        (
            0,
            (0, 0),
            "circuit breaker off (BREAKER_MAX_OFFBOARD and BREAKER_MAX_CREATE are 0)",
        ),
        (
            0,
            (3, 0),
            "circuit breaker closed, nothing held; applied within 10 min on the webhook path: "
            "1 offboarding and 0 onboardings or employee records (limits: "
            "BREAKER_MAX_OFFBOARD 3, BREAKER_MAX_CREATE off)",
        ),
        (
            2,
            (3, 5),
            "circuit breaker open since 2026-12-08 10:00:04 UTC: 4 offboardings planned within "
            "10 min on the webhook path, more than X (3). 2 employee(s) held (2 offboardings), "
            "2 webhook event(s) kept in the inbox, nothing sent to Jira for them; applied "
            "within 10 min on the webhook path: 3 offboardings and 0 onboardings or employee "
            "records",
        ),
    ],
)
def test_breaker_headline(holds: int, limits: tuple[int, int], headline: str) -> None:
    from datetime import timedelta

    from core.store import Limits

    window = Limits(max_offboard=limits[0], max_create=limits[1], window=timedelta(minutes=10))
    assert render.breaker_headline(_breaker(holds, 3 if holds else 1), window) == headline
