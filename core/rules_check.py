"""The rules held against a Jira site: what `doctor` says about each entry of the rules file.

A rules file can be valid and still name things Jira does not have: a project, an issue type,
a subtask type, a field (or one of another type), an account that cannot be assigned, a
workflow without the status a reverted termination moves to, or a create screen that requires
a field nobody sets. Each would fail only when a flow runs into it.

`reads(rules)` says what to ask Jira; the caller reads it into a `JiraSite` (the HTTP reads
are in `cli/doctor.py`); `check(rules, site)` returns one `Finding` per mistake, naming the
entry as the file writes it (routes by name, checklist items counted from 1) and what Jira has
instead. Pure: no I/O, so every mistake is table-tested.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from core.jira.meta import CreateField, FieldSchema, IssueTypeInfo, IssueTypeStatuses, JiraField
from core.jira.meta import Project as JiraProject
from core.rules import ChecklistItem, FieldType, IssueRules, Route, Rules

# The status a reverted termination moves the offboarding issue and its subtasks to.
CANCELLED = "Cancelled"

# Fields every create sets whatever the rules say, always on a create screen (or, for the
# reporter, filled in by Jira with the caller): never reported as required and unset.
ALWAYS_SET = frozenset({"project", "issuetype", "summary", "reporter"})
# Fields of rich text (Atlassian Document Format in API v3): a plain-text value is refused.
RICH_TEXT_SYSTEM_FIELDS = frozenset({"description", "environment"})

WANTED_TYPE = {
    FieldType.text: "a single-line text field",
    FieldType.date: "a date field",
    FieldType.user: "a user picker",
    FieldType.option: "a select list",
    FieldType.labels: "a labels field",
}
WANTED_TYPES = {
    FieldType.text: "single-line text fields",
    FieldType.date: "date fields",
    FieldType.user: "user pickers",
    FieldType.option: "select lists",
    FieldType.labels: "labels fields",
}
FIELD_NAMES = {"duedate": "Due date", "labels": "Labels", "assignee": "Assignee"}
CANDIDATES_SHOWN = 5

Kind = Literal["onboarding", "offboarding", "record"]


@dataclass(frozen=True)
class Finding:
    """One mistake: the rules entry to fix, its value in the file, what Jira has instead, and
    the projects where it is so (merged when the same mistake shows in several)."""

    entry: str
    value: str | None
    problem: str
    projects: tuple[str, ...] = ()

    def __str__(self) -> str:
        value = f' "{self.value}"' if self.value is not None else ""
        if not self.projects:
            where = ""
        elif len(self.projects) == 1:
            where = f" in project {self.projects[0]}"
        else:
            where = f" in projects {', '.join(self.projects)}"
        return f"{self.entry}{value}{where}: {self.problem}"


@dataclass
class JiraSite:
    """What Jira answered about everything the rules name (see `reads`).

    Keyed by the project keys as the rules write them. A project missing from `projects` or
    mapped to None does not exist for this account; a missing entry elsewhere means "not
    read", and the checks that need it are skipped rather than guessed.
    """

    projects: dict[str, JiraProject | None] = field(default_factory=dict)
    visible_projects: list[JiraProject] = field(default_factory=list)
    issue_types: dict[str, list[IssueTypeInfo]] = field(default_factory=dict)
    create_fields: dict[tuple[str, str], list[CreateField]] = field(default_factory=dict)
    fields: list[JiraField] = field(default_factory=list)
    statuses: dict[str, list[IssueTypeStatuses]] = field(default_factory=dict)
    assignable: dict[tuple[str, str], bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Reads:
    """What to ask Jira for the rules: each project, the issue types used in each (by name,
    casefolded) and the accounts to be assigned in each."""

    projects: tuple[str, ...]
    issue_types: dict[str, frozenset[str]]
    accounts: dict[str, frozenset[str]]


# --------------------------------------------------------------------------- what the rules create


@dataclass
class Create:
    """One kind of issue the rules create in one project: its issue type, the fields the
    service sets on it (field id -> the entry that makes it set), the fixed accounts it is
    assigned to, and the status it must be able to reach."""

    kind: Kind
    project: str
    issue_type: str
    type_entry: str
    subtask: bool
    fields: dict[str, str]
    assignees: dict[tuple[str, str], None]  # (entry, account id), ordered
    needs_status: str | None


def _project_entries(rules: Rules) -> Iterator[tuple[str, str]]:
    """(entry, project key) for every project the file names."""
    yield "default_project", rules.default_project
    for kind in ("onboarding", "offboarding", "record"):
        project = getattr(rules, kind).project
        if project:
            yield f"{kind}.project", project
    for route in rules.routes:
        if route.project:
            yield f"routes.{route.name}.project", route.project


def _account(spec: str) -> str | None:
    return spec.removeprefix("account:") if spec.startswith("account:") else None


def _issue_creates(
    rules: Rules, kind: Literal["onboarding", "offboarding"], route: Route | None
) -> Iterator[Create]:
    """The parent and the subtasks one kind of work creates for employees of `route`."""
    issue_rules: IssueRules = getattr(rules, kind)
    project = (route.project if route else None) or issue_rules.project or rules.default_project
    parent_fields = {
        "labels": f"{kind}.issue_type",
        "duedate": f"{kind}.issue_type",
    }
    if issue_rules.description:
        parent_fields["description"] = f"{kind}.description"
    if kind == "onboarding" and rules.record.issue == "onboarding":
        parent_fields |= _mapped_fields(rules)
    assignee_entry, assignee = f"{kind}.assignee", issue_rules.assignee
    routed = (
        (route.onboarding_assignee if kind == "onboarding" else route.offboarding_assignee)
        if route
        else None
    )
    if route and routed:
        assignee_entry, assignee = f"routes.{route.name}.{kind}_assignee", routed
    parent_assignees: dict[tuple[str, str], None] = {}
    if assignee != "unassigned":
        parent_fields["assignee"] = assignee_entry
    if account := _account(assignee):
        parent_assignees[(assignee_entry, account)] = None
    needs = CANCELLED if kind == "offboarding" else None
    yield Create(
        kind=kind,
        project=project,
        issue_type=issue_rules.issue_type,
        type_entry=f"{kind}.issue_type",
        subtask=False,
        fields=parent_fields,
        assignees=parent_assignees,
        needs_status=needs,
    )

    items: list[tuple[str, ChecklistItem]] = [
        (f"{kind}.checklist[{n}]", item) for n, item in enumerate(issue_rules.checklist, 1)
    ]
    if route:
        routed_items = (
            route.onboarding_checklist if kind == "onboarding" else route.offboarding_checklist
        )
        items += [
            (f"routes.{route.name}.{kind}_checklist[{n}]", item)
            for n, item in enumerate(routed_items, 1)
        ]
    has_asset_subtasks = kind == "offboarding" and bool(rules.offboarding.asset_subtask)
    if not items and not has_asset_subtasks:
        return
    subtask_fields = {"parent": f"{kind}.subtask_type", "labels": f"{kind}.subtask_type"}
    subtask_assignees: dict[tuple[str, str], None] = {}
    for entry, item in items:
        if item.assignee != "unassigned":
            subtask_fields.setdefault("assignee", f"{entry}.assignee")
        if account := _account(item.assignee):
            subtask_assignees[(f"{entry}.assignee", account)] = None
    yield Create(
        kind=kind,
        project=project,
        issue_type=issue_rules.subtask_type,
        type_entry=f"{kind}.subtask_type",
        subtask=True,
        fields=subtask_fields,
        assignees=subtask_assignees,
        needs_status=needs,
    )


def _mapped_fields(rules: Rules) -> dict[str, str]:
    """Field id -> entry of each mapped field set at create (labels go to the Labels field)."""
    return {
        mapping.jira_field: f"field_map.{source}.jira_field"
        for source, mapping in rules.field_map.items()
        if mapping.type != FieldType.labels
    }


def _sometimes_unset(rules: Rules) -> dict[str, tuple[str, str]]:
    """Field id -> (entry, when) of each mapped field that some people's creates leave unset:
    its `when` does not hold for them, or it is empty and the policy says "skip"."""
    unset: dict[str, tuple[str, str]] = {}
    for source, mapping in rules.field_map.items():
        if mapping.when:
            unset[mapping.jira_field] = (f"field_map.{source}.when", "when its `when` fails")
        elif mapping.when_empty == "skip":
            unset[mapping.jira_field] = (
                f"field_map.{source}.when_empty",
                f'when {source} is empty (when_empty = "skip")',
            )
    return unset


def creates(rules: Rules) -> list[Create]:
    """Every kind of issue the rules create, per project, merged over the routes."""
    found: dict[tuple[str, str, bool], Create] = {}
    contexts: list[Route | None] = [None, *rules.routes]
    made: list[Create] = []
    for route in contexts:
        for kind in ("onboarding", "offboarding"):
            made += _issue_creates(rules, kind, route)
        if rules.record.issue == "separate":
            project = (
                rules.record.project or (route.project if route else None) or rules.default_project
            )
            made.append(
                Create(
                    kind="record",
                    project=project,
                    issue_type=rules.record.issue_type,
                    type_entry="record.issue_type",
                    subtask=False,
                    fields={"labels": "record.issue_type", **_mapped_fields(rules)},
                    assignees={},
                    needs_status=None,
                )
            )
    for create in made:
        key = (create.project, create.type_entry, create.subtask)
        if key not in found:
            found[key] = create
            continue
        merged = found[key]
        for name, entry in create.fields.items():
            merged.fields.setdefault(name, entry)
        merged.assignees |= create.assignees
    return list(found.values())


def reads(rules: Rules) -> Reads:
    """What `check` needs Jira to answer for these rules."""
    projects = list(dict.fromkeys(project for _, project in _project_entries(rules)))
    issue_types: dict[str, set[str]] = {project: set() for project in projects}
    accounts: dict[str, set[str]] = {project: set() for project in projects}
    for create in creates(rules):
        issue_types[create.project].add(create.issue_type.casefold())
        accounts[create.project].update(account for _, account in create.assignees)
    return Reads(
        tuple(projects),
        {project: frozenset(names) for project, names in issue_types.items()},
        {project: frozenset(ids) for project, ids in accounts.items()},
    )


# --------------------------------------------------------------------------- the checks


def check(rules: Rules, site: JiraSite) -> list[Finding]:
    """Every mistake of the rules against the site, one finding per entry to fix (a mistake
    hides those that follow from it: no issue type is checked in a project that is missing)."""
    findings = list(_check_projects(rules, site))
    mapping_ok, mapping_findings = _check_field_map(rules, site)
    findings += mapping_findings
    for create in creates(rules):
        if site.projects.get(create.project) is None:
            continue
        issue_type = _check_issue_type(create, site, findings)
        if issue_type is None:
            continue
        screen = site.create_fields.get((create.project, issue_type.id))
        if screen is not None:
            findings += _check_screen(create, issue_type, screen, mapping_ok, rules)
        findings += _check_status(create, issue_type, site)
        findings += _check_assignees(create, site)
    return _merged(findings)


def _merged(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per entry, value and problem, with the projects where it shows together."""
    merged: dict[tuple[str, str | None, str], list[str]] = {}
    for finding in findings:
        projects = merged.setdefault((finding.entry, finding.value, finding.problem), [])
        projects += [p for p in finding.projects if p not in projects]
    return [
        Finding(entry, value, problem, tuple(projects))
        for (entry, value, problem), projects in merged.items()
    ]


