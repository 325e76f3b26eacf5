"""`pf-jira-sync`: the operator's command line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.errors import ApiError, AuthenticationError, ForbiddenError
from core.logging import configure_logging
from core.settings import Settings, SettingsError, get_settings

app = typer.Typer(
    name="pf-jira-sync",
    help="Keep Jira in step with PeopleForce.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sandbox_app = typer.Typer(
    help="Local PeopleForce and Jira simulators. Alone: run both until Ctrl-C. The subcommands "
    "drive a running PeopleForce simulator (the one `up --sandbox` starts, for instance), which "
    "sends the signed webhooks.",
    no_args_is_help=False,
)
app.add_typer(sandbox_app, name="sandbox")

console = Console()
errors = Console(stderr=True)


def load_settings() -> Settings:
    """The settings, or one line naming what is wrong and exit code 2 (never a traceback)."""
    try:
        settings = get_settings()
    except SettingsError as error:
        errors.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    configure_logging(settings, component="cli")
    return settings


@app.command()
def config() -> None:
    """Show the effective settings (secrets masked)."""
    settings = load_settings()
    table = Table("setting", "value", show_header=True, header_style="bold")
    for name, value in settings.masked().items():
        table.add_row(name, value or "[dim](unset)[/]")
    console.print(table)


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str


ADVICE = {
    ("PeopleForce", AuthenticationError): "the API key was rejected: check PEOPLEFORCE_API_KEY "
    "(Settings -> Open API keys; a Company key, not a Career key; a deleted key stops at once)",
    ("PeopleForce", ForbiddenError): "the key is known but refused: the key's IP allow-list may "
    "not include this host, or API access is disabled for the company",
    ("Jira", AuthenticationError): "credentials rejected: check JIRA_EMAIL and JIRA_API_TOKEN; a "
    "scoped or service-account token needs JIRA_CLOUD_ID (api.atlassian.com form), a classic "
    "token the site URL in JIRA_BASE_URL; tokens expire after at most a year",
    ("Jira", ForbiddenError): "the account is known but not allowed: it needs Browse projects, "
    "Create issues and Browse users and groups in the target projects",
}


def explain(service: str, error: Exception) -> str:
    for (name, kind), advice in ADVICE.items():
        if name == service and isinstance(error, kind):
            return f"{error} -> {advice}"
    return str(error)


async def _check_peopleforce(settings: Settings) -> str:
    from core.peopleforce.client import PeopleForceClient

    async with PeopleForceClient.from_settings(settings) as peopleforce:
        await peopleforce.check()
    return f"reachable at {settings.peopleforce_base_url}, key accepted"


async def _check_jira(settings: Settings) -> str:
    from core.jira.client import JiraClient

    async with JiraClient.from_settings(settings) as jira:
        me = await jira.myself()
    return f"reachable at {settings.jira_api_base}, signed in as {me.display_name}"


async def _check_database(settings: Settings) -> str:
    from core.database import check_writable

    await check_writable(settings.effective_database_url)
    return f"writable: {settings.effective_database_url}"


async def _run_check(
    name: str, service: str, check: Callable[[Settings], Awaitable[str]], settings: Settings
) -> CheckResult:
    started = time.monotonic()
    try:
        detail = await asyncio.wait_for(check(settings), timeout=30)
    except SettingsError as error:
        return CheckResult(name, False, str(error))
    except ApiError as error:
        return CheckResult(name, False, explain(service, error))
    except TimeoutError:
        return CheckResult(name, False, "no answer within 30 s")
    except Exception as error:  # doctor reports every failure as a line, whatever it is
        return CheckResult(name, False, f"{type(error).__name__}: {error}")
    return CheckResult(name, True, f"{detail} ({(time.monotonic() - started) * 1000:.0f} ms)")


async def run_checks(settings: Settings) -> list[CheckResult]:
    checks = [
        ("peopleforce", "PeopleForce", _check_peopleforce),
        ("jira", "Jira", _check_jira),
        ("database", "database", _check_database),
    ]
    return list(await asyncio.gather(*(_run_check(n, s, c, settings) for n, s, c in checks)))


@app.command()
def doctor() -> None:
    """Check settings, PeopleForce, Jira and the database; exit non-zero when any check fails."""
    try:
        settings = get_settings()
    except SettingsError as error:
        console.print(f"[red]FAIL[/] settings     {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    configure_logging(settings, level="WARNING", component="cli")
    results = [CheckResult("settings", True, "valid"), *asyncio.run(run_checks(settings))]
    for result in results:
        mark = "[green]ok  [/]" if result.ok else "[red]FAIL[/]"
        console.print(f"{mark} {result.name:<12} {result.detail}", highlight=False, soft_wrap=True)
    if not all(result.ok for result in results):
        raise typer.Exit(1)


@app.command()
def up(
    sandbox: Annotated[
        bool,
        typer.Option(
            "--sandbox",
            help="Also run both simulators and point the service at them (no credentials needed).",
        ),
    ] = False,
) -> None:
    """Run the service on this host: Prefect server, served deployments, webhook gateway.

    Prints the URLs once everything answers; Ctrl-C stops it all. A part that dies is reported
    with the end of its log (under DATA_DIR/logs) and the command exits non-zero.
    """
    from core.stack import run_stack

    raise typer.Exit(run_stack(load_settings(), sandbox=sandbox))


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr and the exit code: the way every command reports a failure."""
    errors.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# --- the inbox: `events` and `replay` ----------------------------------------------------------


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def open_inbox_database(settings: Settings) -> str:
    """The database URL, refusing a SQLite file that does not exist (rather than creating one)."""
    from sqlalchemy.engine import make_url

    # Opening the store runs its migrations; alembic's INFO lines would only clutter the output.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    url = settings.effective_database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database or "")
        if not path.exists():
            fail(
                f"no store at {path}: nothing was received with DATA_DIR={settings.data_dir} "
                "(run the command where `up` runs, or set DATA_DIR / DATABASE_URL)"
            )
    return url


