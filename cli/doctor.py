"""`config` and `doctor`: the effective settings, and whether everything the service needs is
there: the rules file, PeopleForce, Jira and everything the rules name in it, Prefect, the store."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import (
    app,
    console,
    describe_prefect_error,
    load_settings,
    prefect_api_url_or_local,
    read_settings,
)
from core.errors import ApiError, AuthenticationError, ForbiddenError
from core.logging import configure_logging, redact
from core.rules import Rules, RulesError, load_rules
from core.rules_check import CANCELLED, JiraSite, Reads, check, reads
from core.settings import Settings, SettingsError, mask_url

if TYPE_CHECKING:
    from core.jira.client import JiraClient

CHECK_TIMEOUT = 30  # seconds each check may take
JIRA_READS_AT_ONCE = 8  # configuration reads sent to Jira at a time
JIRA_RULES = "jira-rules"
T = TypeVar("T")


@app.command()
def config() -> None:
    """Show the effective settings (secrets masked)."""
    settings = load_settings()
    # A value is never cut: in a narrow terminal it wraps inside its column (a path or URL
    # without spaces folds at the edge), and the names keep their column.
    table = Table(show_header=True, header_style="bold")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in settings.masked().items():
        table.add_row(name, escape(value) if value else "[dim](unset)[/]")
    console.print(table)


Status = Literal["ok", "FAIL", "warn", "skip"]


@dataclass
class CheckResult:
    name: str
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"


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
    return f"reachable at {mask_url(settings.peopleforce_base_url)}, key accepted"


async def _check_jira(settings: Settings) -> str:
    from core.jira.client import JiraClient

    async with JiraClient.from_settings(settings) as jira:
        me = await jira.myself()
    return f"reachable at {mask_url(settings.jira_api_base)}, signed in as {me.display_name}"


async def _check_database(settings: Settings) -> str:
    from core.database import check_writable

    await check_writable(settings.effective_database_url)
    return f"writable: {mask_url(settings.effective_database_url)}"


async def _run_check(
    name: str, service: str, check: Callable[[Settings], Awaitable[str]], settings: Settings
) -> CheckResult:
    started = time.monotonic()
    try:
        detail = await asyncio.wait_for(check(settings), timeout=CHECK_TIMEOUT)
    except Exception as error:  # doctor reports every failure as a line, whatever it is
        return CheckResult(name, "FAIL", _failure(service, error))
    return CheckResult(name, "ok", f"{detail} ({_elapsed(started)})")


def _failure(service: str, error: Exception) -> str:
    if isinstance(error, (SettingsError, RulesError)):
        return str(error)
    if isinstance(error, ApiError):
        return explain(service, error)
    if isinstance(error, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT} s"
    return f"{type(error).__name__}: {error}"


def _elapsed(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


# --------------------------------------------------------------------------- the rules


def check_rules_file(settings: Settings) -> tuple[CheckResult, Rules | None]:
    """The rules file loads and validates; the error names the entry otherwise."""
    try:
        rules = load_rules(settings.rules_file)
    except RulesError as error:
        return CheckResult("rules", "FAIL", str(error)), None
    projects = ", ".join(reads(rules).projects)
    detail = (
        f"{settings.rules_file}: valid (projects {projects}; {len(rules.routes)} routes, "
        f"{len(rules.field_map)} mapped fields)"
    )
    return CheckResult("rules", "ok", detail), rules


async def read_site(jira: JiraClient, wanted: Reads) -> JiraSite:
    """Everything `core.rules_check.check` holds the rules against, read from Jira (a few
    requests per project the rules name, at most `JIRA_READS_AT_ONCE` at a time)."""
    gate = asyncio.Semaphore(JIRA_READS_AT_ONCE)

    async def read(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    site = JiraSite()
    found = await asyncio.gather(*(read(jira.get_project(key)) for key in wanted.projects))
    site.projects = dict(zip(wanted.projects, found, strict=True))
    present = [key for key, project in site.projects.items() if project is not None]
    site.fields = await read(jira.list_fields())
    if len(present) < len(wanted.projects):  # what to offer instead
        site.visible_projects = await read(jira.list_projects())

    async def read_project(key: str) -> None:
        issue_types, statuses = await asyncio.gather(
            read(jira.create_issue_types(key)), read(jira.project_statuses(key))
        )
        site.issue_types[key], site.statuses[key] = issue_types, statuses
        used = [t for t in issue_types if t.name.casefold() in wanted.issue_types[key]]
        accounts = sorted(wanted.accounts[key])
        screens, assignable = await asyncio.gather(
            asyncio.gather(*(read(jira.create_fields(key, t.id)) for t in used)),
            asyncio.gather(*(read(jira.is_assignable(key, account)) for account in accounts)),
        )
        for issue_type, screen in zip(used, screens, strict=True):
            site.create_fields[(key, issue_type.id)] = screen
        for account, can in zip(accounts, assignable, strict=True):
            site.assignable[(key, account)] = can

    await asyncio.gather(*(read_project(key) for key in present))
    return site


async def check_rules_against_jira(settings: Settings, rules: Rules) -> list[CheckResult]:
    """One line when Jira has everything the rules name; otherwise one FAIL line per finding."""
    from core.jira.client import JiraClient

    started = time.monotonic()
    wanted = reads(rules)

    async def read() -> JiraSite:
        async with JiraClient.from_settings(settings) as jira:
            return await read_site(jira, wanted)

    try:
        site = await asyncio.wait_for(read(), timeout=CHECK_TIMEOUT)
    except Exception as error:  # a line, whatever it is
        return [CheckResult(JIRA_RULES, "FAIL", _failure("Jira", error))]
    findings = check(rules, site)
    if findings:
        return [CheckResult(JIRA_RULES, "FAIL", str(finding)) for finding in findings]
    accounts = len({a for ids in wanted.accounts.values() for a in ids})
    detail = (
        f"{', '.join(wanted.projects)} have the issue types, {len(rules.field_map)} mapped fields, "
        f"create screens, {CANCELLED} status and {accounts} fixed assignees the rules need "
        f"({_elapsed(started)})"
    )
    return [CheckResult(JIRA_RULES, "ok", detail)]


async def _jira_checks(settings: Settings, rules: Rules | None) -> list[CheckResult]:
    """Jira answers; then (when it does and the rules load) the rules against it."""
    reachable = await _run_check("jira", "Jira", _check_jira, settings)
    if rules is None:
        return [reachable, CheckResult(JIRA_RULES, "skip", "not checked: fix the rules file first")]
    if not reachable.ok:
        return [reachable, CheckResult(JIRA_RULES, "skip", "not checked: Jira does not answer")]
    return [reachable, *await check_rules_against_jira(settings, rules)]


# --------------------------------------------------------------------------- Prefect


async def _prefect_version(api_url: str) -> str:
    """The version of the Prefect server at `api_url`, asked with Prefect's own client (its
    auth settings, PREFECT_API_AUTH_STRING or PREFECT_API_KEY, apply); raises if it does not
    answer its health check."""
    # Importing Prefect takes a second or two of CPU: in a thread, so the other checks go on.
    await asyncio.to_thread(importlib.import_module, "prefect.client.orchestration")
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            error = await client.api_healthcheck()
            if error is not None:
                raise error
            return await client.api_version()


async def _connectable(port: int) -> None:
    """Raise `OSError` unless something accepts connections on this host's `port`."""
    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=5)
    writer.close()
    await writer.wait_closed()


