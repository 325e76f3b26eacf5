"""`why` (one employee's story: their webhooks, flow runs, the plan's reasons and the Jira
effects, oldest first) and `stuck` (the work that is not moving, each with the command that
re-drives it)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

import typer
from rich.markup import escape

from cli.app import (
    app,
    console,
    errors,
    fail,
    load_settings,
    prefect_api_url_or_local,
    run_on_store,
    wrapping_table,
)
from cli.inbox import open_inbox_database, parse_age
from core import one_host
from core.settings import mask_url

if TYPE_CHECKING:
    from core.render import FlowRunFacts
    from core.store import EmployeeLease, JiraEffect, WebhookEvent

# `IT-42`, `it-42`: a Jira issue key (a project key, a dash, a number).
_ISSUE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*-\d+")
# How long `why` waits for Prefect before it shows the runs by id: it answers from the store.
PREFECT_TIMEOUT = 10.0
# At most this many of the employee's flow runs are asked of Prefect.
MAX_RUNS = 200


@dataclass(frozen=True)
class Story:
    employee_id: int
    events: list[WebhookEvent]
    effects: list[JiraEffect]


@app.command()
def why(
    subject: Annotated[
        str,
        typer.Argument(
            metavar="KEY-or-EMPLOYEE",
            help="A Jira issue key this service made (IT-42) or a PeopleForce employee id (1041).",
        ),
    ],
) -> None:
    """Why an issue exists, what was done for an employee: their webhook events, flow runs
    (with their Prefect UI links), the plan's reasons and the Jira effects, newest last."""
    from core.store import MappingStore, employee_story

    text = subject.strip()
    if text.isdigit() and int(text) > 0:
        issue_key, employee = None, int(text)
    elif _ISSUE_KEY.fullmatch(text):
        issue_key, employee = text.upper(), None
    else:
        fail(f"{subject!r} is neither a Jira issue key (IT-42) nor an employee id (1041)", code=2)
    settings = load_settings()
    url = open_inbox_database(settings)

    async def read() -> Story | None:
        async with await MappingStore.open(url) as store:
            employee_id = employee
            if issue_key is not None:
                employee_id = await store.employee_of_issue(issue_key)
            if employee_id is None:
                return None
            return Story(employee_id, *await employee_story(store, employee_id))

    story = run_on_store(read, url)
    if story is None:
        fail(f"no employee in {mask_url(url)} has Jira issue {issue_key}", code=1)
    if not story.events and not story.effects:
        fail(f"nothing about employee {story.employee_id} in {mask_url(url)}", code=1)
    # Oldest first, as the store has them, so that the newest are kept past `MAX_RUNS`.
    named = sorted(
        [(event.received_at, event.flow_run_id) for event in story.events if event.flow_run_id]
        + [(effect.at, effect.flow_run_id) for effect in story.effects if effect.flow_run_id]
    )
    run_ids = list(dict.fromkeys(run_id for _at, run_id in named))
    api_url = prefect_api_url_or_local(settings)
    runs, problem = read_flow_runs(api_url, story.employee_id, run_ids)
    from core.render import TIMELINE_COLUMNS, prefect_ui_url, timeline_rows

    rows = timeline_rows(story.events, story.effects, runs, prefect_ui_url(api_url))
    about = f"Jira {issue_key} belongs to employee" if issue_key else "employee"
    console.print(f"{about} {story.employee_id}, oldest first:", highlight=False)
    table = wrapping_table(TIMELINE_COLUMNS, "text")
    for row in rows:
        text = escape(row["text"])
        if link := row["link"]:
            # A terminal makes the link clickable, whole, however the column folds it.
            text = text.removesuffix(escape(link)) + f"[link={link}]{escape(link)}[/link]"
        table.add_row(escape(row["time"]), escape(row["source"]), text)
    console.print(table, highlight=False)
    if problem:
        errors.print(
            f"[yellow]note:[/] {escape(problem)}: flow runs shown by id, without their names "
            "and states",
            highlight=False,
            soft_wrap=True,
        )


