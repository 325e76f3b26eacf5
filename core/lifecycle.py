"""What an employee's link becomes after each Jira effect, checked against the declared lifecycle.

Pure: no I/O, no clock, no Prefect. Each function below describes one effect's change to the
link as a `LinkChange`; the store applies it with `apply`, inside the transaction that records
the effect, and `apply` refuses a move of `lifecycle` that `ALLOWED_TRANSITIONS` does not declare.
Nothing else sets a link's lifecycle: a link starts as `INITIAL_LIFECYCLE`, and every move after
that is one of these changes.

The issue kinds map to their columns here, explicitly (`issue_key`, `issue_relinked`,
`subtasks_recorded`): no column name is built from a string.

The store's `EmployeeLink` (core.store.models) imports this module for `Lifecycle`; this module
knows it only as the `Link` protocol, so no import goes back up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import date
from enum import Enum, StrEnum
from typing import Any, Final, Literal, Protocol, TypeVar, get_args


class Lifecycle(StrEnum):
    """Where an employee is in this service's Jira work.

    - `pending`: known to the store, no Jira work created yet.
    - `onboarding`: onboarding issue created; the person is (or will be) employed.
    - `offboarding`: offboarding issue open for a termination that is not yet effective.
    - `offboarded`: the termination is effective and its offboarding work exists.
    - `withdrawn`: the hire was withdrawn before day one and its onboarding cancelled.

    Transitions (see `ALLOWED_TRANSITIONS`; staying in the same state is always allowed), each
    with the effect that makes it (the functions of `core.lifecycle`):

    - pending -> onboarding: onboarding work created.
    - pending, onboarding -> offboarding: a future termination got its offboarding work.
    - pending, onboarding, offboarding -> offboarded: the termination took effect (its
      offboarding work was created, or its last day moved, to today or earlier).
    - offboarding -> onboarding: the termination was reverted before it took effect (or the
      onboarding of someone with a future last day was created after their offboarding).
    - offboarding -> pending: a termination was reverted for someone this service never
      onboarded (the termination of a person it did not know, then reverted): nothing is left
      but the person.
    - offboarded -> offboarding: the last day moved to a later date after it had been reached
      (a termination entered for today, then corrected): the termination is no longer effective.
    - offboarded -> pending, onboarding: a terminated employee was reactivated under the same id
      (a rehire under a new id is a new link with `previous_employee_id` set instead), or the
      termination reverted after its day.

    - onboarding -> withdrawn: the hire was withdrawn before day one (terminated, effective
      before the hire date): the onboarding was cancelled, nobody starts.
    - withdrawn -> onboarding, offboarding, offboarded: the hire was reinstated (onboarding
      created again), or an offboarding was made for them after all.

    Not declared: onboarding -> pending. Onboarding work, once created, is never forgotten:
    cancelling an offboarding returns an onboarded person to `onboarding`, cancelling the
    onboarding of a withdrawn hire leaves them `withdrawn`.
    """

    pending = "pending"
    onboarding = "onboarding"
    offboarding = "offboarding"
    offboarded = "offboarded"
    withdrawn = "withdrawn"

    def can_move_to(self, target: Lifecycle) -> bool:
        return target == self or target in ALLOWED_TRANSITIONS[self]


ALLOWED_TRANSITIONS: Final[Mapping[Lifecycle, frozenset[Lifecycle]]] = {
    Lifecycle.pending: frozenset(
        {Lifecycle.onboarding, Lifecycle.offboarding, Lifecycle.offboarded}
    ),
    Lifecycle.onboarding: frozenset(
        {Lifecycle.offboarding, Lifecycle.offboarded, Lifecycle.withdrawn}
    ),
    Lifecycle.offboarding: frozenset(
        {Lifecycle.pending, Lifecycle.onboarding, Lifecycle.offboarded}
    ),
    Lifecycle.offboarded: frozenset(
        {Lifecycle.pending, Lifecycle.onboarding, Lifecycle.offboarding}
    ),
    Lifecycle.withdrawn: frozenset(
        {Lifecycle.onboarding, Lifecycle.offboarding, Lifecycle.offboarded}
    ),
}

# Every link starts here, whoever creates it (the store, when it records a first effect).
INITIAL_LIFECYCLE: Final = Lifecycle.pending


class LifecycleError(ValueError):
    """A change would move a link between two states that `ALLOWED_TRANSITIONS` does not link."""


def check_transition(employee_id: int, current: Lifecycle, target: Lifecycle) -> None:
    """Raise `LifecycleError` unless `current -> target` is declared (or no move at all)."""
    if not Lifecycle(current).can_move_to(Lifecycle(target)):
        raise LifecycleError(
            f"employee {employee_id}: {Lifecycle(current)} -> {Lifecycle(target)} "
            "is not a declared transition"
        )


def sources_of(target: Lifecycle) -> frozenset[Lifecycle]:
    """The states from which a link may move to `target` (itself included)."""
    return frozenset(state for state in Lifecycle if state.can_move_to(target))


class Link(Protocol):
    """What this module reads of a link: `core.store.models.EmployeeLink`."""

    employee_id: int
    lifecycle: Lifecycle
    onboarding_issue_key: str | None
    record_issue_key: str | None
    offboarding_issue_key: str | None

    def model_dump(self) -> dict[str, Any]: ...

    def set_synced(self, fields: Mapping[str, Any]) -> None: ...


AnyLink = TypeVar("AnyLink", bound=Link)


# --- Issue kinds and their columns --------------------------------------------------------

IssueKind = Literal["onboarding", "offboarding", "record"]
ISSUE_KINDS: Final[tuple[IssueKind, ...]] = get_args(IssueKind)
# The kinds whose subtask keys the link keeps (the record issue's subtasks are not tracked).
SubtaskKind = Literal["onboarding", "offboarding"]


def issue_key(link: Link, kind: IssueKind) -> str | None:
    """The key of the link's parent issue of this kind."""
    match kind:
        case "onboarding":
            return link.onboarding_issue_key
        case "offboarding":
            return link.offboarding_issue_key
        case "record":
            return link.record_issue_key


