"""Alerts: a Prefect automation posts every failed or crashed run of this service's deployments
to a webhook URL (a Slack or Teams incoming webhook, or any URL that takes JSON).

Everything lives in Prefect (open-source server: events, automations and the `call-webhook`
action need no Cloud), so the alert fires whoever runs the flow (served, a work-pool worker) and
whatever failed it, a crash of the flow-run process included:

- a `Webhook` block named `pf-jira-sync-alerts` holds the URL (a secret field: the UI and the
  API show it masked; Slack and Teams URLs are credentials);
- the automation `pf-jira-sync: failed runs` reacts to `prefect.flow-run.Failed`, `.Crashed`
  and `.TimedOut` of flow runs of a deployment tagged `pf-jira-sync`, one notification per run.
  Subflows (the process flows a webhook run starts) have no deployment: their failure fails
  their parent, which is the one alert;
- the notification is a JSON body `{"text": "..."}` (what Slack and Teams incoming webhooks
  take): the flow, deployment and run name, the state and its message, and a link to the run
  when the server knows its UI URL (`PREFECT_UI_URL`).

`install_alerts` creates both or brings them up to date (run it again after changing the URL);
`pf-jira-sync alerts install` and the served deployments at start (`ALERT_WEBHOOK_URL` set) call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from loguru import logger
from prefect import get_client
from prefect.blocks.webhook import Webhook
from prefect.client.orchestration import PrefectClient
from prefect.events.actions import CallWebhook
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.types import SecretDict
from pydantic import SecretStr

from core.names import SERVICE

AUTOMATION_NAME = "pf-jira-sync: failed runs"
BLOCK_NAME = "pf-jira-sync-alerts"

FAILED_EVENTS = {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"}
MESSAGE_CHARACTERS = 600

# Jinja, rendered by the Prefect server with the run, its flow and deployment; `tojson` makes the
# text a valid JSON string whatever the run name or error message holds.
PAYLOAD_TEMPLATE = (
    "{% set url = flow_run|ui_url %}"
    '{"text": {{ ('
    '"pf-jira-sync: run " ~ flow_run.name ~ " (" ~ flow.name ~ "/" ~ deployment.name ~ ") "'
    " ~ flow_run.state.name"
    ' ~ (": " ~ (flow_run.state.message | truncate(' + str(MESSAGE_CHARACTERS) + "))"
    ' if flow_run.state.message else "")'
    ' ~ (" " ~ url if url else "")'
    ") | tojson }}}"
)


@dataclass(frozen=True)
class Installed:
    automation_id: UUID
    block_document_id: UUID
    created: bool


def failed_runs_trigger() -> EventTrigger:
    """Each failed, crashed or timed-out run of a deployment of this service, once."""
    return EventTrigger(
        expect=FAILED_EVENTS,
        match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
        match_related=[
            ResourceSpecification(
                {
                    "prefect.resource.role": "tag",
                    "prefect.resource.id": f"prefect.tag.{SERVICE}",
                }
            ),
            ResourceSpecification({"prefect.resource.role": "deployment"}),
        ],
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )


def alert_automation(block_document_id: UUID) -> AutomationCore:
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(
            "Posts each failed or crashed run of the pf-jira-sync deployments to the alert "
            "webhook (ALERT_WEBHOOK_URL). Managed by `pf-jira-sync alerts install`."
        ),
        enabled=True,
        trigger=failed_runs_trigger(),
        actions=[CallWebhook(block_document_id=block_document_id, payload=PAYLOAD_TEMPLATE)],
    )


async def install_alerts(url: str, client: PrefectClient | None = None) -> Installed:
    """Create or update the webhook block and the automation; returns their ids."""
    if client is None:
        async with get_client() as own:
            return await install_alerts(url, own)
    block = Webhook(
        method="POST",
        url=SecretStr(url),
        headers=SecretDict({"Content-Type": "application/json"}),
    )
    block_document_id = await block.asave(BLOCK_NAME, overwrite=True, client=client)
    automation = alert_automation(block_document_id)
    existing = await client.read_automations_by_name(AUTOMATION_NAME)
    if existing:
        first, *extra = existing
        await client.update_automation(first.id, automation)
        for duplicate in extra:  # two installs raced: keep one
            await client.delete_automation(duplicate.id)
        installed = Installed(first.id, block_document_id, created=False)
    else:
        automation_id = await client.create_automation(automation)
        installed = Installed(automation_id, block_document_id, created=True)
    logger.info(
        "alerts {}: automation {!r} ({}) posts failed runs to the webhook in block {!r}",
        "installed" if installed.created else "updated",
        AUTOMATION_NAME,
        installed.automation_id,
        BLOCK_NAME,
    )
    return installed


async def uninstall_alerts(client: PrefectClient | None = None) -> int:
    """Delete the automation (the block stays, harmless); returns how many were deleted."""
    if client is None:
        async with get_client() as own:
            return await uninstall_alerts(own)
    existing = await client.read_automations_by_name(AUTOMATION_NAME)
    for automation in existing:
        await client.delete_automation(automation.id)
    return len(existing)
