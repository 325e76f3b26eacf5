"""Steps that read PeopleForce."""

from __future__ import annotations

from core.errors import NotFoundError
from core.peopleforce.models import Asset, Employee
from tasks.retry import api_task
from tasks.services import current


@api_task("read employee", "read employee {employee_id}")
async def read_employee(employee_id: int) -> Employee | None:
    """The employee's current record; None when PeopleForce does not know the id."""
    try:
        return await current().peopleforce.get_employee(employee_id)
    except NotFoundError:
        return None


@api_task("read assets", "read assets · {who}")
async def read_assets(employee_id: int, who: str) -> list[Asset]:
    """Assets assigned to the employee (one offboarding subtask each)."""
    return await current().peopleforce.list_assets(employee_id)