def subtask_kind(kind: IssueKind) -> SubtaskKind | None:
    """`kind` when the link keeps the subtask keys of its issues, else None (the record issue)."""
    match kind:
        case "onboarding" | "offboarding":
            return kind
        case "record":
            return None


# --- The change ---------------------------------------------------------------------------


class Keep(Enum):
    """The value of a `LinkChange` field that leaves the link's value as it is."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


@dataclass(frozen=True)
class Person:
    """Who a link is about, as its issues were created for them."""

    email: str | None
    display_name: str | None
    jira_account_id: str | None


@dataclass(frozen=True)
class LinkChange:
    """What one Jira effect changes on a link: each field is a new value (None clears it), or
    `KEEP`. Build it with the functions below; `apply` applies it, checking the lifecycle."""

    lifecycle: Lifecycle | Keep = KEEP
    email: str | Keep | None = KEEP
    display_name: str | Keep | None = KEEP
    jira_account_id: str | Keep | None = KEEP
    previous_employee_id: int | Keep | None = KEEP
    onboarding_issue_key: str | Keep | None = KEEP
    onboarding_subtask_keys: tuple[str, ...] | Keep = KEEP
    record_issue_key: str | Keep | None = KEEP
    offboarding_issue_key: str | Keep | None = KEEP
    offboarding_subtask_keys: tuple[str, ...] | Keep = KEEP
    termination_on: date | Keep | None = KEEP
    hired_on: date | Keep | None = KEEP
    # The mapped fields as now written to Jira; their hash is set with them.
    synced_fields: Mapping[str, Any] | Keep = KEEP

    def __post_init__(self) -> None:
        if not isinstance(self.lifecycle, Keep):
            Lifecycle(self.lifecycle)  # refuses an unknown state when the change is made

    def changed(self) -> dict[str, Any]:
        """The fields this change sets, by name (the link's columns), `KEEP` ones left out."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return {name: value for name, value in values.items() if not isinstance(value, Keep)}


def apply(link: AnyLink, change: LinkChange | None) -> AnyLink:
    """The link after `change`, as a new link (`link` is left as it is).

    Raises `LifecycleError` when the change moves the lifecycle along an undeclared transition.
    """
    if change is None:
        return link
    if not isinstance(change.lifecycle, Keep):
        check_transition(link.employee_id, Lifecycle(link.lifecycle), change.lifecycle)
    updates = change.changed()
    synced = updates.pop("synced_fields", None)
    for name in ("onboarding_subtask_keys", "offboarding_subtask_keys"):
        if name in updates:
            updates[name] = list(updates[name])
    after = type(link)(**(link.model_dump() | updates))
    if synced is not None:
        after.set_synced(synced)
    return after


# --- One function per effect --------------------------------------------------------------


def onboarding_created(
    key: str,
    person: Person,
    *,
    snapshot: Mapping[str, Any] | None = None,
    previous_employee_id: int | None = None,
    hired_on: date | None = None,
) -> LinkChange:
    """The onboarding issue `key` exists (created, or found by its guard label), made for the
    first day `hired_on`.

    A rehire starts over: a former offboarding is history (kept in the audit), and a rehire
    under a new id remembers the former id.
    """
    return _about(
        person,
        LinkChange(
            lifecycle=Lifecycle.onboarding,
            onboarding_issue_key=key,
            onboarding_subtask_keys=(),
            offboarding_issue_key=None,
            offboarding_subtask_keys=(),
            termination_on=None,
            hired_on=hired_on,
            previous_employee_id=KEEP if previous_employee_id is None else previous_employee_id,
            synced_fields=_snapshot(snapshot),
        ),
    )


def offboarding_created(
    key: str,
    person: Person,
    *,
    due_date: date,
    today: date,
    snapshot: Mapping[str, Any] | None = None,
) -> LinkChange:
    """The offboarding issue `key` exists for the last day `due_date`: `offboarded` when that
    day has come, else `offboarding`."""
    return _about(
        person,
        LinkChange(
            lifecycle=_leaving_state(due_date, today),
            offboarding_issue_key=key,
            offboarding_subtask_keys=(),
            termination_on=due_date,
            synced_fields=_snapshot(snapshot),
        ),
    )


def record_created(
    key: str, person: Person, *, snapshot: Mapping[str, Any] | None = None
) -> LinkChange:
    """The separate employee record issue `key` exists. The lifecycle does not move."""
    return _about(person, LinkChange(record_issue_key=key, synced_fields=_snapshot(snapshot)))


def issue_created(
    kind: IssueKind,
    key: str,
    person: Person,
    *,
    today: date,
    due_date: date | None = None,
    snapshot: Mapping[str, Any] | None = None,
    previous_employee_id: int | None = None,
) -> LinkChange:
    """The parent issue of `kind` exists: `onboarding_created`, `offboarding_created` or
    `record_created`. An offboarding needs its `due_date` (an onboarding's is the first day);
    `previous_employee_id` is for an onboarding only."""
    match kind:
        case "onboarding":
            return onboarding_created(
                key,
                person,
                snapshot=snapshot,
                previous_employee_id=previous_employee_id,
                hired_on=due_date,
            )
        case "offboarding":
            if due_date is None:
                raise ValueError(f"offboarding issue {key} has no due date")
            return offboarding_created(
                key, person, due_date=due_date, today=today, snapshot=snapshot
            )
        case "record":
            return record_created(key, person, snapshot=snapshot)


def subtasks_recorded(kind: IssueKind, keys: Iterable[str]) -> LinkChange | None:
    """The subtasks of the `kind` issue are now `keys` (all of them, not only new ones); None
    for the record issue, whose subtasks the link does not keep (`subtask_kind`)."""
    match subtask_kind(kind):
        case "onboarding":
            return LinkChange(onboarding_subtask_keys=tuple(keys))
        case "offboarding":
            return LinkChange(offboarding_subtask_keys=tuple(keys))
        case None:
            return None


def fields_synced(snapshot: Mapping[str, Any]) -> LinkChange:
    """The mapped fields were written to Jira as `snapshot`."""
    return LinkChange(synced_fields=dict(snapshot))


def due_date_moved(new: date, today: date) -> LinkChange:
    """The offboarding issue's due date moved to the last day `new`."""
    return LinkChange(lifecycle=_leaving_state(new, today), termination_on=new)


def first_day_moved(new: date) -> LinkChange:
    """The onboarding issue's due date moved to the first day `new`. The lifecycle does not
    move: the person is still to start (or started), whichever day that is."""
    return LinkChange(hired_on=new)


def issue_date_moved(
    kind: Literal["onboarding", "offboarding"], new: date, *, today: date
) -> LinkChange:
    """The `kind` issue's due date moved to `new`: `first_day_moved` for the onboarding,
    `due_date_moved` for the offboarding."""
    match kind:
        case "onboarding":
            return first_day_moved(new)
        case "offboarding":
            return due_date_moved(new, today)


def offboarding_cancelled(*, onboarded: bool) -> LinkChange:
    """The offboarding was cancelled (the termination was reverted): back to `onboarding` when
    this service onboarded the person, else to `pending`."""
    return LinkChange(
        lifecycle=Lifecycle.onboarding if onboarded else Lifecycle.pending,
        offboarding_issue_key=None,
        offboarding_subtask_keys=(),
        termination_on=None,
    )


def onboarding_cancelled() -> LinkChange:
    """The onboarding was cancelled (the hire was withdrawn before day one): `withdrawn`, the
    cancelled issue no longer the link's (the audit keeps it), so a reinstated hire gets a
    fresh onboarding instead of updates to a cancelled one."""
    return LinkChange(
        lifecycle=Lifecycle.withdrawn, onboarding_issue_key=None, onboarding_subtask_keys=()
    )


def issue_relinked(kind: IssueKind, new_key: str | None) -> LinkChange:
    """The `kind` issue now answers under `new_key` (moved in Jira); None forgets it."""
    match kind:
        case "onboarding":
            return LinkChange(onboarding_issue_key=new_key)
        case "offboarding":
            return LinkChange(offboarding_issue_key=new_key)
        case "record":
            return LinkChange(record_issue_key=new_key)


def _about(person: Person, change: LinkChange) -> LinkChange:
    """`change`, and who the person is now: every issue created refreshes it."""
    return replace(
        change,
        email=person.email,
        display_name=person.display_name,
        jira_account_id=person.jira_account_id,
    )


def _leaving_state(last_day: date, today: date) -> Lifecycle:
    return Lifecycle.offboarded if last_day <= today else Lifecycle.offboarding


def _snapshot(snapshot: Mapping[str, Any] | None) -> Mapping[str, Any] | Keep:
    return dict(snapshot) if snapshot else KEEP
