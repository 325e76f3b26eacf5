"""Renderings: plans, verdicts, outcomes and inputs as text, Markdown and table rows.

One place for what people read: the dry-run table (CLI and artifact share its rows), the
artifacts' Markdown, the log lines of a reconciliation, `plan EMPLOYEE_ID`'s inputs and the
webhook inbox (`events`, and the outcome the dispatcher records on each event). Pure:
text in, text out, no Prefect and no I/O; callers publish or print what it returns.

Outcomes belong to the flow layer, so they are read here through `Outcome`, the shape they
have (`flows.outcome.EmployeeOutcome` is one).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import Protocol

from core.company import Acknowledged, CompanyPlan, RulesPreview, Verdict
from core.errors import (
    ApiError,
    AuthenticationError,
    ConfigurationError,
    ForbiddenError,
    NotFoundError,
    is_transient,
)
from core.lifecycle import LifecycleError
from core.names import SERVICE, process_tag
from core.plan import (
    Action,
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
    linked_issues,
    prehire_lead_days,
    source_value,
)
from core.rules import Rules
from core.store import BreakerHold, BreakerState, EventStatus, JiraEffect, Limits, WebhookEvent
from core.store.breaker import COUNT_NAMES, Counted
from core.store.lease import LeaseTimeout
from core.text import NAME_LIMIT, printable

# The dry-run table's columns: `plan_rows` keys, the CLI's headers, the artifact's columns.
PLAN_COLUMNS = ("employee", "name", "action", "what", "why")


class Outcome(Protocol):
    """What one employee's work came to, as far as a rendering reads it."""

    @property
    def employee_id(self) -> int: ...

    @property
    def who(self) -> str: ...

    @property
    def applied(self) -> Sequence[str]: ...

    @property
    def left_for_others(self) -> Sequence[str]: ...

    @property
    def notes(self) -> Sequence[str]: ...

    @property
    def jira_keys(self) -> Sequence[str]: ...

    @property
    def error(self) -> str | None: ...

    @property
    def advice(self) -> str | None: ...

    @property
    def held(self) -> str | None: ...


# --- Actions and plans: the dry run, `plan EMPLOYEE_ID` -------------------------------------


def action_label(action: Action) -> str:
    return f"{action.action} ({action.kind})" if isinstance(action, CreateIssue) else action.action


def describe_action(action: Action) -> str:
    """What the action does, on one line."""
    match action:
        case CreateIssue():
            due = f", due {action.due_date}" if action.due_date else ""
            comments = f", {len(action.comments)} comment(s)" if action.comments else ""
            return (
                f"{action.project}: {action.summary!r}{due}, {len(action.subtasks)} subtask(s)"
                + comments
            )
        case UpdateFields():
            return f"{action.issue_key}: " + ", ".join(
                f"{source} {old or '(none)'} -> {new or '(none)'}"
                for source, old, new in action.changes
            )
        case AddComment():
            return f"{action.issue_key}: comment"
        case MoveDueDate():
            day = "first" if action.kind == "onboarding" else "last"
            summary = f", summary {action.summary!r}" if action.summary else ""
            return f"{action.issue_key}: due {action.old} -> {action.new} (the {day} day){summary}"
        case CancelOffboarding():
            return f"{action.issue_key}: to Cancelled, with a comment"
        case CancelOnboarding():
            return f"{action.issue_key}: to Cancelled, with a comment"
        case RelinkIssue():
            return f"{action.kind} issue {action.old_key} -> {action.new_key} (store only)"
        case Report():
            return "nothing changes"
    return ""


def plan_rows(company: CompanyPlan) -> list[dict[str, str]]:
    """One row per action (reports included), keyed by `PLAN_COLUMNS`: the dry-run table and
    its artifact."""
    return [
        {
            "employee": str(employee_id),
            "name": p.employee_name or "",
            "action": action_label(action),
            "what": describe_action(action),
            "why": action.why,
        }
        for employee_id, p in company.plans.items()
        for action in p.actions
    ]


def action_counts(company: CompanyPlan) -> Counter[str]:
    return Counter(action_label(action) for p in company.plans.values() for action in p.actions)


