"""The webhook inbox: `events` (what arrived and what became of it) and `replay KEY`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cli.app import app, console, fail, load_settings, shorten
from core.settings import Settings


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
