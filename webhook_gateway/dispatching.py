"""The dispatcher as the gateway process runs it: loaded once the gateway already serves.

Loading the dispatcher means importing Prefect's client, more than a second of CPU and half
of the gateway's start. A gateway that restarts (after kill -9, under `up` or Compose) must
take webhooks again within seconds, and taking one needs only the store. So the gateway
serves first, and this loads `webhook_gateway.dispatch` in a thread beside it, then runs the
dispatcher there; events stored meanwhile wait in the inbox, and the dispatcher's first round
hands them over. `/readyz` says not ready until the dispatcher runs.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from fastapi import FastAPI
from loguru import logger

from core.settings import Settings
from webhook_gateway.config import require_prefect_api_url

if TYPE_CHECKING:
    from webhook_gateway.dispatch import Dispatching


class DeferredDispatching:
    """`on_stored=dispatching.wake`, `extra_lifespan=dispatching.lifespan`,
    `readiness_checks=[dispatching.prefect_ready]`, like `dispatch.Dispatching`, which it
    loads and runs once the gateway serves."""

    def __init__(self, settings: Settings, *, poll: float = 5.0) -> None:
        require_prefect_api_url(settings)  # refused before serving, not once loaded
        self.settings = settings
        self.poll = poll
        self.loaded: Dispatching | None = None

    def wake(self) -> None:
        if self.loaded is not None:
            self.loaded.wake()

    async def prefect_ready(self) -> bool:
        """Readiness: the dispatcher runs and the Prefect API answers."""
        return self.loaded is not None and await self.loaded.prefect_ready()

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncGenerator[None, None]:
        stop = asyncio.Event()
        task = asyncio.create_task(self._run(app, stop), name="dispatching")
        try:
            yield
        finally:
            stop.set()
            with suppress(asyncio.CancelledError):
                await task

    async def _run(self, app: FastAPI, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                module = await asyncio.to_thread(
                    importlib.import_module, "webhook_gateway.dispatch"
                )
                dispatching: Dispatching = module.Dispatching(self.settings, poll=self.poll)
                async with dispatching.lifespan(app):
                    self.loaded = dispatching
                    try:
                        await stop.wait()
                    finally:
                        self.loaded = None
                return
            except Exception as error:  # the gateway goes on storing events meanwhile
                failures += 1
                delay = min(2.0**failures, 60.0)
                logger.opt(exception=error).error(
                    "the dispatcher could not start ({}: {}); events wait in the inbox, "
                    "trying again in {:.0f}s",
                    type(error).__name__,
                    error,
                    delay,
                )
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
