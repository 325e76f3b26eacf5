"""Alerts: the automation `pf-jira-sync alerts install` creates in Prefect posts a failed run of a
deployment to the alert webhook (a local receiver here), through the Prefect server's own event
and automation pipeline."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.events import emit_event
from prefect.events.schemas.automations import AutomationCore
from prefect.flow_engine import run_flow_async
from prefect.settings import PREFECT_API_URL
from prefect.states import Completed, Running, State
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.settings import Settings
from deployments.alerts import (
    AUTOMATION_NAME,
    CRASH_AUTOMATION_NAME,
    HEARTBEAT_EVENT,
    install_alerts,
    install_crash_detection,
    uninstall_alerts,
)
from flows.onboarding import onboarding
from sandbox.server import BackgroundServer
from tests.fixtures_flows import World
from tests.paths import ROOT

SETTING_NAMES = {name.upper() for name in Settings.model_fields}


class AlertReceiver:
    """What a Slack or Teams incoming webhook would get."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.content_types: list[str | None] = []
        self.url = ""

    def app(self) -> Starlette:
        async def hook(request: Request) -> JSONResponse:
            self.content_types.append(request.headers.get("content-type"))
            self.posts.append(json.loads(await request.body()))
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    async def wait(self, count: int) -> None:
        """Poll: the server's event pipeline takes from under a second to tens of seconds."""
        deadline = time.monotonic() + 60
        while len(self.posts) < count:
            assert time.monotonic() < deadline, f"{len(self.posts)} of {count} alert(s) arrived"
            await asyncio.sleep(0.2)


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    alerts = AlertReceiver()
    with BackgroundServer(alerts.app()) as server:
        alerts.url = f"{server.url}/hook"
        yield alerts


async def test_a_failed_run_of_a_deployment_is_posted_to_the_alert_webhook(
    world: World, receiver: AlertReceiver
) -> None:
    api_url = PREFECT_API_URL.value()
    async with PrefectClient(api=api_url) as client:
        first = await install_alerts(receiver.url, client)
        again = await install_alerts(receiver.url, client)  # idempotent: updated, not doubled
        assert first.created
        assert not again.created
        assert again.automation_id == first.automation_id
        assert len(await client.read_automations_by_name(AUTOMATION_NAME)) == 1
        try:
            deployment_id = await (
                await onboarding.ato_deployment(name="manual", tags=["pf-jira-sync"])
            ).aapply()
            # Jira refuses a field for good: the run fails at once, with what to fix.
            known = world.jira.state.custom_fields
            world.jira.state.custom_fields = known - {"customfield_10050"}
            try:
                person = world.hire("Alan", "Turing", in_days=1)
                run = await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"employee_ids": [person.id]}
                )
                state = await run_flow_async(
                    onboarding, flow_run=run, parameters=run.parameters, return_type="state"
                )
            finally:
                world.jira.state.custom_fields = known
            assert isinstance(state, State)
            assert state.is_failed()
            await receiver.wait(1)
            (alert,) = receiver.posts
            renamed = await client.read_flow_run(run.id)
        finally:
            assert await uninstall_alerts(client) == 2  # and the circuit breaker's

    assert receiver.content_types == ["application/json"]
    text = alert["text"]
    assert text.startswith(f"pf-jira-sync: run {renamed.name} (onboarding/manual) Failed: ")
    assert "customfield_10050" in text  # the state message says what went wrong