def counts_line(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{label} {count}" for label, count in sorted(counts.items())) or "nothing"


def describe_inputs(facts: Facts, rules: Rules, today: date) -> list[tuple[str, str]]:
    """The inputs the plan read, as (what, value) lines: why it says what it says."""
    lines = [("today", f"{today} in {rules.timezone}")]
    employee, link = facts.employee, facts.link
    if employee is None:
        lines.append(("PeopleForce", "does not return this employee"))
    else:
        manager = employee.reporting_to
        lines += [
            ("PeopleForce", f"{employee.display_name} <{employee.email or 'no email'}>"),
            ("status", employee.status or "(not given)"),
            ("hired on", str(employee.hired_on or "(none)")),
            ("last day", str(employee.termination_effective_on or "(none)")),
            (
                "department / position",
                f"{_name(employee.department)} / {_name(employee.position)}",
            ),
            ("location", _name(employee.location)),
            ("manager", (manager.email or manager.full_name or "?") if manager else "(none)"),
        ]
        if rules.scope.include or rules.scope.exclude:
            left_out = rules.scope.left_out_by(partial(source_value, employee))
            lines.append(("scope", f"out of scope: {left_out}" if left_out else "in scope"))
    if link is None:
        lines.append(("mapping", "none: this service has done nothing for them yet"))
    else:
        lines.append(("mapping", f"lifecycle {link.lifecycle.value}"))
        for kind, key in linked_issues(link).items():
            extra = {
                "offboarding": f", last day {link.termination_on}",
                "onboarding": f", first day {link.hired_on}" if link.hired_on else "",
            }.get(kind, "")
            lines.append((f"{kind} issue", f"{key}{extra}{_jira_state(facts.jira, key)}"))
        if link.synced_fields:
            synced = ", ".join(f"{k}={v}" for k, v in sorted(link.synced_fields.items()))
            lines.append(("fields as last synced", synced))
    if facts.previous is not None:
        lines.append(("former record (rehire)", str(facts.previous.employee_id)))
    if facts.assets:
        lines.append(("assets", ", ".join(asset.name or str(asset.id) for asset in facts.assets)))
    lead_days = prehire_lead_days(employee, rules) if employee else rules.prehire_lead_days
    lines.append(
        (
            "rules",
            f"onboarding from {lead_days} days before the hire date; none for "
            f"people who started over {rules.onboard_started_within_days} days ago or left "
            f"over {rules.offboard_left_within_days} days ago unknown to this service; "
            f"missing issues: {rules.missing_issue}",
        )
    )
    return lines


def _jira_state(check: IssueCheck | None, key: str) -> str:
    if check is None:
        return ""
    if key in check.missing:
        return " (no longer answers in Jira)"
    if key in check.moved:
        return f" (moved in Jira: now {check.moved[key]})"
    return " (answers in Jira)"


def _name(ref: object) -> str:
    return getattr(ref, "name", None) or "(none)"


# --- The reconciliation: safeguard, log lines, CLI, artifacts -------------------------------


def explain(verdict: Verdict) -> str:
    """The safeguard's verdict, and what to do when it stopped the run."""
    if not verdict.stop:
        return (
            f"within the safeguard: touches {verdict.touched} of {verdict.employees} employees, "
            f"creates {verdict.offboardings} offboarding(s)"
        )
    return (
        "stopped by the safeguard before applying anything: "
        + "; ".join(verdict.reasons)
        + ". Look at the dry run (`pf-jira-sync reconcile --dry-run`); if the plan is "
        "right, run it with force (`pf-jira-sync reconcile --force`, or force=true in the "
        "Prefect UI)."
    )


def plan_log_line(company: CompanyPlan) -> str:
    """The reconciliation's log line: what was read, and what needs work."""
    reads = company.reads
    return (
        f"reconcile {company.today}: {company.returned} employees from PeopleForce "
        f"({reads.peopleforce_requests} requests, {reads.full_records} full records), "
        f"{reads.jira_searches} Jira searches and {reads.jira_lookups} lookups; "
        f"{len(company.needs_work)} need work: {counts_line(action_counts(company))}"
    )


def report_lines(company: CompanyPlan) -> list[str]:
    """One line per report (what changes nothing but an operator should know)."""
    lines = []
    for employee_id, report in company.reports:
        name = company.plans[employee_id].employee_name
        lines.append(f"{employee_id}{f' {name}' if name else ''}: {report.why}")
    return lines


def company_line(company: CompanyPlan) -> str:
    """Under the dry-run table of the CLI: who needs work, and what was read."""
    reads = company.reads
    return (
        f"{company.today}: {len(company.needs_work)} of {company.returned} employees need work "
        f"({counts_line(action_counts(company))}). Read {reads.peopleforce_requests} "
        f"PeopleForce requests ({reads.full_records} full records), {reads.jira_searches} Jira "
        f"searches and {reads.jira_lookups} lookups."
    )


def plan_table(
    company: CompanyPlan, verdict: Verdict, title: str, max_rows: int
) -> tuple[list[dict[str, str]], str]:
    """The plan's table artifact: its rows (the first `max_rows`; one row saying so when there
    is nothing to do) and its description."""
    rows = plan_rows(company)
    shown = rows[:max_rows]
    cut = f" (first {max_rows} of {len(rows)} rows)" if len(rows) > len(shown) else ""
    description = (
        f"{title} {company.today}: {len(company.needs_work)} of {company.returned} employees "
        f"need work ({counts_line(action_counts(company))}){cut}. {explain(verdict)}"
    )
    nothing = dict.fromkeys(PLAN_COLUMNS, "") | {"action": "nothing to do"}
    return shown or [nothing], description


def reads_line(company: CompanyPlan) -> str:
    reads = company.reads
    return (
        f"Read {company.returned} employees from PeopleForce ({reads.peopleforce_requests} "
        f"requests, {reads.full_records} full records); {reads.jira_searches} Jira searches, "
        f"{reads.jira_lookups} lookups."
    )


def reports_markdown(company: CompanyPlan) -> list[str]:
    if not company.reports:
        return []
    lines = ["", "### Reported (nothing changed in Jira)", ""]
    for employee_id, report in company.reports:
        name = company.plans[employee_id].employee_name or ""
        lines.append(f"- {employee_id} {markdown_cell(name)}: {markdown_cell(report.why)}")
    return lines


def reconcile_summary_markdown(
    company: CompanyPlan,
    verdict: Verdict,
    outcomes: Sequence[Outcome],
    site: str | None,
    *,
    forced: bool,
) -> str:
    """The summary of a reconciliation that applied its plan."""
    applied = [outcome for outcome in outcomes if outcome.applied]
    lines = [
        f"## Reconciliation {company.today}",
        "",
        reads_line(company),
        "",
        f"Applied to {len(applied)} of {company.returned} employees: "
        f"{counts_line(action_counts(company))}.",
    ]
    if forced:
        lines += ["", f"**Forced past the safeguard**: {'; '.join(verdict.reasons)}."]
    if applied:
        lines += ["", "| employee | done | Jira |", "|---|---|---|"]
        lines += [
            f"| {markdown_cell(outcome.who)} | {markdown_cell('; '.join(outcome.applied))} | "
            + ", ".join(issue_link(site, key) for key in outcome.jira_keys)
            + " |"
            for outcome in applied
        ]
    lines += reports_markdown(company)
    failed = [outcome for outcome in outcomes if outcome.error]
    if failed:
        lines += ["", "### Failed (retry the run from the Prefect UI)", ""]
        lines += [
            f"- {markdown_cell(outcome.who)}: {markdown_cell(outcome.error or '')}"
            for outcome in failed
        ]
    return "\n".join(lines)


def stopped_markdown(company: CompanyPlan, verdict: Verdict, plan_artifact: str) -> str:
    """The summary of a reconciliation the safeguard stopped; the plan is `plan_artifact`."""
    lines = [
        f"## Reconciliation {company.today}: stopped by the safeguard",
        "",
        "Nothing was applied: " + "; ".join(verdict.reasons) + ".",
        "",
        f"Planned: {counts_line(action_counts(company))}. The whole plan is in the "
        f"`{plan_artifact}` table artifact.",
        "",
        "If the plan is right, run the `reconcile` deployment again with `force` set "
        "(Prefect UI: Run > Custom run), or `pf-jira-sync reconcile --force`.",
        "",
        reads_line(company),
    ]
    return "\n".join(lines + reports_markdown(company))


# --- Runs of many employees: Markdown cells, Jira links, summaries --------------------------


def markdown_cell(text: str) -> str:
    """Text that stays in its Markdown table cell: pipes escaped, on one line."""
    return " ".join(text.replace("|", "\\|").split()) or "-"


def browse_url(site: str, issue_key: str) -> str:
    return f"{site}/browse/{issue_key}"


def issue_link(site: str | None, key: str) -> str:
    """A Jira key as a Markdown link, or the bare key when there is no site to link to."""
    return f"[{key}]({browse_url(site, key)})" if site else key


def link_description(process: str | None, outcome: Outcome, issue_key: str) -> str:
    """The description of an issue's link artifact: the process, who, what was done to it."""
    mentions = re.compile(rf"(?<![\w-]){re.escape(issue_key)}(?![\w-])")
    applied = "; ".join(done for done in outcome.applied if mentions.search(done))
    return f"{process_tag(process)} · {outcome.who}: {applied}"


def summary_markdown(process: str | None, outcomes: Sequence[Outcome], site: str | None) -> str:
    """A table: each employee, what was applied, the Jira issues (linked), notes and errors."""
    failed = sum(1 for outcome in outcomes if outcome.error)
    changed = sum(1 for outcome in outcomes if outcome.applied)
    held = sum(1 for outcome in outcomes if outcome.held)
    lines = [
        f"## {process_tag(process)} · {len(outcomes)} employees",
        "",
        f"{changed} changed in Jira, {len(outcomes) - changed - failed - held} unchanged, "
        f"{failed} failed" + (f", {held} held by the circuit breaker." if held else "."),
        "",
        "| employee | applied | Jira | notes | error |",
        "|---|---|---|---|---|",
    ]
    lines += [
        "| "
        + " | ".join(
            [
                markdown_cell(outcome.who),
                markdown_cell("; ".join(outcome.applied)),
                ", ".join(issue_link(site, key) for key in dict.fromkeys(outcome.jira_keys)) or "-",
                markdown_cell(
                    "; ".join(
                        [
                            *([f"held: {outcome.held}"] if outcome.held else []),
                            *outcome.notes,
                            *outcome.left_for_others,
                        ]
                    )
                ),
                markdown_cell(outcome.error or ""),
            ]
        )
        + " |"
        for outcome in sorted(outcomes, key=lambda o: (o.error is None, o.employee_id))
    ]
    return "\n".join(lines)


def routing_markdown(routed: Mapping[str, Sequence[int]], employee_ids: Sequence[int]) -> str:
    """The summary of a sync run: which process flow each employee went to (`employee_ids`
    each once, in order)."""
    went = {employee for ids in routed.values() for employee in ids}
    lines = [f"## sync · {len(employee_ids)} employees", "", "| process | employees |", "|---|---|"]
    lines += [
        f"| {process_tag(process)} | {len(ids)}: {', '.join(map(str, ids))} |"
        for process, ids in routed.items()
        if ids
    ]
    idle = [employee for employee in employee_ids if employee not in went]
    lines.append(f"| nothing to do | {len(idle)}: {', '.join(map(str, idle)) or '-'} |")
    return "\n".join(lines)


# --- What a run did, and what to do when it failed: for the IT admin ---------------------------

SERVICE_NAMES = {"jira": "Jira", "peopleforce": "PeopleForce"}


def applied_line(action: Action, key: str) -> str:
    """One applied action, as an admin says it: `created onboarding IT-1 (starts 2026-12-16)`."""
    match action:
        case CreateIssue(kind="onboarding"):
            return f"created onboarding {key}" + (
                f" (starts {action.due_date})" if action.due_date else ""
            )
        case CreateIssue(kind="offboarding"):
            return f"created offboarding {key}" + (
                f" (last day {action.due_date})" if action.due_date else ""
            )
        case CreateIssue():
            return f"created the employee record {key}"
        case UpdateFields():
            changed = ", ".join(dict.fromkeys(source for source, _old, _new in action.changes))
            return f"updated {changed or 'fields'} on {key}"
        case AddComment():
            return f"commented on {key}"
        case MoveDueDate():
            day = "first" if action.kind == "onboarding" else "last"
            return f"moved the {day} day on {key} from {action.old or 'none'} to {action.new}"
        case CancelOffboarding():
            return f"cancelled offboarding {key} (termination reverted)"
        case CancelOnboarding():
            return f"cancelled onboarding {key} (hire withdrawn before day one)"
        case RelinkIssue():
            return f"followed the {action.kind} issue {action.old_key} to its new key {key}"
    return f"{action.action} {key}"


def left_line(action: Action, process: str) -> str:
    """An action this run leaves to the run of another process."""
    what = f"{action.kind} issue" if isinstance(action, CreateIssue) else action.action
    return f"{what.replace('_', ' ')} (done by the {process} run)"


def outcome_line(outcome: Outcome) -> str:
    """The line a run logs for each employee at its end."""
    parts = ["; ".join(outcome.applied) if outcome.applied else "nothing to do in Jira"]
    if outcome.held:
        parts = [f"HELD by the circuit breaker, nothing sent to Jira: {outcome.held}"]
    if outcome.left_for_others:
        parts.append("left: " + "; ".join(outcome.left_for_others))
    if outcome.notes:
        parts.append("notes: " + "; ".join(outcome.notes))
    if outcome.error:
        parts.append(f"FAILED: {outcome.error}")
    return f"{outcome.who}: " + " | ".join(parts)


def what_to_do(error: BaseException) -> str:
    """What an IT admin does about a failure, in their words."""
    service = SERVICE_NAMES.get(getattr(error, "service", ""), "the API")
    match error:
        case ConfigurationError():
            return "fix what it names, then Retry"
        case AuthenticationError():
            return (
                f"{service} refused the credentials: check them with `pf-jira-sync doctor`, "
                "then Retry"
            )
        case ForbiddenError():
            return (
                f"{service} refused the service account a permission (for PeopleForce, also its "
                "IP allow-list): check with `pf-jira-sync doctor`, then Retry"
            )
        case ApiError() if is_transient(error):
            return (
                f"{service} kept failing although each call was retried: wait until it answers "
                "again, then Retry (the nightly reconciliation also catches up)"
            )
        case NotFoundError():
            return (
                f"{service} no longer has what this work needs (deleted or moved?): look at it "
                "there; the nightly reconciliation reports it too"
            )
        case LeaseTimeout():
            return "another run was working on this person for too long: Retry in a few minutes"
        case LifecycleError():
            return "the store refused a move it does not know: report this (Retry will not help)"
    return "an unexpected error (the traceback is in this run's log): Retry, and report it if it fails again"


def failure_message(process: str, outcomes: Sequence[Outcome], retry_from: str) -> str:
    """A failed run's last word: what failed, for whom, why, and what to do (log and artifact).

    `retry_from` says where the Retry button is: on this run, or on the run that started it."""
    failed = [outcome for outcome in outcomes if outcome.error]
    head = (
        f"{process} failed for {failed[0].who}"
        if len(failed) == 1 and len(outcomes) == 1
        else f"{process} failed for {len(failed)} of {len(outcomes)} employee(s)"
    )
    reasons = [
        f"{outcome.who}: {outcome.error}. What to do: {outcome.advice or 'Retry'}."
        for outcome in failed[:5]
    ]
    more = f" (and {len(failed) - 5} more: see the run's summary)" if len(failed) > 5 else ""
    return f"{head}{more}. " + " ".join(reasons) + f" Retry: {retry_from}."


def failure_markdown(message: str, outcomes: Sequence[Outcome], retry_from: str) -> str:
    rows = [
        f"| {markdown_cell(outcome.who)} | {markdown_cell(outcome.error or '')} | "
        f"{markdown_cell(outcome.advice or 'Retry')} |"
        for outcome in outcomes
        if outcome.error
    ]
    return "\n".join(
        [
            "# What failed, and what to do",
            "",
            markdown_cell(message),
            "",
            "| employee | what failed | what to do |",
            "|---|---|---|",
            *rows,
            "",
            f"Retry: {retry_from}. Nothing is done twice: the run starts over for each person "
            "and skips what is already in Jira.",
        ]
    )


# --- The webhook inbox: `events`, and the outcome the dispatcher records ---------------------

# `events`' columns: `event_row` keys and the CLI's headers. The outcome is the one column that
# wraps; the others stay narrow, so that a row fits 80 columns and reads well at 100.
EVENT_COLUMNS = ("ref", "received", "employee", "event", "status", "outcome")
# An outcome may hold a whole error message: enough of it to act on, not a screenful.
EVENT_OUTCOME_MAX = 240


def _one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines too) one space: a table cell's line."""
    return " ".join(text.split())


