"""Onboarding: new hires get their onboarding issue and checklist before their first day."""

from __future__ import annotations

from prefect import flow

from core.names import ONBOARDING_FLOW
from flows.outcome import EmployeeOutcome
from flows.work import run_name, run_process


@flow(name=ONBOARDING_FLOW, flow_run_name=run_name(ONBOARDING_FLOW))
async def onboarding(
    employee_ids: list[int], event_keys: dict[str, list[str]] | None = None
) -> list[EmployeeOutcome]:
    """For each employee hired within the lead time (or already started) and not yet onboarded:
    the onboarding issue, routed by department, with one subtask per checklist item."""
    return await run_process(ONBOARDING_FLOW, employee_ids, event_keys)