def read_flow_runs(
    api_url: str, employee_id: int, run_ids: Sequence[str]
) -> tuple[dict[str, FlowRunFacts], str | None]:
    """The employee's flow runs as Prefect knows them (those the store names, and those
    tagged `employee:<id>`), or none and why not: `why` answers from the store whatever
    Prefect does, within `PREFECT_TIMEOUT`."""
    from cli.app import describe_prefect_error

    try:
        return asyncio.run(
            asyncio.wait_for(_flow_runs(api_url, employee_id, run_ids), PREFECT_TIMEOUT)
        ), None
    except TimeoutError:
        return {}, f"no answer from Prefect at {mask_url(api_url)} within {PREFECT_TIMEOUT:g} s"
    except Exception as error:  # a note, whatever it is: the store's story stands
        return {}, describe_prefect_error(error, api_url)


async def _flow_runs(
    api_url: str, employee_id: int, run_ids: Sequence[str]
) -> dict[str, FlowRunFacts]:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from core.names import employee_tags
    from core.render import FlowRunFacts

    ids = [UUID(run_id) for run_id in run_ids if _is_uuid(run_id)][-MAX_RUNS:]
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            found = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=employee_tags([employee_id]))
                ),
                sort=FlowRunSort.START_TIME_DESC,
                limit=MAX_RUNS,
            )
            if ids:
                found += await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=MAX_RUNS
                )
    return {
        str(run.id): FlowRunFacts(
            id=str(run.id),
            name=run.name,
            state=(run.state.name if run.state else None) or "unknown",
            start=run.start_time or run.expected_start_time,
        )
        for run in found
    }


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Stuck:
    now: datetime
    waiting: list[WebhookEvent]
    failed: list[WebhookEvent]
    lapsed_at: datetime
    lapsed: list[EmployeeLease]


@app.command()
def stuck(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Events count as stuck once waiting longer than this (90s, 10m, 2h, 3d).",
        ),
    ] = "10m",
    fail_on_stuck: Annotated[
        bool,
        typer.Option(
            "--fail-on-stuck", help="Exit 1 when anything is stuck (for a monitor's check)."
        ),
    ] = False,
) -> None:
    """What is not moving: inbox events waiting longer than --older-than, employees whose last
    work failed, leases held past their expiry; each with its age and the command that
    re-drives it. Exit 0 (with --fail-on-stuck: 1 when anything is stuck)."""
    from core.render import stuck_event_row, stuck_failed_row, stuck_lease_row
    from core.store import InboxRepository, Leases, MappingStore
    from core.store.models import utc_now

    try:
        age = parse_age(older_than)
    except ValueError as error:
        fail(str(error), code=2)
    settings = load_settings()
    url = open_inbox_database(settings)

    async def read() -> Stuck:
        async with await MappingStore.open(url) as store:
            inbox = InboxRepository(store.engine)
            now = utc_now()
            waiting = await inbox.waiting_since(now - age)
            failed = await inbox.last_work_failed()
            lapsed_at, lapsed = await Leases(store.engine).held_past_expiry()
            return Stuck(now, waiting, failed, lapsed_at, lapsed)

    found = run_on_store(read, url)
    # How this program is typed here (`.venv/bin/pf-jira-sync`), for pasting as printed.
    program = one_host.command()
    sections = [
        (
            f"inbox events waiting longer than {older_than}",
            [stuck_event_row(event, found.now, program) for event in found.waiting],
        ),
        (
            "employees whose last work failed",
            [stuck_failed_row(event, found.now, program) for event in found.failed],
        ),
        (
            "leases held past expiry",
            [
                stuck_lease_row(
                    lease.employee_id, lease.holder, lease.expires_at, found.lapsed_at, program
                )
                for lease in found.lapsed
            ],
        ),
    ]
    if not any(rows for _, rows in sections):
        console.print(
            f"nothing stuck in {mask_url(url)} (no event waiting longer than {older_than}, "
            "no employee whose last work failed, no lapsed lease)",
            highlight=False,
        )
        return
    for title, rows in sections:
        if not rows:
            continue
        console.print(f"[bold]{escape(title)}[/] ({len(rows)})", highlight=False)
        # Two lines a row, the command on its own: whole and pasteable at any width.
        table = wrapping_table(("age", "what"), "what", right={"age"})
        table.show_header = False
        for row in rows:
            table.add_row(
                escape(row["age"]),
                f"{escape(row['what'])}: {escape(row['state'])}\n"
                f"re-drive: {escape(row['re-drive'])}",
            )
        console.print(table, highlight=False)
    if fail_on_stuck:
        raise typer.Exit(1)
