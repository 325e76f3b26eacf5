"""The rules held against what a Jira site answered: one finding per mistake, naming the entry
of the rules file to fix and what Jira has instead. Pure: no HTTP (the reads and doctor's lines
are tested against the simulator in tests/core/test_jira_meta.py and tests/cli/test_doctor.py)."""

from __future__ import annotations

import copy
import tomllib
from dataclasses import replace
from typing import Any

import pytest

from core.jira.meta import (
    CreateField,
    FieldSchema,
    IssueTypeInfo,
    IssueTypeStatuses,
    JiraField,
    Project,
)
from core.rules import FieldType, Rules
from core.rules_check import JiraSite, Reads, check, describe, fits, reads
from tests.paths import RULES_EXAMPLE

PLUGIN = "com.atlassian.jira.plugin.system.customfieldtypes"
EPIC, TASK, SUBTASK = (
    IssueTypeInfo("10000", "Epic", False),
    IssueTypeInfo("10001", "Task", False),
    IssueTypeInfo("10002", "Sub-task", True),
)
SYSTEM = {
    "summary": ("Summary", FieldSchema("string", system="summary")),
    "issuetype": ("Issue Type", FieldSchema("issuetype", system="issuetype")),
    "project": ("Project", FieldSchema("project", system="project")),
    "reporter": ("Reporter", FieldSchema("user", system="reporter")),
    "description": ("Description", FieldSchema("string", system="description")),
    "labels": ("Labels", FieldSchema("array", "string", system="labels")),
    "assignee": ("Assignee", FieldSchema("user", system="assignee")),
    "duedate": ("Due date", FieldSchema("date", system="duedate")),
}
CUSTOM = {
    "customfield_10050": ("Position", FieldSchema("string", custom=f"{PLUGIN}:textfield")),
    "customfield_10051": ("Department", FieldSchema("option", custom=f"{PLUGIN}:select")),
    "customfield_10052": ("Manager", FieldSchema("user", custom=f"{PLUGIN}:userpicker")),
    "customfield_10053": ("Location", FieldSchema("string", custom=f"{PLUGIN}:textfield")),
    "customfield_10054": ("Hire date", FieldSchema("date", custom=f"{PLUGIN}:datepicker")),
    "customfield_10055": ("Notes", FieldSchema("string", custom=f"{PLUGIN}:textarea")),
    "customfield_10057": ("Team", FieldSchema("option", custom=f"{PLUGIN}:select")),
    "customfield_10059": ("Skills", FieldSchema("array", "string", custom=f"{PLUGIN}:labels")),
}
STATUSES = ("To Do", "In Progress", "Done", "Cancelled")
ANA = "712020:ana"
NOBODY = "712020:nobody"


def screen(issue_type: IssueTypeInfo, **changes: CreateField | None) -> list[CreateField]:
    """The create screen of a type: every field, the fixed ones required; `changes` replace
    (or, given None, remove) fields by id."""
    fields = {
        field_id: CreateField(
            field_id,
            name,
            required=field_id in ("summary", "issuetype", "project", "reporter"),
            has_default=field_id == "reporter",
            schema=schema,
        )
        for field_id, (name, schema) in {**SYSTEM, **CUSTOM}.items()
    }
    if issue_type.subtask:
        fields["parent"] = CreateField("parent", "Parent", True, False, FieldSchema("issuelink"))
    for field_id, change in changes.items():
        if change is None:
            fields.pop(field_id, None)
        else:
            fields[field_id] = change
    return list(fields.values())


def good_site() -> JiraSite:
    """A site that has everything rules.example.toml names."""
    projects = {"HR": Project("10000", "HR", "Human Resources"), "IT": Project("10001", "IT", "IT")}
    return JiraSite(
        projects=dict(projects),
        visible_projects=list(projects.values()),
        issue_types={key: [EPIC, TASK, SUBTASK] for key in projects},
        create_fields={(key, t.id): screen(t) for key in projects for t in (EPIC, TASK, SUBTASK)},
        fields=[
            JiraField(field_id, name, field_id.startswith("customfield_"), schema)
            for field_id, (name, schema) in {**SYSTEM, **CUSTOM}.items()
        ],
        statuses={
            key: [IssueTypeStatuses(t.name, t.subtask, STATUSES) for t in (EPIC, TASK, SUBTASK)]
            for key in projects
        },
        assignable={(key, ANA): True for key in projects} | {(k, NOBODY): False for k in projects},
    )


def example() -> dict[str, Any]:
    return tomllib.loads(RULES_EXAMPLE.read_text())


