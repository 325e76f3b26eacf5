"""Reconciliation from the terminal: `plan EMPLOYEE_ID`, `reconcile [--dry-run] [--force] [--full]`
and `preview-rules NEW.toml` (the whole company planned with the rules in force and proposed ones)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import (
    app,
    console,
    errors,
    fail,
    load_settings,
    prefect_api_url_or_local,
    run_on_prefect,
    run_on_store,
)
from cli.doctor import explain
from core.errors import ApiError
from core.names import (
    MANUAL_TAG,
    RECONCILE_FLOW,
    SCHEDULED_DEPLOYMENT,
    full_deployment_name,
    reconcile_run_name,
)
from core.settings import Settings, SettingsError, mask_url

RECONCILE_DEPLOYMENT = full_deployment_name(RECONCILE_FLOW, SCHEDULED_DEPLOYMENT)


def existing_store_url(settings: Settings) -> str | None:
    """The mapping store's URL; None for a SQLite file that does not exist yet (nothing was
    done yet), so that a read-only command does not create it."""
    from sqlalchemy.engine import make_url

    logging.getLogger("alembic").setLevel(logging.WARNING)
    url = settings.effective_database_url
    parsed = make_url(url)
    is_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (
        None,
        "",
        ":memory:",
    )
    if is_file and not Path(parsed.database or "").exists():
        return None
    return url


def load_reconcile_rules(settings: Settings) -> Any:
    from core.rules import RulesError, load_rules

    try:
        return load_rules(settings.rules_file)
    except RulesError as error:
        fail(str(error), code=2)


def run_reading(work: Callable[[], Coroutine[Any, Any, Any]], store_url: str | None) -> Any:
    """Run a read against PeopleForce, Jira and the store; one line and exit 1 if it fails."""
    from core.company import ListingError

    try:
        return run_on_store(work, store_url or "(none)")
    except SettingsError as error:
        fail(str(error), code=2)
    except ApiError as error:
        fail(explain(error.service, error))
    except ListingError as error:
        fail(str(error))


@app.command("plan")
def plan_employee(
    employee_id: Annotated[int, typer.Argument(metavar="EMPLOYEE_ID", help="PeopleForce id.")],
) -> None:
    """Show what would be done in Jira for one employee now, and why. Changes nothing.

    Reads the employee from PeopleForce, what this service already did (the mapping store)
    and whether those Jira issues still answer, then prints the inputs, the actions with their
    reasons, and the notes for what is not (yet) due.
    """
    from core.company import ClientSources, ReadCounts, check_jira
    from core.jira.client import JiraClient
    from core.peopleforce.client import PeopleForceClient
    from core.plan import CreateIssue, Facts, Plan, plan_with_assets, today_in
    from core.render import action_label, describe_action, describe_inputs
    from core.retry import INTERACTIVE_READ
    from core.store import MappingStore

    settings = load_settings()
    rules = load_reconcile_rules(settings)
    today = today_in(rules.zone, datetime.now().astimezone())
    url = existing_store_url(settings)

    async def read() -> tuple[Facts, Plan]:
        async with (
            PeopleForceClient.from_settings(settings) as peopleforce,
            JiraClient.from_settings(settings) as jira,
        ):
            sources = ClientSources(peopleforce, jira)
            employee = await sources.employee(employee_id)
            link = previous = None
            if url is not None:
                async with await MappingStore.open(url) as store:
                    link, previous = await store.link_and_previous(
                        employee_id, employee.email if employee else None
                    )
            checks = await check_jira(
                sources, [link] if link else [], rules, asyncio.Semaphore(4), ReadCounts()
            )
            checked = checks.get(employee_id) if employee is not None else None
            return await plan_with_assets(
                Facts(employee_id, employee, link, previous, jira=checked),
                rules,
                today,
                # Retried as every terminal read is: only what outlasts that degrades the plan.
                lambda: INTERACTIVE_READ.call(
                    f"read assets of {employee_id}", lambda: peopleforce.read_assets(employee_id)
                ),
            )

    facts, result = run_reading(read, url)
    name = result.employee_name or "(unknown)"
    console.print(f"[bold]Employee {employee_id} {escape(name)}[/]", highlight=False)
    console.print("[bold]Inputs[/]")
    inputs = describe_inputs(facts, rules, today)
    width = max(len(label) for label, _ in inputs)
    for label, value in inputs:
        console.print(f"  {label:<{width}}  {escape(value)}", highlight=False, soft_wrap=True)
    console.print("[bold]Actions[/]")
    if not result.actions:
        none = (
            "this employee is out of scope (see the notes)"
            if result.out_of_scope
            else "Jira is in step for this employee"
        )
        console.print(f"  none: {none}", highlight=False)
    for number, action in enumerate(result.actions, 1):
        console.print(
            f"  {number}. {action_label(action)}: {escape(describe_action(action))}",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"     why: {escape(action.why)}", highlight=False, soft_wrap=True)
        if isinstance(action, CreateIssue):
            for subtask in action.subtasks:
                console.print(f"     - {escape(subtask.summary)}", highlight=False, soft_wrap=True)
    if result.notes:
        console.print("[bold]Notes[/]")
        for note in result.notes:
            console.print(f"  - {escape(note)}", highlight=False, soft_wrap=True)
    if url is None:
        print_no_store_note(settings)


def print_no_store_note(settings: Settings) -> None:
    console.print(
        f"(no mapping store at {mask_url(settings.effective_database_url)} yet: planned as if this "
        "service had done nothing)",
        highlight=False,
        soft_wrap=True,
    )


def print_company_plan(company: Any, verdict: Any) -> None:
    from core.render import PLAN_COLUMNS, company_line, explain, plan_rows

    rows = plan_rows(company)
    if rows:
        table = Table(*PLAN_COLUMNS, header_style="bold")
        for row in rows:
            table.add_row(*(escape(row[column]) for column in PLAN_COLUMNS))
        console.print(table)
    console.print(company_line(company), highlight=False, soft_wrap=True)
    mark = "[red]safeguard:[/]" if verdict.stop else "[green]safeguard:[/]"
    console.print(f"{mark} {escape(explain(verdict))}", highlight=False, soft_wrap=True)


async def read_company(
    settings: Settings,
    rules: Any,
    url: str | None,
    now: datetime,
    full: bool,
    advance: Callable[[str, int, int | None], None],
    acknowledged: dict[int, Any],
    then: Callable[[Any, Any], Coroutine[Any, Any, Any]] | None = None,
) -> Any:
    """Read the company in bulk and plan it as the reconciliation does (the store's links, the
    inbox's backlog into `acknowledged`, the work the circuit breaker holds left out);
    `then(sources, company)`, if given, goes on reading with the same clients and its result
    is returned instead of the company plan."""
    from core.company import (
        ClientSources,
        acknowledged_by_employee,
        leave_held,
        plan_reconciliation,
        read_backlog,
    )
    from core.jira.client import JiraClient
    from core.peopleforce.client import PeopleForceClient
    from core.plan import today_in
    from core.store import (
        CircuitBreaker,
        EmployeeLink,
        InboxRepository,
        MappingStore,
        WebhookEvent,
    )

    links: list[EmployeeLink] = []
    backlog: list[WebhookEvent] = []
    held: set[int] = set()
    if url is not None:
        async with await MappingStore.open(url) as store:
            # As the run does: the inbox's backlog first, so that the safeguard reads alike.
            inbox = InboxRepository(store.engine)
            backlog = await read_backlog(inbox)
            links = [link async for link in store.all_links()]
            held = await CircuitBreaker(store.engine).held_employees()
    acknowledged.update(acknowledged_by_employee(backlog))
    async with (
        PeopleForceClient.from_settings(settings) as peopleforce,
        JiraClient.from_settings(settings) as jira,
    ):
        sources = ClientSources(peopleforce, jira)
        company = await plan_reconciliation(
            sources,
            links,
            rules,
            today_in(rules.zone, now),
            now=now,
            concurrency=settings.reconcile_read_concurrency,
            lookback_days=settings.reconcile_lookback_days,
            full=full,
            read_in_full=acknowledged,
            progress=advance,
        )
        if then is not None:
            return await then(sources, company)
        return leave_held(company, held)


def read_with_progress(work: Callable[[Callable[[str, int, int | None], None]], Any]) -> Any:
    """Run `work(advance)` with progress bars on stderr (gone when it ends)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=errors, transient=True) as progress:
        bars: dict[str, TaskID] = {}

        def advance(what: str, done: int, total: int | None) -> None:
            if what not in bars:
                bars[what] = progress.add_task(what, total=total)
            progress.update(bars[what], completed=done, total=total)

        return work(advance)


