"""The webhook inbox: `events` (what arrived and what became of it) and `replay REF`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import app, console, fail, load_settings, run_on_store
from core.settings import Settings, mask_url


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


STATUS_STYLES = {
    "pending": "yellow",
    "dispatched": "cyan",
    "done": "green",
    "failed": "red",
    "set_aside": "magenta",
}


@app.command()
def events(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000, help="How many.")] = 20,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only events in this state: pending, ignored, dispatched, done, failed, "
            "set_aside (events the dispatcher could not turn into work, with the reason).",
        ),
    ] = None,
) -> None:
    """List the latest webhook events in the inbox, newest first, and what became of them."""
    from core.render import EVENT_COLUMNS, event_row
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

    found = run_on_store(read, url)
    if not found:
        console.print(
            f"no {wanted.value + ' ' if wanted else ''}events in {mask_url(url)}", highlight=False
        )
        return
    # As wide as the terminal (80 when not one, COLUMNS when set): the short columns never
    # wrap, the outcome wraps inside its own column, so rows stay apart at any width.
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", expand=False)
    for column in EVENT_COLUMNS:
        if column == "outcome":
            table.add_column(column, overflow="fold", ratio=1)
        else:
            table.add_column(
                column, no_wrap=True, justify="right" if column == "employee" else "left"
            )
    for event in found:
        row = event_row(event)
        cells = [escape(row[column]) for column in EVENT_COLUMNS]
        if style := STATUS_STYLES.get(row["status"]):
            cells[EVENT_COLUMNS.index("status")] = (
                f"[{style}]{cells[EVENT_COLUMNS.index('status')]}[/]"
            )
        table.add_row(*cells)
    console.print(table, highlight=False)
    console.print(
        f"{len(found)} events, newest first. `pf-jira-sync replay REF` dispatches one again, "
        "`replay --employee ID` their latest.",
        highlight=False,
    )


@app.command()
def replay(
    reference: Annotated[
        str | None,
        typer.Argument(
            metavar="REF",
            help="The event's short reference as `events` shows it (e17), or its full key.",
        ),
    ] = None,
    employee_id: Annotated[
        str | None,
        typer.Option(
            "--employee",
            metavar="ID",
            help="Replay the latest event about this employee: their whole state is synced "
            "again, so one event is enough.",
        ),
    ] = None,
) -> None:
    """Dispatch a stored webhook event again: it goes back to pending for the gateway's dispatcher.

    The run reads the employee afresh: their latest event re-syncs everything about them.
    """
    from core.store import InboxRepository, MappingStore, WebhookEvent
    from core.store.inbox import REF_PREFIX, parse_ref

    if (reference is None) == (employee_id is None):
        fail(
            "give the event's reference (e17, as `pf-jira-sync events` shows it), its full key, "
            "or --employee ID, not " + ("both" if reference is not None else "neither"),
            code=2,
        )
    if reference is not None and reference.strip().isdigit():
        fail(
            f"{reference!r} is no event reference: references start with "
            f"{REF_PREFIX!r} ({REF_PREFIX}{reference.strip()}, as `pf-jira-sync events` shows "
            f"them); for employee {reference.strip()} use --employee {reference.strip()}",
            code=2,
        )
    employee = None
    if employee_id is not None:
        employee = int(employee_id) if employee_id.strip().isdigit() else 0
        if employee < 1:
            fail(f"--employee {employee_id!r} is not an employee id (a number like 1041)", code=2)
    settings = load_settings()
    url = open_inbox_database(settings)

    async def requeue() -> tuple[WebhookEvent | None, WebhookEvent | None]:
        async with await MappingStore.open(url) as store:
            inbox = InboxRepository(store.engine)
            if employee is not None:
                before = await inbox.latest_of(employee)
            elif (event_id := parse_ref(reference or "")) is not None:
                before = await inbox.get_by_id(event_id)
            else:
                before = await inbox.get((reference or "").strip())
            if before is None:
                return None, None
            return before, await inbox.requeue(before.event_key)

    try:
        before, event = run_on_store(requeue, url)
    except ValueError as error:  # an event about no employee: nothing to run
        fail(str(error), code=2)
    if before is None or event is None:
        asked = f"about employee {employee}" if employee is not None else repr(reference)
        fail(f"no event {asked} in the inbox (see `pf-jira-sync events`)", code=2)
    was = before.status.value + (f", flow run {before.flow_run_id}" if before.flow_run_id else "")
    which = (
        f", the latest event about employee {employee}: {event.action}"
        if employee is not None
        else f": {event.action} of employee {event.employee_id}"
    )
    console.print(
        f"requeued {event.ref}{which}, received {event.received_at.astimezone():%Y-%m-%d %H:%M:%S}"
        f" (was {was}). The gateway's dispatcher hands it to Prefect again as soon as it runs.",
        highlight=False,
    )