def _check_projects(rules: Rules, site: JiraSite) -> Iterator[Finding]:
    for entry, project in _project_entries(rules):
        if site.projects.get(project) is None:
            visible = ", ".join(sorted(p.key for p in site.visible_projects)) or "none"
            yield Finding(
                entry,
                project,
                f"no such project, or this account cannot browse it (it can browse: {visible})",
            )


def _names(types: Iterable[IssueTypeInfo]) -> str:
    return ", ".join(t.name for t in types) or "none"


def _check_issue_type(
    create: Create, site: JiraSite, findings: list[Finding]
) -> IssueTypeInfo | None:
    """The issue type the create uses, or None after adding why it cannot be used."""
    offered = site.issue_types.get(create.project)
    if offered is None:
        return None
    parents = [t for t in offered if not t.subtask]
    subtasks = [t for t in offered if t.subtask]
    wanted = create.issue_type.casefold()
    found = next((t for t in offered if t.name.casefold() == wanted), None)
    problem: str | None = None
    if not offered:
        problem = "this account may create no issues there (it needs the Create issues permission)"
    elif found is None and create.subtask:
        problem = f"no such subtask type; subtask types there: {_names(subtasks)}"
    elif found is None:
        problem = f"no such issue type; issue types there: {_names(parents)}"
    elif create.subtask and not found.subtask:
        problem = f"not a subtask type; subtask types there: {_names(subtasks)}"
    elif not create.subtask and found.subtask:
        problem = f"a subtask type, which needs a parent; issue types there: {_names(parents)}"
    if problem is not None:
        findings.append(Finding(create.type_entry, create.issue_type, problem, (create.project,)))
        return None
    return found


