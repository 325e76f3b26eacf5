"""The `employee:<id>` flow-run tags, the same whether the gateway or a flow gives them: the
Prefect UI finds every run that worked on an employee by that tag."""

from __future__ import annotations

from collections.abc import Sequence

# A run of hundreds of employees is tagged with the first ones only: the tag is for finding
# runs, and its summary artifact lists everyone.
MAX_EMPLOYEE_TAGS = 20


def employee_tags(employee_ids: Sequence[int]) -> list[str]:
    return [f"employee:{employee_id}" for employee_id in employee_ids[:MAX_EMPLOYEE_TAGS]]
