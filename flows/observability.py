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

from core.names import employee_tags
from core.settings import get_settings
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


def process_tag(process: str | None) -> str:
    return (process or "sync").replace("_", "-")


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


def browse_url(site: str, issue_key: str) -> str:
    return f"{site}/browse/{issue_key}"


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
        applied = "; ".join(done for done in outcome.applied if done.endswith(key))
        artifact = LinkArtifact(
            key=artifact_key(key),
            link=browse_url(self.site, key),
            link_text=key,
            description=f"{process_tag(self.process)} · {outcome.who}: {applied}",
        )
        async with self._bound:
            await self._best_effort(artifact.acreate(self._client), f"the link artifact of {key}")

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


def markdown_cell(text: str) -> str:
    """Text that stays in its Markdown table cell: pipes escaped, on one line."""
    return " ".join(text.replace("|", "\\|").split()) or "-"


def issue_link(site: str | None, key: str) -> str:
    """A Jira key as a Markdown link, or the bare key when there is no site to link to."""
    return f"[{key}]({browse_url(site, key)})" if site else key


def summary_markdown(
    process: str | None, outcomes: Sequence[EmployeeOutcome], site: str | None
) -> str:
    """A table: each employee, what was applied, the Jira issues (linked), notes and errors."""
    failed = sum(1 for outcome in outcomes if outcome.error)
    changed = sum(1 for outcome in outcomes if outcome.applied)
    lines = [
        f"## {process_tag(process)} · {len(outcomes)} employees",
        "",
        f"{changed} changed in Jira, {len(outcomes) - changed - failed} unchanged, "
        f"{failed} failed.",
        "",
        "| employee | applied | Jira | notes | error |",
        "|---|---|---|---|---|",
    ]
    lines += [
        "| "
        + " | ".join(
            [
                markdown_cell(outcome.who),
                markdown_cell("; ".join(outcome.applied)),
                ", ".join(issue_link(site, key) for key in dict.fromkeys(outcome.jira_keys)) or "-",
                markdown_cell("; ".join([*outcome.notes, *outcome.left_for_others])),
                markdown_cell(outcome.error or ""),
            ]
        )
        + " |"
        for outcome in sorted(outcomes, key=lambda o: (o.error is None, o.employee_id))
    ]
    return "\n".join(lines)


async def publish_routing(routed: Mapping[str, Sequence[int]], employee_ids: Sequence[int]) -> None:
    """The summary of a sync run of many employees: which process flow each one went to."""
    unique = list(dict.fromkeys(employee_ids))
    if not flow_run.get_id() or len(unique) <= 1:
        return
    went = {employee for ids in routed.values() for employee in ids}
    lines = [f"## sync · {len(unique)} employees", "", "| process | employees |", "|---|---|"]
    lines += [
        f"| {process_tag(process)} | {len(ids)}: {', '.join(map(str, ids))} |"
        for process, ids in routed.items()
        if ids
    ]
    idle = [employee for employee in unique if employee not in went]
    lines.append(f"| nothing to do | {len(idle)}: {', '.join(map(str, idle)) or '-'} |")
    try:
        await MarkdownArtifact(
            markdown="\n".join(lines), description=f"sync: {len(unique)} employees routed"
        ).acreate()
    except Exception as error:
        logger.warning("could not write the routing summary of this run: {}", error)
