"""The fault suite's arithmetic (bench/faults.py): what counts as lost, refused and duplicated,
and when two final Jira states are the same. No stack runs here: rows are built from
hand-made deliveries and issues shaped as the Jira simulator's `/_sandbox/issues` returns them."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from core.jira.adf import text_to_adf
from sandbox import jira
from sandbox.server import BackgroundServer
from tests.paths import ROOT


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_faults", ROOT / "bench" / "faults.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


faults = load_bench()


def issue(
    key: str,
    employee: int,
    kind: str,
    *,
    summary: str | None = None,
    description: str | None = None,
    status: str = "To Do",
    duedate: str | None = "2026-12-20",
) -> dict[str, Any]:
    return {
        "key": key,
        "fields": {
            "summary": summary or f"{kind.title()}: person {employee}",
            "description": text_to_adf(description) if description else None,
            "issuetype": {"name": "Task", "subtask": False},
            "project": {"key": key.split("-")[0]},
            "status": {"name": status},
            "labels": [f"pf-employee-{employee}", f"pf-{kind}", f"pf-{kind}-{employee}-20261220"],
            "duedate": duedate,
            "assignee": None,
            "customfield_10050": "Software Engineer",
        },
    }


def subtask(key: str, parent: str, summary: str, status: str = "To Do") -> dict[str, Any]:
    return {
        "key": key,
        "fields": {
            "summary": summary,
            "issuetype": {"name": "Sub-task", "subtask": True},
            "parent": {"key": parent},
            "status": {"name": status},
            "labels": [],
            "assignee": None,
        },
    }


def test_an_acknowledged_event_without_its_issue_is_lost_and_a_refused_one_is_not() -> None:
    events = [
        faults.Event(1, "onboarding", [202]),
        faults.Event(2, "onboarding", [202]),  # acknowledged, nothing in Jira: lost
        faults.Event(3, "onboarding", [None]),  # connection refused: not lost
        faults.Event(4, "onboarding", [503]),
        faults.Event(1, "offboarding", [202]),
    ]
    issues = [
        issue("HR-1", 1, "onboarding"),
        subtask("HR-2", "HR-1", "Create accounts"),
        issue("HR-3", 1, "offboarding"),
    ]
    row = faults.tally("prefect-kill", events, issues, {})
    assert (row.posted, row.acknowledged, row.refused) == (5, 3, 2)
    assert (row.applied, row.lost, row.duplicates) == (2, 1, 0)
    lost = faults.lost_events(events, issues, {})
    assert [(e.employee_id, e.expects) for e in lost] == [(2, "onboarding")]


def test_an_issue_short_of_its_checklist_is_not_applied() -> None:
    events = [faults.Event(1, "onboarding", [202])]
    issues = [issue("HR-1", 1, "onboarding"), subtask("HR-2", "HR-1", "Create accounts")]
    assert faults.tally("x", events, issues, {(1, "onboarding"): 1}).lost == 0
    assert faults.tally("x", events, issues, {(1, "onboarding"): 2}).lost == 1


def test_repeats_count_as_posts_but_the_event_once() -> None:
    events = [faults.Event(1, "onboarding", [200, 202, 200]), faults.Event(2, "onboarding", [])]
    row = faults.tally(faults.COMPARISON, events, [issue("HR-1", 1, "onboarding")], {})
    assert (row.posted, row.acknowledged, row.refused, row.applied, row.lost) == (3, 3, 0, 1, 0)


def test_duplicates_are_a_second_issue_of_a_kind_or_a_repeated_subtask() -> None:
    issues = [
        issue("HR-1", 1, "onboarding"),
        issue("HR-2", 1, "onboarding"),  # created twice
        issue("HR-3", 1, "offboarding"),  # another kind: fine
        issue("HR-4", 2, "onboarding"),  # another person: fine
        subtask("HR-5", "HR-4", "Create accounts"),
        subtask("HR-6", "HR-4", "Create accounts"),  # created twice
        subtask("HR-7", "HR-4", "Prepare a laptop"),
        subtask("HR-8", "HR-1", "Create accounts"),  # same summary, another parent: fine
    ]
    assert faults.count_duplicates(issues) == 2


def test_events_follow_what_the_bench_did_to_each_person_in_order() -> None:
    deliveries = [
        {"id": 2, "employee_id": 7, "status_code": 202},
        {"id": 1, "employee_id": 7, "status_code": 202},
        {"id": 3, "employee_id": 8, "status_code": None},
    ]
    actions = {7: ["hire", "terminate"], 8: ["hire"]}
    events = faults.events_from(deliveries, actions)
    assert [(e.employee_id, e.expects, e.statuses) for e in events] == [
        (7, "onboarding", [202]),
        (7, "offboarding", [202]),
        (8, "onboarding", [None]),
    ]
    assert all(e.statuses == [] for e in faults.events_from(deliveries, actions, answered=False))


def run(*issues_: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    return faults.jira_state(list(issues_))


def test_the_same_work_under_other_keys_is_the_same_state() -> None:
    once = run(
        issue("IT-1", 1, "onboarding"),
        subtask("IT-2", "IT-1", "Create accounts"),
        subtask("IT-3", "IT-1", "Prepare a laptop"),
        issue("IT-4", 1, "offboarding", description="Leaves.\n\nRelated: IT-1"),
    )
    thrice = run(
        issue("IT-7", 1, "offboarding", description="Leaves.\n\nRelated: IT-5"),
        issue("IT-5", 1, "onboarding"),
        subtask("IT-9", "IT-5", "Prepare a laptop"),
        subtask("IT-6", "IT-5", "Create accounts"),
    )
    assert faults.compare_states(once, thrice) == []


RELATED = "Leaves.\n\nRelated: IT-1"


@pytest.mark.parametrize(
    ("changed", "where"),
    [
        (issue("IT-4", 1, "offboarding", description="Leaves."), "description"),
        # The line names the offboarding issue itself instead of the onboarding one.
        (issue("IT-4", 1, "offboarding", description="Leaves.\n\nRelated: IT-4"), "description"),
        (issue("IT-4", 1, "offboarding", description=RELATED, status="Done"), "status"),
        (issue("IT-4", 1, "offboarding", description=RELATED, duedate=None), "duedate"),
        (issue("IT-4", 1, "offboarding", description=RELATED, summary="Other"), "summary"),
    ],
)
def test_a_difference_in_what_a_person_reads_is_named(changed: dict[str, Any], where: str) -> None:
    reference = run(
        issue("IT-1", 1, "onboarding"), issue("IT-4", 1, "offboarding", description=RELATED)
    )
    differences = faults.compare_states(reference, run(issue("IT-1", 1, "onboarding"), changed))
    assert len(differences) == 1
    assert differences[0].startswith("employee 1:")
    assert where in differences[0]


def test_a_missing_subtask_or_an_extra_person_is_a_difference() -> None:
    reference = run(issue("IT-1", 1, "onboarding"), subtask("IT-2", "IT-1", "Create accounts"))
    missing = faults.compare_states(reference, run(issue("IT-1", 1, "onboarding")))
    assert len(missing) == 1
    assert "subtasks" in missing[0]
    extra = faults.compare_states(
        reference,
        run(
            issue("IT-1", 1, "onboarding"),
            subtask("IT-2", "IT-1", "Create accounts"),
            issue("IT-3", 2, "onboarding"),
        ),
    )
    assert len(extra) == 1
    assert extra[0].startswith("employee 2:")


def passing(fault: str, **changes: Any) -> Any:
    row = faults.Row(fault, posted=300, acknowledged=300, applied=300, quiet_seconds=40.0)
    for name, value in changes.items():
        setattr(row, name, value)
    return row


def test_the_verdict_is_done_means() -> None:
    assert passing("prefect-kill").verdict == "PASS"
    assert passing("prefect-kill", lost=1).verdict == "FAIL"
    assert passing("prefect-kill", duplicates=1).verdict == "FAIL"
    assert passing("prefect-kill", refused=1).verdict == "FAIL"
    assert passing("prefect-kill", quiet_seconds=121.0).verdict == "FAIL"
    assert passing("prefect-kill", quiet_seconds=None).verdict == "FAIL"
    # The gateway's own death may refuse webhooks, if it is back within 5 s.
    assert passing("gateway-kill", refused=12, gateway_back_seconds=1.5).verdict == "PASS"
    assert passing("gateway-kill", refused=12, gateway_back_seconds=5.0).verdict == "FAIL"
    assert passing("power-cut", refused=12, gateway_back_seconds=None).verdict == "FAIL"
    assert passing(faults.COMPARISON, state_differences=["employee 1: ..."]).verdict == "FAIL"
    assert passing(faults.COMPARISON, state_differences=[]).verdict == "PASS"
    assert faults.Row("search-lag", unavailable="unknown field").verdict == "not available"
    assert faults.Row("prefect-kill").verdict == "FAIL"  # nothing posted measures nothing


def test_quiet_counts_from_the_end_of_the_fault() -> None:
    journal = [{"at": "2026-12-07T10:00:05+00:00"}, {"at": "2026-12-07T10:01:35+00:00"}]
    end = faults.utc("2026-12-07T10:00:35+00:00")
    assert faults.quiet_after(journal, end) == pytest.approx(60.0)
    assert faults.quiet_after([], end) == 0.0


def test_the_table_has_one_row_per_fault() -> None:
    rows = [passing("prefect-kill"), faults.Row("search-lag", unavailable="unknown field")]
    lines = faults.format_table(rows)
    assert len(lines) == 3
    assert lines[1].split()[0] == "prefect-kill"
    assert lines[1].split()[-1] == "PASS"
    assert lines[2].endswith("not available")


class StrictFaults(BaseModel):
    """A simulator's faults that refuse unknown fields, and one out-of-range value."""

    model_config = ConfigDict(extra="forbid")
    search_lag_seconds: float = Field(0, ge=0, le=30)


