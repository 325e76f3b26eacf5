"""The circuit breaker on the webhook path, as a process run meets it.

`core.store.breaker` says what it counts, when it trips and how an operator ends it. Here is
where the plan is known: before an employee's work is applied, a plan that creates an
offboarding, an onboarding or an employee record (of this run's processes) asks the breaker,
and work it holds is not applied at all; the employee's webhook events are held with it (the
dispatcher leaves them alone: they wait for `pf-jira-sync release` or `drop`). Only the webhook
path asks (`run_process`, the body of the process flows the webhook runs start, and of their
runs by hand or Retry); the reconciliation has its own safeguard, and leaves held employees
to the operator.

A run that held anyone says so at its end, once: an ERROR line with the counts, the limit, the
window, how many are held and the commands (`core.render.breaker_alert`), the artifact
`circuit-breaker` listing everything held now (each run's version is the list as it ended),
and the Prefect event `pf-jira-sync.circuit-breaker.held`, which the alert automation posts to
ALERT_WEBHOOK_URL (`deployments/alerts.py`). The run itself completes: holding is not failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loguru import logger
from prefect.events import emit_event

from core import render
from core.names import BREAKER_ARTIFACT, BREAKER_EVENT, BREAKER_RESOURCE
from core.plan import CreateIssue, Plan, Process, process_of
from core.settings import Settings
from core.store import Limits
from flows.observability import EventKeys, RunArtifacts
from flows.outcome import EmployeeOutcome
from tasks import store


@dataclass
class WebhookBreaker:
    """One run's side of the breaker: asks it before applying, and reports what it held."""

    limits: Limits
    event_keys: EventKeys | None = None
    held: list[int] = field(default_factory=list)

    @classmethod
    def from_settings(
        cls, settings: Settings, event_keys: EventKeys | None
    ) -> WebhookBreaker | None:
        """The run's breaker; None when BREAKER_MAX_OFFBOARD and BREAKER_MAX_CREATE are 0."""
        limits = Limits.from_settings(settings)
        return None if limits.off else cls(limits, event_keys)

    async def hold(
        self, result: Plan, processes: frozenset[Process], outcome: EmployeeOutcome
    ) -> bool:
        """Whether this employee's work is held (then `outcome.held` says why); work that
        creates nothing the breaker counts is never asked about."""
        kinds = [
            action.kind
            for action in result.actions
            if isinstance(action, CreateIssue) and process_of(action) in processes
        ]
        if not self.limits.counted(kinds):
            return False
        keys = list((self.event_keys or {}).get(str(outcome.employee_id)) or ())
        admission = await store.admit_creates(
            outcome.employee_id, kinds, self.limits, keys, outcome.who
        )
        if admission.hold is None:
            if admission.released:
                logger.info("{}: released by an operator, past the circuit breaker", outcome.who)
            return False
        outcome.held = admission.hold.reason
        self.held.append(outcome.employee_id)
        logger.warning(
            "{}: {} held by the circuit breaker ({}{}), nothing sent to Jira",
            outcome.who,
            ", ".join(render.HELD_KINDS.get(kind, kind) for kind in dict.fromkeys(kinds)),
            "it tripped it: " if admission.tripped else "open: ",
            admission.hold.reason,
        )
        return True

    async def report(self, artifacts: RunArtifacts) -> None:
        """When this run held anyone: the alert line, the event and the artifact (each best
        effort but the line: the holds are in the store whatever becomes of them)."""
        if not self.held:
            return
        held_here = len(dict.fromkeys(self.held))
        try:
            state = await store.read_breaker(self.limits)
        except Exception as error:  # the line still says what this run held
            logger.error(
                "circuit breaker: this run held {} employee(s) ({}: {}). {}.",
                held_here,
                type(error).__name__,
                error,
                render.breaker_advice(),
            )
            return
        message = render.breaker_alert(state, self.limits, held_here)
        logger.error(message)
        try:
            emit_event(
                BREAKER_EVENT,
                resource={"prefect.resource.id": BREAKER_RESOURCE},
                payload={
                    "message": message,
                    "held": len(state.holds),
                    "held_by_this_run": held_here,
                },
            )
        except Exception as error:
            logger.warning("could not send the circuit breaker's Prefect event: {}", error)
        await artifacts.summary(
            render.held_markdown(state, self.limits),
            f"circuit breaker: {len(state.holds)} employee(s) held",
            key=BREAKER_ARTIFACT,
        )
