"""The plan: what Jira work one employee needs now. Pure: no I/O, no clock, no Prefect.

`plan(facts, rules, today)` compares the employee's current PeopleForce record with what this
service already did (the mapping link) and returns ordered actions. Every path (webhook,
reconciliation, a retry from the UI) runs the same plan, so they converge; rendering the plan
instead of applying it is the dry run.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import partial
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from core.errors import ApiError, ForbiddenError, NotFoundError, is_transient
from core.lifecycle import ISSUE_KINDS, IssueKind, Lifecycle, apply, issue_key, issue_relinked
from core.names import employee_label, work_label
from core.peopleforce.models import Asset, AssetsRead, Employee
from core.rules import ChecklistItem, FieldType, IssueRules, Route, Rules
from core.store.models import EmployeeLink


def today_in(zone: ZoneInfo, now: datetime) -> date:
    return now.astimezone(zone).date()


# --- What the plan reads ------------------------------------------------------------------


@dataclass(frozen=True)
class IssueCheck:
    """What a read of Jira found about the issues the link points at (reconciliation reads it;
    the webhook path does not, and trusts the link)."""

    missing: frozenset[str] = frozenset()  # no longer answer: deleted, or hidden from this account
    moved: Mapping[str, str] = field(default_factory=dict)  # old key -> the key it answers under


@dataclass(frozen=True)
class Facts:
    """Everything the plan needs about one employee, gathered by the caller beforehand."""

    employee_id: int
    employee: Employee | None  # None: PeopleForce does not return this id
    link: EmployeeLink | None = None
    previous: EmployeeLink | None = None  # an earlier record with the same email (rehire)
    assets: Sequence[Asset] = ()
    jira: IssueCheck | None = None  # None: Jira was not read, the link is taken as it is
    # Why the asset list could not be read (None: read, or not needed): the offboarding then
    # asks for a check by hand instead of failing.
    assets_unread: str | None = None
    asset_notes: tuple[str, ...] = ()  # assets of the list read only in part, or skipped


# --- What the plan says -------------------------------------------------------------------


class _Action(BaseModel):
    model_config = ConfigDict(frozen=True)
    why: str


class Assignee(BaseModel):
    """Who gets an issue. The plan names people by email; the apply step finds their accountId."""

    model_config = ConfigDict(frozen=True)
    account_id: str | None = None
    email: str | None = None

    @property
    def is_nobody(self) -> bool:
        return not (self.account_id or self.email)


class FieldValue(BaseModel):
    model_config = ConfigDict(frozen=True)
    source: str  # the PeopleForce field, e.g. "position" or "fields.github"
    jira_field: str
    type: FieldType
    value: str | None


class Subtask(BaseModel):
    model_config = ConfigDict(frozen=True)
    summary: str
    assignee: Assignee = Assignee()


class CreateIssue(_Action):
    """Create a parent issue with its subtasks (onboarding, offboarding or the record issue)."""

    kind: IssueKind
    action: Literal["create_issue"] = "create_issue"
    project: str
    issue_type: str
    subtask_type: str
    summary: str
    description: str | None
    assignee: Assignee
    due_date: date | None
    labels: tuple[str, ...]
    guard_label: str  # searched before creating when the link does not know the issue yet
    fields: tuple[FieldValue, ...] = ()
    subtasks: tuple[Subtask, ...] = ()
    related_issue_key: str | None = None  # rehire: the former record's issue
    snapshot: dict[str, str | None] = Field(default_factory=dict)  # mapped fields, as synced
    comments: tuple[str, ...] = ()  # posted on the new issue, each once (what to do by hand)


class UpdateFields(_Action):
    action: Literal["update_fields"] = "update_fields"
    issue_key: str
    fields: tuple[FieldValue, ...]
    changes: tuple[tuple[str, str | None, str | None], ...]  # (source, old, new)
    snapshot: dict[str, str | None]


class AddComment(_Action):
    action: Literal["add_comment"] = "add_comment"
    issue_key: str
    text: str


class MoveDueDate(_Action):
    """The day an issue is due on moved in PeopleForce, and the issue follows it: the
    offboarding issue the last day, the onboarding issue the first day (its summary too, when
    the summary names the day). The comment tells the people working the issue."""

    action: Literal["move_due_date"] = "move_due_date"
    kind: Literal["onboarding", "offboarding"]
    issue_key: str
    old: date | None
    new: date
    summary: str | None = None  # the issue's summary from now on; None: it stays as it is
    comment: str


class CancelOffboarding(_Action):
    """Termination reverted: move the offboarding issue to Cancelled and say why."""

    action: Literal["cancel_offboarding"] = "cancel_offboarding"
    issue_key: str
    comment: str


class CancelOnboarding(_Action):
    """The hire was withdrawn before day one: move the onboarding issue to Cancelled and say
    why (nobody starts, so nothing is offboarded)."""

    action: Literal["cancel_onboarding"] = "cancel_onboarding"
    issue_key: str
    comment: str


class Report(_Action):
    """Nothing to do in Jira, but an operator should know (unknown employee, missing data)."""

    action: Literal["report"] = "report"


def linked_issues(link: EmployeeLink) -> dict[IssueKind, str]:
    """The parent issues a link points at, by kind (subtasks follow their parent)."""
    return {kind: key for kind in ISSUE_KINDS if (key := issue_key(link, kind))}


class RelinkIssue(_Action):
    """An issue was moved in Jira (new key): the link follows it. Changes the store only."""

    action: Literal["relink_issue"] = "relink_issue"
    kind: IssueKind
    old_key: str
    new_key: str


Action = Annotated[
    CreateIssue
    | UpdateFields
    | AddComment
    | MoveDueDate
    | CancelOffboarding
    | CancelOnboarding
    | Report
    | RelinkIssue,
    Field(discriminator="action"),
]


class Plan(BaseModel):
    employee_id: int
    employee_name: str | None
    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()  # why nothing (more) is needed
    out_of_scope: str | None = None  # why the rules' scope leaves this person out
    withheld: bool = False  # out of scope, they would have work in it

    @property
    def is_empty(self) -> bool:
        return not any(not isinstance(action, Report) for action in self.actions)


# --- Reading an employee ------------------------------------------------------------------


def template_values(employee: Employee) -> dict[str, str]:
    """The values templates may use; a missing value reads as an empty string."""
    manager = employee.reporting_to
    values = {
        "id": str(employee.id),
        "full_name": employee.display_name,
        "first_name": employee.first_name or "",
        "last_name": employee.last_name or "",
        "email": employee.email or "",
        "employee_number": employee.employee_number or "",
        "position": _name(employee.position) or "",
        "department": _name(employee.department) or "",
        "division": _name(employee.division) or "",
        "location": _name(employee.location) or "",
        # "Manager: none", not "Manager:  <>." (empty brackets are dropped by `_render`).
        "manager_name": (manager.full_name if manager else None) or "none",
        "manager_email": (manager.email if manager else None) or "",
        "hired_on": employee.hired_on.isoformat() if employee.hired_on else "",
        "termination_effective_on": (
            employee.termination_effective_on.isoformat()
            if employee.termination_effective_on
            else ""
        ),
    }
    return values


def source_value(employee: Employee, source: str) -> str | None:
    """A mapped PeopleForce field as text (None when unset), compared across runs."""
    if source.startswith("fields."):
        value = employee.custom_field(source.removeprefix("fields."))
        return None if value in (None, "") else str(value)
    if source == "manager":
        return (employee.reporting_to.email or None) if employee.reporting_to else None
    if source == "full_name":
        return employee.display_name
    value = getattr(employee, source, None)
    if value is None:
        return None
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "name"):
        return value.name or None
    return str(value) or None


def written_fields(employee: Employee, rules: Rules) -> dict[str, str | None]:
    """The mapped fields as their policies write them, by source (None: written empty). A
    field left as it is in Jira (its `when` does not hold, or it is empty and the policy says
    "skip") is left out."""
    read = partial(source_value, employee)
    written: dict[str, str | None] = {}
    for source, mapping in sorted(rules.field_map.items()):
        if not mapping.applies(read):
            continue
        value = read(source)
        if value is None and mapping.when_empty == "skip":
            continue
        # Empty: "clear" writes it empty (its default is None), "default" writes the default.
        written[source] = mapping.default if value is None else value
    return written


def mapped_fields(
    employee: Employee, rules: Rules
) -> tuple[tuple[FieldValue, ...], dict[str, str | None]]:
    """The mapped fields to write (skipped ones left out), and the snapshot they make."""
    snapshot = written_fields(employee, rules)
    return field_values(snapshot, rules), snapshot


def field_values(written: Mapping[str, str | None], rules: Rules) -> tuple[FieldValue, ...]:
    """The fields to write to Jira for these written values (`written_fields`), by source."""
    return tuple(
        FieldValue(
            source=source,
            jira_field=rules.field_map[source].jira_field,
            type=rules.field_map[source].type,
            value=value,
        )
        for source, value in written.items()
    )


def _name(ref: object) -> str | None:
    return getattr(ref, "name", None) if ref is not None else None


# --- The plan -----------------------------------------------------------------------------


async def plan_with_assets(
    facts: Facts,
    rules: Rules,
    today: date,
    read_assets: Callable[[], Awaitable[Sequence[Asset] | AssetsRead]],
) -> tuple[Facts, Plan]:
    """The plan, and when it offboards the employee, the plan again with their assets.

    Assets (the equipment to return) only matter to offboarding: `read_assets` is called only
    then. Degrade, never drop: when the list cannot be read (`read_assets` raised an API error:
    a 404 from a tenant without the assets module, a refusal, or an outage its retries did not
    outlast), the offboarding is planned all the same, with a subtask to check the assets by
    hand and a note saying why. Returns the facts the plan was made from."""
    result = plan(facts, rules, today)
    if not any(isinstance(a, CreateIssue) and a.kind == "offboarding" for a in result.actions):
        return facts, result
    try:
        read = await read_assets()
    except ApiError as error:
        facts = replace(facts, assets=(), assets_unread=asset_list_unreadable(error))
    else:
        if isinstance(read, AssetsRead):
            facts = replace(facts, assets=read.assets, asset_notes=read.notes)
        else:
            facts = replace(facts, assets=tuple(read))
    return facts, plan(facts, rules, today)


def asset_list_unreadable(error: ApiError) -> str:
    """Why the asset list could not be read, in words an IT admin acts on."""
    if isinstance(error, NotFoundError):
        return (
            "PeopleForce answered 404 Not Found for this employee's assets (the assets module "
            "may not be enabled for the company)"
        )
    if isinstance(error, ForbiddenError):
        return "PeopleForce refused to show this employee's assets (the API key may lack access)"
    if is_transient(error):
        return f"PeopleForce did not answer for the asset list, tried again ({error.message})"
    status = f" {error.status}" if error.status is not None else ""
    return f"PeopleForce's answer{status} for the asset list could not be used ({error.message})"


def plan(facts: Facts, rules: Rules, today: date) -> Plan:
    """Ordered actions that bring Jira in step with this employee's current record."""
    facts, checked, gone = _follow_jira(facts, rules)
    result = _plan(facts, rules, today)
    if not checked:
        return result
    actions = [
        action
        for action in result.actions
        # The rules say report: a missing issue is not created again.
        if not (isinstance(action, CreateIssue) and action.kind in gone)
    ]
    return result.model_copy(update={"actions": (*checked, *actions)})


