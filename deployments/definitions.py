"""The deployments: which flow, under what name, with which tags and limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron, Schedule

from core.names import (
    MANUAL_DEPLOYMENT,
    SCHEDULED_DEPLOYMENT,
    SERVICE_TAGS,
    WEBHOOK_DEPLOYMENT,
    full_deployment_name,
)
from core.settings import Settings
from flows.field_sync import field_sync
from flows.offboarding import offboarding
from flows.onboarding import onboarding
from flows.reconcile import reconcile
from flows.retention import prune_inbox
from flows.sync import sync_employees


@dataclass(frozen=True)
class DeploymentSpec:
    flow: Flow
    name: str
    description: str
    tags: list[str] = field(default_factory=lambda: list(SERVICE_TAGS))
    parameters: dict = field(default_factory=dict)
    # When it runs on its own (from the settings), and how many of its runs may go at once.
    schedule: Callable[[Settings], Schedule] | None = None
    concurrency_limit: ConcurrencyLimitConfig | None = None

    @property
    def full_name(self) -> str:
        """`<flow name>/<deployment name>`, as `run_deployment` and the CLI name it."""
        return full_deployment_name(self.flow.name, self.name)

    def options(self, settings: Settings) -> dict[str, Any]:
        """What every way of deploying it passes to Prefect (`Flow.ato_deployment`,
        `RunnerDeployment.from_flow`): name, description, tags, parameters, schedule, limit."""
        options: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "tags": self.tags,
            "parameters": self.parameters,
        }
        if self.schedule is not None:
            options["schedule"] = self.schedule(settings)
        if self.concurrency_limit is not None:
            options["concurrency_limit"] = self.concurrency_limit
        return options


def reconcile_schedule(settings: Settings) -> Schedule:
    return Cron(settings.reconcile_cron, timezone=settings.reconcile_timezone)


# Webhook events are dispatched here: many employees per run (see DESIGN, "Throughput").
WEBHOOK = DeploymentSpec(
    sync_employees,
    WEBHOOK_DEPLOYMENT,
    "Triage employees named by webhooks and run the process flows their plans need.",
)
MANUAL = [
    DeploymentSpec(
        onboarding, MANUAL_DEPLOYMENT, "Onboard the given employees (run from the UI or CLI)."
    ),
    DeploymentSpec(
        offboarding, MANUAL_DEPLOYMENT, "Offboard the given employees (run from the UI or CLI)."
    ),
    DeploymentSpec(field_sync, MANUAL_DEPLOYMENT, "Sync mapped fields of the given employees."),
]
# The nightly reconciliation, also run by hand (Prefect UI, `pf-jira-sync reconcile`). One run
# at a time: a run started while another goes waits for it (Prefect's deployment limit).
RECONCILE = DeploymentSpec(
    reconcile,
    SCHEDULED_DEPLOYMENT,
    "Bring Jira in step with every PeopleForce employee (dry_run: plan only; force: past the "
    "safeguard; full: read every full record).",
    schedule=reconcile_schedule,
    concurrency_limit=ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
    ),
)


def prune_inbox_schedule(settings: Settings) -> Schedule:
    return Cron(settings.inbox_prune_cron, timezone="UTC")


# Inbox retention, daily: events done or ignored older than INBOX_RETENTION_DAYS are removed
# (never pending, dispatched or failed ones). One run at a time.
PRUNE_INBOX = DeploymentSpec(
    prune_inbox,
    SCHEDULED_DEPLOYMENT,
    "Remove the inbox's events done or ignored older than INBOX_RETENTION_DAYS "
    "(older_than_days: another age); pending, dispatched and failed events always stay.",
    schedule=prune_inbox_schedule,
    concurrency_limit=ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
    ),
)
ALL = [WEBHOOK, *MANUAL, RECONCILE, PRUNE_INBOX]
