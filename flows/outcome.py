"""What one employee's work came to: the actions applied, what was left to other processes,
the notes, the Jira issues touched, the error or the circuit breaker's hold. Runs log it,
summarise it and return it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EmployeeOutcome:
    employee_id: int
    name: str | None = None
    applied: list[str] = field(default_factory=list)
    left_for_others: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    jira_keys: list[str] = field(default_factory=list)
    error: str | None = None
    advice: str | None = None  # what an IT admin does about the error
    # The error is one retrying cannot change (`core.errors.is_permanent`): the employee's
    # webhook events end failed rather than going back to work.
    permanent: bool = False
    # Why the circuit breaker held this employee's work (nothing of it was applied; their
    # webhook events wait in the inbox, `held`, for an operator).
    held: str | None = None

    @property
    def who(self) -> str:
        return f"{self.employee_id} {self.name}" if self.name else str(self.employee_id)
