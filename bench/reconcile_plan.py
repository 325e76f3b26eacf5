"""P4: reconciliation of a 10,000-person company that Jira is already in step with.

    uv run python bench/reconcile_plan.py [--employees 10000] [--latency-ms 100]

A child process serves both simulators: PeopleForce with the company (200 pages of 50), Jira
with each employee's onboarding issue, both answering every API request after `--latency-ms`.
This process fills a fresh SQLite mapping store with one link per employee (as onboarding left
it), starts a Prefect test server, and times two ways of planning the whole company:

- the `reconcile` flow (`dry_run=False`), as the nightly deployment runs it: tasks, retries,
  leases; with Jira in step it must apply nothing;
- `pf-jira-sync reconcile --dry-run`'s path, in process, without Prefect.

For each it prints the wall time, the PeopleForce requests, and the Jira reads and writes the
simulator counted. Target: <= 60 s, 0 writes, <= 200 Jira reads.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

# Before Prefect is imported: a private home, no telemetry, quiet logs.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pf-bench-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
# The test server's own shutdown noise (events still in flight when it stops) is not a result.
os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "CRITICAL"

import httpx

ROOT = Path(__file__).resolve().parents[1]
RULES_FILE = ROOT / "rules.example.toml"
PF_KEY = "bench-peopleforce-key"
JIRA_EMAIL = "sync-bot@example.com"
JIRA_TOKEN = "bench-jira-token"
LONG_AGO = datetime(2024, 1, 8, 9, 0, tzinfo=UTC)


def company(count: int, today: date) -> list:
    """`count` people who all started over a year ago, none leaving, none changed lately."""
    from sandbox.seed import seed_people

    people = seed_people(count, today=today)
    for person in people:
        person.hired_on = min(person.hired_on, today - timedelta(days=400))
        person.termination_effective_on = None
        person.created_at = person.updated_at = LONG_AGO
    return people


def issue_key(index: int) -> str:
    return f"HR-{index + 1}"


def serve(count: int, today: date, latency_ms: float, ports: tuple[int, int], ready) -> None:
    """The child: both simulators, seeded, until killed."""
    from sandbox import jira, peopleforce
    from sandbox.faults import Faults
    from sandbox.jira import ISSUE_TYPES
    from sandbox.server import BackgroundServer

    people = company(count, today)
    faults = Faults(latency_ms=latency_ms)
    pf_app = peopleforce.create_app(api_key=PF_KEY, people=people, faults=faults, today=today)
    jira_app = jira.create_app(email=JIRA_EMAIL, api_token=JIRA_TOKEN, faults=faults)
    state = jira_app.state.jira
    for index, person in enumerate(people):
        issue = state.add_issue(
            "HR",
            ISSUE_TYPES["task"],
            f"Onboarding: {person.full_name} ({person.hired_on})",
            labels=[
                f"pf-employee-{person.id}",
                "pf-onboarding",
                f"pf-onboarding-{person.id}-{person.hired_on:%Y%m%d}",
            ],
        )
        assert issue.key == issue_key(index)
    servers = [
        BackgroundServer(pf_app, port=ports[0]).start(),
        BackgroundServer(jira_app, port=ports[1]).start(),
    ]
    ready.set()
    parent = os.getppid()
    try:  # until killed, or orphaned (the bench died)
        while all(server.alive() for server in servers) and os.getppid() == parent:
            time.sleep(0.5)
    finally:
        for server in servers:
            server.stop()


async def fill_store(database_url: str, count: int, today: date) -> None:
    """One link per employee, as onboarding left it: the issue and the fields as synced."""
    import sqlalchemy as sa

    from core import lifecycle
    from core.peopleforce.models import Employee
    from core.plan import mapped_fields
    from core.rules import load_rules
    from core.store import EmployeeLink, MappingStore
    from core.store.models import StoreModel
    from sandbox.peopleforce import PeopleForceState

    rules = load_rules(RULES_FILE)
    people = company(count, today)
    renderer = PeopleForceState(api_key=PF_KEY, people=people, today=today)
    table = StoreModel.metadata.tables["employee_link"]
    rows = []
    now = datetime.now(UTC)
    for index, person in enumerate(people):
        # The list item: the mapped fields are the same, without the full record's O(n) reports.
        employee = Employee.model_validate(renderer.render_list_item(person))
        _, synced = mapped_fields(employee, rules)
        link = lifecycle.apply(
            EmployeeLink(employee_id=person.id, created_at=now, updated_at=now),
            lifecycle.onboarding_created(
                issue_key(index),
                lifecycle.Person((person.email or "").lower() or None, person.full_name, None),
                snapshot=synced,
            ),
        )
        rows.append({column.key: getattr(link, column.key) for column in table.columns})
    async with (
        await MappingStore.open(database_url) as store,
        store.engine.begin() as connection,
    ):
        for start in range(0, len(rows), 500):
            await connection.execute(sa.insert(table), rows[start : start + 500])


async def jira_stats(jira_url: str) -> dict:
    async with httpx.AsyncClient(base_url=jira_url, trust_env=False) as client:
        return (await client.get("/_sandbox/stats")).json()


async def run_flow(pf_url: str, jira_url: str, database_url: str) -> tuple[float, dict]:
    from core.jira import JiraClient
    from core.peopleforce import PeopleForceClient
    from core.rules import load_rules
    from core.store import MappingStore
    from flows.reconcile import reconcile
    from tasks.services import Services, use

    store = await MappingStore.open(database_url)
    try:
        async with (
            PeopleForceClient(pf_url, PF_KEY) as peopleforce,
            JiraClient(jira_url, JIRA_EMAIL, JIRA_TOKEN) as jira,
        ):
            services = Services(peopleforce, jira, store, load_rules(RULES_FILE), RULES_FILE)
            async with use(services):
                started = time.perf_counter()
                result = await reconcile()
                return time.perf_counter() - started, result
    finally:
        await store.close()


async def run_in_process(pf_url: str, jira_url: str, database_url: str) -> tuple[float, dict]:
    from core.company import ClientSources, plan_reconciliation
    from core.jira import JiraClient
    from core.peopleforce import PeopleForceClient
    from core.plan import today_in
    from core.rules import load_rules
    from core.settings import get_settings
    from core.store import MappingStore

    settings = get_settings()
    rules = load_rules(RULES_FILE)
    started = time.perf_counter()
    async with await MappingStore.open(database_url) as store:
        links = [link async for link in store.all_links()]
    async with (
        PeopleForceClient(pf_url, PF_KEY) as peopleforce,
        JiraClient(jira_url, JIRA_EMAIL, JIRA_TOKEN) as jira,
    ):
        now = datetime.now(UTC)
        planned = await plan_reconciliation(
            ClientSources(peopleforce, jira),
            links,
            rules,
            today_in(rules.zone, now),
            now=now,
            concurrency=settings.reconcile_read_concurrency,
            lookback_days=settings.reconcile_lookback_days,
        )
    reads = planned.reads
    return time.perf_counter() - started, {
        "need_work": len(planned.needs_work),
        "reads": {"peopleforce_requests": reads.peopleforce_requests},
    }


def report(name: str, seconds: float, result: dict, before: dict, after: dict) -> None:
    reads = after["reads"] - before["reads"]
    writes = after["writes"] - before["writes"]
    print(
        f"  {name}: {seconds:.1f} s; PeopleForce requests "
        f"{result['reads']['peopleforce_requests']}; Jira reads {reads}, writes {writes}; "
        f"employees needing work {result['need_work']}"
    )


async def bench(count: int, latency_ms: float) -> None:
    from loguru import logger
    from prefect.testing.utilities import prefect_test_harness

    from core.plan import today_in
    from core.rules import load_rules
    from sandbox.server import free_port

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    today = today_in(load_rules(RULES_FILE).zone, datetime.now(UTC))
    ports = (free_port(), free_port())
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=serve, args=(count, today, latency_ms, ports, ready))
    child.start()
    try:
        database_url = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='pf-bench-')}/store.db"
        await fill_store(database_url, count, today)
        if not ready.wait(300):
            raise RuntimeError("the simulators did not start")
        pf_url = f"http://127.0.0.1:{ports[0]}/api/public/v3"
        jira_url = f"http://127.0.0.1:{ports[1]}"
        print(
            f"P4 reconciliation of {count} employees, Jira in step, {latency_ms:.0f} ms "
            "latency per request (PeopleForce and Jira)"
        )
        with prefect_test_harness(server_startup_timeout=180):
            before = await jira_stats(jira_url)
            seconds, result = await run_flow(pf_url, jira_url, database_url)
            after = await jira_stats(jira_url)
            report("reconcile flow (Prefect)", seconds, result, before, after)
            await asyncio.sleep(5)  # the test server records the last task runs before it stops
        before = after
        seconds, result = await run_in_process(pf_url, jira_url, database_url)
        report("dry-run path, in process", seconds, result, before, await jira_stats(jira_url))
    finally:
        child.kill()
        child.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--employees", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    arguments = parser.parse_args()
    asyncio.run(bench(arguments.employees, arguments.latency_ms))


if __name__ == "__main__":
    main()
