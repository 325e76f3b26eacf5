"""Field sync: when a mapped field changes in PeopleForce, the employee's Jira record follows."""

from __future__ import annotations

from prefect import flow

from core.names import FIELD_SYNC_FLOW
from flows.outcome import EmployeeOutcome
from flows.work import run_name, run_process


@flow(name=FIELD_SYNC_FLOW, flow_run_name=run_name(FIELD_SYNC_FLOW))
async def field_sync(
    employee_ids: list[int], event_keys: dict[str, list[str]] | None = None
) -> list[EmployeeOutcome]:
    """For each onboarded employee whose mapped fields (position, department, manager ...)
    changed: update the record issue and comment what changed, old -> new."""
    return await run_process(FIELD_SYNC_FLOW, employee_ids, event_keys)
