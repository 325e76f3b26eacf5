"""What a run shows besides its work: log properties, tags and artifacts.

- Log lines about an employee carry `EmployeeId` and the `EventKey`(s) of the webhooks that
  caused the work (the gateway logged the same key), so one Seq query follows an event from the
  webhook to its Jira issue.
- A process run (onboarding, offboarding, field sync; a subflow of the webhook's sync run, or a
  run of its own) is tagged `employee:<id>` and with its process, so the UI filters by either.
  Flow-run tags only: Prefect asks for a concurrency slot per task-run tag.
- A run that touched Jira has a link artifact per issue (keyed `jira-<issue key>`, so the
  Artifacts page lists every run that touched an issue); a run of many employees also gets a
  summary artifact.
- Each employee whose work touched Jira or failed gets `why`'s timeline as a Markdown artifact
  keyed `why-employee-<id>`: the run shows the story up to it, and the Artifacts page keeps the
  latest (with every earlier version) per employee.

Artifacts and tags are best effort: failing to write them is logged and fails no run.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING
from uuid import UUID

from loguru import logger
from prefect.artifacts import LinkArtifact, MarkdownArtifact
from prefect.client.orchestration import PrefectClient
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL

from core.names import employee_tags, process_tag
from core.render import (
    browse_url,
    link_description,
    routing_markdown,
    summary_markdown,
    timeline_markdown,
    timeline_rows,
)
from core.settings import get_settings
from core.store import employee_story
from tasks.services import current

if TYPE_CHECKING:
    from flows.outcome import EmployeeOutcome

EventKeys = Mapping[str, Sequence[str]]
ARTIFACT_CONCURRENCY = 5


def employee_properties(employee_id: int, event_keys: EventKeys | None) -> dict[str, object]:
    """The log properties of one employee's work: `EmployeeId`, and `EventKey` when webhooks
    caused it (several keys, when a burst for one person became one piece of work, are joined
    with ", ": Seq finds them with `EventKey like '%<key>%'`)."""
    properties: dict[str, object] = {"EmployeeId": employee_id}
    keys = (event_keys or {}).get(str(employee_id))
    if keys:
        properties["EventKey"] = ", ".join(dict.fromkeys(keys))
    return properties


def keys_of(
    event_keys: EventKeys | None, employee_ids: Iterable[int]
) -> dict[str, list[str]] | None:
    """The event keys of these employees only (what a process subflow is given)."""
    if not event_keys:
        return None
    wanted = {str(employee_id) for employee_id in employee_ids}
    return {employee: list(keys) for employee, keys in event_keys.items() if employee in wanted}


def run_tags(process: str | None, employee_ids: Sequence[int]) -> list[str]:
    """The process and `employee:<id>` tags of a run for these employees."""
    return [process_tag(process), *employee_tags(employee_ids)]


async def tag_run(client: PrefectClient, process: str | None, employee_ids: Sequence[int]) -> None:
    """Add the process and `employee:<id>` tags to this flow run (the tags it has are kept)."""
    run_id = flow_run.get_id()
    if not run_id:
        return
    wanted = run_tags(process, list(employee_ids))
    tags = list(dict.fromkeys([*flow_run.get_tags(), *wanted]))
    try:
        await client.update_flow_run(UUID(str(run_id)), tags=tags)
    except Exception as error:
        logger.warning("could not tag flow run {}: {}", run_id, error)


def jira_site() -> str | None:
    """Where people browse Jira: JIRA_BASE_URL, else the site the Jira client talks to (not the
    api.atlassian.com gateway of a cloud id, which serves no pages)."""
    settings = get_settings()
    if settings.jira_base_url:
        return str(settings.jira_base_url).rstrip("/")
    try:
        base = current().jira.base_url
    except RuntimeError:
        return None
    return None if "api.atlassian.com" in base else base.rstrip("/")


def artifact_key(issue_key: str) -> str:
    """`jira-it-42`: artifact keys take lowercase letters, digits and dashes only."""
    return "jira-" + re.sub(r"[^a-z0-9-]+", "-", issue_key.lower()).strip("-")


class RunArtifacts:
    """The artifacts of one run, over the run's Prefect client: each employee's link artifacts
    as soon as their work is done (the run's end then waits for the summary only, and the
    server writes them while other employees are still worked), and the summary at the end.

    Best effort, like all artifacts: a failure is logged and fails no run. Outside a flow run
    (a test calling the flow's function) nothing is written."""

    def __init__(self, process: str | None, client: PrefectClient) -> None:
        self.process = process
        self.site = jira_site()
        # Prefect derives it from PREFECT_API_URL when it is not set.
        self.ui_url = PREFECT_UI_URL.value()
        self._bound = asyncio.Semaphore(ARTIFACT_CONCURRENCY)
        self._client = client if flow_run.get_id() else None

    async def links(self, outcome: EmployeeOutcome) -> None:
        """A link artifact per Jira issue this employee's work touched."""
        if self._client is None or self.site is None:
            return
        await asyncio.gather(
            *(self._link(outcome, key) for key in dict.fromkeys(outcome.jira_keys))
        )

    async def _link(self, outcome: EmployeeOutcome, key: str) -> None:
        assert self._client is not None
        assert self.site is not None
        artifact = LinkArtifact(
            key=artifact_key(key),
            link=browse_url(self.site, key),
            link_text=key,
            description=link_description(self.process, outcome, key),
        )
        async with self._bound:
            await self._best_effort(artifact.acreate(self._client), f"the link artifact of {key}")

    async def timeline(self, outcome: EmployeeOutcome) -> None:
        """`why`'s timeline of this employee, when their work touched Jira or failed (a run
        that found nothing to do adds nothing to the story)."""
        if self._client is None or not (outcome.jira_keys or outcome.error):
            return
        try:  # once, not retried: the artifact is best effort, the run's work is done
            events, effects = await employee_story(current().store, outcome.employee_id)
        except Exception as error:
            logger.warning("could not read the story of {}: {}", outcome.who, error)
            return
        # Flow runs by id and link: asking Prefect for each one's name and state is for `why`.
        rows = timeline_rows(events, effects, {}, self.ui_url)
        artifact = MarkdownArtifact(
            key=f"why-employee-{outcome.employee_id}",
            markdown=timeline_markdown(outcome.employee_id, rows),
            description=f"why: {outcome.who}, oldest first",
        )
        async with self._bound:
            await self._best_effort(
                artifact.acreate(self._client), f"the timeline artifact of {outcome.who}"
            )

    async def summary(self, markdown: str, description: str, *, key: str | None = None) -> None:
        if self._client is not None:
            artifact = MarkdownArtifact(markdown=markdown, description=description, key=key)
            await self._best_effort(artifact.acreate(self._client), "the summary artifact")

    async def outcomes_summary(self, outcomes: Sequence[EmployeeOutcome]) -> None:
        """The summary table of a run of many employees (one employee's run has its links)."""
        if len(outcomes) > 1:
            await self.summary(
                summary_markdown(self.process, outcomes, self.site),
                f"{process_tag(self.process)}: {len(outcomes)} employees",
            )

    @staticmethod
    async def _best_effort(write: Awaitable[object], what: str) -> None:
        try:
            await write
        except Exception as error:
            logger.warning("could not write {} of this run: {}", what, error)


async def publish_routing(routed: Mapping[str, Sequence[int]], employee_ids: Sequence[int]) -> None:
    """The summary of a sync run of many employees: which process flow each one went to."""
    unique = list(dict.fromkeys(employee_ids))
    if not flow_run.get_id() or len(unique) <= 1:
        return
    try:
        await MarkdownArtifact(
            markdown=routing_markdown(routed, unique),
            description=f"sync: {len(unique)} employees routed",
        ).acreate()
    except Exception as error:
        logger.warning("could not write the routing summary of this run: {}", error)
