"""`config` and `doctor`: the effective settings, and whether PeopleForce, Jira and the store answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import app, console, load_settings, read_settings
from core.errors import ApiError, AuthenticationError, ForbiddenError
from core.logging import configure_logging, redact
from core.settings import Settings, SettingsError, mask_url


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
        settings = read_settings()
    except SettingsError as error:
        console.print(f"[red]FAIL[/] settings     {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    configure_logging(settings, level="WARNING", component="cli")
    results = [CheckResult("settings", True, "valid"), *asyncio.run(run_checks(settings))]
    for result in results:
        mark = "[green]ok  [/]" if result.ok else "[red]FAIL[/]"
        # An error's text may quote a URL or a credential: masked like every log line.
        detail = escape(redact(result.detail))
        console.print(f"{mark} {result.name:<12} {detail}", highlight=False, soft_wrap=True)
    if not all(result.ok for result in results):
        raise typer.Exit(1)