def _local_time(at: datetime) -> str:
    """An instant in this host's zone, as the `events` and `why` tables show it."""
    return at.astimezone().strftime("%m-%d %H:%M:%S")


def event_outcome(
    run_name: str, jira_keys: Sequence[str], *, state: str = "Completed", message: str = ""
) -> str:
    """What an employee's webhook events came to once their flow run ended: the Jira issues it
    changed first (what an admin looks for), then how the run ended.

    `Jira IT-1; completed in flow run sync · Ada Lovelace (1041)`,
    `no change in Jira; Failed in flow run sync · 3 employees: 1 of 3 employee(s) failed: ...`.
    """
    jira = f"Jira {', '.join(dict.fromkeys(jira_keys))}" if jira_keys else "no change in Jira"
    if state == "Completed":
        return f"{jira}; completed in flow run {run_name}"
    return f"{jira}; {state} in flow run {run_name}: {message}".strip().removesuffix(":")


def work_failure(who: str, error: str, advice: str | None) -> str:
    """What failed in one employee's work, as the flow records it on their webhook events
    (`1042 Ada Lovelace: Jira 400 ...: customfield_10050. What to do: fix what it names`)."""
    text = f"{who}: {error}. What to do: {advice or 'Retry'}"
    return printable(_one_line(text), EVENT_OUTCOME_MAX)


