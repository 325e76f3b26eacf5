"""`pf-jira-sync`: the operator's command line. This module holds the Typer app and what every
command shares (settings, one-line failures, reaching Prefect); the commands live beside it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core import one_host
from core.errors import is_transient_store_error
from core.logging import configure_logging, redact
from core.settings import Settings, SettingsError, get_settings, mask_url

app = typer.Typer(
    name="pf-jira-sync",
    help="Keep Jira in step with PeopleForce.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)


def read_settings(*, running_sandbox: bool = True) -> Settings:
    """The settings; raises SettingsError.

    With `running_sandbox`, when `up --sandbox` runs on this DATA_DIR and the settings name no
    real PeopleForce or Jira, the sandbox's settings (its simulators, store and Prefect server)
    take their place, and one line on stderr says so: a newcomer's `doctor`, `plan` or `events`
    next to `make run` then speaks about what runs, not about an unconfigured production.
    """
    settings = get_settings()
    if not running_sandbox or one_host.names_real_services(settings):
        return settings
    sandbox = one_host.running_sandbox(settings.data_dir)
    if sandbox is None:
        return settings
    os.environ.update(sandbox.settings)
    get_settings.cache_clear()
    settings = get_settings()
    errors.print(
        f"[yellow]note:[/] using the sandbox `up --sandbox` runs (pid {sandbox.pid}; settings "
        f"from {sandbox.path}); set PEOPLEFORCE_API_KEY and the Jira settings for real ones",
        highlight=False,
        soft_wrap=True,
    )
    return settings


def load_settings(*, running_sandbox: bool = True) -> Settings:
    """The settings, or one line naming what is wrong and exit code 2 (never a traceback);
    those of a running sandbox as `read_settings` says, unless `running_sandbox` is False."""
    try:
        settings = read_settings(running_sandbox=running_sandbox)
    except SettingsError as error:
        errors.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    configure_logging(settings, component="cli")
    return settings


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr and the exit code: the way every command reports a failure (with
    every secret the settings hold masked, should an error's text carry one)."""
    errors.print(f"[red]error:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def prefect_api_url(
    settings: Settings,
    why: str = "give the Prefect server's API, e.g. http://prefect-server:4200/api",
) -> str:
    """PREFECT_API_URL, or exit 2 saying why the command needs it."""
    if not settings.prefect_api_url:
        fail(f"PREFECT_API_URL is not set: {why}", code=2)
    return str(settings.prefect_api_url).rstrip("/")


def prefect_api_url_or_local(settings: Settings) -> str:
    """PREFECT_API_URL, or the Prefect server `pf-jira-sync up` starts on this host."""
    if settings.prefect_api_url:
        return str(settings.prefect_api_url).rstrip("/")
    return f"http://127.0.0.1:{settings.prefect_server_port}/api"


def describe_prefect_error(error: Exception, api_url: str) -> str:
    """One line for what went wrong talking to the Prefect server."""
    from prefect.exceptions import PrefectHTTPStatusError

    api_url = mask_url(api_url)
    if isinstance(error, httpx.TransportError):
        return f"no Prefect server answers at {api_url} ({type(error).__name__}: {error})"
    if isinstance(error, PrefectHTTPStatusError) and error.response.status_code == 401:
        return (
            f"the Prefect server at {api_url} refused the credentials: set PREFECT_API_AUTH_STRING "
            "to the server's PREFECT_SERVER_API_AUTH_STRING"
        )
    return f"the Prefect server at {api_url} refused: {type(error).__name__}: {error}"


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


def run_on_store(work: Callable[[], Coroutine[Any, Any, Any]], url: str) -> Any:
    """Run `work` against the mapping store at `url`; a store that does not answer (a server
    that is down, a wrong host or port) is one line and exit 1, not a traceback."""
    try:
        return asyncio.run(work())
    except typer.Exit:
        raise
    except Exception as error:
        if not is_transient_store_error(error):
            raise
        fail(
            f"the mapping store at {mask_url(url)} does not answer "
            f"({type(error).__name__}): is the database running, and DATABASE_URL right?"
        )


def wrapping_table(columns: Sequence[str], wraps: str, *, right: Collection[str] = ()) -> Table:
    """A borderless, empty table as wide as the terminal (80 when not one, COLUMNS when set):
    the short columns never wrap (those in `right` align right), the `wraps` column folds
    inside itself, so rows stay apart at any width."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", expand=False)
    for column in columns:
        if column == wraps:
            table.add_column(column, overflow="fold", ratio=1)
        else:
            table.add_column(column, no_wrap=True, justify="right" if column in right else "left")
    return table