async def test_the_cli_installs_the_alerts_and_posts_a_test_message(
    prefect_server: None, receiver: AlertReceiver
) -> None:
    api_url = PREFECT_API_URL.value()
    env = {
        **{k: v for k, v in os.environ.items() if k.upper() not in SETTING_NAMES},
        "PREFECT_API_URL": api_url,
        "ALERT_WEBHOOK_URL": receiver.url,
    }

    def cli(*args: str, without: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "alerts", *args],
            env={name: value for name, value in env.items() if name != without},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    try:
        installed = await asyncio.to_thread(cli, "install")
        assert installed.returncode == 0, installed.stderr
        assert f"installed the automation {AUTOMATION_NAME!r}" in installed.stdout
        async with PrefectClient(api=api_url) as client:
            (automation,) = await client.read_automations_by_name(AUTOMATION_NAME)
        assert automation.enabled
        tested = await asyncio.to_thread(cli, "test")
        assert tested.returncode == 0, tested.stderr
        assert receiver.posts[0]["text"].startswith("pf-jira-sync: test alert")
        for output in (installed, tested):
            assert receiver.url not in output.stdout + output.stderr  # the URL is a secret
    finally:
        async with PrefectClient(api=api_url) as client:
            await uninstall_alerts(client)

    missing = await asyncio.to_thread(cli, "install", without="PREFECT_API_URL")
    assert missing.returncode == 2
    assert "PREFECT_API_URL is not set" in missing.stderr


async def test_a_running_run_that_stops_heartbeating_is_marked_crashed(
    prefect_server: None,
) -> None:
    """Crash detection: after a heartbeat, a run of this service that gives no further sign of
    life within the window is marked Crashed by the Prefect server's own automation; a run that
    ends within it keeps its end. (A 10 s window here; the service's is FLOW_SILENT_CRASH_SECONDS.)"""
    async with PrefectClient(api=PREFECT_API_URL.value()) as client:
        automation_id = await install_crash_detection(timedelta(seconds=10), client)
        try:
            # A runner restarting installs it again: left as it is, for an update would make
            # the server forget the heartbeats it saw (the runs that died with the runner).
            updates: list[object] = []
            update = client.update_automation

            async def counted(automation_id: UUID, automation: AutomationCore) -> None:
                updates.append(automation)
                await update(automation_id, automation)

            client.update_automation = counted  # type: ignore[method-assign]
            assert await install_crash_detection(timedelta(seconds=10), client) == automation_id
            assert updates == []
            await install_crash_detection(timedelta(seconds=11), client)  # changed: updated
            await install_crash_detection(timedelta(seconds=10), client)
            assert len(updates) == 2
            deployment_id = await (
                await onboarding.ato_deployment(name="manual", tags=["pf-jira-sync"])
            ).aapply()
            silent, finished, unborn = [
                await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"employee_ids": [n]}
                )
                for n in (1, 2, 3)
            ]
            # Killed before its first heartbeat left the process: only its Running state.
            await client.set_flow_run_state(unborn.id, Running(), force=True)
            for run in (silent, finished):
                await client.set_flow_run_state(run.id, Running(), force=True)
                # What the flow engine emits every FLOW_HEARTBEAT_SECONDS while the run lives.
                emit_event(
                    event=HEARTBEAT_EVENT,
                    resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"},
                    related=[
                        {"prefect.resource.id": "prefect.tag.pf-jira-sync", "prefect.resource.role": "tag"}
                    ],
                )  # fmt: skip
            await client.set_flow_run_state(finished.id, Completed())

            deadline = time.monotonic() + 90
            for run in (silent, unborn):
                while (state := (await client.read_flow_run(run.id)).state) and state.is_running():
                    assert time.monotonic() < deadline, f"{run.name} was never marked Crashed"
                    await asyncio.sleep(0.5)
                assert state is not None
                assert state.is_crashed()
                assert (state.message or "").startswith("pf-jira-sync: no heartbeat for 10s: the")
            ended = (await client.read_flow_run(finished.id)).state
            assert ended is not None
            assert ended.is_completed()
        finally:
            await client.delete_automation(automation_id)
    assert len(await client_automations(CRASH_AUTOMATION_NAME)) == 0


async def client_automations(name: str) -> list:
    async with PrefectClient(api=PREFECT_API_URL.value()) as client:
        return await client.read_automations_by_name(name)