def _follow_jira(facts: Facts, rules: Rules) -> tuple[Facts, list, set[str]]:
    """The link as Jira has it now: moved issues followed, missing ones forgotten.

    Returns the facts to plan with, the actions that say so (relinks, reports), and the kinds
    of issue that must not be created again (missing, and the rules say report).
    """
    link, check = facts.link, facts.jira
    if link is None or check is None:
        return facts, [], set()
    followed = link
    actions: list = []
    gone: set[str] = set()
    for kind, key in linked_issues(link).items():
        if key in check.moved:
            new_key = check.moved[key]
            followed = apply(followed, issue_relinked(kind, new_key))
            actions.append(
                RelinkIssue(
                    why=f"the {kind} issue {key} was moved in Jira and is now {new_key}",
                    kind=kind,
                    old_key=key,
                    new_key=new_key,
                )
            )
        elif key in check.missing:
            followed = apply(followed, issue_relinked(kind, None))
            if rules.missing_issue == "report":
                gone.add(kind)
            then = "not created again" if kind in gone else "created again if still due"
            actions.append(
                Report(
                    why=f"the {kind} issue {key} no longer answers in Jira (deleted, or hidden "
                    f"from this account); the rules say {rules.missing_issue}: {then}"
                )
            )
    if followed is link:
        return facts, [], set()
    return replace(facts, link=followed, jira=None), actions, gone