def event_retry_outcome(
    run_name: str, state: str, why: str, attempt: int, attempts: int, again_at: datetime
) -> str:
    """An event of a run that crashed or failed for a passing cause, back to work: `Crashed in
    flow run sync · 3 employees (attempt 1 of 5): <why>; worked again from 10:42:13 UTC`."""
    reason = f": {_one_line(why)}" if why.strip() else ""
    text = (
        f"{state} in flow run {run_name} (attempt {attempt} of {attempts}){reason}; "
        f"worked again from {again_at:%H:%M:%S} UTC"
    )
    return printable(text, EVENT_OUTCOME_MAX)


def event_failed_outcome(
    run_name: str, state: str, why: str, *, attempts: int | None = None
) -> str:
    """An event that ends failed: for good (`failed for good in flow run ...: <why>`) or
    after its last attempt (`gave up after 5 attempts, the last Crashed in flow run ...`)."""
    reason = f": {_one_line(why)}" if why.strip() else ""
    if attempts is None:
        text = f"failed for good ({state} in flow run {run_name}){reason}"
    else:
        text = f"gave up after {attempts} attempts, the last {state} in flow run {run_name}{reason}"
    return printable(text, EVENT_OUTCOME_MAX)


def event_row(event: WebhookEvent) -> dict[str, str]:
    """One `events` row, keyed by `EVENT_COLUMNS`, each cell on one line."""
    status = EventStatus(event.status).value
    if event.outcome:
        outcome = _one_line(event.outcome)
    elif event.flow_run_id:
        outcome = f"in flow run {event.flow_run_id}"
    elif status == "pending":
        outcome = "waiting to be dispatched"
    elif status == "dispatching":
        outcome = "being handed to Prefect"
    elif status == "ignored":
        outcome = "not acted on"
    else:
        outcome = ""
    outcome = printable(outcome, EVENT_OUTCOME_MAX)
    return {
        "ref": event.ref,
        "received": _local_time(event.received_at),
        "employee": str(event.employee_id) if event.employee_id is not None else "-",
        # The employee column says whom: `update`, `terminate` (other topics keep their name).
        "event": printable(event.action.removeprefix("employee_") or event.action, NAME_LIMIT),
        "status": status,
        "outcome": outcome,
    }


