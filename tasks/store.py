"""Steps that read and write the mapping store."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from core.store import EmployeeLink
from tasks.services import current


def store_task(name: str, task_run_name: str):
    """`@task` for a store step: the store is local, its errors (a lock, a restart) pass quickly."""
    return task(
        name=name,
        task_run_name=task_run_name,
        retries=3,
        retry_delay_seconds=[0.5, 2, 5],
        cache_policy=NO_CACHE,
    )


@store_task("read mapping", "read mapping · {who}")
async def read_mapping(
    employee_id: int, email: str | None, who: str
) -> tuple[EmployeeLink | None, EmployeeLink | None]:
    """This employee's link, and an earlier employee's link with the same email (a rehire)."""
    return await current().store.link_and_previous(employee_id, email)


@store_task("read all mappings", "read all mappings")
async def read_all_links() -> list[EmployeeLink]:
    """Every employee link, for the reconciliation (read in pages of 500)."""
    return [link async for link in current().store.all_links()]


@store_task("record in store", "record {action} · {who}")
async def record_effect(
    employee_id: int,
    action: str,
    who: str,
    *,
    issue_key: str | None = None,
    detail: dict[str, Any] | None = None,
    link_update: dict[str, Any] | None = None,
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


def _flow_run_id() -> str | None:
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None