def _plan(facts: Facts, rules: Rules, today: date) -> Plan:
    employee, link = facts.employee, facts.link
    if employee is None and (cancel := _deleted_before_day_one(link, today)):
        assert link is not None
        return Plan(
            employee_id=facts.employee_id, employee_name=link.display_name, actions=(cancel,)
        )
    if employee is None:
        reason = (
            "mapped, but PeopleForce no longer returns this employee; nothing changed in Jira"
            if link
            else "PeopleForce does not know this employee"
        )
        return Plan(
            employee_id=facts.employee_id,
            employee_name=link.display_name if link else None,
            actions=(Report(why=reason),),
        )
    name = employee.display_name
    leaving_on = employee.termination_effective_on
    if leaving_on is None and employee.status == "terminated":
        # Terminated without a date: treat today as the last day rather than miss the work.
        leaving_on = today

    if _withdrawn_before_day_one(facts, employee, leaving_on):
        assert leaving_on is not None
        actions, notes = _withdrawn(facts, employee, leaving_on)
    elif leaving_on is None:
        actions, notes = _staying(facts, employee, rules, today)
    else:
        actions, notes = [], []
        if leaving_on > today and not (link and link.onboarding_issue_key):
            # Leaving later but not onboarded yet (a fixed-term hire, or a termination entered
            # before the first day): the onboarding is still due.
            actions, notes = _onboarding(facts, employee, rules, today, rehired=False)
        elif link:  # onboarded, leaving later: a moved first day still moves the onboarding
            actions = _first_day_moved(link, employee, rules)
        leaving, leaving_notes = _leaving(facts, employee, rules, leaving_on, today)
        actions, notes = actions + leaving, notes + leaving_notes
    if (left_out := rules.scope.left_out_by(partial(source_value, employee))) is not None:
        return _out_of_scope(facts, employee, rules, today, left_out, leaving_on, actions, notes)
    return Plan(
        employee_id=employee.id, employee_name=name, actions=tuple(actions), notes=tuple(notes)
    )


