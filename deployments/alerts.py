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
  when the server knows its UI URL (`PREFECT_UI_URL`);
- the automation `pf-jira-sync: circuit breaker held work` posts the same way each run that
  held work at the circuit breaker (`flows/breaker.py`): such a run completes, so the failed-run
  alert would never say it, and the held work waits for an operator. Its text is the run's
  ERROR line: the counts, the limit, the window, how many are held, and the commands.

`install_alerts` creates both or brings them up to date (run it again after changing the URL);
`pf-jira-sync alerts install` and the served deployments at start (`ALERT_WEBHOOK_URL` set) call it.

Crash detection (`install_crash_detection`, installed by the served deployments and by
`pf-jira-sync deploy`, whatever the alert settings): the automation `pf-jira-sync: silent runs
crashed` marks Crashed a running flow run of this service that has given no sign of life (a
heartbeat or a state change) for FLOW_SILENT_CRASH_SECONDS: its process was killed, ran out of
memory, or its host went away with its runner, which would otherwise have reported the crash
itself. The gateway's dispatcher then works its webhook events again, like any crashed run's.

Why Prefect's heartbeats and an automation, rather than the dispatcher watching the runs: the
heartbeat is the only sign of a live process that Prefect records (a run's state says nothing
until it changes), the automation runs in the Prefect server whichever gateway, runner or worker
is alive, and it names the crash in the UI. Every flow-run process of the service heartbeats
every FLOW_HEARTBEAT_SECONDS (30, Prefect's least; the runner and `pf-jira-sync worker` pass it
on): Prefect's own default, 180 s, would leave a dead run unnoticed for minutes, and an
automation waiting less than two heartbeats would crash healthy runs. The trigger expects a sign
within FLOW_SILENT_CRASH_SECONDS (90: three heartbeats, so one late or lost is no crash) after
the run's start and after each heartbeat; the server evaluates it every 5 s
(PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY). Measured on the 2-core host against the test
server, a served run and its runner killed -9 together: Crashed 88 s after a kill 3 s after the
run's first heartbeat, 64 s after one 28 s after it (90 s after the last heartbeat, plus up to
5 s: at most 95 s). End to end (`up --sandbox`, 30 hires, the runner and the flow-run process
killed -9 together 2 s into the run, `up` restarting the runner): the run Crashed 90 s after the
kill, its 34 events dispatched again 10 s later (DISPATCH_RETRY_DELAY_SECONDS), all 60 events
done 105 s after the kill. A process killed alone is reported Crashed by its live runner at once:
its events were dispatched again within 14 s, all done 61 s after the kill (the dead run's
employee leases had to lapse first). The price of a short window: a Prefect server that stops answering for
longer than it (hung, restarted) may see live runs as silent and crash them; their work is then
done once more, harmlessly (the employee lease and the Jira guards keep it single).
Only runs tagged `pf-jira-sync` from their creation (the dispatched and deployed runs) are
watched; their subflows, which die with them, are marked Crashed by the dispatcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from loguru import logger
from prefect import get_client
from prefect.blocks.webhook import Webhook
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import CallWebhook, ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.types import SecretDict
from pydantic import SecretStr

from core.names import BREAKER_EVENT, BREAKER_RESOURCE, SERVICE

AUTOMATION_NAME = "pf-jira-sync: failed runs"
BREAKER_AUTOMATION_NAME = "pf-jira-sync: circuit breaker held work"
CRASH_AUTOMATION_NAME = "pf-jira-sync: silent runs crashed"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
RUNNING_EVENT = "prefect.flow-run.Running"
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


# The run's own line, which says everything (`core.render.breaker_alert`).
BREAKER_PAYLOAD_TEMPLATE = '{"text": {{ ("pf-jira-sync: " ~ event.payload.message) | tojson }}}'


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


def held_work_trigger() -> EventTrigger:
    """Each event of a run that held work at the circuit breaker, once."""
    return EventTrigger(
        expect={BREAKER_EVENT},
        match=ResourceSpecification({"prefect.resource.id": BREAKER_RESOURCE}),
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )


def breaker_automation(block_document_id: UUID) -> AutomationCore:
    return AutomationCore(
        name=BREAKER_AUTOMATION_NAME,
        description=(
            "Posts each run that held work at the circuit breaker (a mass change on the webhook "
            "path) to the alert webhook (ALERT_WEBHOOK_URL). Managed by `pf-jira-sync alerts "
            "install`."
        ),
        enabled=True,
        trigger=held_work_trigger(),
        actions=[
            CallWebhook(block_document_id=block_document_id, payload=BREAKER_PAYLOAD_TEMPLATE)
        ],
    )


