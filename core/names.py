"""The names other systems see, defined once: Prefect flow and deployment names, run tags, the
Jira labels on every issue created, the webhook path.

The gateway (which dispatches to a deployment by name), the deployments (which register under
these names), the flows (which tag their runs) and the CLI all read them here, so none of them
needs to import another to agree on a string.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

SERVICE = "pf-jira-sync"
# Where PeopleForce posts its webhooks (the gateway's route; the tunnel lets only /webhooks/ in).
WEBHOOK_PATH = "/webhooks/peopleforce"

# Prefect flows: the webhook entry (triage), the three business processes, the reconciliation.
SYNC_FLOW = "sync-employees"
ONBOARDING_FLOW = "onboarding"
OFFBOARDING_FLOW = "offboarding"
FIELD_SYNC_FLOW = "field-sync"
RECONCILE_FLOW = "reconcile"
# Inbox retention: removes old events that are done or ignored, on a schedule.
PRUNE_INBOX_FLOW = "prune-inbox"


def reconcile_run_name(*, dry_run: bool = False, force: bool = False, full: bool = False) -> str:
    """`reconcile`, `reconcile · dry run`, `reconcile · force · full`: the same name whether the
    run was started by the CLI, the schedule or the UI."""
    flags = [name for name, on in (("dry run", dry_run), ("force", force), ("full", full)) if on]
    return " · ".join([RECONCILE_FLOW, *flags])


# Deployments, by the name they have under their flow (`<flow>/<deployment>` in full).
WEBHOOK_DEPLOYMENT = "webhook"
MANUAL_DEPLOYMENT = "manual"
SCHEDULED_DEPLOYMENT = "scheduled"


def full_deployment_name(flow: str, deployment: str) -> str:
    """`<flow name>/<deployment name>`, as `run_deployment`, the UI and the CLI name it."""
    return f"{flow}/{deployment}"


# The deployment the gateway's dispatcher creates runs of.
WEBHOOK_RUNS = full_deployment_name(SYNC_FLOW, WEBHOOK_DEPLOYMENT)

# Run tags: every deployment carries the service tag; webhook runs also `webhook` (and
# `urgent` for joiners and leavers) and one `action:<webhook action>` per action; every run
# the `employee:<id>` of its employees.
SERVICE_TAGS = [SERVICE]
WEBHOOK_TAG = "webhook"
# Webhook runs of joiners and leavers, dispatched before a backlog of field updates.
URGENT_TAG = "urgent"
MANUAL_TAG = "manual"
# A run of hundreds of employees is tagged with the first ones only: the tag is for finding
# runs, and its summary artifact lists everyone.
MAX_EMPLOYEE_TAGS = 20


def process_tag(process: str | None) -> str:
    """A process as its runs are tagged and titled (its flow's name); `sync` for the triage run."""
    return process or "sync"


def employee_tags(employee_ids: Sequence[int]) -> list[str]:
    """The `employee:<id>` tags by which the Prefect UI finds every run that worked on someone."""
    return [f"employee:{employee_id}" for employee_id in employee_ids[:MAX_EMPLOYEE_TAGS]]


def action_tag(action: str) -> str:
    return f"action:{action}"


# The circuit breaker on the webhook path: the Prefect event a run that held work emits (the
# alert automation posts it), about this resource, and the artifact that lists what is held.
BREAKER_EVENT = "pf-jira-sync.circuit-breaker.held"
BREAKER_RESOURCE = "pf-jira-sync.circuit-breaker"
BREAKER_ARTIFACT = "circuit-breaker"

# Jira: every issue created carries this label, searched before creating when the store does not
# know the issue (a crash between the create and the record, a store restored from a backup).
EMPLOYEE_LABEL = "pf-employee-{id}"


def employee_label(employee_id: int) -> str:
    return EMPLOYEE_LABEL.format(id=employee_id)


def work_label(kind: str, employee_id: int, on: date) -> str:
    """Names one piece of work (a hire or a leave on a date), so a rehire is new work."""
    return f"{work_label_prefix(kind, employee_id)}{on:%Y%m%d}"


def work_label_prefix(kind: str, employee_id: int) -> str:
    """What every `work_label` of this kind and employee starts with, whatever the date."""
    return f"pf-{kind}-{employee_id}-"


# A cancelled issue's work label gets this ending: the same work planned again is new work.
RETIRED_LABEL_SUFFIX = "-cancelled"