def _out_of_scope(
    facts: Facts,
    employee: Employee,
    rules: Rules,
    today: date,
    left_out: str,
    leaving_on: date | None,
    in_scope: Sequence[Action],
    in_scope_notes: Sequence[str],
) -> Plan:
    """Someone the rules' scope leaves out, from the plan they would have in scope: nothing
    new is started for them (no onboarding, no record issue, no field sync), but what this
    service made is seen through. An existing offboarding follows its termination, a withdrawn
    hire's onboarding is cancelled, and someone onboarded here who leaves is offboarded: their
    access must be revoked. With `on_leaving_scope = "offboard"`, someone onboarded here is
    offboarded on leaving the scope, and that offboarding then stays as it is while they are
    out of scope."""
    link = facts.link
    onboarded_here = bool(
        link and (link.onboarding_issue_key or link.lifecycle == Lifecycle.onboarding)
    )
    offboarding_key = _offboarding_key(link)
    # In scope they would have work: a scope on custom fields (which a list item lacks) then
    # has the reconciliation read them in full before it trusts the verdict.
    withheld = any(not isinstance(action, Report) for action in in_scope)
    note = f"out of scope: {left_out}"

    def done(actions: Sequence[Action], *notes: str) -> Plan:
        return Plan(
            employee_id=employee.id,
            employee_name=employee.display_name,
            actions=tuple(actions),
            notes=(note + (f"; {notes[0]}" if notes else ""), *notes[1:]),
            out_of_scope=left_out,
            withheld=withheld,
        )

    if not onboarded_here and offboarding_key is None:
        return done([], "no onboarding, no offboarding")
    offboards = rules.scope.on_leaving_scope == "offboard" and onboarded_here
    actions: list[Action] = []
    for action in in_scope:
        match action:
            case CreateIssue(kind="offboarding") if onboarded_here:
                why = f"{action.why}; out of scope, but onboarded here: access must be revoked"
                actions.append(action.model_copy(update={"why": why}))
            case CreateIssue():
                pass  # nothing new: no onboarding, no record, no offboarding of a stranger
            case UpdateFields() | AddComment():
                pass  # field sync: fields are not synced while out of scope
            case MoveDueDate() | CancelOffboarding() if offboards:
                pass  # out of scope, they would be offboarded again: the offboarding stays
            case _:
                actions.append(action)
    later = in_scope_notes if leaving_on is not None else ()
    unsynced = "fields are not synced while out of scope"
    if offboarding_key and offboards:
        stays = f'offboarding {offboarding_key} stays as it is (on_leaving_scope = "offboard")'
        return done(actions, f"{stays}; {unsynced}", *later)
    if offboarding_key:
        seen = f"offboarding {offboarding_key} is seen through, nothing new is started"
        return done(actions, f"{seen}; {unsynced}", *later)
    if any(isinstance(a, CreateIssue) for a in actions):
        return done(actions, f"onboarded here, so their offboarding applies; {unsynced}", *later)
    if any(isinstance(a, CancelOnboarding) for a in actions):
        return done(actions, unsynced, *later)
    if offboards:
        offboarding = _scope_offboarding(facts, employee, rules, today, left_out)
        return done([*actions, offboarding], unsynced, *later)
    return done(
        actions,
        'onboarded here: the rules say on_leaving_scope = "nothing", so no offboarding until '
        f"they leave; {unsynced}",
        *later,
    )


