"""The one path every piece of work takes for one employee: read, plan, apply.

Whatever started it (a webhook, the reconciliation, a retry from the UI), the work for an
employee reads their current PeopleForce record and mapping, plans with the pure `core.plan`,
and applies each action through retryable tasks, recording every Jira effect in the store as
soon as it happened. Running it again converges: nothing is created twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from uuid import UUID, uuid4

from loguru import logger
from prefect import get_client
from prefect.client.orchestration import PrefectClient
from prefect.runtime import flow_run

from core import render
from core.errors import ApiError, is_permanent
from core.names import process_tag
from core.peopleforce.models import AssetsRead, Employee
from core.plan import (
    ALL_PROCESSES,
    AddComment,
    CreateIssue,
    Facts,
    IssueCheck,
    Plan,
    Process,
    RelinkIssue,
    linked_issues,
    plan_with_assets,
    process_of,
    today_in,
)
from core.settings import get_settings
from core.store import EmployeeLink, Leases, WorkResult
from flows.actions import apply_plan
from flows.breaker import WebhookBreaker
from flows.observability import EventKeys, RunArtifacts, employee_properties, tag_run
from flows.outcome import EmployeeOutcome
from tasks import jira, peopleforce, store
from tasks.services import current, open_services


@dataclass(frozen=True)
class Prefetched:
    """What a caller already read for an employee (reconciliation reads the company in bulk):
    the PeopleForce record, and what Jira answered for the issues the link points at. The
    mapping is always read again, under the employee's lease."""

    employee: Employee
    jira: IssueCheck | None = None


async def work_employee(
    employee_id: int,
    processes: frozenset[Process] = ALL_PROCESSES,
    *,
    today: date | None = None,
    prefetched: Prefetched | None = None,
    outcome: EmployeeOutcome | None = None,
    breaker: WebhookBreaker | None = None,
) -> EmployeeOutcome:
    """Read, plan and apply for one employee; the actions of other processes are left alone.

    `outcome` is filled in as the work goes (its name as soon as the record is read), so that
    a failure half-way still says for whom and what was done before it. With `breaker` (the
    webhook path), a plan that creates what it counts asks it first, and held work is not
    applied at all."""
    services = current()
    today = today or today_in(services.rules.zone, datetime.now(UTC))
    outcome = outcome or EmployeeOutcome(employee_id)
    if prefetched is None and (record := services.records.pop(employee_id, None)):
        prefetched = Prefetched(record)  # the sync flow's triage read it moments ago
    employee = prefetched.employee if prefetched else await peopleforce.read_employee(employee_id)
    checked = prefetched.jira if prefetched else None
    outcome.name = employee.display_name if employee else None
    who, notes = outcome.who, outcome.notes
    # Read at most once: a re-plan (after a drift, or the onboarding applied first) plans the
    # same offboarding, with the same equipment, and need not ask PeopleForce again.
    read_assets = _once(lambda: peopleforce.read_assets(employee_id, who))

    async def plan_now(
        checked: IssueCheck | None,
    ) -> tuple[EmployeeLink | None, EmployeeLink | None, Plan]:
        link, previous = await store.read_mapping(
            employee_id, employee.email if employee else None, who
        )
        facts, result = await plan_with_assets(
            Facts(employee_id, employee, link, previous, jira=checked),
            services.rules,
            today,
            read_assets,
        )
        if facts.assets_unread:
            # Degraded, not failed: the offboarding goes ahead with a check by hand.
            logger.warning(
                "{}: the asset list could not be read ({}); the offboarding asks for a check "
                "by hand",
                who,
                facts.assets_unread,
            )
        for note in facts.asset_notes:
            logger.warning("{}: {}", who, note)
        notes.extend(note for note in result.notes if note not in notes)
        return link, previous, result

    link, previous, result = await plan_now(checked)
    if checked is None and (drift := await _drift(result, link, processes, who)):
        # Followed or recreated as the reconciliation would, in this run: the relinks are the
        # store's bookkeeping, and a recreated issue's process may not be this run's.
        processes = ALL_PROCESSES
        link, previous, result = await plan_now(drift)
        result = _with_follow_comments(result)
    if breaker is not None and await breaker.hold(result, processes, outcome):
        return outcome
    if _onboards_and_offboards(result, processes):
        # The offboarding names the onboarding issue (`Related: KEY`) only if that exists when
        # the offboarding is planned. For someone hired and leaving at once, the onboarding
        # goes first and the rest is planned again (Jira was followed already), so the issue
        # reads the same whichever run got there first: a sync run, which starts the
        # onboarding subflow before the offboarding one, or the reconciliation.
        first = tuple(action for action in result.actions if process_of(action) != "offboarding")
        await apply_plan(
            result.model_copy(update={"actions": first}),
            employee,
            link,
            previous,
            processes,
            today,
            outcome,
        )
        link, previous, result = await plan_now(None)
    await apply_plan(result, employee, link, previous, processes, today, outcome)
    return outcome


