"""Inbox retention: events done or ignored are removed once old, so the inbox does not grow
forever (every signed delivery is stored, whatever its action).

Run daily by the `prune-inbox/scheduled` deployment; `INBOX_RETENTION_DAYS` (30) says how old,
by the event's last change. Nothing pending, dispatched or failed is ever removed: that is work
still to do, or work someone must look at. The counts are the run's result and its
`inbox-retention` artifact.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loguru import logger
from prefect import flow
from prefect.artifacts import acreate_markdown_artifact

from core import render
from core.names import PRUNE_INBOX_FLOW
from core.settings import get_settings
from tasks import store
from tasks.services import open_services

SUMMARY_ARTIFACT = "inbox-retention"


@flow(name=PRUNE_INBOX_FLOW)
async def prune_inbox(older_than_days: int | None = None) -> dict:
    """Remove the inbox's events done or ignored whose last change is older than
    `older_than_days` (default: `INBOX_RETENTION_DAYS`); pending, dispatched and failed events
    stay, however old."""
    settings = get_settings()
    days = settings.inbox_retention_days if older_than_days is None else older_than_days
    if days < 1:
        raise ValueError(f"older_than_days must be at least 1, not {days}")
    async with open_services(settings):
        older_than = datetime.now(UTC) - timedelta(days=days)
        removed = await store.prune_inbox(older_than)
        kept = await store.count_inbox()
    total = sum(removed.values())
    logger.info(
        "inbox retention: removed {} events done or ignored before {:%Y-%m-%d %H:%M} UTC ({}); "
        "the inbox holds {}",
        total,
        older_than,
        render.counts_line(removed),
        render.counts_line(kept),
    )
    await acreate_markdown_artifact(
        render.prune_markdown(days, older_than, removed, kept),
        key=SUMMARY_ARTIFACT,
        description=f"Inbox retention: {total} events removed",
    )
    return {
        "retention_days": days,
        "older_than": older_than.isoformat(),
        "removed": removed,
        "removed_total": total,
        "kept": kept,
    }
