"""Serve every deployment from this host until interrupted: `python -m deployments.serve`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from loguru import logger
from prefect.runner import Runner

from core.logging import configure_logging
from core.settings import get_settings
from deployments.alerts import install_alerts, install_crash_detection
from deployments.definitions import ALL
from deployments.warm_start import install as install_warm_start


async def serve_all() -> None:
    settings = get_settings()
    configure_logging(settings, component="deployments")
    try:
        await install_crash_detection(timedelta(seconds=settings.flow_silent_crash_seconds))
    except Exception as error:  # serve anyway: a crashed run's runner still reports it
        logger.error(
            "crash detection not installed ({}: {}); a run whose process dies with its runner "
            "stays Running",
            type(error).__name__,
            error,
        )
    if settings.alert_webhook_url is not None:
        try:
            await install_alerts(settings.alert_webhook_url.get_secret_value())
        except Exception as error:  # the runs matter more than their alerts: serve anyway
            logger.error(
                "alerts not installed ({}: {}); runs are served without",
                type(error).__name__,
                error,
            )
    install_warm_start()
    # Prefect's own `aserve`, but with each flow given to the runner (`aadd_flow`), not only
    # its deployment: the runner then starts a run from the flow it holds, in a process of its
    # own forked from the warm fork server (`deployments.warm_start`), where a deployment alone
    # is started as `python -m prefect.engine`, an interpreter that imports everything anew.
    # pause_on_shutdown=False: a restart must not leave schedules (reconciliation) paused.
    # query_seconds: Prefect's default 10 s poll would be most of a webhook's latency budget.
    runner = Runner(
        limit=settings.serve_limit,
        pause_on_shutdown=False,
        query_seconds=settings.serve_poll_seconds,
        # Each flow-run process heartbeats this often: what crash detection listens for.
        heartbeat_seconds=settings.flow_heartbeat_seconds,
    )
    for spec in ALL:
        await runner.aadd_flow(spec.flow, **spec.options(settings))
    await runner.start()


if __name__ == "__main__":
    asyncio.run(serve_all())