def _offboarding_key(link: EmployeeLink | None) -> str | None:
    """The offboarding issue of a termination the link still holds open or done, if any."""
    if link and link.lifecycle in (Lifecycle.offboarding, Lifecycle.offboarded):
        return link.offboarding_issue_key
    return None


def _scope_offboarding(
    facts: Facts, employee: Employee, rules: Rules, today: date, left_out: str
) -> CreateIssue:
    """The offboarding of someone onboarded here who left the scope: as for a termination
    effective today (its templates read today as the last day)."""
    leaving = employee.model_copy(update={"termination_effective_on": today})
    why = (
        f'left the scope ({left_out}); the rules say on_leaving_scope = "offboard": '
        "offboarding as for a termination effective today"
    )
    related = facts.link.onboarding_issue_key if facts.link else None
    return _create(facts, leaving, rules, "offboarding", rules.offboarding, today, why, related)


def _withdrawn_before_day_one(facts: Facts, employee: Employee, leaving_on: date | None) -> bool:
    """The termination takes effect before the hire date: the person never starts. An
    offboarding made before this was known (or for an earlier stint) keeps its usual path."""
    link = facts.link
    return (
        leaving_on is not None
        and employee.hired_on is not None
        and leaving_on < employee.hired_on
        and not (link and link.offboarding_issue_key)
    )


def _deleted_before_day_one(link: EmployeeLink | None, today: date) -> CancelOnboarding | None:
    """A hire deleted from PeopleForce before their first day (PeopleForce no longer returns
    them) is withdrawn too: their onboarding is cancelled, nobody is offboarded. Deleted on or
    after the first day (or with no first day known), the person did start: nothing is
    cancelled on a guess, the run reports them."""
    if not (
        link
        and link.lifecycle == Lifecycle.onboarding
        and link.onboarding_issue_key
        and link.hired_on is not None
        and link.hired_on > today
    ):
        return None
    name = link.display_name or f"employee {link.employee_id}"
    return CancelOnboarding(
        why=f"the hire was deleted in PeopleForce before day one (first day {link.hired_on})",
        issue_key=link.onboarding_issue_key,
        comment=f"{name} was deleted in PeopleForce before day one (first day "
        f"{link.hired_on}): onboarding cancelled. Remove any account or access already prepared.",
    )


def _withdrawn(facts: Facts, employee: Employee, leaving_on: date) -> tuple[list, list[str]]:
    """A hire withdrawn before day one: the onboarding, if made, is cancelled; no offboarding
    (there is nobody to offboard: nothing was handed over, no day was worked)."""
    link, hired_on = facts.link, employee.hired_on
    withdrawn = f"termination effective {leaving_on}, before the first day {hired_on}"
    if link and link.onboarding_issue_key and link.lifecycle == Lifecycle.onboarding:
        return [
            CancelOnboarding(
                why=f"the hire was withdrawn before day one ({withdrawn})",
                issue_key=link.onboarding_issue_key,
                comment=f"The hire of {employee.display_name} was withdrawn in PeopleForce before "
                f"day one ({withdrawn}): onboarding cancelled. Remove any account or access "
                "already prepared.",
            )
        ], []
    return [], [f"hire withdrawn before day one ({withdrawn}): no onboarding, no offboarding"]