def prune_markdown(
    retention_days: int,
    older_than: datetime,
    removed: Mapping[str, int],
    kept: Mapping[str, int],
) -> str:
    """The summary of an inbox retention run: what it removed and what the inbox still holds."""
    lines = [
        "## Inbox retention",
        "",
        f"Removed **{sum(removed.values())}** events done or ignored whose last change was before "
        f"{older_than:%Y-%m-%d %H:%M} UTC (older than {retention_days} days).",
        "",
        "| status | removed | kept |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {status} | {removed.get(status, 0)} | {kept.get(status, 0)} |"
        for status in sorted({*removed, *kept})
    ]
    lines += ["", "Pending, dispatched and failed events are never removed."]
    return "\n".join(lines)


# --- The circuit breaker on the webhook path: `held`, its artifact and its alert -------------

# `held`'s columns, and the artifact's: `hold_row` keys.
HOLD_COLUMNS = ("employee", "held", "since", "events", "why")
HELD_KINDS = {"offboarding": "offboarding", "onboarding": "onboarding", "record": "employee record"}


def _utc(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S} UTC"


def hold_row(hold: BreakerHold, events: int) -> dict[str, str]:
    """One held employee, keyed by `HOLD_COLUMNS`: who, the issues held, since when, how many
    webhook events wait with it, and why the breaker is open."""
    return {
        "employee": printable(hold.who, NAME_LIMIT),
        "held": ", ".join(HELD_KINDS.get(kind, kind) for kind in hold.kinds),
        "since": _utc(hold.since),
        "events": str(events),
        "why": _one_line(hold.reason),
    }


