"""Steps that read PeopleForce."""

from __future__ import annotations

from datetime import datetime

from core.errors import NotFoundError
from core.peopleforce.client import Page
from core.peopleforce.models import AssetsRead, Employee, EmployeeSummary
from core.retry import API_CALL
from tasks.services import current


@API_CALL("read employee {employee_id}")
async def read_employee(employee_id: int) -> Employee | None:
    """The employee's current record; None when PeopleForce does not know the id."""
    try:
        return await current().peopleforce.get_employee(employee_id)
    except NotFoundError:
        return None


@API_CALL("read assets · {who}")
async def read_assets(employee_id: int, who: str) -> AssetsRead:
    """Assets assigned to the employee (one offboarding subtask each), with a note for each
    one that could be read only in part or not at all."""
    return await current().peopleforce.read_assets(employee_id)


@API_CALL("read employees page {page}")
async def read_employees_page(
    page: int, updated_since: datetime | None = None
) -> Page[EmployeeSummary]:
    """One page of the employee list (everyone, or those changed since `updated_since`)."""
    return await current().peopleforce.employees_page(page, updated_since=updated_since)


@API_CALL("read terminated employees page {page}")
async def read_terminated_page(page: int) -> Page[Employee]:
    """One page of full records of people whose termination took effect."""
    return await current().peopleforce.terminated_page(page)
