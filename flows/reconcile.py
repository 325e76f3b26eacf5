"""Reconcile: the whole company on a schedule, so that Jira gets whatever webhooks missed.

Reads every PeopleForce employee, every mapping row and the mapped Jira issues in bulk
(`core.company`), plans each employee with the pure plan the webhook path uses, checks the
safeguard, and applies through the per-employee path of `flows.work`: under each
employee's lease, so a webhook run and the reconciliation never act on one person at once.
Only employees whose plan changes something get task runs of their own.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from loguru import logger
from prefect import flow, get_client
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.runtime import flow_run

from core.company import (
    CompanyPlan,
    Verdict,
    action_counts,
    counts_line,
    plan_reconciliation,
    plan_rows,
    safeguard,
)
from core.jira.client import Issue
from core.names import RECONCILE_FLOW
from core.peopleforce.client import Page
from core.peopleforce.models import Employee, EmployeeSummary
from core.plan import ALL_PROCESSES, today_in
from core.settings import get_settings
from flows.observability import RunArtifacts, issue_link, markdown_cell
from flows.outcome import EmployeeOutcome
from flows.work import EmployeesFailed, Prefetched, work_employees
from tasks import jira, peopleforce, store
from tasks.services import open_services

PLAN_ARTIFACT = "reconcile-plan"
SUMMARY_ARTIFACT = "reconcile-summary"
# A table artifact of a mass change would be unreadable (and heavy for the Prefect server).
MAX_TABLE_ROWS = 1000


class SafeguardStopped(Exception):
    """The run would change too many employees at once; nothing was applied."""


class TaskSources:
    """What `core.company` reads, through the retried steps of `tasks` (one request each)."""

    def __init__(self) -> None:
        self._searches = 0

    async def employees_page(
        self, page: int, updated_since: datetime | None
    ) -> Page[EmployeeSummary]:
        return await peopleforce.read_employees_page(page, updated_since)

    async def terminated_page(self, page: int) -> Page[Employee]:
        return await peopleforce.read_terminated_page(page)

    async def employee(self, employee_id: int) -> Employee | None:
        return await peopleforce.read_employee(employee_id)

    async def search_issues(self, jql: str) -> list[Issue]:
        self._searches += 1
        return await jira.search_issues(jql, f"batch {self._searches}")

    async def issue_key(self, key: str) -> str | None:
        return await jira.issue_key(key)


def run_name() -> str:
    parameters = flow_run.parameters
    flags = [
        name.replace("_", " ") for name in ("dry_run", "force", "full") if parameters.get(name)
    ]
    return " · ".join([RECONCILE_FLOW, *flags])


@flow(name=RECONCILE_FLOW, flow_run_name=run_name)
async def reconcile(dry_run: bool = False, force: bool = False, full: bool = False) -> dict:
    """Bring Jira in step with every PeopleForce employee: hires due for onboarding, missed
    hires and terminations, reverted terminations, changed fields, issues deleted or moved in
    Jira, and mapped people PeopleForce no longer returns (reported, never deleted).

    - `dry_run`: plan only, and publish the plan as a table artifact.
    - `force`: apply even when the safeguard would stop the run (look at a dry run first).
    - `full`: read every employee's full record, not only those changed lately.
    """
    settings = get_settings()
    async with open_services(settings) as services:
        now = datetime.now(UTC)
        today = today_in(services.rules.zone, now)
        links = await store.read_all_links()
        company = await plan_reconciliation(
            TaskSources(),
            links,
            services.rules,
            today,
            now=now,
            concurrency=settings.reconcile_read_concurrency,
            lookback_days=settings.reconcile_lookback_days,
            full=full,
        )
        verdict = safeguard(
            company,
            max_share=settings.safeguard_max_share,
            max_offboard=settings.safeguard_max_offboard,
        )
        _log_plan(company, verdict)
        if dry_run:
            await _publish_plan(company, verdict, "Dry run")
            return _result(company, verdict, applied=False)
        if verdict.stop and not force:
            logger.error(verdict.explain())
            await _publish_plan(company, verdict, "Stopped by the safeguard")
            await acreate_markdown_artifact(
                _stopped_markdown(company, verdict),
                key=SUMMARY_ARTIFACT,
                description="Reconciliation stopped by the safeguard",
            )
            raise SafeguardStopped(verdict.explain())
        if verdict.stop:
            logger.warning("forced past the safeguard: {}", "; ".join(verdict.reasons))
        async with get_client() as client:
            artifacts = RunArtifacts("reconcile", client)
            outcomes = await work_employees(
                company.needs_work,
                ALL_PROCESSES,
                concurrency=settings.employee_concurrency,
                today=today,
                prefetched={
                    employee_id: Prefetched(employee, company.facts[employee_id].jira)
                    for employee_id in company.needs_work
                    if (employee := company.facts[employee_id].employee) is not None
                },
                on_done=artifacts.links,
            )
            await artifacts.summary(
                _summary_markdown(
                    company, verdict, outcomes, artifacts.site, forced=force and verdict.stop
                ),
                f"Reconciliation {company.today}",
                key=SUMMARY_ARTIFACT,
            )
    failed = [outcome for outcome in outcomes if outcome.error]
    if failed:
        raise EmployeesFailed(
            f"{len(failed)} of {len(outcomes)} employee(s) failed: "
            + "; ".join(f"{outcome.employee_id}: {outcome.error}" for outcome in failed[:5])
        )
    return _result(company, verdict, applied=True, outcomes=outcomes)


def _log_plan(company: CompanyPlan, verdict: Verdict) -> None:
    reads = company.reads
    logger.info(
        "reconcile {}: {} employees from PeopleForce ({} requests, {} full records), "
        "{} Jira searches and {} lookups; {} need work: {}",
        company.today,
        company.returned,
        reads.peopleforce_requests,
        reads.full_records,
        reads.jira_searches,
        reads.jira_lookups,
        len(company.needs_work),
        counts_line(action_counts(company)),
    )
    for employee_id, report in company.reports:
        name = company.plans[employee_id].employee_name
        logger.warning("{}{}: {}", employee_id, f" {name}" if name else "", report.why)
    logger.info(verdict.explain())


def _result(
    company: CompanyPlan,
    verdict: Verdict,
    *,
    applied: bool,
    outcomes: list[EmployeeOutcome] | None = None,
) -> dict[str, Any]:
    return {
        "today": company.today.isoformat(),
        "employees": company.returned,
        "need_work": len(company.needs_work),
        "actions": dict(action_counts(company)),
        "safeguard": list(verdict.reasons),
        "reads": asdict(company.reads),
        "applied": applied,
        "jira_keys": sorted({key for o in outcomes or [] for key in o.jira_keys}),
    }


async def _publish_plan(company: CompanyPlan, verdict: Verdict, title: str) -> None:
    rows = plan_rows(company)
    shown = rows[:MAX_TABLE_ROWS]
    cut = f" (first {MAX_TABLE_ROWS} of {len(rows)} rows)" if len(rows) > len(shown) else ""
    await acreate_table_artifact(
        shown or [{"employee": "", "name": "", "action": "nothing to do", "what": "", "why": ""}],
        key=PLAN_ARTIFACT,
        description=(
            f"{title} {company.today}: {len(company.needs_work)} of {company.returned} employees "
            f"need work ({counts_line(action_counts(company))}){cut}. {verdict.explain()}"
        ),
    )


def _reads_line(company: CompanyPlan) -> str:
    reads = company.reads
    return (
        f"Read {company.returned} employees from PeopleForce ({reads.peopleforce_requests} "
        f"requests, {reads.full_records} full records); {reads.jira_searches} Jira searches, "
        f"{reads.jira_lookups} lookups."
    )


def _reports_markdown(company: CompanyPlan) -> list[str]:
    if not company.reports:
        return []
    lines = ["", "### Reported (nothing changed in Jira)", ""]
    for employee_id, report in company.reports:
        name = company.plans[employee_id].employee_name or ""
        lines.append(f"- {employee_id} {markdown_cell(name)}: {markdown_cell(report.why)}")
    return lines


def _summary_markdown(
    company: CompanyPlan,
    verdict: Verdict,
    outcomes: list[EmployeeOutcome],
    site: str | None,
    *,
    forced: bool,
) -> str:
    applied = [outcome for outcome in outcomes if outcome.applied]
    lines = [
        f"## Reconciliation {company.today}",
        "",
        _reads_line(company),
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
    lines += _reports_markdown(company)
    failed = [outcome for outcome in outcomes if outcome.error]
    if failed:
        lines += ["", "### Failed (retry the run from the Prefect UI)", ""]
        lines += [
            f"- {markdown_cell(outcome.who)}: {markdown_cell(outcome.error or '')}"
            for outcome in failed
        ]
    return "\n".join(lines)


def _stopped_markdown(company: CompanyPlan, verdict: Verdict) -> str:
    lines = [
        f"## Reconciliation {company.today}: stopped by the safeguard",
        "",
        "Nothing was applied: " + "; ".join(verdict.reasons) + ".",
        "",
        f"Planned: {counts_line(action_counts(company))}. The whole plan is in the "
        f"`{PLAN_ARTIFACT}` table artifact.",
        "",
        "If the plan is right, run the `reconcile` deployment again with `force` set "
        "(Prefect UI: Run > Custom run), or `pf-jira-sync reconcile --force`.",
        "",
        _reads_line(company),
    ]
    return "\n".join(lines + _reports_markdown(company))
