"""Serve every deployment from this host until interrupted: `python -m deployments.serve`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from loguru import logger
from prefect import aserve

from core.logging import configure_logging
from core.settings import get_settings
from deployments.alerts import install_alerts, install_crash_detection
from deployments.definitions import ALL


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
    served = [await spec.flow.ato_deployment(**spec.options(settings)) for spec in ALL]
    # pause_on_shutdown=False: a restart must not leave schedules (reconciliation) paused.
    # query_seconds: Prefect's default 10 s poll would be most of a webhook's latency budget.
    await aserve(
        *served,
        limit=settings.serve_limit,
        pause_on_shutdown=False,
        print_starting_message=False,
        query_seconds=settings.serve_poll_seconds,
        # Each flow-run process heartbeats this often: what crash detection listens for.
        heartbeat_seconds=settings.flow_heartbeat_seconds,
    )


if __name__ == "__main__":
    asyncio.run(serve_all())
