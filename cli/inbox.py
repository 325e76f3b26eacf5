"""The webhook inbox: `events` (what arrived and what became of it) and `replay` (one event, or
many by status, age and employee)."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cli.app import app, console, fail, load_settings, run_on_store, wrapping_table
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
    "dispatching": "yellow",
    "dispatched": "cyan",
    "done": "green",
    "failed": "red",
    "set_aside": "magenta",
    "held": "magenta",
    "dropped": "dim",
}


@app.command()
def events(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000, help="How many.")] = 20,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only events in this state: pending, dispatching (being handed to Prefect), "
            "ignored, dispatched, done, failed, set_aside (events the dispatcher could not turn "
            "into work, with the reason), held (by the circuit breaker: `held` lists why), "
            "dropped (by `drop`).",
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
    table = wrapping_table(EVENT_COLUMNS, "outcome", right={"employee"})
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
        "`replay --employee ID` their latest, `replay --status failed --older-than 1h` many.",
        highlight=False,
    )


# What `replay --all` requeues when no --status is given: work that did not get done.
ALL_STATUSES = ("failed", "set_aside")
# `--older-than 90s`, `15m`, `2h`, `3d`: a unit always (a bare number would be a guess).
_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
# How many references `replay --status` lists before it counts the rest.
LISTED_REFS = 30


def parse_age(text: str) -> timedelta:
    """`90s`, `15m`, `2h`, `3d` as a duration; ValueError for anything else."""
    match = _AGE.fullmatch(text)
    if not match:
        raise ValueError(f"--older-than {text!r} is not an age: a number and s, m, h or d (2h)")
    return timedelta(seconds=float(match.group(1)) * _AGE_UNITS[match.group(2).lower()])


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
            "again, so one event is enough. With --status or --all: only their events.",
        ),
    ] = None,
    statuses: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="Requeue every event in this state (repeat for several): failed, set_aside, "
            "dispatched (a run that has them works them too: add --older-than), done, dropped.",
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="With --status: only events last changed longer ago than this (90s, 15m, 2h, 3d).",
        ),
    ] = None,
    everything: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Requeue every event of the --status given (without --status: every failed "
            "and set_aside event), however old; asks first, unless --yes.",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --all.")] = False,
) -> None:
    """Dispatch stored webhook events again: they go back to pending for the gateway's dispatcher.

    One event (REF, or --employee ID's latest), or in bulk: by status (--status), narrowed by
    age (--older-than) and employee (--employee), or --all of them. The run reads each employee
    afresh: their latest event re-syncs everything about them.
    """
    bulk = bool(statuses) or everything
    if bulk:
        if reference is not None:
            fail("give an event's reference, or --status / --all to requeue many, not both", code=2)
        replay_many(statuses or list(ALL_STATUSES), older_than, employee_id, everything, yes)
        return
    if older_than is not None:
        fail("--older-than selects events by --status: give --status too (or --all)", code=2)
    replay_one(reference, employee_id)


def replay_many(
    statuses: list[str],
    older_than: str | None,
    employee_id: str | None,
    everything: bool,
    yes: bool,
) -> None:
    """`replay --status ... [--older-than AGE] [--employee ID] [--all]`."""
    from core.store import EventStatus, InboxRepository, MappingStore, Requeued
    from core.store.inbox import REQUEUABLE_STATUSES
    from core.store.models import utc_now

    choices = ", ".join(sorted(REQUEUABLE_STATUSES))
    try:
        wanted = sorted({EventStatus(status) for status in statuses})
    except ValueError:
        fail(f"--status {', '.join(statuses)}: requeue only events {choices}", code=2)
    if EventStatus.held in wanted:
        fail(
            "--status held: held events go back to work with `pf-jira-sync release` (past the "
            "circuit breaker; `pf-jira-sync held` lists them), not replay",
            code=2,
        )
    if refused := [status.value for status in wanted if status not in REQUEUABLE_STATUSES]:
        fail(f"--status {', '.join(refused)}: requeue only events {choices}", code=2)
    try:
        age = parse_age(older_than) if older_than is not None else None
    except ValueError as error:
        fail(str(error), code=2)
    employee = employee_option(employee_id) if employee_id is not None else None
    if age is None and employee is None and not everything:
        fail(
            f"--status {', '.join(s.value for s in wanted)} alone selects every such event: "
            "narrow it with --older-than AGE or --employee ID, or say --all",
            code=2,
        )
    names = " and ".join(status.value for status in wanted)
    settings = load_settings()
    url = open_inbox_database(settings)

    async def count_selected() -> int:
        async with await MappingStore.open(url) as store:
            counts = await InboxRepository(store.engine).count_by_status()
        return sum(counts.get(status.value, 0) for status in wanted)

    if everything and age is None and employee is None and not yes:
        total = run_on_store(count_selected, url)
        if not total:
            console.print(f"no {names} events to requeue in {mask_url(url)}", highlight=False)
            return
        try:
            confirmed = typer.confirm(f"Requeue all {total} {names} events?", default=False)
        except typer.Abort:  # no answer (no terminal, end of input)
            fail(f"--all would requeue {total} {names} events: add --yes to go on", code=2)
        if not confirmed:
            console.print("nothing requeued", highlight=False)
            raise typer.Exit(1)

    async def requeue() -> list[Requeued]:
        async with await MappingStore.open(url) as store:
            return await InboxRepository(store.engine).requeue_matching(
                wanted,
                older_than=utc_now() - age if age is not None else None,
                employee_id=employee,
            )

    requeued = run_on_store(requeue, url)
    narrowed = "".join(
        [
            f" older than {older_than}" if older_than else "",
            f" about employee {employee}" if employee is not None else "",
        ]
    )
    if not requeued:
        console.print(f"no {names} events{narrowed} to requeue", highlight=False)
        return
    per_status = ", ".join(
        f"{sum(1 for event in requeued if event.was == status)} {status.value}"
        for status in wanted
        if any(event.was == status for event in requeued)
    )
    refs = ", ".join(event.ref for event in requeued[:LISTED_REFS])
    more = f" and {len(requeued) - LISTED_REFS} more" if len(requeued) > LISTED_REFS else ""
    count = f"{len(requeued)} event{'' if len(requeued) == 1 else 's'}"
    console.print(
        f"requeued {count}{narrowed} ({per_status}): {refs}{more}. The gateway's "
        "dispatcher hands them to Prefect again as soon as it runs.",
        highlight=False,
    )


def employee_option(employee_id: str) -> int:
    employee = int(employee_id) if employee_id.strip().isdigit() else 0
    if employee < 1:
        fail(f"--employee {employee_id!r} is not an employee id (a number like 1041)", code=2)
    return employee


def replay_one(reference: str | None, employee_id: str | None) -> None:
    """`replay REF` or `replay --employee ID` (their latest event)."""
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
    employee = employee_option(employee_id) if employee_id is not None else None
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