def breaker_advice(*, listing: bool = True) -> str:
    """What an operator does about what the breaker holds (`listing`: and where to see it)."""
    decide = (
        f"`{SERVICE} release --all` (or `--employee ID`) sends it to Jira, "
        f"`{SERVICE} drop --all --yes` (or `--employee ID`) drops it"
    )
    return f"`{SERVICE} held` lists what is held; {decide}" if listing else decide


# What `COUNT_NAMES` calls each count, for one.
_ONE = {"offboarding": "offboarding", "creation": "onboarding or employee record"}


def _counts(counts: Mapping[Counted, int], *, all_of_them: bool = True) -> str:
    """`3 offboardings and 1 onboarding or employee record`; without `all_of_them`, the
    counts that are not 0 only."""
    return " and ".join(
        f"{n} {_ONE[counted] if n == 1 else what}"
        for counted, (what, _) in COUNT_NAMES.items()
        if (n := counts.get(counted, 0)) or all_of_them
    )


def breaker_headline(state: BreakerState, limits: Limits) -> str:
    """The breaker in one sentence: open (since when, why, what it holds) or closed (what its
    window has counted, against which limits), or off."""
    if not state.open and limits.off:
        return "circuit breaker off (BREAKER_MAX_OFFBOARD and BREAKER_MAX_CREATE are 0)"
    admitted = f"applied within {limits.window_text} on the webhook path: {_counts(state.counted)}"
    if not state.open:
        bounds = ", ".join(
            f"{setting} {limits.of(counted) or 'off'}"
            for counted, (_, setting) in COUNT_NAMES.items()
        )
        return f"circuit breaker closed, nothing held; {admitted} (limits: {bounds})"
    first = state.holds[0]
    events = sum(state.held_events.get(hold.employee_id, 0) for hold in state.holds)
    return (
        f"circuit breaker open since {_utc(first.tripped_at)}: {first.reason}. "
        f"{len(state.holds)} employee(s) held "
        f"({_counts(state.held_by_count, all_of_them=False)}), "
        f"{events} webhook event(s) kept in the inbox, nothing sent to Jira for them; "
        f"{admitted}"
    )


def breaker_alert(state: BreakerState, limits: Limits, held_here: int) -> str:
    """The ERROR line of a run that held work: the breaker, this run's part, what to do."""
    return f"{breaker_headline(state, limits)}. This run held {held_here}. {breaker_advice()}."


def held_markdown(state: BreakerState, limits: Limits, max_rows: int = 500) -> str:
    """The artifact of a run that held work: every employee held now, what, since, why."""
    lines = [
        f"## Circuit breaker: {len(state.holds)} employee(s) held",
        "",
        markdown_cell(breaker_headline(state, limits) + "."),
        "",
        "| " + " | ".join(HOLD_COLUMNS) + " |",
        "|" + "---|" * len(HOLD_COLUMNS),
    ]
    for hold in state.holds[:max_rows]:
        row = hold_row(hold, state.held_events.get(hold.employee_id, 0))
        lines.append("| " + " | ".join(markdown_cell(row[c]) for c in HOLD_COLUMNS) + " |")
    if len(state.holds) > max_rows:
        lines += ["", f"... and {len(state.holds) - max_rows} more: `{SERVICE} held` lists all."]
    lines += ["", breaker_advice() + "."]
    return "\n".join(lines)


# --- The reconciliation and the inbox's backlog ---------------------------------------------


def repaired_outcome(run: str, jira_keys: Sequence[str]) -> str:
    """What an acknowledged event came to when the reconciliation did its work (the event's
    own run failed or never came), `run` naming the reconciliation's flow run:
    `Jira IT-1; repaired by the reconciliation, flow run reconcile (<id>)`, or, for someone
    found in step, `no change in Jira; in step at the reconciliation, flow run ...`."""
    if jira_keys:
        jira = ", ".join(dict.fromkeys(jira_keys))
        return f"Jira {jira}; repaired by the reconciliation, flow run {run}"
    return f"no change in Jira; in step at the reconciliation, flow run {run}"


def backlog_advice(acknowledged: Mapping[int, Acknowledged]) -> str | None:
    """What to do about the failed webhook events a stopped reconciliation leaves (None: none)."""
    failed = sum(held.failed for held in acknowledged.values())
    if not failed:
        return None
    employees = sum(1 for held in acknowledged.values() if held.failed)
    return (
        f"{failed} failed webhook event(s) of {employees} employee(s) were not repaired by this "
        "run: re-drive them with `pf-jira-sync replay --status failed` "
        "(`pf-jira-sync events --status failed` lists them)."
    )


