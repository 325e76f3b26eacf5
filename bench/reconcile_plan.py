"""P4 and P4': reconciliation of a whole company that Jira is already in step with.

    uv run python bench/reconcile_plan.py                  # P4: 10,000 employees
    uv run python bench/reconcile_plan.py --size p4-prime  # P4': 100,000 employees
    uv run python bench/reconcile_plan.py --size p4-prime --employees 20000  # P4' targets, smaller

A child process serves both simulators: PeopleForce with the company (pages of 50: 200 for P4,
2,000 for P4'), Jira with each employee's onboarding issue, both answering every API request
after `--latency-ms`. Another child fills a fresh SQLite mapping store with one link per
employee (as onboarding left it), while this process starts a Prefect test server; then it times
two ways of planning the whole company:

- the `reconcile` flow (`dry_run=False`), as the nightly deployment runs it: tasks, retries,
  leases; with Jira in step it must apply nothing;
- `pf-jira-sync reconcile --dry-run`'s path, in process, without Prefect.

For each it prints the wall time, the PeopleForce requests, the Jira reads and writes the
simulator counted and the peak RSS of this process (which plans) during that run, each next to
its target with PASS/FAIL. Targets: P4 <= 60 s; P4' <= 3 min and peak RSS <= 1 GB; both 0 writes
and at most one Jira read per 50 employees.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass
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


def fill_store(database_url: str, count: int, today: date) -> None:
    """The child: one link per employee, as onboarding left it (the issue and the fields as
    synced), written to the store at `database_url`."""
    asyncio.run(write_links(database_url, count, today))


async def write_links(database_url: str, count: int, today: date) -> None:
    import sqlalchemy as sa

    from core import lifecycle
    from core.peopleforce.models import Employee
    from core.plan import mapped_fields
    from core.rules import load_rules
    from core.store import EmployeeLink, MappingStore
    from core.store.models import StoreModel, snapshot_hash, to_json_value
    from sandbox.peopleforce import PeopleForceState

    rules = load_rules(RULES_FILE)
    people = company(count, today)
    renderer = PeopleForceState(api_key=PF_KEY, people=people, today=today)
    table = StoreModel.metadata.tables["employee_link"]
    now = datetime.now(UTC)

    def onboarded(index: int, person, synced: dict) -> dict:
        link = lifecycle.apply(
            EmployeeLink(employee_id=person.id, created_at=now, updated_at=now),
            lifecycle.onboarding_created(
                issue_key(index),
                lifecycle.Person((person.email or "").lower() or None, person.full_name, None),
                snapshot=synced,
            ),
        )
        return {column.key: getattr(link, column.key) for column in table.columns}

    rows = []
    template: dict | None = None
    for index, person in enumerate(people):
        # The list item: the mapped fields are the same, without the full record's O(n) reports.
        employee = Employee.model_validate(renderer.render_list_item(person))
        _, synced = mapped_fields(employee, rules)
        if index < 100:  # a link through `lifecycle` costs 1 ms: 100 of them, then their shape
            rows.append(row := onboarded(index, person, synced))
            template = template or row
            continue
        assert template is not None
        snapshot = to_json_value(dict(synced))
        rows.append(
            template
            | {
                "employee_id": person.id,
                "email": (person.email or "").lower() or None,
                "display_name": person.full_name,
                "onboarding_issue_key": issue_key(index),
                "synced_fields": snapshot,
                "synced_hash": snapshot_hash(snapshot),
            }
        )
        if index < 200:  # the shape holds
            assert rows[-1] == onboarded(index, person, synced), person.id
    async with (
        await MappingStore.open(database_url) as store,
        store.engine.begin() as connection,
    ):
        for start in range(0, len(rows), 1000):
            await connection.execute(sa.insert(table), rows[start : start + 1000])


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


@dataclass(frozen=True)
class Targets:
    name: str
    employees: int
    seconds: float
    rss_mib: float | None  # None: no target (P4 set none)


SIZES = {
    "p4": Targets("P4", 10_000, 60.0, None),
    "p4-prime": Targets("P4'", 100_000, 180.0, 1024.0),
}


class PeakRss:
    """This process's peak RSS over a block: the kernel's high-water mark, reset on entry
    (`/proc/self/clear_refs`), read on exit."""

    mib: float = 0.0

    def __enter__(self) -> PeakRss:
        Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *_: object) -> None:
        status = Path("/proc/self/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        self.mib = kib / 1024


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(
    name: str,
    seconds: float,
    result: dict,
    before: dict,
    after: dict,
    rss: PeakRss,
    targets: Targets,
    employees: int,
) -> bool:
    reads = after["reads"] - before["reads"]
    writes = after["writes"] - before["writes"]
    read_budget = math.ceil(employees / 50)
    checks = [
        (f"wall {seconds:.1f} s", f"<= {targets.seconds:.0f} s", seconds <= targets.seconds),
        (f"Jira reads {reads}", f"<= {read_budget} (1 per 50)", reads <= read_budget),
        (f"Jira writes {writes}", "0", writes == 0),
        (
            f"employees needing work {result['need_work']}",
            "0 (in step)",
            result["need_work"] == 0,
        ),
    ]
    if targets.rss_mib is not None:
        checks.append(
            (
                f"peak RSS {rss.mib:.0f} MiB",
                f"<= {targets.rss_mib:.0f} MiB",
                rss.mib <= targets.rss_mib,
            )
        )
    print(f"  {name}:")
    for figure, target, ok in checks:
        print(f"    {figure:<36} target {target:<22} {verdict(ok)}")
    print(f"    PeopleForce requests {result['reads']['peopleforce_requests']}", end="")
    print("" if targets.rss_mib is not None else f"; peak RSS {rss.mib:.0f} MiB")
    return all(ok for _, _, ok in checks)


async def bench(targets: Targets, count: int, latency_ms: float) -> bool:
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
    database_url = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='pf-bench-')}/store.db"
    seeded = time.perf_counter()
    # Seeded in children, side by side: what seeding holds is not this process's RSS.
    child = context.Process(target=serve, args=(count, today, latency_ms, ports, ready))
    filler = context.Process(target=fill_store, args=(database_url, count, today))
    child.start()
    filler.start()
    passed = True
    try:
        filler.join()
        if filler.exitcode != 0:
            raise RuntimeError("filling the mapping store failed")
        if not ready.wait(600):
            raise RuntimeError("the simulators did not start")
        pf_url = f"http://127.0.0.1:{ports[0]}/api/public/v3"
        jira_url = f"http://127.0.0.1:{ports[1]}"
        print(
            f"{targets.name} reconciliation of {count} employees ({math.ceil(count / 50)} pages "
            f"of 50), Jira in step, {latency_ms:.0f} ms latency per request (PeopleForce and "
            f"Jira); seeded in {time.perf_counter() - seeded:.0f} s"
        )
        with prefect_test_harness(server_startup_timeout=180):
            before = await jira_stats(jira_url)
            with PeakRss() as rss:
                seconds, result = await run_flow(pf_url, jira_url, database_url)
            after = await jira_stats(jira_url)
            passed &= report(
                "reconcile flow (Prefect)", seconds, result, before, after, rss, targets, count
            )
            await asyncio.sleep(5)  # the test server records the last task runs before it stops
        before = after
        with PeakRss() as rss:
            seconds, result = await run_in_process(pf_url, jira_url, database_url)
        after = await jira_stats(jira_url)
        passed &= report(
            "dry-run path, in process", seconds, result, before, after, rss, targets, count
        )
    finally:
        for process in (child, filler):
            process.kill()
            process.join()
    print(f"{targets.name}: {verdict(passed)}")
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="p4",
        help="the targets, and the company size unless --employees says otherwise",
    )
    parser.add_argument("--employees", type=int, help="company size (default: the size's own)")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    arguments = parser.parse_args()
    targets = SIZES[arguments.size]
    count = arguments.employees or targets.employees
    sys.exit(0 if asyncio.run(bench(targets, count, arguments.latency_ms)) else 1)


if __name__ == "__main__":
    main()
