"""Steps that read and write the mapping store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from prefect import get_client
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from core.company import read_backlog
from core.retry import STORE_CALL
from core.store import (
    Admission,
    BreakerState,
    CircuitBreaker,
    EmployeeLink,
    InboxRepository,
    Intents,
    Limits,
    LinkChange,
    WebhookEvent,
    WorkResult,
)
from tasks.services import current


@STORE_CALL("read mapping · {who}")
async def read_mapping(
    employee_id: int, email: str | None, who: str
) -> tuple[EmployeeLink | None, EmployeeLink | None]:
    """This employee's link, and an earlier employee's link with the same email (a rehire)."""
    return await current().store.link_and_previous(employee_id, email)


@STORE_CALL("read all mappings")
async def read_all_links() -> list[EmployeeLink]:
    """Every employee link, for the reconciliation (read in pages of 500)."""
    return [link async for link in current().store.all_links()]


@STORE_CALL("record {action} · {who}")
async def record_effect(
    employee_id: int,
    action: str,
    who: str,
    *,
    issue_key: str | None = None,
    detail: dict[str, Any] | None = None,
    link_update: LinkChange | None = None,
) -> EmployeeLink:
    """Write the audit row and the link change for one Jira effect, in one transaction."""
    return await current().store.record_effect(
        employee_id,
        action,
        issue_key=issue_key,
        flow_run_id=_flow_run_id(),
        detail=detail,
        link_update=link_update,
    )


@STORE_CALL("announce {operation} · {who}")
async def announce_write(
    employee_id: int,
    operation: str,
    guard: str,
    who: str,
    *,
    issue_key: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> bool:
    """Record, before sending it, that the Jira write `guard` is about to be made (committed
    first: a process killed after the send leaves this behind). True when it was announced
    before and never settled: it may have happened without being recorded, and only a strongly
    consistent read of Jira can tell. A retry after a lost answer records it twice, which says
    the same."""
    return await Intents(current().store.engine).announce(
        employee_id,
        operation,
        guard,
        issue_key=issue_key,
        flow_run_id=_flow_run_id(),
        detail=detail,
    )


@STORE_CALL("settle writes · {who}")
async def settle_writes(employee_id: int, guards: Sequence[str], who: str) -> None:
    """The writes `guards` are recorded: they are no longer in doubt."""
    await Intents(current().store.engine).settle(employee_id, guards)


@STORE_CALL("prune the inbox · before {older_than}")
async def prune_inbox(older_than: datetime) -> dict[str, int]:
    """Remove the inbox's events done or ignored, last changed before `older_than`; how many of
    each status went. Safe to repeat: a retry removes only what is left."""
    return await InboxRepository(current().store.engine).prune(older_than)


@STORE_CALL("count the inbox")
async def count_inbox() -> dict[str, int]:
    """The inbox's events per status."""
    return await InboxRepository(current().store.engine).count_by_status()


@STORE_CALL("record the work · {who}")
async def record_work(
    event_keys: Sequence[str], result: WorkResult, note: str | None, who: str
) -> int:
    """Write onto these webhook events what this run did for their employee (done, failed for
    a cause that passes, failed for good, with `note` saying what failed), so that the gateway's
    dispatcher, when the run ends Failed or Crashed, ends or retries each employee's events by
    their own result. Only events still dispatched to this run (or to the run that started this
    subflow) are written; returns how many."""
    run_ids = await run_and_parent()
    if not run_ids or not event_keys:
        return 0
    results = dict.fromkeys(event_keys, (result, note))
    return await InboxRepository(current().store.engine).record_work(results, run_ids)


# The circuit breaker on the webhook path (`core.store.breaker`).


@STORE_CALL("ask the circuit breaker · {who}")
async def admit_creates(
    employee_id: int, kinds: Sequence[str], limits: Limits, event_keys: Sequence[str], who: str
) -> Admission:
    """Whether the planned creates `kinds` of this employee may be applied now; held, their
    webhook events still dispatched to this run (or to the run that started this subflow) are
    held with them. Safe to repeat: a retry after a lost answer counts nothing twice."""
    return await CircuitBreaker(current().store.engine).admit(
        employee_id, who, kinds, limits, event_keys=event_keys, flow_run_ids=await run_and_parent()
    )


@STORE_CALL("read the circuit breaker")
async def read_breaker(limits: Limits) -> BreakerState:
    """What the circuit breaker holds now, and what its window has counted."""
    return await CircuitBreaker(current().store.engine).state(limits)


@STORE_CALL("read who the circuit breaker holds")
async def read_held_employees() -> set[int]:
    """The employees whose work the circuit breaker holds (the reconciliation leaves them)."""
    return await CircuitBreaker(current().store.engine).held_employees()


def _flow_run_id() -> str | None:
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


# The run that started each flow run of this process (None: none did); it never changes.
_PARENTS: dict[str, str | None] = {}


async def run_and_parent() -> list[str]:
    """This flow run and the one that started it (a process subflow's webhook run): the runs
    a webhook event may be dispatched to.

    Asked of Prefect once per run, over the async client: Prefect's own
    `flow_run.get_parent_flow_run_id()` blocks the event loop on a sync call, and a Prefect
    that does not answer would then hold this process's open store transactions (SQLite's
    write lock: every webhook and run on the host waits). Not known (Prefect down): this run
    alone, asked again next time."""
    run_id = flow_run.get_id()
    if not run_id:
        return []
    run_id = str(run_id)
    if run_id not in _PARENTS:
        context = FlowRunContext.get()
        this_run = context.flow_run if context else None
        parent_task_run_id = this_run.parent_task_run_id if this_run else None
        if parent_task_run_id is None:
            _PARENTS[run_id] = None
        else:
            try:
                async with get_client() as client:
                    parent = await client.read_task_run(parent_task_run_id)
            except Exception:  # not remembered: asked again by the next call
                return [run_id]
            _PARENTS[run_id] = str(parent.flow_run_id) if parent.flow_run_id else None
    return [found for found in (run_id, _PARENTS[run_id]) if found]


# For the reconciliation: the inbox's backlog, and closing the events it repaired.


@STORE_CALL("read the inbox's backlog")
async def read_inbox_backlog() -> list[WebhookEvent]:
    """Acknowledged events no run has done (failed, or not dispatched), newest first, at most
    `BACKLOG_LIMIT` of each status (the rest waits for the next reconciliation)."""
    return await read_backlog(InboxRepository(current().store.engine))


@STORE_CALL("close the inbox events the reconciliation repaired")
async def close_repaired_events(outcomes: dict[int, str]) -> int:
    """Mark the events whose work the reconciliation did as done, each with its outcome. Safe
    to repeat: only events still failed or pending change."""
    return await InboxRepository(current().store.engine).close_repaired(outcomes)