def _check_screen(
    create: Create,
    issue_type: IssueTypeInfo,
    screen: Sequence[CreateField],
    mapping_ok: set[str],
    rules: Rules,
) -> Iterator[Finding]:
    """Every field the service sets is on the create screen; every required one is set."""
    on_screen = {f.field_id: f for f in screen}
    where = (create.project,)
    for field_id, entry in create.fields.items():
        if field_id in on_screen or field_id in ALWAYS_SET or field_id == "parent":
            continue
        if entry.startswith("field_map."):
            if field_id in mapping_ok:
                yield Finding(
                    entry,
                    field_id,
                    f"not on the create screen of {issue_type.name}, so Jira refuses the create",
                    where,
                )
            continue
        name = FIELD_NAMES.get(field_id, field_id)
        if field_id == "description":
            problem = f"the create screen of {issue_type.name} has no Description field"
            yield Finding(entry, None, problem, where)
        elif field_id == "assignee":
            problem = f"the create screen of {issue_type.name} has no Assignee field"
            yield Finding(entry, None, problem, where)
        else:
            problem = (
                f"its create screen has no {name} ({field_id}), which the service sets on "
                f"every {create.kind} {'subtask' if create.subtask else 'issue'}"
            )
            yield Finding(create.type_entry, create.issue_type, problem, where)
    mappable = not create.subtask and (
        create.kind == "record"
        or (create.kind == "onboarding" and rules.record.issue == "onboarding")
    )
    sometimes_unset = _sometimes_unset(rules) if mappable else {}
    for required in screen:
        if not required.required or required.has_default:
            continue
        if required.field_id in sometimes_unset and create.fields.get(
            required.field_id, ""
        ).startswith("field_map."):
            entry, why = sometimes_unset[required.field_id]
            yield Finding(
                entry,
                None,
                f"Jira requires {required.name} ({required.field_id}) to create "
                f"{create.issue_type}, and this mapping leaves it unset {why}: give it "
                'when_empty = "default" with a default (and no `when`), or make the field '
                "optional in Jira",
                where,
            )
            continue
        if (
            required.field_id in ALWAYS_SET
            or required.field_id in create.fields
            or (create.subtask and required.field_id == "parent")
        ):
            continue
        remedy = (
            "map it in [field_map], or give it a default in Jira"
            if mappable
            else "give it a default in Jira, or make it optional"
        )
        yield Finding(
            create.type_entry,
            create.issue_type,
            f"Jira requires {required.name} ({required.field_id}) to create one, and the rules "
            f"do not set it: {remedy}",
            where,
        )