STATUS_STYLES = {"pending": "yellow", "dispatched": "cyan", "done": "green", "failed": "red"}


@app.command()
def events(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000, help="How many.")] = 20,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only events in this state: pending, ignored, dispatched, done, failed.",
        ),
    ] = None,
) -> None:
    """List the latest webhook events in the inbox, newest first, and what became of them."""
    from core.store import EventStatus, InboxRepository, MappingStore, WebhookEvent

    settings = load_settings()
    try:
        wanted = EventStatus(status) if status else None
    except ValueError:
        choices = ", ".join(member.value for member in EventStatus)
        fail(f"--status {status!r} is not an event status ({choices})", code=2)
    url = open_inbox_database(settings)

    async def read() -> list[WebhookEvent]:
        async with await MappingStore.open(url) as store:
            return await InboxRepository(store.engine).recent(limit, wanted)

    found = asyncio.run(read())
    if not found:
        console.print(f"no {wanted.value + ' ' if wanted else ''}events in {url}", highlight=False)
        return
    header = ["received", "key", "action", "employee", "status", "flow run", "outcome"]
    rows = [
        [
            event.received_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            event.event_key,
            event.action,
            str(event.employee_id) if event.employee_id is not None else "-",
            event.status.value,
            event.flow_run_id or "-",
            # One line: an outcome may hold a whole error message.
            shorten(" ".join((event.outcome or "").split()), 100),
        ]
        for event in found
    ]
    # Plain columns at their natural width, like `kubectl get`: nothing is cut (`replay KEY`
    # needs the whole key); a narrow terminal wraps the lines, `| less -S` keeps them apart.
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)] + [0]
    for number, row in enumerate([header, *rows]):
        cells = []
        for name, cell, width in zip(header, row, widths, strict=True):
            text = escape(cell.rjust(width) if name == "employee" else cell.ljust(width))
            if number == 0:
                text = f"[bold]{text}[/]"
            elif name == "status" and (style := STATUS_STYLES.get(cell)):
                text = f"[{style}]{text}[/]"
            cells.append(text)
        console.print("  ".join(cells), soft_wrap=True, highlight=False)
    console.print(
        f"{len(found)} events, newest first. `pf-jira-sync replay KEY` dispatches one again.",
        highlight=False,
    )