def _staying(facts: Facts, employee: Employee, rules: Rules, today: date) -> tuple[list, list[str]]:
    link = facts.link
    # The offboarding issue of a termination that PeopleForce no longer shows, if any.
    offboarding_key = _offboarding_key(link)
    rehired = bool(
        offboarding_key
        and link
        and employee.hired_on
        and link.termination_on is not None
        and employee.hired_on > link.termination_on
    )
    if offboarding_key and not rehired:
        return [
            CancelOffboarding(
                why="the termination was reverted in PeopleForce",
                issue_key=offboarding_key,
                comment=f"The termination of {employee.display_name} was reverted in PeopleForce: "
                "offboarding cancelled.",
            ),
            *_field_sync(facts, employee, rules),
        ], []
    if link and link.onboarding_issue_key and not rehired:
        return [*_first_day_moved(link, employee, rules), *_field_sync(facts, employee, rules)], []
    return _onboarding(facts, employee, rules, today, rehired=rehired)


def _first_day_moved(link: EmployeeLink, employee: Employee, rules: Rules) -> list:
    """The hire date moved after the onboarding was made: its issue follows the new first day,
    wherever it falls (later, earlier, beyond the lead time, or already past). A link made
    before this service kept the hire date (`hired_on` None) has nothing to compare with."""
    old, new = link.hired_on, employee.hired_on
    if (
        link.lifecycle != Lifecycle.onboarding
        or not link.onboarding_issue_key
        or old is None
        or new is None
        or old == new
    ):
        return []
    values = template_values(employee)
    summary = _render(rules.onboarding.summary, values)
    # The summary as it read with the old date: changed only when the template names the day.
    before = _render(rules.onboarding.summary, values | {"hired_on": old.isoformat()})
    return [
        MoveDueDate(
            why=f"the first day moved from {old} to {new}",
            kind="onboarding",
            issue_key=link.onboarding_issue_key,
            old=old,
            new=new,
            summary=summary if summary and summary != before else None,
            comment=f"The first day moved from {old} to {new}.",
        )
    ]


def _onboarding(
    facts: Facts, employee: Employee, rules: Rules, today: date, *, rehired: bool
) -> tuple[list, list[str]]:
    """The onboarding work, when the hire date is within the lead time (or has passed)."""
    link = facts.link
    hired_on = employee.hired_on
    if hired_on is None:
        return [], ["no hire date in PeopleForce: onboarding waits for one"]
    starts_in = (hired_on - today).days
    lead_days = prehire_lead_days(employee, rules)
    if starts_in > lead_days:
        due = hired_on - timedelta(days=lead_days)
        return [], [
            f"starts {hired_on}, beyond the {lead_days}-day lead time: onboarding from {due}"
        ]
    if -starts_in > rules.onboard_started_within_days and not rehired:
        return [], [
            f"started {hired_on}, more than {rules.onboard_started_within_days} days ago "
            "(before this service knew them): no onboarding created"
        ]
    previous = link if rehired else facts.previous
    related = (
        (previous.offboarding_issue_key or previous.onboarding_issue_key) if previous else None
    )
    why = (
        "within the pre-hire lead time"
        if starts_in >= 0
        else "has started and has no onboarding yet"
    )
    if previous is not None:
        why = f"rehire (former record {previous.employee_id}); {why}"
    actions: list = [
        _create(facts, employee, rules, "onboarding", rules.onboarding, hired_on, why, related)
    ]
    if rules.record.issue == "separate" and not (link and link.record_issue_key):
        actions.append(_create_record(employee, rules))
    return actions, []


def prehire_lead_days(employee: Employee, rules: Rules) -> int:
    """How many days before the hire date the onboarding is made: the employee's route's lead
    time, else the rules' own."""
    route = _route(employee, rules)
    if route is not None and route.prehire_lead_days is not None:
        return route.prehire_lead_days
    return rules.prehire_lead_days


def _route(employee: Employee, rules: Rules) -> Route | None:
    return rules.route_for(
        department=_name(employee.department),
        division=_name(employee.division),
        location=_name(employee.location),
    )


