"""Reconcile: the whole company on a schedule, so that Jira gets whatever webhooks missed.

Reads every PeopleForce employee, every mapping row and the mapped Jira issues in bulk
(`core.company`), plans each employee with the pure plan the webhook path uses, checks the
safeguard, and applies through the per-employee path of `flows.work`: under each
employee's lease, so a webhook run and the reconciliation never act on one person at once.
Only employees whose plan changes something get task runs of their own.

The inbox's backlog is read first: acknowledged webhook events no run has done (a run crashed
or failed, or the dispatcher has not sent them). Their employees are read in full, the work
they asked for is not counted by the safeguard (`core.company.owed_to_webhooks` says why that
is safe), and once an employee is in step their events are closed as done, so `events` stops
showing failures that were repaired.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from loguru import logger
from prefect import flow, get_client
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.runtime import flow_run

from core import render
from core.company import (
    Acknowledged,
    CompanyPlan,
    Verdict,
    acknowledged_by_employee,
    events_done,
    leave_held,
    plan_reconciliation,
    safeguard,
)
from core.jira.client import Issue
from core.names import RECONCILE_FLOW, reconcile_run_name
from core.peopleforce.client import Page
from core.peopleforce.models import Employee, EmployeeSummary
from core.plan import ALL_PROCESSES, today_in
from core.settings import get_settings
from flows.observability import RunArtifacts
from flows.outcome import EmployeeOutcome
from flows.work import Prefetched, fail_if_any, work_employees
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
    return reconcile_run_name(
        **{flag: bool(parameters.get(flag)) for flag in ("dry_run", "force", "full")}
    )


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
        # The backlog before anything else: every event read here was stored before the
        # company is read, so the records read show what it announced, and an event that
        # comes later is never closed by this run.
        acknowledged = acknowledged_by_employee(await store.read_inbox_backlog())
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
            read_in_full=acknowledged,
        )
        if held := await store.read_held_employees():
            company = leave_held(company, held)
            logger.warning(
                "{} employee(s) whose work the circuit breaker holds are left to an operator "
                "(`pf-jira-sync held`)",
                len(held),
            )
        verdict = safeguard(
            company,
            max_share=settings.safeguard_max_share,
            max_offboard=settings.safeguard_max_offboard,
            acknowledged=acknowledged,
        )
        _log_plan(company, verdict)
        if dry_run:
            await _publish_plan(company, verdict, "Dry run")
            return _result(company, verdict, applied=False)
        if verdict.stop and not force:
            message = " ".join(
                filter(None, [render.explain(verdict), render.backlog_advice(acknowledged)])
            )
            logger.error(message)
            await _publish_plan(company, verdict, "Stopped by the safeguard")
            await acreate_markdown_artifact(
                "\n\n".join(
                    filter(
                        None,
                        [
                            render.stopped_markdown(company, verdict, PLAN_ARTIFACT),
                            render.backlog_advice(acknowledged),
                        ],
                    )
                ),
                key=SUMMARY_ARTIFACT,
                description="Reconciliation stopped by the safeguard",
            )
            raise SafeguardStopped(message)
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
            closed = await _close_repaired(company, acknowledged, outcomes, read_at=now)
            inbox_line = render.backlog_line(verdict, acknowledged, closed)
            logger.info(inbox_line)
            await artifacts.summary(
                render.reconcile_summary_markdown(
                    company, verdict, outcomes, artifacts.site, forced=force and verdict.stop
                )
                + f"\n\n{inbox_line}",
                f"Reconciliation {company.today}",
                key=SUMMARY_ARTIFACT,
            )
            await fail_if_any(RECONCILE_FLOW, outcomes, artifacts)
    return _result(company, verdict, applied=True, outcomes=outcomes, events_closed=closed)


async def _close_repaired(
    company: CompanyPlan,
    acknowledged: dict[int, Acknowledged],
    outcomes: list[EmployeeOutcome],
    *,
    read_at: datetime,
) -> int:
    """Close the acknowledged events of everyone now in step (worked without an error, or found
    in step), each with what this run did for the employee."""
    by_employee = {outcome.employee_id: outcome for outcome in outcomes}
    worked = [outcome.employee_id for outcome in outcomes if not outcome.error]
    done = events_done(company, acknowledged, worked, read_at=read_at)
    run = f"{flow_run.get_name() or RECONCILE_FLOW} ({flow_run.get_id()})"
    texts = {
        event.id: render.repaired_outcome(
            run,
            by_employee[employee_id].jira_keys if employee_id in by_employee else [],
        )
        for employee_id, events in done.items()
        for event in events
        if event.id is not None
    }
    return await store.close_repaired_events(texts) if texts else 0


def _log_plan(company: CompanyPlan, verdict: Verdict) -> None:
    logger.info(render.plan_log_line(company))
    for line in render.report_lines(company):
        logger.warning(line)
    logger.info(render.explain(verdict))


def _result(
    company: CompanyPlan,
    verdict: Verdict,
    *,
    applied: bool,
    outcomes: list[EmployeeOutcome] | None = None,
    events_closed: int = 0,
) -> dict[str, Any]:
    return {
        "today": company.today.isoformat(),
        "employees": company.returned,
        "need_work": len(company.needs_work),
        "actions": dict(render.action_counts(company)),
        "safeguard": list(verdict.reasons),
        "reads": asdict(company.reads),
        "applied": applied,
        "jira_keys": sorted({key for o in outcomes or [] for key in o.jira_keys}),
        "owed_to_webhooks": verdict.owed,
        "events_closed": events_closed,
    }


async def _publish_plan(company: CompanyPlan, verdict: Verdict, title: str) -> None:
    rows, description = render.plan_table(company, verdict, title, MAX_TABLE_ROWS)
    await acreate_table_artifact(rows, key=PLAN_ARTIFACT, description=description)
