"""The names other systems see are one vocabulary: the processes are named as their flows."""

from __future__ import annotations

import pytest

from core import names
from core.plan import ALL_PROCESSES


def test_the_processes_are_named_as_their_flows_and_tags() -> None:
    assert set(ALL_PROCESSES) == {
        names.ONBOARDING_FLOW,
        names.OFFBOARDING_FLOW,
        names.FIELD_SYNC_FLOW,
    }
    assert {names.process_tag(process) for process in ALL_PROCESSES} == set(ALL_PROCESSES)
    assert names.process_tag(None) == "sync"


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        ({}, "reconcile"),
        ({"dry_run": True}, "reconcile · dry run"),
        ({"force": True, "full": True}, "reconcile · force · full"),
    ],
)
def test_a_reconcile_run_has_one_name_whoever_starts_it(flags: dict, name: str) -> None:
    assert names.reconcile_run_name(**flags) == name
