"""The deployments: which flow, under what name, with which tags and limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import Flow

from flows.field_sync import field_sync
from flows.offboarding import offboarding
from flows.onboarding import onboarding
from flows.sync import sync_employees

TAGS = ["pf-jira-sync"]


@dataclass(frozen=True)
class DeploymentSpec:
    flow: Flow
    name: str
    description: str
    tags: list[str] = field(default_factory=lambda: list(TAGS))
    parameters: dict = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        """`<flow name>/<deployment name>`, as `run_deployment` and the CLI name it."""
        return f"{self.flow.name}/{self.name}"


# Webhook events are dispatched here: many employees per run (see DESIGN, "Throughput").
WEBHOOK = DeploymentSpec(
    sync_employees,
    "webhook",
    "Triage employees named by webhooks and run the process flows their plans need.",
)
MANUAL = [
    DeploymentSpec(onboarding, "manual", "Onboard the given employees (run from the UI or CLI)."),
    DeploymentSpec(offboarding, "manual", "Offboard the given employees (run from the UI or CLI)."),
    DeploymentSpec(field_sync, "manual", "Sync mapped fields of the given employees."),
]
ALL = [WEBHOOK, *MANUAL]
