"""The circuit breaker on the webhook path: `held` (what it holds and why), `release` (send it to
Jira) and `drop` (send nothing). `core.store.breaker` says what it counts and when it trips."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from cli.app import app, console, fail, load_settings, run_on_store, wrapping_table
from cli.inbox import employee_option, open_inbox_database

if TYPE_CHECKING:
    from core.settings import Settings
    from core.store import BreakerState, HoldsEnded, Limits

# How many employees `release` and `drop` name before they count the rest.
LISTED = 20

EmployeesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--employee",
        metavar="ID",
        help="Only this employee's held work (repeat for several).",
    ),
]
AllOption = Annotated[bool, typer.Option("--all", help="Everything the breaker holds.")]


def breaker_limits(settings: Settings) -> Limits:
    from core.store import Limits

    return Limits.from_settings(settings)


def read_state(url: str, limits: Limits) -> BreakerState:
    from core.store import CircuitBreaker, MappingStore

    async def read() -> BreakerState:
        async with await MappingStore.open(url) as store:
            return await CircuitBreaker(store.engine).state(limits)

    return run_on_store(read, url)


@app.command()
def held() -> None:
    """List the work the circuit breaker holds on the webhook path: who, what, since, why."""
    from core.render import HOLD_COLUMNS, breaker_advice, breaker_headline, hold_row

    settings = load_settings()
    url = open_inbox_database(settings)
    limits = breaker_limits(settings)
    state = read_state(url, limits)
    console.print(escape(breaker_headline(state, limits)) + ".", highlight=False)
    if not state.open:
        return
    table = wrapping_table(HOLD_COLUMNS, "why", right={"events"})
    for hold in state.holds:
        row = hold_row(hold, state.held_events.get(hold.employee_id, 0))
        table.add_row(*(escape(row[column]) for column in HOLD_COLUMNS))
    console.print(table, highlight=False)
    console.print(escape(breaker_advice(listing=False)) + ".", highlight=False)


def chosen(employees: Sequence[str] | None, everything: bool, command: str) -> list[int] | None:
    """The employees `--employee` names, or None for `--all`; exit 2 unless exactly one."""
    if bool(employees) == everything:
        fail(
            f"say which held work to {command}: --all, or --employee ID (repeatable), "
            + ("not both" if everything else "not neither"),
            code=2,
        )
    return None if everything else sorted({employee_option(value) for value in employees or ()})


def confirmed(question: str, refusal: str, yes: bool) -> None:
    """Ask, unless `yes`; exit 1 on no, exit 2 without a terminal to ask on."""
    if yes:
        return
    try:
        answer = typer.confirm(question, default=False)
    except typer.Abort:  # no answer (no terminal, end of input)
        fail(refusal, code=2)
    if not answer:
        console.print("nothing changed", highlight=False)
        raise typer.Exit(1)


def end_holds(employee_ids: list[int] | None, how: str, url: str) -> HoldsEnded:
    from core.store import CircuitBreaker, MappingStore

    async def end() -> HoldsEnded:
        async with await MappingStore.open(url) as store:
            breaker = CircuitBreaker(store.engine)
            if how == "release":
                return await breaker.release(employee_ids)
            return await breaker.drop(employee_ids)

    return run_on_store(end, url)


def named(ended: HoldsEnded) -> str:
    names = ", ".join(hold.who for hold in ended.holds[:LISTED])
    more = f" and {len(ended.holds) - LISTED} more" if len(ended.holds) > LISTED else ""
    return names + more


def after(ended: HoldsEnded, limits: Limits) -> str:
    if ended.asked_not_held:
        not_held = ", ".join(map(str, ended.asked_not_held))
        console.print(f"not held: {not_held}", highlight=False)
    if ended.closed:
        return (
            "The circuit breaker is closed: its window starts again now "
            f"({limits.window_text}; what it admitted before no longer counts)."
        )
    return f"The circuit breaker stays open: {ended.still_held} employee(s) still held."


@app.command()
def release(
    employees: EmployeesOption = None,
    everything: AllOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --all.")] = False,
) -> None:
    """Let held work go to Jira: each employee's next run is admitted past the breaker, and
    their held webhook events go back to pending for the gateway's dispatcher."""
    employee_ids = chosen(employees, everything, "release")
    settings = load_settings()
    url = open_inbox_database(settings)
    limits = breaker_limits(settings)
    if employee_ids is None and not yes:
        state = read_state(url, limits)
        if not state.open:
            console.print("nothing is held: nothing to release", highlight=False)
            return
        confirmed(
            f"Release the held work of {len(state.holds)} employee(s) to Jira?",
            f"--all would release {len(state.holds)} employee(s): add --yes to go on",
            yes,
        )
    ended = end_holds(employee_ids, "release", url)
    if not ended.holds:
        after(ended, limits)
        fail("nothing of that is held (see `pf-jira-sync held`)")
    console.print(
        f"released {len(ended.holds)} employee(s): {named(ended)}. {len(ended.events)} held "
        "webhook event(s) are pending again: the gateway's dispatcher sends them as soon as it "
        f"runs, and their runs pass the breaker once. {after(ended, limits)}",
        highlight=False,
    )


@app.command()
def drop(
    employees: EmployeesOption = None,
    everything: AllOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
) -> None:
    """Drop held work: nothing is sent to Jira for it, and its webhook events end `dropped`."""
    employee_ids = chosen(employees, everything, "drop")
    settings = load_settings()
    url = open_inbox_database(settings)
    limits = breaker_limits(settings)
    which = "all the held work" if employee_ids is None else f"the held work of {employee_ids}"
    confirmed(f"Drop {which}? Nothing of it is sent to Jira.", "add --yes to drop", yes)
    ended = end_holds(employee_ids, "drop", url)
    if not ended.holds:
        after(ended, limits)
        fail("nothing of that is held (see `pf-jira-sync held`)")
    console.print(
        f"dropped the held work of {len(ended.holds)} employee(s): {named(ended)}. "
        f"{len(ended.events)} webhook event(s) ended dropped; nothing was sent to Jira. "
        "PeopleForce still says what it said: correct it there, or the nightly "
        "reconciliation plans the same work again (under its safeguard). "
        f"{after(ended, limits)}",
        highlight=False,
    )