def backlog_line(verdict: Verdict, acknowledged: Mapping[int, Acknowledged], closed: int) -> str:
    """The reconciliation's word on the inbox: the work it owed webhooks, the events it closed."""
    events = sum(len(held.events) for held in acknowledged.values())
    return (
        f"inbox: {events} acknowledged event(s) of {len(acknowledged)} employee(s) not worked "
        f"yet; {verdict.owed} employee(s) of the plan owed to them (not counted by the "
        f"safeguard); {closed} event(s) closed as done by this run"
    )


# --- The rules preview (`pf-jira-sync preview-rules NEW.toml`) ------------------------------


def preview_lines(action: Action) -> list[str]:
    """An action as the preview compares it: one line for the action, and for a creation one
    line per subtask, so that a checklist item added or dropped shows as that one line."""
    if isinstance(action, Report):
        return [f"report: {action.why}"]
    if not isinstance(action, CreateIssue):
        return [f"{action_label(action)}: {describe_action(action)}"]
    due = f", due {action.due_date}" if action.due_date else ""
    head = f"{action_label(action)}: {action.project}: {action.summary!r}{due}"
    lines = [head + _assigned(action.assignee)]
    lines += [
        f"subtask of {action.kind}: {subtask.summary!r}" + _assigned(subtask.assignee)
        for subtask in action.subtasks
    ]
    return lines


def _assigned(assignee: object) -> str:
    who = getattr(assignee, "email", None) or getattr(assignee, "account_id", None)
    return f", assigned to {who}" if who else ""


def preview_differences(preview: RulesPreview) -> list[tuple[int, str, list[str], list[str]]]:
    """(employee, name, lines that disappear, lines that appear) for each employee whose plan
    differs between the current and the proposed rules, by employee id."""
    differences = []
    for employee_id in sorted(set(preview.current) | set(preview.proposed)):
        before = Counter(
            line for a in _actions(preview.current, employee_id) for line in preview_lines(a)
        )
        after = Counter(
            line for a in _actions(preview.proposed, employee_id) for line in preview_lines(a)
        )
        gone, new = sorted((before - after).elements()), sorted((after - before).elements())
        if gone or new:
            differences.append((employee_id, preview.names.get(employee_id, ""), gone, new))
    return differences


def _actions(plans: Mapping, employee_id: int) -> Sequence[Action]:
    found = plans.get(employee_id)
    return found.actions if found is not None else ()


def preview_summary(
    differences: Sequence[tuple[int, str, list[str], list[str]]], employees: int
) -> str:
    """The preview's last line: how many employees and actions the new rules change."""
    if not differences:
        return (
            f"no difference: the proposed rules plan the same actions as the current ones "
            f"for all {employees} employees"
        )
    gone = sum(len(lines) for _, _, lines, _ in differences)
    new = sum(len(lines) for _, _, _, lines in differences)
    return (
        f"{len(differences)} of {employees} employees would change: {new} line(s) appear (+), "
        f"{gone} disappear (-)"
    )


# --- `why` and `stuck`: one employee's story, and the work that is not moving ---------------

# `why`'s columns: `timeline_rows` keys and the CLI's headers.
TIMELINE_COLUMNS = ("time", "source", "text")
# Within one instant: what came first in the story (the webhook, its run, the plan, the effect).
_TIMELINE_ORDER = {"webhook": 0, "run": 1, "plan": 2, "jira": 3}


@dataclass(frozen=True)
class FlowRunFacts:
    """What Prefect says of one flow run (read by the CLI; no Prefect import here)."""

    id: str
    name: str
    state: str
    start: datetime | None


def prefect_ui_url(api_url: str) -> str:
    """The Prefect UI beside an API URL (`http://host:4200/api` -> `http://host:4200`)."""
    return api_url.rstrip("/").removesuffix("/api")


def flow_run_url(ui_url: str, flow_run_id: str) -> str:
    """The flow run's page in the Prefect UI."""
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


def effect_text(action: str, detail: Mapping[str, object]) -> str:
    """One Jira effect as a line: what was done, from the detail the flow recorded."""
    parts: list[str] = [action]
    if summary := detail.get("summary"):
        parts.append(f"{summary!s}")
    changes = detail.get("changes")
    if isinstance(changes, list) and changes:
        parts.append(
            "; ".join(
                f"{change[0]}: {change[1] or '(none)'} -> {change[2] or '(none)'}"
                for change in changes
                if isinstance(change, list) and len(change) == 3
            )
        )
    duedate = detail.get("duedate")
    if isinstance(duedate, list) and len(duedate) == 2:
        parts.append(f"due {duedate[0]} -> {duedate[1]}")
    if to := detail.get("to"):
        parts.append(f"-> {to}")
    if old_key := detail.get("from"):
        parts.append(f"(was {old_key})")
    created = detail.get("created")
    if isinstance(created, list) and created:
        parts.append(f"created {', '.join(str(key) for key in created)}")
    return printable(_one_line(" ".join(str(part) for part in parts)), EVENT_OUTCOME_MAX)