@app.command()
def replay(
    key: Annotated[str, typer.Argument(help="The event key, as `events` shows it.")],
) -> None:
    """Dispatch a stored webhook event again: it goes back to pending for the gateway's dispatcher."""
    from core.store import InboxRepository, MappingStore, WebhookEvent

    settings = load_settings()
    url = open_inbox_database(settings)

    async def requeue() -> tuple[WebhookEvent | None, WebhookEvent | None]:
        async with await MappingStore.open(url) as store:
            inbox = InboxRepository(store.engine)
            before = await inbox.get(key)
            return before, await inbox.requeue(key)

    try:
        before, event = asyncio.run(requeue())
    except ValueError as error:  # an event about no employee: nothing to run
        fail(str(error))
    if before is None or event is None:
        fail(f"no event with key {key!r} (see `pf-jira-sync events`)")
    was = before.status.value + (f", flow run {before.flow_run_id}" if before.flow_run_id else "")
    console.print(
        f"requeued {event.event_key} ({event.action}, employee {event.employee_id}; was {was}): "
        "the gateway's dispatcher hands it to Prefect again as soon as it runs",
        highlight=False,
        soft_wrap=True,
    )


# --- scale-out on a Prefect work pool: `deploy` and `worker` ------------------------------------


def prefect_api_url(
    settings: Settings,
    why: str = "give the Prefect server's API, e.g. http://prefect-server:4200/api",
) -> str:
    """PREFECT_API_URL, or exit 2 saying why the command needs it."""
    if not settings.prefect_api_url:
        fail(f"PREFECT_API_URL is not set: {why}", code=2)
    return str(settings.prefect_api_url).rstrip("/")


def describe_prefect_error(error: Exception, api_url: str) -> str:
    """One line for what went wrong talking to the Prefect server."""
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(error, httpx.TransportError):
        return f"no Prefect server answers at {api_url} ({type(error).__name__}: {error})"
    if isinstance(error, PrefectHTTPStatusError) and error.response.status_code == 401:
        return (
            f"the Prefect server at {api_url} refused the credentials: set PREFECT_API_AUTH_STRING "
            "to the server's PREFECT_SERVER_API_AUTH_STRING"
        )
    return f"the Prefect server at {api_url} refused: {type(error).__name__}: {error}"


def deploy_to_work_pool(settings: Settings, work_pool: str, concurrency_limit: int | None) -> None:
    """Register every deployment on the work pool and print them; exit 1 when Prefect refuses."""
    from deployments.work_pool import WorkPoolError, deploy_all

    async def deploy_everything() -> Any:
        try:
            return await deploy_all(work_pool, settings, concurrency_limit=concurrency_limit)
        except WorkPoolError as error:
            fail(str(error))

    deployed = run_on_prefect(prefect_api_url(settings), deploy_everything)
    for deployment in deployed:
        console.print(
            f"deployed {deployment.full_name} to work pool {work_pool} ({deployment.id})",
            highlight=False,
            soft_wrap=True,
        )


WorkPoolOption = Annotated[
    str | None,
    typer.Option("--work-pool", "-p", help="The work pool; default WORK_POOL (pf-jira-sync)."),
]