def silent_runs_trigger(silent_for: timedelta) -> EventTrigger:
    """A flow run of this service that heartbeat once and then gave no sign of life (another
    heartbeat, a state change) for `silent_for`, each run on its own."""
    return EventTrigger(
        # Running too: a process killed before its first heartbeat reached the server (the
        # engine sends it through a background queue) is silent from its start.
        after={HEARTBEAT_EVENT, RUNNING_EVENT},
        expect={"prefect.flow-run.*"},
        match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
        match_related=ResourceSpecification(
            {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{SERVICE}"}
        ),
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=silent_for,
    )


def crash_automation(silent_for: timedelta) -> AutomationCore:
    seconds = round(silent_for.total_seconds())
    return AutomationCore(
        name=CRASH_AUTOMATION_NAME,
        description=(
            f"Marks Crashed a running pf-jira-sync flow run silent for {seconds}s (no heartbeat: "
            "its process died), so that its webhook events are worked again. Managed by the "
            "served deployments and `pf-jira-sync deploy` (FLOW_SILENT_CRASH_SECONDS)."
        ),
        enabled=True,
        trigger=silent_runs_trigger(silent_for),
        # Not forced: a run that ended meanwhile keeps its end.
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"pf-jira-sync: no heartbeat for {seconds}s: the flow-run process died "
                    "(killed, out of memory, or its host is gone); its webhook events are "
                    "worked again"
                ),
            )
        ],
    )


async def install_crash_detection(
    silent_for: timedelta, client: PrefectClient | None = None
) -> UUID:
    """Create or update the automation that crashes silent runs; returns its id."""
    if client is None:
        async with get_client() as own:
            return await install_crash_detection(silent_for, own)
    automation_id, created = await _put_automation(client, crash_automation(silent_for))
    logger.info(
        "crash detection {}: automation {!r} ({}) marks a run Crashed after {:.0f}s without a "
        "heartbeat",
        "installed" if created else "updated",
        CRASH_AUTOMATION_NAME,
        automation_id,
        silent_for.total_seconds(),
    )
    return automation_id


async def _put_automation(client: PrefectClient, automation: AutomationCore) -> tuple[UUID, bool]:
    """Create the automation, or update the one of its name: `(its id, created)`.

    One that is as wanted already is left alone: an update starts its trigger afresh, so a
    runner restarting (and installing again) would make the server forget the heartbeats it
    saw, and with them the runs that died with the runner."""
    existing = await client.read_automations_by_name(automation.name)
    if existing:
        first, *extra = existing
        if _comparable(first) != _comparable(automation):
            await client.update_automation(first.id, automation)
        for duplicate in extra:  # two installs raced: keep one
            await client.delete_automation(duplicate.id)
        return first.id, False
    return await client.create_automation(automation), True


def _comparable(automation: AutomationCore) -> dict[str, object]:
    """What an automation does, without the ids the server gives its parts."""
    fields = {"name", "description", "enabled", "trigger", "actions"}
    shown = automation.model_dump(mode="json", include=fields)
    trigger = shown["trigger"]
    trigger.pop("id", None)
    for name in ("after", "expect", "for_each"):  # sets, listed in any order
        if isinstance(trigger.get(name), list):
            trigger[name] = sorted(trigger[name])
    return shown


async def install_alerts(url: str, client: PrefectClient | None = None) -> Installed:
    """Create or update the webhook block and the automations (failed runs, and work the
    circuit breaker held); returns the failed-run automation's and the block's ids."""
    if client is None:
        async with get_client() as own:
            return await install_alerts(url, own)
    block = Webhook(
        method="POST",
        url=SecretStr(url),
        headers=SecretDict({"Content-Type": "application/json"}),
    )
    block_document_id = await block.asave(BLOCK_NAME, overwrite=True, client=client)
    automation_id, created = await _put_automation(client, alert_automation(block_document_id))
    await _put_automation(client, breaker_automation(block_document_id))
    installed = Installed(automation_id, block_document_id, created=created)
    logger.info(
        "alerts {}: automation {!r} ({}) posts failed runs to the webhook in block {!r}",
        "installed" if installed.created else "updated",
        AUTOMATION_NAME,
        installed.automation_id,
        BLOCK_NAME,
    )
    return installed


async def uninstall_alerts(client: PrefectClient | None = None) -> int:
    """Delete the automations (the block stays, harmless); returns how many were deleted."""
    if client is None:
        async with get_client() as own:
            return await uninstall_alerts(own)
    existing = [
        automation
        for name in (AUTOMATION_NAME, BREAKER_AUTOMATION_NAME)
        for automation in await client.read_automations_by_name(name)
    ]
    for automation in existing:
        await client.delete_automation(automation.id)
    return len(existing)