def _leaving(
    facts: Facts, employee: Employee, rules: Rules, leaving_on: date, today: date
) -> tuple[list, list[str]]:
    link = facts.link
    if (
        link
        and link.offboarding_issue_key
        and link.lifecycle in (Lifecycle.offboarding, Lifecycle.offboarded)
    ):
        if link.termination_on != leaving_on:
            return [
                MoveDueDate(
                    why=f"the last day moved from {link.termination_on} to {leaving_on}",
                    kind="offboarding",
                    issue_key=link.offboarding_issue_key,
                    old=link.termination_on,
                    new=leaving_on,
                    comment=f"The last day moved from {link.termination_on} to {leaving_on}.",
                )
            ], []
        return [], [
            f"offboarding {link.offboarding_issue_key} already covers the last day {leaving_on}"
        ]
    onboarded_here = bool(
        link and link.onboarding_issue_key and link.lifecycle == Lifecycle.onboarding
    )
    if not onboarded_here and (today - leaving_on).days > rules.offboard_left_within_days:
        # Long gone, and never onboarded by this service: offboarded before it existed.
        return [], [
            f"left on {leaving_on}, more than {rules.offboard_left_within_days} days ago "
            "(before this service knew them): no offboarding created"
        ]
    why = f"termination effective {leaving_on}"
    related = link.onboarding_issue_key if link else None
    notes = list(facts.asset_notes)
    if facts.assets_unread:
        notes.append(
            f"the asset list could not be read: {facts.assets_unread}; the offboarding asks "
            "for a check by hand"
        )
    return [
        _create(facts, employee, rules, "offboarding", rules.offboarding, leaving_on, why, related)
    ], notes


def _field_sync(facts: Facts, employee: Employee, rules: Rules) -> list:
    link = facts.link
    assert link is not None
    issue_key = (
        link.record_issue_key if rules.record.issue == "separate" else link.onboarding_issue_key
    )
    if not rules.field_map or not issue_key:
        return []
    # Compared as plain values: most employees changed nothing (reconciliation plans thousands).
    written = written_fields(employee, rules)
    before = link.synced_fields or {}
    changes = tuple(
        (source, before.get(source), new)
        for source, new in written.items()
        if before.get(source) != new
    )
    if not changes:
        return []
    # A skipped field keeps what was last written (Jira still has it), so that it neither
    # looks changed on every run nor hides a later change back to that value.
    snapshot = {
        source: written[source] if source in written else before[source]
        for source in sorted(rules.field_map)
        if source in written or source in before
    }
    changed = {source for source, _, _ in changes}
    lines = "\n".join(
        f"- {source}: {old or '(none)'} -> {new or '(none)'}" for source, old, new in changes
    )
    return [
        UpdateFields(
            why=f"changed in PeopleForce: {', '.join(sorted(changed))}",
            issue_key=issue_key,
            fields=field_values({s: v for s, v in written.items() if s in changed}, rules),
            changes=changes,
            snapshot=snapshot,
        ),
        AddComment(
            why="tell the people working the issue what changed",
            issue_key=issue_key,
            text=f"{employee.display_name} changed in PeopleForce:\n{lines}",
        ),
    ]


def _assignee(spec: str, employee: Employee) -> Assignee:
    if spec == "manager":
        email = employee.reporting_to.email if employee.reporting_to else None
        return Assignee(email=email or None)
    if spec.startswith("account:"):
        return Assignee(account_id=spec.removeprefix("account:"))
    return Assignee()


EMPTY_BRACKETS = re.compile(r"[ \t]*(?:<\s*>|\(\s*\))")


def _render(template: str | None, values: dict[str, str]) -> str | None:
    """The template filled in; brackets left empty by a missing value (`<>`, `()`) go."""
    if not template:
        return None
    text = EMPTY_BRACKETS.sub("", template.format_map(values))
    return re.sub(r"(?<=\S)[ \t]{2,}(?=\S)", " ", text).strip()