def timeline_rows(
    events: Sequence[WebhookEvent],
    effects: Sequence[JiraEffect],
    runs: Mapping[str, FlowRunFacts],
    ui_url: str | None,
) -> list[dict[str, str]]:
    """`why`'s table, oldest first: each webhook event, each flow run (from Prefect when it
    answered, `runs`; else by id, placed at its first known moment), each plan reason a Jira
    effect records, and each effect; keyed by `TIMELINE_COLUMNS`, plus `link`: the UI link the
    text ends with, if any (for a terminal to make clickable)."""
    entries: list[tuple[datetime, int, int, str, str, str]] = []

    def add(at: datetime, kind: str, source: str, text: str, link: str = "") -> None:
        entries.append((at, _TIMELINE_ORDER[kind], len(entries), source, text, link))

    first_seen: dict[str, datetime] = {}
    for event in events:
        status = EventStatus(event.status).value
        outcome = _one_line(event.outcome or "")
        text = f"{event.action}: {status}" + (f"; {outcome}" if outcome else "")
        add(
            event.received_at, "webhook", f"webhook {event.ref}", printable(text, EVENT_OUTCOME_MAX)
        )
        if event.flow_run_id:
            first_seen.setdefault(event.flow_run_id, event.updated_at)
    for effect in effects:
        if effect.flow_run_id:
            seen = first_seen.get(effect.flow_run_id)
            first_seen[effect.flow_run_id] = min(seen, effect.at) if seen else effect.at
        if why := effect.detail.get("why"):
            add(effect.at, "plan", "plan", printable(_one_line(str(why)), EVENT_OUTCOME_MAX))
        key = f" {effect.issue_key}" if effect.issue_key else ""
        add(effect.at, "jira", f"Jira{key}", effect_text(effect.action, effect.detail))
    for run_id in dict.fromkeys([*first_seen, *runs]):
        run = runs.get(run_id)
        at = (run.start if run else None) or first_seen.get(run_id)
        if at is None:
            continue  # a run Prefect knows that never started and touched nothing: not yet news
        link = flow_run_url(ui_url, run_id) if ui_url else ""
        if run is None:
            add(at, "run", f"run {run_id[:8]}", link or run_id, link)
        else:
            name = f"run {printable(run.name, NAME_LIMIT)}"
            add(at, "run", name, f"{run.state} {link or run_id}", link)
    entries.sort(key=lambda entry: entry[:3])
    return [
        {
            "time": _local_time(at),
            "source": source,
            "text": text,
            "link": link,
        }
        for at, _, _, source, text, link in entries
    ]


def age_text(age: timedelta) -> str:
    """A duration as people read it: `45s`, `12m 30s`, `2h 05m`, `3d 4h`."""
    seconds = max(0, int(age.total_seconds()))
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


# `stuck`'s rows: `stuck_*_row` keys.


def stuck_event_row(event: WebhookEvent, now: datetime, program: str) -> dict[str, str]:
    """An event still on its way after too long: how long, and the `replay` that re-drives it.

    Pending or being dispatched: the gateway's dispatcher is not handing it on (is it running?
    does Prefect answer?); dispatched: its run said nothing for that long (died, or stuck)."""
    status = EventStatus(event.status).value
    since = event.updated_at if status == "dispatched" else event.received_at
    detail = _one_line(event.outcome or "")
    if status == "dispatched":
        state = f"dispatched to flow run {event.flow_run_id}, no word since"
    else:
        state = f"{status}, {event.dispatch_attempts} dispatch attempt(s)"
    if detail:
        state += f": {detail}"
    employee = f" of employee {event.employee_id}" if event.employee_id is not None else ""
    return {
        "age": age_text(now - since),
        "what": f"{event.ref} {event.action}{employee}",
        "state": printable(state, EVENT_OUTCOME_MAX),
        "re-drive": f"{program} replay {event.ref}",
    }


def stuck_failed_row(event: WebhookEvent, now: datetime, program: str) -> dict[str, str]:
    """An employee whose latest event ended failed or set aside: their last work is not done."""
    status = EventStatus(event.status).value
    detail = _one_line(event.outcome or "")
    return {
        "age": age_text(now - event.updated_at),
        "what": f"employee {event.employee_id} ({event.ref} {event.action})",
        "state": printable(f"{status}: {detail}" if detail else status, EVENT_OUTCOME_MAX),
        "re-drive": f"{program} replay --employee {event.employee_id}",
    }


def stuck_lease_row(
    employee_id: int, holder: str, expires_at: datetime, now: datetime, program: str
) -> dict[str, str]:
    """A lease its holder let lapse without releasing it: that run died mid-work."""
    return {
        "age": age_text(now - expires_at),
        "what": f"employee {employee_id}",
        "state": printable(f"lease of {holder} lapsed, never released", EVENT_OUTCOME_MAX),
        "re-drive": f"{program} replay --employee {employee_id}",
    }


def timeline_markdown(employee_id: int, rows: Sequence[Mapping[str, str]]) -> str:
    """`why`'s timeline as a Markdown table, for an artifact on the employee's runs (the same
    rows `timeline_rows` makes; each UI link a link)."""
    lines = [
        f"## Why: employee {employee_id}",
        "",
        f"Oldest first; `pf-jira-sync why {employee_id}` prints the same.",
        "",
        "| time | source | text |",
        "|---|---|---|",
    ]
    for row in rows:
        text = markdown_cell(row["text"])
        if link := row.get("link"):
            text = text.removesuffix(markdown_cell(link)) + f"[{markdown_cell(link)}]({link})"
        lines.append(f"| {row['time']} | {markdown_cell(row['source'])} | {text} |")
    return "\n".join(lines)