def _once(read: Callable[[], Awaitable[AssetsRead]]) -> Callable[[], Awaitable[AssetsRead]]:
    """`read`, called at most once: each later call gives its answer, or its API error, again."""
    answers: list[AssetsRead] = []
    failures: list[ApiError] = []

    async def once() -> AssetsRead:
        if not (answers or failures):
            try:
                answers.append(await read())
            except ApiError as error:
                failures.append(error)
        if failures:
            raise failures[0]
        return answers[0]

    return once


async def _drift(
    result: Plan, link: EmployeeLink | None, processes: frozenset[Process], who: str
) -> IssueCheck | None:
    """What Jira says about the link's issues, when this run is about to act on one of them
    and they drifted (deleted or moved in Jira since the link was recorded); None otherwise.

    The webhook path has no bulk read of Jira as the reconciliation has, and acting on a key
    that is gone fails the run, every run. So before acting on an existing issue (a field
    update, a comment, a due date, a cancel) the link's issues are read by key: one bulk read,
    strongly consistent, for all of them (more look-ups only when something drifted), and no
    read at all when this run's actions touch no existing issue (a create, a report, nothing).
    Reading first rather than catching the 404 keeps the plan whole: a 404 half-way through a
    plan would leave its earlier writes done on a stale picture, and would not tell a deleted
    issue from one moved under a new key."""
    if link is None:
        return None
    linked = set(linked_issues(link).values())
    touched = {
        key
        for action in result.actions
        if (process := process_of(action)) is None or process in processes
        if isinstance(key := getattr(action, "issue_key", None), str) and key in linked
    }
    if not touched:
        return None
    check = await jira.check_issues(sorted(linked), who)
    if not (check.missing or check.moved):
        return None
    logger.warning(
        "{}: Jira drifted from the store (moved: {}; gone: {}); followed as the "
        "reconciliation would",
        who,
        ", ".join(f"{old} -> {new}" for old, new in sorted(check.moved.items())) or "none",
        ", ".join(sorted(check.missing)) or "none",
    )
    return check


def _with_follow_comments(result: Plan) -> Plan:
    """A comment on each issue followed to its new key, saying so, right after its relink."""
    actions = []
    for action in result.actions:
        actions.append(action)
        if isinstance(action, RelinkIssue):
            actions.append(
                AddComment(
                    why=action.why,
                    issue_key=action.new_key,
                    text=f"pf-jira-sync follows this {action.kind} issue under its new key "
                    f"{action.new_key}: it was moved in Jira from {action.old_key}.",
                )
            )
    return result.model_copy(update={"actions": tuple(actions)})


def _onboards_and_offboards(result: Plan, processes: frozenset[Process]) -> bool:
    kinds = {action.kind for action in result.actions if isinstance(action, CreateIssue)}
    return {"onboarding", "offboarding"} <= kinds and {"onboarding", "offboarding"} <= processes


async def work_employees(
    employee_ids: Iterable[int],
    processes: frozenset[Process],
    *,
    concurrency: int,
    event_keys: EventKeys | None = None,
    today: date | None = None,
    prefetched: Mapping[int, Prefetched] | None = None,
    on_done: Callable[[EmployeeOutcome], Awaitable[None]] | None = None,
    breaker: WebhookBreaker | None = None,
) -> list[EmployeeOutcome]:
    """Work many employees at once, at most `concurrency` at a time; one failure stops no other.

    `on_done` is given each employee's outcome as soon as their work is done (and their slot
    and lease are free), while the others are still worked."""
    bound = asyncio.Semaphore(concurrency)
    # One holder for the whole run: its leases are renewed together while it works (a run
    # whose process died lets its employees go within `LEASE_TTL`).
    leases = Leases(current().store.engine).holding(
        f"{flow_run.get_id() or 'local'}:{uuid4().hex[:8]}"
    )

    # No per-employee tags on task runs: Prefect treats every task-run tag as a concurrency
    # limit and asks its server for a slot per tag and task run (an extra round trip, and 503s
    # under load). Task runs carry the employee in their names instead.
    async def work(employee_id: int) -> EmployeeOutcome:
        outcome = EmployeeOutcome(employee_id)
        async with bound:
            try:
                # Never two runs on one employee: a webhook run, the reconciliation and a
                # retry from the UI take turns.
                async with leases.hold(employee_id):
                    return await work_employee(
                        employee_id,
                        processes,
                        today=today,
                        prefetched=(prefetched or {}).get(employee_id),
                        outcome=outcome,
                        breaker=breaker,
                    )
            except Exception as error:  # reported per employee; the run fails at the end
                outcome.error = str(error) or type(error).__name__
                outcome.advice = render.what_to_do(error)
                outcome.permanent = is_permanent(error)
                logger.opt(exception=error).error(
                    "{}: {} ({})", outcome.who, outcome.error, type(error).__name__
                )
                return outcome

    async def one(employee_id: int) -> EmployeeOutcome:
        # Every line of this employee's work carries the employee and its webhook events.
        with logger.contextualize(**employee_properties(employee_id, event_keys)):
            outcome = await work(employee_id)
            if on_done is not None:
                await on_done(outcome)
            return outcome

    unique = list(dict.fromkeys(employee_ids))
    async with leases:
        return list(await asyncio.gather(*(one(employee_id) for employee_id in unique)))


