"""Serve every deployment from this host until interrupted: `python -m deployments.serve`."""

from __future__ import annotations

import asyncio

from prefect import aserve

from core.logging import configure_logging
from core.settings import get_settings
from deployments.definitions import ALL


async def serve_all() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    served = [
        await spec.flow.ato_deployment(
            name=spec.name, description=spec.description, tags=spec.tags, parameters=spec.parameters
        )
        for spec in ALL
    ]
    # pause_on_shutdown=False: a restart must not leave schedules (reconciliation) paused.
    await aserve(
        *served, limit=settings.serve_limit, pause_on_shutdown=False, print_starting_message=False
    )


if __name__ == "__main__":
    asyncio.run(serve_all())
