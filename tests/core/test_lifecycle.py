"""The lifecycle module: what each effect makes of a link, and the declared transitions."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import date, timedelta
from typing import Any

import pytest

from core import lifecycle
from core.lifecycle import (
    ALLOWED_TRANSITIONS,
    INITIAL_LIFECYCLE,
    KEEP,
    LifecycleError,
    LinkChange,
    Person,
)
from core.store import Lifecycle
from core.store.models import EmployeeLink, StoreModel, snapshot_hash

TODAY = date(2026, 3, 10)
LATER = TODAY + timedelta(days=20)
EARLIER = TODAY - timedelta(days=2)
ADA = Person(email="ada@example.com", display_name="Ada Lovelace", jira_account_id="712020:ada")
SNAPSHOT = {"position": "Engineer", "department": "Platform"}

L = Lifecycle
ALL_MOVES = list(itertools.product(Lifecycle, Lifecycle))
DECLARED = [(a, b) for a, b in ALL_MOVES if a == b or b in ALLOWED_TRANSITIONS[a]]
UNDECLARED = [move for move in ALL_MOVES if move not in DECLARED]


def a_link(state: Lifecycle = L.pending, **values: Any) -> EmployeeLink:
    """A link with something in every column, so a test sees what a change leaves alone."""
    defaults: dict[str, Any] = {
        "employee_id": 12,
        "email": "old@example.com",
        "display_name": "Old Name",
        "jira_account_id": "old-account",
        "lifecycle": state,
        "onboarding_issue_key": "HR-1",
        "onboarding_subtask_keys": ["HR-2"],
        "record_issue_key": "HR-3",
        "offboarding_issue_key": "HR-4",
        "offboarding_subtask_keys": ["HR-5"],
        "termination_on": EARLIER,
        "previous_employee_id": 7,
        "synced_fields": {"position": "Intern"},
        "synced_hash": snapshot_hash({"position": "Intern"}),
    }
    return EmployeeLink(**(defaults | values))


def changed_columns(before: EmployeeLink, after: EmployeeLink) -> dict[str, Any]:
    old, new = before.model_dump(), after.model_dump()
    return {name: new[name] for name in new if new[name] != old[name]}


PERSON_COLUMNS = {
    "email": ADA.email,
    "display_name": ADA.display_name,
    "jira_account_id": ADA.jira_account_id,
}
SYNCED_COLUMNS = {"synced_fields": SNAPSHOT, "synced_hash": snapshot_hash(SNAPSHOT)}

# (effect, the state it is applied in, the columns it changes on `a_link`)
EFFECTS = [
    pytest.param(
        lifecycle.onboarding_created("HR-10", ADA, snapshot=SNAPSHOT, previous_employee_id=3),
        L.pending,
        PERSON_COLUMNS
        | SYNCED_COLUMNS
        | {
            "lifecycle": L.onboarding,
            "onboarding_issue_key": "HR-10",
            "onboarding_subtask_keys": [],
            "offboarding_issue_key": None,
            "offboarding_subtask_keys": [],
            "termination_on": None,
            "previous_employee_id": 3,
        },
        id="onboarding created (rehire under a new id)",
    ),
    pytest.param(
        lifecycle.onboarding_created("HR-10", ADA),
        L.offboarded,
        PERSON_COLUMNS
        | {
            "lifecycle": L.onboarding,
            "onboarding_issue_key": "HR-10",
            "onboarding_subtask_keys": [],
            "offboarding_issue_key": None,
            "offboarding_subtask_keys": [],
            "termination_on": None,
        },
        id="onboarding created (reactivated, no snapshot, same id)",
    ),
    pytest.param(
        lifecycle.offboarding_created("HR-20", ADA, due_date=LATER, today=TODAY),
        L.onboarding,
        PERSON_COLUMNS
        | {
            "lifecycle": L.offboarding,
            "offboarding_issue_key": "HR-20",
            "offboarding_subtask_keys": [],
            "termination_on": LATER,
        },
        id="offboarding created, last day ahead",
    ),
    pytest.param(
        lifecycle.offboarding_created("HR-20", ADA, due_date=TODAY, today=TODAY, snapshot=SNAPSHOT),
        L.onboarding,
        PERSON_COLUMNS
        | SYNCED_COLUMNS
        | {
            "lifecycle": L.offboarded,
            "offboarding_issue_key": "HR-20",
            "offboarding_subtask_keys": [],
            "termination_on": TODAY,
        },
        id="offboarding created, last day today",
    ),
    pytest.param(
        lifecycle.record_created("HR-30", ADA, snapshot=SNAPSHOT),
        L.onboarding,
        PERSON_COLUMNS | SYNCED_COLUMNS | {"record_issue_key": "HR-30"},
        id="record issue created",
    ),
    pytest.param(
        lifecycle.subtasks_recorded("onboarding", ["HR-2", "HR-11"]),
        L.onboarding,
        {"onboarding_subtask_keys": ["HR-2", "HR-11"]},
        id="onboarding subtasks recorded",
    ),
    pytest.param(
        lifecycle.subtasks_recorded("offboarding", ("HR-21",)),
        L.offboarding,
        {"offboarding_subtask_keys": ["HR-21"]},
        id="offboarding subtasks recorded",
    ),
    pytest.param(
        lifecycle.fields_synced(SNAPSHOT),
        L.onboarding,
        SYNCED_COLUMNS,
        id="fields synced",
    ),
    pytest.param(
        lifecycle.due_date_moved(LATER, TODAY),
        L.offboarding,
        {"termination_on": LATER},
        id="due date moved later, still ahead",
    ),
    pytest.param(
        lifecycle.due_date_moved(TODAY, TODAY),
        L.offboarding,
        {"lifecycle": L.offboarded, "termination_on": TODAY},
        id="due date moved to today",
    ),
    pytest.param(
        lifecycle.due_date_moved(LATER, TODAY),
        L.offboarded,
        {"lifecycle": L.offboarding, "termination_on": LATER},
        id="due date moved beyond today after it passed",
    ),
    pytest.param(
        lifecycle.first_day_moved(LATER),
        L.onboarding,
        {"hired_on": LATER},
        id="first day moved, the onboarding follows",
    ),
    pytest.param(
        lifecycle.first_day_moved(EARLIER),
        L.onboarding,
        {"hired_on": EARLIER},
        id="first day moved to a day already past: still onboarding",
    ),
    pytest.param(
        lifecycle.offboarding_cancelled(onboarded=True),
        L.offboarding,
        {
            "lifecycle": L.onboarding,
            "offboarding_issue_key": None,
            "offboarding_subtask_keys": [],
            "termination_on": None,
        },
        id="offboarding cancelled, onboarded here",
    ),
    pytest.param(
        lifecycle.offboarding_cancelled(onboarded=False),
        L.offboarding,
        {
            "lifecycle": L.pending,
            "offboarding_issue_key": None,
            "offboarding_subtask_keys": [],
            "termination_on": None,
        },
        id="offboarding cancelled, never onboarded here",
    ),
    pytest.param(
        lifecycle.onboarding_cancelled(),
        L.onboarding,
        {"lifecycle": L.withdrawn, "onboarding_issue_key": None, "onboarding_subtask_keys": []},
        id="onboarding cancelled, hire withdrawn before day one",
    ),
    pytest.param(
        lifecycle.issue_relinked("onboarding", "IT-1"),
        L.onboarding,
        {"onboarding_issue_key": "IT-1"},
        id="onboarding issue relinked",
    ),
    pytest.param(
        lifecycle.issue_relinked("offboarding", "IT-4"),
        L.offboarding,
        {"offboarding_issue_key": "IT-4"},
        id="offboarding issue relinked",
    ),
    pytest.param(
        lifecycle.issue_relinked("record", "IT-3"),
        L.onboarding,
        {"record_issue_key": "IT-3"},
        id="record issue relinked",
    ),
    pytest.param(
        lifecycle.issue_relinked("record", None),
        L.onboarding,
        {"record_issue_key": None},
        id="record issue forgotten",
    ),
]


@pytest.mark.parametrize(("change", "state", "expected"), EFFECTS)
def test_each_effect_changes_exactly_its_columns(
    change: LinkChange, state: Lifecycle, expected: dict[str, Any]
) -> None:
    before = a_link(state)
    snapshot_before = before.model_dump()

    after = lifecycle.apply(before, change)

    assert changed_columns(before, after) == expected
    assert before.model_dump() == snapshot_before  # the link given is left as it is


# Where the plan applies each lifecycle-moving effect (core.plan): every one of these moves must
# be declared, or the flows would fail for a real case.
BUSINESS_MOVES = [
    # Onboarding: a new hire, a rehire or reactivation, a fixed-term hire whose offboarding
    # came first.
    *((lifecycle.onboarding_created("HR-1", ADA), state) for state in L),
    # Offboarding created (again, when its issue was deleted in Jira), ahead or effective.
    *(
        (lifecycle.offboarding_created("HR-4", ADA, due_date=day, today=TODAY), state)
        for state in L
        for day in (LATER, TODAY)
    ),
    # The last day moved, before or after it came.
    *(
        (lifecycle.due_date_moved(day, TODAY), state)
        for state in (L.offboarding, L.offboarded)
        for day in (LATER, EARLIER)
    ),
    # A termination reverted, for someone onboarded here or not.
    *(
        (lifecycle.offboarding_cancelled(onboarded=onboarded), state)
        for state in (L.offboarding, L.offboarded)
        for onboarded in (True, False)
    ),
    # A hire withdrawn before day one: their onboarding cancelled.
    (lifecycle.onboarding_cancelled(), L.onboarding),
    # The first day moved, before or after it came.
    *((lifecycle.first_day_moved(day), L.onboarding) for day in (LATER, EARLIER)),
]


@pytest.mark.parametrize(("change", "state"), BUSINESS_MOVES)
def test_every_move_the_flows_make_is_declared(change: LinkChange, state: Lifecycle) -> None:
    lifecycle.apply(a_link(state), change)


@pytest.mark.parametrize(("current", "target"), DECLARED)
def test_every_declared_transition_is_allowed(current: Lifecycle, target: Lifecycle) -> None:
    after = lifecycle.apply(a_link(current), LinkChange(lifecycle=target))

    assert after.lifecycle is target
    assert current.can_move_to(target)
    assert current in lifecycle.sources_of(target)


@pytest.mark.parametrize(("current", "target"), UNDECLARED)
def test_every_undeclared_transition_is_rejected(current: Lifecycle, target: Lifecycle) -> None:
    message = f"^employee 12: {current} -> {target} is not a declared transition$"

    with pytest.raises(LifecycleError, match=message):
        lifecycle.apply(a_link(current), LinkChange(lifecycle=target, record_issue_key="HR-9"))
    with pytest.raises(LifecycleError, match=message):
        lifecycle.check_transition(12, current, target)
    assert not current.can_move_to(target)
    assert current not in lifecycle.sources_of(target)


def test_the_transition_table() -> None:
    assert sorted(UNDECLARED) == sorted(
        [
            (L.onboarding, L.pending),
            (L.pending, L.withdrawn),
            (L.offboarding, L.withdrawn),
            (L.offboarded, L.withdrawn),
            (L.withdrawn, L.pending),
        ]
    )
    assert ALLOWED_TRANSITIONS[L.onboarding] == {L.offboarding, L.offboarded, L.withdrawn}
    assert ALLOWED_TRANSITIONS[L.withdrawn] == {L.onboarding, L.offboarding, L.offboarded}
    assert INITIAL_LIFECYCLE is L.pending
    assert EmployeeLink(employee_id=1).lifecycle is L.pending
    assert ALLOWED_TRANSITIONS[L.offboarding] == {L.pending, L.onboarding, L.offboarded}
    assert ALLOWED_TRANSITIONS[L.offboarded] == {L.pending, L.onboarding, L.offboarding}
    # The old import path still names the same enum.
    from core.store import ALLOWED_TRANSITIONS as from_store
    from core.store.models import Lifecycle as from_models

    assert from_models is Lifecycle is lifecycle.Lifecycle
    assert from_store is ALLOWED_TRANSITIONS


def test_an_unknown_state_is_refused_when_the_change_is_made() -> None:
    with pytest.raises(ValueError, match="'bogus' is not a valid Lifecycle"):
        LinkChange(lifecycle="bogus")  # ty: ignore[invalid-argument-type]


def test_no_change_keeps_the_link() -> None:
    link = a_link(L.onboarding)

    assert lifecycle.apply(link, None) is link
    assert changed_columns(link, lifecycle.apply(link, LinkChange())) == {}
    assert LinkChange().changed() == {}
    assert LinkChange(record_issue_key=None).changed() == {"record_issue_key": None}
    assert LinkChange().email is KEEP


@pytest.mark.parametrize(
    ("kind", "extra", "expected"),
    [
        (
            "onboarding",
            {"previous_employee_id": 3},
            lifecycle.onboarding_created("HR-1", ADA, snapshot=SNAPSHOT, previous_employee_id=3),
        ),
        (
            "offboarding",
            {"due_date": LATER},
            lifecycle.offboarding_created(
                "HR-1", ADA, due_date=LATER, today=TODAY, snapshot=SNAPSHOT
            ),
        ),
        ("record", {}, lifecycle.record_created("HR-1", ADA, snapshot=SNAPSHOT)),
    ],
)
def test_issue_created_picks_the_effect_of_its_kind(
    kind: lifecycle.IssueKind, extra: dict[str, Any], expected: LinkChange
) -> None:
    made = lifecycle.issue_created(kind, "HR-1", ADA, today=TODAY, snapshot=SNAPSHOT, **extra)

    assert made == expected


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("onboarding", lifecycle.first_day_moved(LATER)),
        ("offboarding", lifecycle.due_date_moved(LATER, TODAY)),
    ],
)
def test_issue_date_moved_picks_the_effect_of_its_kind(
    kind: lifecycle.SubtaskKind, expected: LinkChange
) -> None:
    assert lifecycle.issue_date_moved(kind, LATER, today=TODAY) == expected


def test_a_moved_first_day_changes_only_the_first_day() -> None:
    assert lifecycle.first_day_moved(LATER).changed() == {"hired_on": LATER}


def test_an_offboarding_needs_its_last_day() -> None:
    with pytest.raises(ValueError, match="HR-4 has no due date"):
        lifecycle.issue_created("offboarding", "HR-4", ADA, today=TODAY)


def test_each_kind_has_its_columns() -> None:
    link = a_link()

    assert {kind: lifecycle.issue_key(link, kind) for kind in lifecycle.ISSUE_KINDS} == {
        "onboarding": "HR-1",
        "offboarding": "HR-4",
        "record": "HR-3",
    }
    assert [lifecycle.subtask_kind(kind) for kind in lifecycle.ISSUE_KINDS] == [
        "onboarding",
        "offboarding",
        None,
    ]
    assert lifecycle.subtasks_recorded("record", ["HR-7"]) is None


def test_a_change_names_only_columns_an_effect_may_set() -> None:
    columns = set(StoreModel.metadata.tables["employee_link"].columns.keys())
    settable = columns - {"employee_id", "created_at", "updated_at", "synced_hash"}

    assert {field.name for field in dataclasses.fields(LinkChange)} == settable