@app.command()
def deploy(
    work_pool: WorkPoolOption = None,
    concurrency_limit: Annotated[
        int | None,
        typer.Option(
            "--concurrency-limit",
            min=1,
            help="Flow runs at once over all the pool's workers (default: no pool-wide limit).",
        ),
    ] = None,
) -> None:
    """Register every deployment on a Prefect process work pool (created when missing).

    Same names as the served deployments, so the gateway needs no change. Then start
    `pf-jira-sync worker` on each host that should run flows. Safe to run again (an upgrade).
    """
    settings = load_settings()
    pool = work_pool or settings.work_pool
    deploy_to_work_pool(settings, pool, concurrency_limit)
    console.print(
        f"start workers on each host: pf-jira-sync worker --work-pool {pool}", highlight=False
    )


def worker_environment(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a worker hands to its flow runs: this process's, plus `.env` (flow runs
    start in a temporary directory, where no `.env` is read), with paths made absolute and this
    interpreter's folder first on PATH (the worker starts `python -m prefect.engine`)."""
    from dotenv import dotenv_values

    environ = dict(os.environ if environ is None else environ)
    from_file = {name: value for name, value in dotenv_values(".env").items() if value and name}
    env = {**from_file, **environ}
    interpreter_dir = str(Path(sys.executable).parent)
    env.update(
        {
            "DATA_DIR": str(settings.data_dir.resolve()),
            "RULES_FILE": str(settings.rules_file.resolve()),
            "DATABASE_URL": settings.effective_database_url,
            "PREFECT_API_URL": prefect_api_url(settings),
            # Fail fast instead of a silent temporary server when the API is unreachable.
            "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
            "PATH": os.pathsep.join([interpreter_dir, env.get("PATH", "")]).rstrip(os.pathsep),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@app.command()
def worker(
    work_pool: WorkPoolOption = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, max=64, help="Flow runs at once on this host; default WORKER_LIMIT."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The worker's name in the Prefect UI.")
    ] = None,
    deploy_first: Annotated[
        bool,
        typer.Option(
            "--deploy", help="Register the work pool and the deployments first (as `deploy`)."
        ),
    ] = False,
    with_healthcheck: Annotated[
        bool,
        typer.Option(
            "--with-healthcheck",
            help="Serve GET /health on PREFECT_WORKER_WEBSERVER_PORT (default 8080).",
        ),
    ] = False,
) -> None:
    """Run a Prefect process worker for this service's deployments, until Ctrl-C.

    Start one on each host that should run flows; all of them share one Prefect server and the
    mapping store (DATABASE_URL on PostgreSQL). Flow runs get this service's settings.
    """
    from sqlalchemy.engine import make_url

    from core.rules import RulesError, load_rules

    settings = load_settings()
    pool = work_pool or settings.work_pool
    env = worker_environment(settings)
    try:
        load_rules(settings.rules_file)  # every flow run reads them: refuse a bad file now
    except RulesError as error:
        fail(str(error), code=2)
    if make_url(settings.effective_database_url).get_backend_name() == "sqlite":
        errors.print(
            f"[yellow]note:[/] the mapping store is a SQLite file on this host "
            f"({settings.effective_database_url}): workers on other hosts need the same "
            "DATABASE_URL, a PostgreSQL database",
            highlight=False,
            soft_wrap=True,
        )
    if deploy_first:
        deploy_to_work_pool(settings, pool, None)
    command = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--limit",
        str(limit or settings.worker_limit),
    ]
    if name:
        command += ["--name", name]
    if with_healthcheck:
        command.append("--with-healthcheck")
    sys.stdout.flush()
    sys.stderr.flush()
    # The worker becomes this process: signals (Ctrl-C, `docker stop`) reach it directly.
    os.execve(sys.executable, command, env)  # noqa: S606 (our own interpreter, no shell)


# --- alerts on failed runs: `alerts install|remove|test` -----------------------------------------

alerts_app = typer.Typer(
    help="Alerts on failed runs: a Prefect automation posts each failed or crashed run of the "
    "deployments to ALERT_WEBHOOK_URL (a Slack or Teams incoming webhook, or any URL).",
    no_args_is_help=True,
)
app.add_typer(alerts_app, name="alerts")