def dry_run_reconcile(settings: Settings, full: bool) -> None:
    """Plan the whole company in this process (no Prefect) and print it."""
    from core.company import safeguard

    rules = load_reconcile_rules(settings)
    url = existing_store_url(settings)
    now = datetime.now().astimezone()
    acknowledged: dict[int, Any] = {}
    company = read_with_progress(
        lambda advance: run_reading(
            lambda: read_company(settings, rules, url, now, full, advance, acknowledged), url
        )
    )
    verdict = safeguard(
        company,
        max_share=settings.safeguard_max_share,
        max_offboard=settings.safeguard_max_offboard,
        acknowledged=acknowledged,
    )
    print_company_plan(company, verdict)
    if url is None:
        print_no_store_note(settings)


@app.command("preview-rules")
def preview_rules_command(
    proposed_file: Annotated[
        Path, typer.Argument(metavar="NEW.toml", help="The proposed rules file.")
    ],
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Read every employee's full record (slower; as `reconcile --full`), so that "
            "changes to custom-field mappings show for everyone.",
        ),
    ] = False,
) -> None:
    """Show what proposed rules would change in Jira's work, before they are deployed.

    Reads the company once (as `reconcile --dry-run` does), plans every employee with the
    rules in force (RULES_FILE) and with NEW.toml, and lists per employee the actions that
    would appear (+) or disappear (-). Changes nothing.
    """
    from core.company import preview_rules
    from core.render import preview_differences, preview_summary
    from core.rules import RulesError, load_rules

    settings = load_settings()
    current = load_reconcile_rules(settings)
    try:
        proposed = load_rules(proposed_file)
    except RulesError as error:
        fail(f"the proposed rules: {error}", code=2)
    url = existing_store_url(settings)
    now = datetime.now().astimezone()

    def read(advance: Callable[[str, int, int | None], None]) -> Any:
        async def then(sources: Any, company: Any) -> Any:
            return await preview_rules(
                sources,
                company,
                proposed,
                current,
                settings.reconcile_read_concurrency,
                advance,
            )

        return run_reading(
            lambda: read_company(settings, current, url, now, full, advance, {}, then), url
        )

    preview = read_with_progress(read)
    differences = preview_differences(preview)
    for employee_id, name, gone, new in differences:
        console.print(f"[bold]{employee_id} {escape(name)}[/]", highlight=False)
        for line in gone:
            console.print(f"  [red]-[/] {escape(line)}", highlight=False, soft_wrap=True)
        for line in new:
            console.print(f"  [green]+[/] {escape(line)}", highlight=False, soft_wrap=True)
    console.print(preview_summary(differences, len(preview.current)), highlight=False)
    if url is None:
        print_no_store_note(settings)