def strict_simulator() -> FastAPI:
    app = FastAPI()

    @app.put("/_sandbox/faults")
    async def replace(faults: StrictFaults) -> StrictFaults:
        return faults

    return app


def test_a_jira_fault_the_simulator_lacks_is_not_available_whether_refused_or_ignored() -> None:
    lenient_app = jira.create_app(email="bot@example.com", api_token="t")  # ignores extras
    with (
        BackgroundServer(lenient_app) as lenient,
        BackgroundServer(strict_simulator()) as strict,
        httpx.Client(trust_env=False) as http,
    ):
        assert faults.put_jira_faults(http, lenient.url, {"error_rate": 0.3}) is None
        # A field it lacks (one no simulator will have: this must hold after others are added).
        ignored = faults.put_jira_faults(http, lenient.url, {"no_such_fault": 5})
        assert ignored == "the Jira simulator does not know no_such_fault"
        refused = faults.put_jira_faults(http, strict.url, {"after_apply_rate": 0.2})
        assert refused == "the Jira simulator does not know after_apply_rate"
        assert faults.put_jira_faults(http, strict.url, {"search_lag_seconds": 5}) is None
        # A known field with a value it refuses is the bench's mistake: say so, loudly.
        with pytest.raises(RuntimeError, match="refuses these faults"):
            faults.put_jira_faults(http, strict.url, {"search_lag_seconds": 99})
