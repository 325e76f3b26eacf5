"""`pf-jira-sync`: the operator's command line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
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
    configure_logging(settings.log_level)
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
    configure_logging("WARNING")
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