def rules_with(*changes: tuple[str, Any]) -> Rules:
    """rules.example.toml with each (dotted path, value) set; a path into `routes` names the
    route by its name, a value of None removes the key."""
    raw = copy.deepcopy(example())
    for path, value in changes:
        *parents, last = path.split(".")
        node: Any = raw
        for part in parents:
            if isinstance(node, list):
                node = next(item for item in node if item.get("name") == part)
            else:
                node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return Rules.model_validate(raw)


def lines(rules: Rules, site: JiraSite) -> list[str]:
    return [str(finding) for finding in check(rules, site)]


def test_the_example_rules_pass_on_a_site_that_has_what_they_name() -> None:
    assert lines(rules_with(), good_site()) == []


RULES_MISTAKES = [
    pytest.param(
        [("default_project", "HRX")],
        ['default_project "HRX": no such project, or this account cannot browse it (it can browse: HR, IT)'],
        id="unknown default project",
    ),
    pytest.param(
        [("routes.engineering.project", "ITX")],
        ['routes.engineering.project "ITX": no such project, or this account cannot browse it (it can browse: HR, IT)'],
        id="unknown route project",
    ),
    pytest.param(
        [("onboarding.issue_type", "Tsk")],
        ['onboarding.issue_type "Tsk" in projects HR, IT: no such issue type; issue types there: Epic, Task'],
        id="unknown issue type",
    ),
    pytest.param(
        [("onboarding.subtask_type", "Subtask")],
        ['onboarding.subtask_type "Subtask" in projects HR, IT: no such subtask type; subtask types there: Sub-task'],
        id="unknown subtask type",
    ),
    pytest.param(
        [("offboarding.subtask_type", "Task")],
        ['offboarding.subtask_type "Task" in projects HR, IT: not a subtask type; subtask types there: Sub-task'],
        id="subtask type that is not one",
    ),
    pytest.param(
        [("offboarding.issue_type", "sub-task")],
        ['offboarding.issue_type "sub-task" in projects HR, IT: a subtask type, which needs a parent; issue types there: Epic, Task'],
        id="issue type that is a subtask type",
    ),
    pytest.param(
        [("record.issue", "separate"), ("record.issue_type", "Record")],
        ['record.issue_type "Record" in projects HR, IT: no such issue type; issue types there: Epic, Task'],
        id="unknown record issue type",
    ),
    pytest.param(
        [("field_map.position.jira_field", "customfield_99999")],
        ['field_map.position.jira_field "customfield_99999": no such field in Jira; single-line text fields there: customfield_10050 (Position), customfield_10053 (Location)'],
        id="unknown field",
    ),
    pytest.param(
        [("field_map.hired_on.jira_field", "customfield_99999")],
        ['field_map.hired_on.jira_field "customfield_99999": no such field in Jira; date fields there: customfield_10054 (Hire date)'],
        id="unknown field, the fitting ones named like the source first",
    ),
    pytest.param(
        [("field_map.manager.jira_field", "customfield_10053")],
        ['field_map.manager.type "user": customfield_10053 (Location) is a text field, not a user picker'],
        id="field of another type",
    ),
    pytest.param(
        [("field_map.position.jira_field", "customfield_10055")],
        ['field_map.position.type "text": customfield_10055 (Notes) is a paragraph (rich text) field, not a single-line text field'],
        id="text into a rich text field",
    ),
    pytest.param(
        [("field_map.department.type", "labels")],
        ['field_map.department.jira_field "customfield_10051": a mapping of type labels adds the value to the issue\'s Labels: set jira_field = "labels"'],
        id="labels into another field",
    ),
    pytest.param(
        [("offboarding.assignee", f"account:{NOBODY}")],
        [f'offboarding.assignee "account:{NOBODY}" in projects HR, IT: cannot be assigned issues there (no such active user, or not assignable in the project)'],
        id="unassignable assignee",
    ),
    pytest.param(
        [("routes.engineering.onboarding_assignee", f"account:{NOBODY}")],
        [f'routes.engineering.onboarding_assignee "account:{NOBODY}" in project IT: cannot be assigned issues there (no such active user, or not assignable in the project)'],
        id="unassignable route assignee",
    ),
    pytest.param(
        [("onboarding.checklist", [{"summary": "A", "assignee": f"account:{ANA}"}, {"summary": "B", "assignee": f"account:{NOBODY}"}])],
        [f'onboarding.checklist[2].assignee "account:{NOBODY}" in projects HR, IT: cannot be assigned issues there (no such active user, or not assignable in the project)'],
        id="unassignable checklist assignee",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "expected"), RULES_MISTAKES)