class EmployeesFailed(Exception):
    """Some employees' work failed; the others were done. The run fails so it shows and can be
    retried; its message says what failed, for whom, and what to do."""


async def fail_if_any(
    process: str, outcomes: Sequence[EmployeeOutcome], artifacts: RunArtifacts
) -> None:
    """End a run that failed for anyone with one line an IT admin can act on, in its log and as
    an artifact, and fail it with that line (Prefect shows it as the run's state message)."""
    if not any(outcome.error for outcome in outcomes):
        return
    # A subflow has no Retry button of its own: the run that started it has.
    parent = next(iter((await store.run_and_parent())[1:]), None)
    retry_from = (
        f"the run that started this one ({parent}) has the Retry button in the Prefect UI"
        if parent
        else f"this run ({flow_run.get_id()}) has the Retry button in the Prefect UI"
    )
    message = render.failure_message(process, outcomes, retry_from)
    await artifacts.summary(
        render.failure_markdown(message, outcomes, retry_from), f"{process} failed: what to do"
    )
    logger.error(message)
    raise EmployeesFailed(message)


def run_name(process: str):
    """A flow-run name from the parameters: the employee for one, the count for many."""

    def name() -> str:
        given = flow_run.get_name()
        if given and given.startswith(f"{process} · "):
            return given  # named at creation (the dispatcher knows the name from the webhook)
        ids = list(flow_run.parameters.get("employee_ids") or [])
        return (
            f"{process} · employee {ids[0]}"
            if len(ids) == 1
            else f"{process} · {len(ids)} employees"
        )

    return name


async def run_process(
    process: Process | None, employee_ids: list[int], event_keys: EventKeys | None = None
) -> list[EmployeeOutcome]:
    """The body of every per-employee flow: open the services, work everyone, report."""
    processes = ALL_PROCESSES if process is None else frozenset({process})
    settings = get_settings()
    # One Prefect client for the run's tags, artifacts and name.
    async with get_client() as client:
        # Tagged once created, not at creation: every event of a run's task runs would carry
        # the run's tags as related resources (six times the server's event rows, measured).
        await tag_run(client, process, employee_ids)
        await store.run_and_parent()  # known before any store write needs it
        async with open_services(settings):
            artifacts = RunArtifacts(process, client)
            # The webhook path's safeguard against mass changes (`flows.breaker`).
            breaker = WebhookBreaker.from_settings(settings, event_keys)

            async def done(outcome: EmployeeOutcome) -> None:
                await artifacts.links(outcome)
                await report_to_inbox(outcome, event_keys)
                await artifacts.timeline(outcome)

            outcomes = await work_employees(
                employee_ids,
                processes,
                concurrency=settings.employee_concurrency,
                event_keys=event_keys,
                on_done=done,
                breaker=breaker,
            )
            await artifacts.outcomes_summary(outcomes)
            if breaker is not None:
                await breaker.report(artifacts)
        if len(outcomes) == 1 and outcomes[0].name:
            name = f"{process_tag(process)} · {outcomes[0].name} ({outcomes[0].employee_id})"
            await _rename_run(client, name)
        for outcome in outcomes:
            logger.bind(**employee_properties(outcome.employee_id, event_keys)).info(
                render.outcome_line(outcome)
            )
        await fail_if_any(process_tag(process), outcomes, artifacts)
    return outcomes


async def report_to_inbox(outcome: EmployeeOutcome, event_keys: EventKeys | None) -> None:
    """Record on the employee's webhook events, as soon as their work is done, what it came to,
    so that a run which fails for others, or crashes later, ends or retries each employee by
    their own result. Best effort: without the record the events are simply worked again."""
    keys = list((event_keys or {}).get(str(outcome.employee_id)) or ())
    if not keys or outcome.held:  # held events were held with their hold, in its transaction
        return
    if outcome.error is None:
        result, note = WorkResult.done, None
    else:
        result = WorkResult.permanent if outcome.permanent else WorkResult.retry
        note = render.work_failure(outcome.who, outcome.error, outcome.advice)
    try:
        await store.record_work(keys, result, note, outcome.who)
    except Exception as error:  # the work is done; only its report to the inbox is missing
        logger.warning(
            "{}: result not recorded on its webhook events ({}: {})",
            outcome.who,
            type(error).__name__,
            error,
        )


async def _rename_run(client: PrefectClient, name: str) -> None:
    run_id = flow_run.get_id()
    if run_id:
        await client.update_flow_run(UUID(str(run_id)), name=name)
