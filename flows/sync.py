"""Sync: the entry for webhooks. Triage each employee with the plan, then run the process
flows (onboarding, offboarding, field sync) the plans call for, each for its employees."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

from loguru import logger
from prefect import flow
from prefect.runtime import flow_run

from core.names import (
    FIELD_SYNC_FLOW,
    OFFBOARDING_FLOW,
    ONBOARDING_FLOW,
    SYNC_FLOW,
    URGENT_TAG,
    WEBHOOK_TAG,
)
from core.plan import Facts, Process, plan, process_of, today_in
from core.settings import get_settings
from flows.field_sync import field_sync
from flows.observability import employee_properties, keys_of, publish_routing
from flows.offboarding import offboarding
from flows.onboarding import onboarding
from flows.work import run_name
from tasks import peopleforce, store
from tasks.services import current, open_services

PROCESS_FLOWS = {
    ONBOARDING_FLOW: onboarding,
    OFFBOARDING_FLOW: offboarding,
    FIELD_SYNC_FLOW: field_sync,
}


async def triage(employee_id: int) -> set[Process]:
    """Which processes this employee's plan needs now (reads only: nothing changes here; the
    reads are plain calls, as the process flows' reads are, so triage costs no task runs)."""
    services = current()
    employee = await peopleforce.read_employee(employee_id)
    if employee is not None:
        services.records[employee_id] = employee
    who = f"{employee_id} {employee.display_name}" if employee else str(employee_id)
    link, previous = await store.read_mapping(
        employee_id, employee.email if employee else None, who
    )
    today = today_in(services.rules.zone, datetime.now(UTC))
    result = plan(Facts(employee_id, employee, link, previous), services.rules, today)
    return {process for action in result.actions if (process := process_of(action)) is not None}


def yield_cpu_if_routine(niceness: int) -> None:
    """A webhook run the dispatcher did not mark urgent (field updates) runs at a lower CPU
    priority, it and its subflows (one process): joiners' and leavers' runs go first."""
    tags = set(flow_run.get_tags())
    if niceness and WEBHOOK_TAG in tags and URGENT_TAG not in tags and hasattr(os, "nice"):
        os.nice(niceness)


def waves(routed: dict[str, list[int]]) -> list[list[str]]:
    """The process flows to run, in waves: each wave's flows side by side, waves in turn.

    One wave, as a rule. When someone is both onboarded and offboarded here (hired and leaving
    at once), the offboarding waits for the onboarding: its issue names the onboarding issue
    (`Related: KEY`) only if that exists when the offboarding is planned, and which subflow
    took the employee's lease first would otherwise decide it (the outcome must not depend on
    timing). Rare, so the common run stays concurrent.
    """
    wanted = [process for process, ids in routed.items() if ids]
    if not set(routed.get(ONBOARDING_FLOW, ())) & set(routed.get(OFFBOARDING_FLOW, ())):
        return [wanted] if wanted else []
    return [
        [process for process in wanted if process != OFFBOARDING_FLOW],
        [OFFBOARDING_FLOW],
    ]


@flow(name=SYNC_FLOW, flow_run_name=run_name("sync"))
async def sync_employees(
    employee_ids: list[int], event_keys: dict[str, list[str]] | None = None
) -> dict[str, list[int]]:
    """Bring Jira in step for these employees: each goes to the process flows its plan needs,
    as subflow runs (one per process, carrying all its employees). Returns who went where.

    `event_keys`: the webhook events behind each employee's work (by employee id), carried on
    every log line of that work; the dispatcher gives them, a manual run needs none."""
    settings = get_settings()
    yield_cpu_if_routine(settings.routine_run_niceness)
    async with open_services(settings):
        bound = asyncio.Semaphore(settings.employee_concurrency)

        async def one(employee_id: int) -> set[Process]:
            async with bound:
                with logger.contextualize(**employee_properties(employee_id, event_keys)):
                    return await triage(employee_id)

        unique = list(dict.fromkeys(employee_ids))
        needs = dict(zip(unique, await asyncio.gather(*(one(e) for e in unique)), strict=True))
        routed = {
            process: [employee for employee, wanted in needs.items() if process in wanted]
            for process in PROCESS_FLOWS
        }
        await publish_routing(routed, unique)
        try:
            # Each process flow reports its employees, and fails the run, on its own; this run
            # fails with the first failure once all of them have finished.
            finished: list[object] = []
            for wave in waves(routed):
                finished += await asyncio.gather(
                    *(
                        PROCESS_FLOWS[process](
                            employee_ids=routed[process],
                            event_keys=keys_of(event_keys, routed[process]),
                        )
                        for process in wave
                    ),
                    return_exceptions=True,
                )
            if failure := next((f for f in finished if isinstance(f, BaseException)), None):
                raise failure
        finally:
            for employee_id in unique:  # triage's reads serve this run only
                current().records.pop(employee_id, None)
    return {process: ids for process, ids in routed.items() if ids}