def test_each_rules_mistake_is_one_line_naming_the_entry(
    changes: list[tuple[str, Any]], expected: list[str]
) -> None:
    assert lines(rules_with(*changes), good_site()) == expected


def with_screen(site: JiraSite, issue_type: IssueTypeInfo, projects=("HR", "IT"), **changes):
    for project in projects:
        site.create_fields[(project, issue_type.id)] = screen(issue_type, **changes)
    return site


def required(field_id: str, *, default: bool = False) -> CreateField:
    name, schema = {**SYSTEM, **CUSTOM}[field_id]
    return CreateField(field_id, name, True, default, schema)


def test_a_required_field_nobody_sets_names_each_issue_type_that_needs_it() -> None:
    site = with_screen(good_site(), TASK, ("IT",), customfield_10057=required("customfield_10057"))
    assert lines(rules_with(), site) == [
        'onboarding.issue_type "Task" in project IT: Jira requires Team (customfield_10057) to '
        "create one, and the rules do not set it: map it in [field_map], or give it a default in Jira",
        'offboarding.issue_type "Task" in project IT: Jira requires Team (customfield_10057) to '
        "create one, and the rules do not set it: give it a default in Jira, or make it optional",
    ]


def test_a_required_field_the_rules_map_or_jira_defaults_passes() -> None:
    mapped = with_screen(
        good_site(), TASK, ("IT",), customfield_10050=required("customfield_10050")
    )
    assert lines(rules_with(("offboarding.issue_type", "Epic")), mapped) == []
    defaulted = with_screen(
        good_site(), TASK, customfield_10057=required("customfield_10057", default=True)
    )
    assert lines(rules_with(), defaulted) == []


@pytest.mark.parametrize(
    ("policy", "entry", "unset"),
    [
        (
            (("field_map.position.when_empty", "skip"),),
            "field_map.position.when_empty",
            'when position is empty (when_empty = "skip")',
        ),
        (
            (("field_map.position.when", {"department": "Engineering"}),),
            "field_map.position.when",
            "when its `when` fails",
        ),
    ],
    ids=["skipped when empty", "mapped only when its condition holds"],
)
def test_a_required_field_a_mapping_may_leave_unset_is_named(
    policy: tuple[tuple[str, Any], ...], entry: str, unset: str
) -> None:
    site = with_screen(good_site(), TASK, ("IT",), customfield_10050=required("customfield_10050"))
    rules = rules_with(("offboarding.issue_type", "Epic"), *policy)
    assert lines(rules, site) == [
        f"{entry} in project IT: Jira requires Position (customfield_10050) to create Task, "
        f'and this mapping leaves it unset {unset}: give it when_empty = "default" with a '
        "default (and no `when`), or make the field optional in Jira"
    ]
    defaulted = rules_with(
        ("offboarding.issue_type", "Epic"),
        ("field_map.position.when_empty", "default"),
        ("field_map.position.default", "Engineer"),
    )
    assert lines(defaulted, site) == []


def test_a_mapped_field_is_not_set_on_the_onboarding_issue_when_the_record_is_separate() -> None:
    site = with_screen(good_site(), TASK, ("HR",), customfield_10050=required("customfield_10050"))
    rules = rules_with(("record.issue", "separate"), ("record.issue_type", "Epic"))
    assert lines(rules, site) == [
        'onboarding.issue_type "Task" in project HR: Jira requires Position (customfield_10050) '
        "to create one, and the rules do not set it: give it a default in Jira, or make it optional",
        'offboarding.issue_type "Task" in project HR: Jira requires Position (customfield_10050) '
        "to create one, and the rules do not set it: give it a default in Jira, or make it optional",
    ]


def test_a_required_field_on_the_subtask_screen_names_the_subtask_type() -> None:
    site = with_screen(good_site(), SUBTASK, ("HR",), duedate=required("duedate"))
    assert lines(rules_with(), site) == [
        'onboarding.subtask_type "Sub-task" in project HR: Jira requires Due date (duedate) to '
        "create one, and the rules do not set it: give it a default in Jira, or make it optional",
        'offboarding.subtask_type "Sub-task" in project HR: Jira requires Due date (duedate) to '
        "create one, and the rules do not set it: give it a default in Jira, or make it optional",
    ]


def test_fields_the_service_sets_must_be_on_the_create_screen() -> None:
    site = with_screen(good_site(), TASK, duedate=None, customfield_10050=None, description=None)
    assert lines(rules_with(("offboarding.description", None)), site) == [
        'onboarding.issue_type "Task" in projects HR, IT: its create screen has no Due date '
        "(duedate), which the service sets on every onboarding issue",
        "onboarding.description in projects HR, IT: the create screen of Task has no "
        "Description field",
        'field_map.position.jira_field "customfield_10050" in projects HR, IT: not on the create '
        "screen of Task, so Jira refuses the create",
        'offboarding.issue_type "Task" in projects HR, IT: its create screen has no Due date '
        "(duedate), which the service sets on every offboarding issue",
    ]