async def check_prefect(settings: Settings) -> CheckResult:
    """The Prefect API answers. PREFECT_API_URL unset is a warning, not a failure: checking
    PeopleForce, Jira and the rules, and `plan`, need no Prefect; the commands that do (`up`'s
    gateway, `deploy`, `worker`) refuse to start without it, and `reconcile` uses the server
    `up` starts on this host, which is asked here in its place."""
    configured = settings.prefect_api_url
    api_url = prefect_api_url_or_local(settings)
    started = time.monotonic()
    try:
        if not configured:  # nothing listening: say so without loading Prefect's client
            await _connectable(settings.prefect_server_port)
        version = await asyncio.wait_for(_prefect_version(api_url), timeout=CHECK_TIMEOUT)
    except Exception as error:  # a line, whatever it is
        if configured:
            problem = (
                f"no answer from the Prefect server at {mask_url(api_url)} within {CHECK_TIMEOUT} s"
                if isinstance(error, TimeoutError)
                else describe_prefect_error(error, api_url)
            )
            return CheckResult("prefect", "FAIL", problem)
        return CheckResult(
            "prefect",
            "warn",
            f"PREFECT_API_URL is unset, and no Prefect server answers at {api_url}, where `up` "
            f"starts one ({type(error).__name__}): set PREFECT_API_URL for the gateway, `deploy`, "
            "`worker` and `reconcile` (checking Jira and the rules needs no Prefect)",
        )
    where = f"reachable at {mask_url(api_url)}, Prefect {version}"
    if not configured:
        where += " (PREFECT_API_URL is unset: the server `up` starts here)"
    return CheckResult("prefect", "ok", f"{where} ({_elapsed(started)})")


# --------------------------------------------------------------------------- the command


async def run_checks(settings: Settings) -> list[CheckResult]:
    rules_line, rules = check_rules_file(settings)
    peopleforce, jira, prefect, database = await asyncio.gather(
        _run_check("peopleforce", "PeopleForce", _check_peopleforce, settings),
        _jira_checks(settings, rules),
        check_prefect(settings),
        _run_check("database", "database", _check_database, settings),
    )
    return [rules_line, peopleforce, *jira, prefect, database]


MARKS: dict[Status, str] = {
    "ok": "[green]ok  [/]",
    "FAIL": "[red]FAIL[/]",
    "warn": "[yellow]warn[/]",
    "skip": "[dim]skip[/]",
}


@app.command()
def doctor() -> None:
    """Check settings, the rules file, PeopleForce, Jira and the rules against it, Prefect and
    the database; exit non-zero when any check fails."""
    try:
        settings = read_settings()
    except SettingsError as error:
        console.print(f"[red]FAIL[/] settings     {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    configure_logging(settings, level="WARNING", component="cli")
    results = [CheckResult("settings", "ok", "valid"), *asyncio.run(run_checks(settings))]
    for result in results:
        # An error's text may quote a URL or a credential: masked like every log line.
        detail = escape(redact(result.detail))
        console.print(
            f"{MARKS[result.status]} {result.name:<12} {detail}", highlight=False, soft_wrap=True
        )
    if not all(result.ok for result in results):
        raise typer.Exit(1)
