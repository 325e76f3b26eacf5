"""P6: one event at a time into an idle one-host stack (`pf-jira-sync up --sandbox`).

    .venv/bin/python bench/single_event.py                      # 50 of each kind, 5 s apart
    .venv/bin/python bench/single_event.py --count 8 --spacing 4

The stack starts as `stack_throughput.py` starts it. The bench makes single events in the
PeopleForce simulator, which sends each signed webhook: first `--count` hires (a week ahead),
then a position edit of each of those people, then a future termination of each, one event
every `--spacing` seconds and never before the one before it was applied. One hire before them
warms the stack up (its first run opens what every later run reuses) and is not counted.

An event's latency runs from the gateway's 202 (when the simulator's delivery of it ended) to
the first Jira write for that employee after it (the Jira simulator's journal). Where the time
went is read from Prefect: the webhook's run was created (gateway: stored, settled,
dispatched), went Pending (the deployments server polled and took it), Running (its process
started and the engine began) and then wrote to Jira (triage, the process subflow, Jira).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx

from bench.stack_throughput import BREAKER_OFF, Journal, Stack, utc

KINDS = ("hire", "update", "terminate")
TARGET_P50, TARGET_P95 = 1.5, 2.5
# An event not applied within this long is counted as never applied, and the bench goes on.
APPLY_TIMEOUT = 30.0
STAGES = ("202 -> run created", "created -> Pending", "Pending -> Running", "Running -> Jira")


@dataclass
class Single:
    kind: str
    employee_id: int
    asked_at: float  # when the bench asked the simulator for the change
    acknowledged_at: float | None = None  # the gateway's 202, from the simulator's delivery log
    applied_at: float | None = None
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def latency(self) -> float | None:
        if self.acknowledged_at is None or self.applied_at is None:
            return None
        return self.applied_at - self.acknowledged_at


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, stack: Stack, http: httpx.Client) -> None:
        self.stack, self.http = stack, http
        self.control = stack.peopleforce_control
        self.today = date.fromisoformat(http.get(f"{self.control}/clock").json()["today"])
        self.journal = Journal(http, stack.jira)
        self.journal.poll()  # what the seed's start wrote is not ours
        self.journal.writes.clear()
        self.hired: list[int] = []

    def hire(self, n: int) -> int:
        person = self.http.post(
            f"{self.control}/employees",
            json={
                "first_name": f"Single{n}",
                "last_name": "Hire",
                "hired_on": str(self.today + timedelta(days=7)),
            },
        )
        person.raise_for_status()
        return person.json()["id"]

    def update(self, employee_id: int, n: int) -> None:
        self.http.patch(
            f"{self.control}/employees/{employee_id}", json={"position": f"Engineer grade {n}"}
        ).raise_for_status()

    def terminate(self, employee_id: int) -> None:
        self.http.post(
            f"{self.control}/employees/{employee_id}/terminate",
            json={"effective_on": str(self.today + timedelta(days=20))},
        ).raise_for_status()

    def one(self, kind: str, n: int) -> Single:
        asked_at = time.time()
        if kind == "hire":
            employee_id = self.hire(n)
            self.hired.append(employee_id)
        elif kind == "update":
            employee_id = self.hired[n]
            self.update(employee_id, n)
        else:
            employee_id = self.hired[n]
            self.terminate(employee_id)
        return Single(kind, employee_id, asked_at)

    def wait_applied(self, event: Single) -> None:
        deadline = time.monotonic() + APPLY_TIMEOUT
        while time.monotonic() < deadline:
            self.journal.poll()
            writes = self.journal.writes.get(event.employee_id, [])
            event.applied_at = next((at for at in writes if at >= event.asked_at), None)
            if event.applied_at is not None:
                return
            time.sleep(0.05)

    def run(self, kinds: list[str], count: int, spacing: float) -> list[Single]:
        warm_up = self.one("hire", -1)
        self.hired.pop()
        self.wait_applied(warm_up)
        time.sleep(spacing)
        events: list[Single] = []
        for kind in kinds:
            for n in range(count):
                started = time.monotonic()
                event = self.one(kind, n)
                events.append(event)
                self.wait_applied(event)
                if event.applied_at is None:
                    print(f"  {kind} of {event.employee_id}: no Jira write in {APPLY_TIMEOUT:g} s")
                time.sleep(max(0.0, started + spacing - time.monotonic()))
            print(f"  {count} {kind} events made", flush=True)
        self.acknowledgements(events)
        self.stages(events)
        return events

    def acknowledgements(self, events: list[Single]) -> None:
        """Each event's 202: the end of the simulator's delivery of its webhook."""
        deliveries = self.http.get(f"{self.control}/webhooks").json()
        for event in events:
            for delivery in deliveries:
                attempted = utc(delivery["attempted_at"])
                if (
                    delivery["employee_id"] == event.employee_id
                    and delivery["ok"]
                    and attempted >= event.asked_at
                ):
                    event.acknowledged_at = attempted + delivery["duration_ms"] / 1000
                    break

    def stages(self, events: list[Single]) -> None:
        """Where each event's time went, from its webhook run's states in Prefect."""
        api = self.stack.prefect_api
        for event in events:
            if event.acknowledged_at is None or event.applied_at is None:
                continue
            runs = self.http.post(
                f"{api}/flow_runs/filter",
                json={"flow_runs": {"tags": {"all_": [f"employee:{event.employee_id}"]}}},
            ).json()
            mine = sorted(
                (
                    r
                    for r in runs
                    if r["name"].startswith("sync") and utc(r["created"]) >= event.asked_at
                ),
                key=lambda r: r["created"],
            )
            if not mine:
                continue
            run = mine[0]
            states = self.http.get(f"{api}/flow_run_states/", params={"flow_run_id": run["id"]})
            at = {s["type"]: utc(s["timestamp"]) for s in reversed(states.json())}
            created, pending, running = utc(run["created"]), at.get("PENDING"), at.get("RUNNING")
            if pending is None or running is None:
                continue
            moments = [event.acknowledged_at, created, pending, running, event.applied_at]
            event.stages = {
                stage: later - earlier
                for stage, earlier, later in zip(STAGES, moments, moments[1:], strict=False)
            }


def report(events: list[Single], kinds: list[str], spacing: float) -> bool:
    print(f"\nP6 single events at idle, {spacing:g} s apart: webhook 202 -> first Jira write")
    print(f"  target p50 <= {TARGET_P50:g} s, p95 <= {TARGET_P95:g} s, for each kind")
    passed = True
    for kind in kinds:
        mine = [e for e in events if e.kind == kind]
        latencies = [e.latency for e in mine if e.latency is not None]
        lost = len(mine) - len(latencies)
        if not latencies:
            print(f"  {kind:<10} none applied: FAIL")
            passed = False
            continue
        p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
        ok = p50 <= TARGET_P50 and p95 <= TARGET_P95 and lost == 0
        passed &= ok
        print(
            f"  {kind:<10} n {len(latencies):>3}  p50 {p50:.2f} s  p95 {p95:.2f} s  "
            f"max {max(latencies):.2f} s  lost {lost}  {'PASS' if ok else 'FAIL'}"
        )
        staged = [e.stages for e in mine if e.stages]
        if staged:
            print(
                "             median "
                + ", ".join(
                    f"{stage} {statistics.median(s[stage] for s in staged):.2f} s"
                    for stage in STAGES
                )
            )
    print(f"  {'PASS' if passed else 'FAIL'}")
    return passed


def load_average() -> str:
    """This host's 1-minute load average: the figures above vary with what else runs."""
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=50, help="events of each kind")
    parser.add_argument("--spacing", type=float, default=5.0, help="seconds between events")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--keep", type=Path, help="data directory to keep (logs, databases)")
    parser.add_argument("--log-level", default="WARNING", help="the stack's LOG_LEVEL")
    parser.add_argument(
        "--setting", action="append", default=[], help="NAME=VALUE for the stack (repeatable)"
    )
    args = parser.parse_args()
    kinds: list[str] = args.kinds
    if "hire" not in kinds:
        kinds = ["hire", *kinds]  # edits and terminations go to people the bench hired
    with tempfile.TemporaryDirectory(prefix="pf-bench-") as tmp:
        print("starting pf-jira-sync up --sandbox ...", flush=True)
        settings = dict(item.split("=", 1) for item in args.setting)
        load_at_start = load_average()
        stack = Stack.start(
            args.keep or Path(tmp) / "data",
            {"LOG_LEVEL": args.log_level, **BREAKER_OFF, **settings},
        )
        try:
            with httpx.Client(trust_env=False, timeout=30) as http:
                events = Bench(stack, http).run(kinds, args.count, args.spacing)
        finally:
            stack.stop()
    passed = report(events, kinds, args.spacing)
    print(
        f"\n(measured {datetime.now(UTC):%Y-%m-%d} on {os.cpu_count()} cores; load average "
        f"{load_at_start} at the start, {load_average()} at the end)"
    )
    raise SystemExit(0 if passed else 1)


if __name__ == "__main__":
    main()