def test_an_assignee_needs_the_assignee_field_on_the_screen() -> None:
    site = with_screen(good_site(), TASK, ("IT",), assignee=None)
    # rules.example.toml: routes to IT assign the onboarding to the manager.
    assert lines(rules_with(), site) == [
        "routes.engineering.onboarding_assignee in project IT: the create screen of Task has no "
        "Assignee field"
    ]


def test_a_workflow_without_cancelled_names_the_offboarding_types() -> None:
    site = good_site()
    for project in ("HR", "IT"):
        site.statuses[project] = [
            IssueTypeStatuses("Task", False, ("To Do", "In Progress", "Done")),
            IssueTypeStatuses("Sub-task", True, ("To Do", "Done")),
        ]
    assert lines(rules_with(), site) == [
        'offboarding.issue_type "Task" in projects HR, IT: its workflow has no status Cancelled '
        "(it has To Do, In Progress, Done): a reverted termination cannot cancel it",
        'offboarding.subtask_type "Sub-task" in projects HR, IT: its workflow has no status '
        "Cancelled (it has To Do, Done): a reverted termination cannot cancel it",
    ]


def test_a_project_where_the_account_may_create_nothing() -> None:
    site = good_site()
    site.issue_types["IT"] = []
    rules = rules_with()
    expected = "in project IT: this account may create no issues there (it needs the Create issues permission)"
    assert lines(rules, site) == [
        f'onboarding.issue_type "Task" {expected}',
        f'onboarding.subtask_type "Sub-task" {expected}',
        f'offboarding.issue_type "Task" {expected}',
        f'offboarding.subtask_type "Sub-task" {expected}',
    ]


def test_a_missing_project_hides_the_checks_inside_it() -> None:
    site = good_site()
    site.projects["IT"] = None
    site.visible_projects = [p for p in site.visible_projects if p.key != "IT"]
    assert lines(rules_with(), site) == [
        'routes.engineering.project "IT": no such project, or this account cannot browse it (it can browse: HR)',
        'routes.it-department.project "IT": no such project, or this account cannot browse it (it can browse: HR)',
    ]  # fmt: skip


def test_what_was_not_read_is_not_guessed() -> None:
    site = replace(good_site(), create_fields={}, statuses={}, assignable={})
    rules = rules_with(("offboarding.assignee", f"account:{NOBODY}"))
    assert lines(rules, site) == []


def test_reads_names_each_project_its_issue_types_and_accounts() -> None:
    rules = rules_with(
        ("onboarding.assignee", f"account:{ANA}"),
        ("routes.engineering.offboarding_assignee", f"account:{NOBODY}"),
    )
    assert reads(rules) == Reads(
        projects=("HR", "IT"),
        issue_types={"HR": frozenset({"task", "sub-task"}), "IT": frozenset({"task", "sub-task"})},
        accounts={"HR": frozenset({ANA}), "IT": frozenset({ANA, NOBODY})},
    )


@pytest.mark.parametrize(
    ("kind", "schema", "fit", "described"),
    [
        (FieldType.text, FieldSchema("string", custom=f"{PLUGIN}:textfield"), True, "a text field"),
        (FieldType.text, FieldSchema("string", system="environment"), False, "a paragraph (rich text) field"),
        (FieldType.date, FieldSchema("datetime"), False, "a date-time field"),
        (FieldType.date, FieldSchema("date"), True, "a date field"),
        (FieldType.user, FieldSchema("array", "user"), False, "a multi-user picker"),
        (FieldType.option, FieldSchema("array", "option"), False, "a multi-select list"),
        (FieldType.option, FieldSchema("option"), True, "a select list"),
        (FieldType.labels, FieldSchema("array", "string", system="labels"), True, "a labels field"),
        (FieldType.text, FieldSchema("number"), False, "a number field"),
        (FieldType.text, FieldSchema("sd-customerrequesttype"), False, "a field of type sd-customerrequesttype"),
        (FieldType.text, None, True, "a field of unknown type"),
    ],
)  # fmt: skip
def test_which_jira_fields_each_mapping_type_fits(
    kind: FieldType, schema: FieldSchema | None, fit: bool, described: str
) -> None:
    assert fits(kind, schema) is fit
    assert describe(schema) == described