def alert_settings() -> tuple[Settings, str]:
    """The settings and the Prefect API URL, or exit 2 naming what is missing."""
    settings = load_settings()
    why = (
        "the alerts are an automation in that Prefect server (e.g. http://127.0.0.1:4200/api; "
        "`up` installs them itself when ALERT_WEBHOOK_URL is set)"
    )
    return settings, prefect_api_url(settings, why)


def run_on_prefect(api_url: str, work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run `work` against the Prefect server at `api_url`; exit 1 with one line if it fails
    (an exit `work` asks for itself passes through)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            return asyncio.run(work())
    except typer.Exit:
        raise
    except Exception as error:
        fail(describe_prefect_error(error, api_url))


@alerts_app.command("install")
def alerts_install() -> None:
    """Create or update the automation and the webhook block (run again after changing the URL)."""
    from deployments.alerts import AUTOMATION_NAME, BLOCK_NAME, install_alerts

    settings, api_url = alert_settings()
    if settings.alert_webhook_url is None:
        fail("ALERT_WEBHOOK_URL is not set: the URL failed runs are posted to", code=2)
    url = settings.alert_webhook_url.get_secret_value()
    installed = run_on_prefect(api_url, lambda: install_alerts(url))
    console.print(
        f"{'installed' if installed.created else 'updated'} the automation {AUTOMATION_NAME!r} "
        f"({installed.automation_id}) in {api_url}: failed, crashed and timed-out runs of the "
        f"pf-jira-sync deployments are posted to the URL in the webhook block {BLOCK_NAME!r}",
        highlight=False,
        soft_wrap=True,
    )


@alerts_app.command("remove")
def alerts_remove() -> None:
    """Delete the automation: failed runs are no longer posted anywhere."""
    from deployments.alerts import AUTOMATION_NAME, uninstall_alerts

    _, api_url = alert_settings()
    removed = run_on_prefect(api_url, uninstall_alerts)
    console.print(
        f"removed {removed} automation(s) named {AUTOMATION_NAME!r} from {api_url}", highlight=False
    )


@alerts_app.command("test")
def alerts_test() -> None:
    """Post a test message to ALERT_WEBHOOK_URL directly (checks the URL, not Prefect)."""
    settings = load_settings()
    if settings.alert_webhook_url is None:
        fail("ALERT_WEBHOOK_URL is not set: the URL failed runs are posted to", code=2)
    body = {
        "text": "pf-jira-sync: test alert (`pf-jira-sync alerts test`); failed runs look like this"
    }
    try:
        response = httpx.post(settings.alert_webhook_url.get_secret_value(), json=body, timeout=15)
    except httpx.HTTPError as error:
        # The error text may hold the URL: it is a secret.
        fail(f"the alert webhook did not answer ({type(error).__name__})")
    if response.is_error:
        fail(f"the alert webhook refused the message: HTTP {response.status_code}")
    console.print(f"posted a test alert: HTTP {response.status_code}", highlight=False)


# --- reconciliation: `plan EMPLOYEE_ID` and `reconcile [--dry-run] [--force] [--full]` -----------

RECONCILE_DEPLOYMENT = "reconcile/scheduled"


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


def run_reading(work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a read against PeopleForce, Jira and the store; one line and exit 1 if it fails."""
    from core.reconcile import ListingError

    try:
        return asyncio.run(work())
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
    from core.jira.client import JiraClient
    from core.peopleforce.client import PeopleForceClient
    from core.plan import CreateIssue, Facts, Plan, plan_with_assets, today_in
    from core.reconcile import (
        ClientSources,
        ReadCounts,
        action_label,
        check_jira,
        describe_action,
        describe_inputs,
    )
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
                lambda: peopleforce.list_assets(employee_id),
            )

    facts, result = run_reading(read)
    name = result.employee_name or "(unknown)"
    console.print(f"[bold]Employee {employee_id} {escape(name)}[/]", highlight=False)
    console.print("[bold]Inputs[/]")
    inputs = describe_inputs(facts, rules, today)
    width = max(len(label) for label, _ in inputs)
    for label, value in inputs:
        console.print(f"  {label:<{width}}  {escape(value)}", highlight=False, soft_wrap=True)
    console.print("[bold]Actions[/]")
    if not result.actions:
        console.print("  none: Jira is in step for this employee", highlight=False)
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
        f"(no mapping store at {settings.effective_database_url} yet: planned as if this "
        "service had done nothing)",
        highlight=False,
        soft_wrap=True,
    )


def print_company_plan(company: Any, verdict: Any) -> None:
    from core.reconcile import action_counts, counts_line, plan_rows

    rows = plan_rows(company)
    if rows:
        table = Table("employee", "name", "action", "what", "why", header_style="bold")
        for row in rows:
            table.add_row(*(escape(value) for value in row.values()))
        console.print(table)
    reads = company.reads
    console.print(
        f"{company.today}: {len(company.needs_work)} of {company.returned} employees need work "
        f"({counts_line(action_counts(company))}). Read {reads.peopleforce_requests} "
        f"PeopleForce requests ({reads.full_records} full records), {reads.jira_searches} Jira "
        f"searches and {reads.jira_lookups} lookups.",
        highlight=False,
        soft_wrap=True,
    )
    mark = "[red]safeguard:[/]" if verdict.stop else "[green]safeguard:[/]"
    console.print(f"{mark} {escape(verdict.explain())}", highlight=False, soft_wrap=True)


def dry_run_reconcile(settings: Settings, full: bool) -> None:
    """Plan the whole company in this process (no Prefect) and print it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from core.jira.client import JiraClient
    from core.peopleforce.client import PeopleForceClient
    from core.plan import today_in
    from core.reconcile import ClientSources, plan_reconciliation, safeguard
    from core.store import EmployeeLink, MappingStore

    rules = load_reconcile_rules(settings)
    url = existing_store_url(settings)
    now = datetime.now().astimezone()
    today = today_in(rules.zone, now)

    async def read(progress: Progress) -> Any:
        bars: dict[str, TaskID] = {}

        def advance(what: str, done: int, total: int | None) -> None:
            if what not in bars:
                bars[what] = progress.add_task(what, total=total)
            progress.update(bars[what], completed=done, total=total)

        links: list[EmployeeLink] = []
        if url is not None:
            async with await MappingStore.open(url) as store:
                links = [link async for link in store.all_links()]
        async with (
            PeopleForceClient.from_settings(settings) as peopleforce,
            JiraClient.from_settings(settings) as jira,
        ):
            return await plan_reconciliation(
                ClientSources(peopleforce, jira),
                links,
                rules,
                today,
                now=now,
                concurrency=settings.reconcile_read_concurrency,
                lookback_days=settings.reconcile_lookback_days,
                full=full,
                progress=advance,
            )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=errors, transient=True) as progress:
        company = run_reading(lambda: read(progress))
    verdict = safeguard(
        company,
        max_share=settings.safeguard_max_share,
        max_offboard=settings.safeguard_max_offboard,
    )
    print_company_plan(company, verdict)
    if url is None:
        print_no_store_note(settings)


def reconcile_api_url(settings: Settings) -> str:
    """PREFECT_API_URL, or the Prefect server `pf-jira-sync up` starts on this host."""
    if settings.prefect_api_url:
        return str(settings.prefect_api_url).rstrip("/")
    return f"http://127.0.0.1:{settings.prefect_server_port}/api"


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
            tags=["manual"],
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
            reconcile_api_url(settings), lambda: run_reconcile_deployment(force, full)
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


# --- driving the PeopleForce simulator: `sandbox hire|update|terminate|revert|start` ------------


class SandboxControl:
    """The PeopleForce simulator's control endpoints (`/_sandbox`), which send the webhooks."""

    def __init__(self, settings: Settings) -> None:
        from core.stack import url_host

        self.url = f"http://{url_host(settings.sandbox_host)}:{settings.sandbox_peopleforce_port}"
        # A control call returns only after the simulator delivered its webhooks: allow for that.
        self.client = httpx.Client(base_url=self.url + "/_sandbox", timeout=60, trust_env=False)

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.client.request(method, path, json=body)
        except httpx.ConnectError:
            fail(f"no sandbox at {self.url}: start it with `pf-jira-sync up --sandbox`")
        except httpx.TransportError as error:
            fail(f"the sandbox at {self.url} did not answer: {type(error).__name__}: {error}")
        if response.is_error:
            fail(f"the sandbox refused: {describe_refusal(response)}")
        return response.json()

    def last_delivery_id(self) -> int:
        return max((delivery["id"] for delivery in self.call("GET", "/webhooks")), default=0)

    def change(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        """Make the change, print the employee and each webhook it sent; exit 1 if one failed."""
        before = self.last_delivery_id()
        person = self.call(method, path, body)
        console.print(describe_person(person), highlight=False, soft_wrap=True)
        sent = [
            delivery
            for delivery in self.call("GET", "/webhooks")
            if delivery["id"] > before and delivery["employee_id"] == person["id"]
        ]
        if not sent:
            if self.call("GET", "/webhook-target")["url"]:
                reason = "PeopleForce sends none for this change"
            else:
                reason = (
                    "the simulator has no webhook target (`up --sandbox` points it at the gateway)"
                )
            console.print(f"no webhook sent: {reason}", highlight=False, soft_wrap=True)
            return
        for delivery in sent:
            console.print(describe_delivery(delivery), highlight=False, soft_wrap=True)
        if not all(delivery["ok"] for delivery in sent):
            fail("the webhook was not accepted: see the gateway's log (DATA_DIR/logs/gateway.log)")

    def today(self) -> date:
        return date.fromisoformat(self.call("GET", "/clock")["today"])


def describe_refusal(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, dict) and isinstance(body.get("detail"), list):  # FastAPI validation
        problems = [
            f"{'.'.join(str(part) for part in item.get('loc', [])[1:])}: {item.get('msg')}"
            for item in body["detail"]
        ]
        return "; ".join(problems)
    return f"HTTP {response.status_code}: {body}"


def describe_person(person: dict[str, Any]) -> str:
    name = " ".join(
        part for part in (person["first_name"], person["middle_name"], person["last_name"]) if part
    )
    line = (
        f"employee {person['id']} {name} ({person['status']}): {person['department']}, "
        f"{person['position']}, {person['location']}; hired on {person['hired_on']}"
    )
    if person.get("termination_effective_on"):
        line += f", leaves on {person['termination_effective_on']}"
    return line


def describe_delivery(delivery: dict[str, Any]) -> str:
    outcome = (
        f"{delivery['status_code']} in {delivery['duration_ms']:.0f} ms"
        if delivery["status_code"] is not None
        else delivery["error"]
    )
    mark = "" if delivery["ok"] else "FAILED "
    return f"webhook {delivery['action']} -> {delivery['url']}: {mark}{outcome}"


@sandbox_app.command("hire")
def sandbox_hire(
    full_name: Annotated[str, typer.Argument(metavar="FULL NAME", help='"First [Middle] Last"')],
    department: Annotated[str | None, typer.Option(help="e.g. Engineering, Sales")] = None,
    position: Annotated[str | None, typer.Option(help="default: Software Engineer")] = None,
    location: Annotated[str | None, typer.Option(help="default: Remote")] = None,
    hired_on: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], metavar="YYYY-MM-DD", help="default: today"),
    ] = None,
    in_days: Annotated[
        int | None, typer.Option(min=0, help="Hire date this many days after the sandbox's today.")
    ] = None,
    manager_id: Annotated[int | None, typer.Option(help="default: the department head")] = None,
    email: Annotated[str | None, typer.Option(help="default: made from the name")] = None,
) -> None:
    """Hire someone in the PeopleForce simulator, which sends the signed webhook(s)."""
    names = full_name.split()
    if len(names) < 2:
        fail(f"give a first and a last name, not {full_name!r}", code=2)
    if hired_on is not None and in_days is not None:
        fail("give --hired-on or --in-days, not both", code=2)
    body: dict[str, Any] = {
        "first_name": names[0],
        "last_name": names[-1],
        "middle_name": " ".join(names[1:-1]),
    }
    given = {
        "department": department,
        "position": position,
        "location": location,
        "manager_id": manager_id,
        "email": email,
    }
    body.update({name: value for name, value in given.items() if value is not None})
    with SandboxControl(load_settings()) as control:
        if in_days is not None:
            body["hired_on"] = (control.today() + timedelta(days=in_days)).isoformat()
        elif hired_on is not None:
            body["hired_on"] = hired_on.date().isoformat()
        control.change("POST", "/employees", body)