def _check_status(create: Create, issue_type: IssueTypeInfo, site: JiraSite) -> Iterator[Finding]:
    if create.needs_status is None:
        return
    workflows = site.statuses.get(create.project)
    workflow = next(
        (w for w in workflows or [] if w.issue_type.casefold() == issue_type.name.casefold()),
        None,
    )
    if workflow is None:
        return
    if create.needs_status.casefold() in {status.casefold() for status in workflow.statuses}:
        return
    yield Finding(
        create.type_entry,
        create.issue_type,
        f"its workflow has no status {create.needs_status} (it has "
        f"{', '.join(workflow.statuses) or 'none'}): a reverted termination cannot cancel it",
        (create.project,),
    )


def _check_assignees(create: Create, site: JiraSite) -> Iterator[Finding]:
    for entry, account in create.assignees:
        if site.assignable.get((create.project, account)) is False:
            yield Finding(
                entry,
                f"account:{account}",
                "cannot be assigned issues there (no such active user, or not assignable in "
                "the project)",
                (create.project,),
            )


# --------------------------------------------------------------------------- the field map


def is_rich_text(schema: FieldSchema) -> bool:
    return (schema.custom or "").endswith(":textarea") or schema.system in RICH_TEXT_SYSTEM_FIELDS


def fits(kind: FieldType, schema: FieldSchema | None) -> bool:
    """Whether the service's value for a mapping of this type is what the field takes (a
    field without a schema cannot be told: it passes)."""
    if schema is None:
        return True
    match kind:
        case FieldType.text:
            return schema.type == "string" and not is_rich_text(schema)
        case FieldType.labels:
            return schema.type == "array" and schema.items == "string"
        case _:
            return schema.type == kind.value