async def run_reconcile_deployment(force: bool, full: bool) -> Any:
    """Start a run of the reconcile deployment and follow it to its end, printing its states."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(RECONCILE_DEPLOYMENT)
        except ObjectNotFound:
            fail(
                f"the Prefect server has no deployment {RECONCILE_DEPLOYMENT}: start the service "
                "(`pf-jira-sync up`) or register it on a work pool (`pf-jira-sync deploy`)"
            )
        run = await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"dry_run": False, "force": force, "full": full},
            name=reconcile_run_name(force=force, full=full),
            tags=[MANUAL_TAG],
        )
        console.print(f"started flow run {run.name} ({run.id})", highlight=False)
        seen, waited = "", 0.0
        while True:
            run = await client.read_flow_run(run.id)
            state = run.state
            if state is not None and state.name != seen:
                seen = state.name
                console.print(f"  {seen}", highlight=False)
            if state is not None and state.is_final():
                return run
            if waited >= 30 and state is not None and state.is_scheduled():
                errors.print(
                    "still waiting to start: another reconciliation may be running (they go one "
                    "at a time), or nothing serves the deployments (`pf-jira-sync up`)",
                    highlight=False,
                    soft_wrap=True,
                )
                waited = -600.0  # say it again in ten minutes
            await asyncio.sleep(2)
            waited += 2


@app.command("reconcile")
def reconcile_command(
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Plan the whole company and print it as a table; change nothing."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Apply even when the safeguard would stop the run (look at --dry-run first).",
        ),
    ] = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Read every employee's full record, not only those changed in the last "
            "RECONCILE_LOOKBACK_DAYS days (slower; catches future terminations entered earlier).",
        ),
    ] = False,
) -> None:
    """Bring Jira in step with every PeopleForce employee, as the nightly schedule does.

    With --dry-run the plan is computed here (no Prefect needed). Without it, a run of the
    reconcile deployment is started on the Prefect server (PREFECT_API_URL, default the one
    `up` starts) and followed to its end; runs go one at a time.
    """
    settings = load_settings()
    if dry_run:
        if force:
            fail("--force has no meaning with --dry-run, which changes nothing", code=2)
        dry_run_reconcile(settings, full)
        return
    try:
        run = run_on_prefect(
            prefect_api_url_or_local(settings), lambda: run_reconcile_deployment(force, full)
        )
    except KeyboardInterrupt:
        errors.print("stopped following; the run goes on (see the Prefect UI)")
        raise typer.Exit(130) from None
    state = run.state
    message = f": {state.message}" if state and state.message else ""
    if state is None or not state.is_completed():
        fail(f"reconciliation {state.name if state else 'unknown'}{message} (flow run {run.id})")
    console.print(
        f"reconciliation completed{message}; its summary is the `reconcile-summary` artifact "
        f"of flow run {run.name} in the Prefect UI",
        highlight=False,
        soft_wrap=True,
    )