@sandbox_app.command("update")
def sandbox_update(
    employee_id: Annotated[int, typer.Argument(metavar="ID")],
    department: Annotated[str | None, typer.Option()] = None,
    position: Annotated[str | None, typer.Option()] = None,
    location: Annotated[str | None, typer.Option()] = None,
    manager_id: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Change an employee's profile in the simulator: `employee_update`."""
    given = {
        "department": department,
        "position": position,
        "location": location,
        "manager_id": manager_id,
    }
    changes = {name: value for name, value in given.items() if value is not None}
    if not changes:
        fail("nothing to change: give --department, --position, --location or --manager-id", 2)
    with SandboxControl(load_settings()) as control:
        control.change("PATCH", f"/employees/{employee_id}", changes)


@sandbox_app.command("terminate")
def sandbox_terminate(
    employee_id: Annotated[int, typer.Argument(metavar="ID")],
    on: Annotated[
        datetime | None,
        typer.Option(
            "--on",
            formats=["%Y-%m-%d"],
            metavar="YYYY-MM-DD",
            help="The last day; default today. A later date is scheduled (nightly batch).",
        ),
    ] = None,
) -> None:
    """Enter a termination: `employee_terminate` now, or `employee_update` for a later date."""
    body = {"effective_on": on.date().isoformat()} if on else {}
    with SandboxControl(load_settings()) as control:
        control.change("POST", f"/employees/{employee_id}/terminate", body)


@sandbox_app.command("revert")
def sandbox_revert(employee_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Cancel a termination (or reactivate a leaver): `employee_termination_revert`."""
    with SandboxControl(load_settings()) as control:
        control.change("POST", f"/employees/{employee_id}/revert")


@sandbox_app.command("start")
def sandbox_start(employee_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """The employee's first day, today: `employee_start`."""
    with SandboxControl(load_settings()) as control:
        control.change("POST", f"/employees/{employee_id}/start")


@sandbox_app.callback(invoke_without_command=True)
def sandbox(ctx: typer.Context) -> None:
    """Run the PeopleForce and Jira simulators on loopback until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from sandbox.stack import Simulators

    settings = load_settings()
    # Ctrl-C and SIGTERM stop them, also when started as a background job of a script (which
    # inherits SIGINT ignored, and Python then keeps it ignored).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    with Simulators.from_settings(settings) as simulators:
        for line in simulators.describe():
            console.print(line, highlight=False, soft_wrap=True)
        console.print("Ctrl-C stops them.")
        try:
            while simulators.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping")
            return
    errors.print("[red]a simulator stopped unexpectedly[/]")
    raise typer.Exit(1)


if __name__ == "__main__":
    app()