def describe(schema: FieldSchema | None) -> str:
    """What kind of field this is, in the words of Jira's field types."""
    if schema is None:
        return "a field of unknown type"
    match schema.type, schema.items:
        case "string", _:
            return "a paragraph (rich text) field" if is_rich_text(schema) else "a text field"
        case "date", _:
            return "a date field"
        case "datetime", _:
            return "a date-time field"
        case "user", _:
            return "a user picker"
        case "option", _:
            return "a select list"
        case "option-with-child", _:
            return "a cascading select list"
        case "number", _:
            return "a number field"
        case "array", "user":
            return "a multi-user picker"
        case "array", "option":
            return "a multi-select list"
        case "array", "string":
            return "a labels field"
        case kind, None:
            return f"a field of type {kind}"
        case kind, items:
            return f"a field of type {kind} of {items}"


def _candidates(source: str, kind: FieldType, fields: Sequence[JiraField]) -> str:
    """The custom fields of the wanted type, those named like the PeopleForce field first."""
    word = source.rsplit(".", 1)[-1].split("_")[0].casefold()
    fitting = [f for f in fields if f.custom and f.schema is not None and fits(kind, f.schema)]
    fitting.sort(key=lambda f: (word not in f.name.casefold(), f.name.casefold()))
    shown = [f"{f.id} ({f.name})" for f in fitting[:CANDIDATES_SHOWN]]
    if len(fitting) > CANDIDATES_SHOWN:
        shown.append("...")
    return ", ".join(shown)


def _check_field_map(rules: Rules, site: JiraSite) -> tuple[set[str], list[Finding]]:
    """The mapped field ids that exist with the right type, and a finding for each other."""
    by_id = {f.id: f for f in site.fields}
    fine: set[str] = set()
    findings: list[Finding] = []
    for source, mapping in rules.field_map.items():
        entry = f"field_map.{source}"
        if mapping.type == FieldType.labels and mapping.jira_field != "labels":
            findings.append(
                Finding(
                    f"{entry}.jira_field",
                    mapping.jira_field,
                    'a mapping of type labels adds the value to the issue\'s Labels: set jira_field = "labels"',
                )
            )
            continue
        jira_field = by_id.get(mapping.jira_field)
        if jira_field is None:
            candidates = _candidates(source, mapping.type, site.fields)
            findings.append(
                Finding(
                    f"{entry}.jira_field",
                    mapping.jira_field,
                    f"no such field in Jira; {WANTED_TYPES[mapping.type]} there: {candidates}"
                    if candidates
                    else f"no such field in Jira, nor any {WANTED_TYPE[mapping.type]}",
                )
            )
        elif not fits(mapping.type, jira_field.schema):
            findings.append(
                Finding(
                    f"{entry}.type",
                    mapping.type.value,
                    f"{jira_field.id} ({jira_field.name}) is {describe(jira_field.schema)}, "
                    f"not {WANTED_TYPE[mapping.type]}",
                )
            )
        else:
            fine.add(mapping.jira_field)
    return fine, findings
