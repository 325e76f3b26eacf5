"""Offboarding: a termination gets its offboarding issue, due on the last day; a revert cancels it."""

from __future__ import annotations

from prefect import flow

from core.names import OFFBOARDING_FLOW
from flows.outcome import EmployeeOutcome
from flows.work import run_name, run_process


@flow(name=OFFBOARDING_FLOW, flow_run_name=run_name(OFFBOARDING_FLOW))
async def offboarding(
    employee_ids: list[int], event_keys: dict[str, list[str]] | None = None
) -> list[EmployeeOutcome]:
    """For each employee with a termination (scheduled or effective): the offboarding issue with
    its checklist and one subtask per assigned asset, due on the termination date. A moved
    date moves the due date; a reverted termination cancels the offboarding work."""
    return await run_process(OFFBOARDING_FLOW, employee_ids, event_keys)