def _create(
    facts: Facts,
    employee: Employee,
    rules: Rules,
    kind: Literal["onboarding", "offboarding"],
    issue_rules: IssueRules,
    on: date,
    why: str,
    related: str | None,
) -> CreateIssue:
    route = _route(employee, rules)
    values = template_values(employee)
    checklist: tuple[ChecklistItem, ...] = issue_rules.checklist
    assignee_spec = issue_rules.assignee
    if route is not None:
        checklist += (
            route.onboarding_checklist if kind == "onboarding" else route.offboarding_checklist
        )
        routed = route.onboarding_assignee if kind == "onboarding" else route.offboarding_assignee
        assignee_spec = routed or assignee_spec
    subtasks = [
        Subtask(
            summary=_render(item.summary, values) or item.summary,
            assignee=_assignee(item.assignee, employee),
        )
        for item in checklist
    ]
    asset_template = getattr(issue_rules, "asset_subtask", None)
    if kind == "offboarding" and asset_template:
        for asset in facts.assets:
            asset_values = {
                **values,
                "asset_name": asset.name or f"asset {asset.id}",
                "asset_serial": asset.serial_number or asset.code or "no serial",
                "asset_category": str(asset.asset_category_id or ""),
            }
            subtasks.append(Subtask(summary=asset_template.format_map(asset_values).strip()))
    description = _render(issue_rules.description, values)
    if kind == "offboarding" and facts.assets_unread:
        # The equipment to collect is not known: someone must look it up, and knows why.
        subtasks.append(Subtask(summary=f"Check the asset list by hand: {facts.assets_unread}"))
        description = (
            f"{description}\n\n" if description else ""
        ) + f"The asset list could not be read: {facts.assets_unread}. Check it by hand."
    fields, snapshot = mapped_fields(employee, rules) if kind == "onboarding" else ((), {})
    if rules.record.issue == "separate":
        fields, snapshot = (), {}
    project = (route.project if route else None) or issue_rules.project or rules.default_project
    guard = work_label(kind, employee.id, on)
    return CreateIssue(
        why=why,
        kind=kind,
        project=project,
        issue_type=issue_rules.issue_type,
        subtask_type=issue_rules.subtask_type,
        summary=_render(issue_rules.summary, values) or issue_rules.summary,
        description=description,
        assignee=_assignee(assignee_spec, employee),
        due_date=on,
        labels=(employee_label(employee.id), f"pf-{kind}", guard),
        guard_label=guard,
        fields=fields,
        subtasks=tuple(subtasks),
        related_issue_key=related,
        snapshot=snapshot,
        comments=_asset_comments(facts) if kind == "offboarding" else (),
    )


def _asset_comments(facts: Facts) -> tuple[str, ...]:
    """What the people offboarding must look up by hand about the equipment, and why: the
    asset list could not be read, or some of its items could not."""
    if facts.assets_unread:
        return (
            f"The asset list must be checked by hand: {facts.assets_unread}. This issue lists "
            "no equipment to collect: look it up in PeopleForce before the last day.",
        )
    if facts.asset_notes:
        notes = "\n".join(f"- {note}" for note in facts.asset_notes)
        return (
            "The asset list was read only in part: check these assets by hand in PeopleForce.\n"
            + notes,
        )
    return ()


def _create_record(employee: Employee, rules: Rules) -> CreateIssue:
    values = template_values(employee)
    fields, snapshot = mapped_fields(employee, rules)
    route = _route(employee, rules)
    project = rules.record.project or (route.project if route else None) or rules.default_project
    guard = f"pf-record-{employee.id}"
    return CreateIssue(
        why="the rules keep a separate record issue per employee",
        kind="record",
        project=project,
        issue_type=rules.record.issue_type,
        subtask_type=rules.onboarding.subtask_type,
        summary=_render(rules.record.summary, values) or rules.record.summary,
        description=None,
        assignee=Assignee(),
        due_date=None,
        labels=(employee_label(employee.id), "pf-record", guard),
        guard_label=guard,
        fields=fields,
        snapshot=snapshot,
    )


# --- Which business process an action belongs to ------------------------------------------

# The three business processes, named as their flows, tags and deployments are (core.names).
Process = Literal["onboarding", "offboarding", "field-sync"]
ALL_PROCESSES: frozenset[Process] = frozenset({"onboarding", "offboarding", "field-sync"})


def process_of(action: Action) -> Process | None:
    """Which business process an action belongs to (None: a report, any process may give it)."""
    match action:
        case CreateIssue(kind="onboarding") | MoveDueDate(kind="onboarding") | CancelOnboarding():
            return "onboarding"
        case (
            CreateIssue(kind="offboarding") | MoveDueDate(kind="offboarding") | CancelOffboarding()
        ):
            return "offboarding"
        case CreateIssue(kind="record") | UpdateFields() | AddComment():
            return "field-sync"
        case RelinkIssue(kind="onboarding"):
            return "onboarding"
        case RelinkIssue(kind="offboarding"):
            return "offboarding"
        case RelinkIssue():
            return "field-sync"
    return None
