"""Write-ahead records of Jira writes that are not idempotent: "this may be about to happen".

Before the service creates an issue or adds a comment it records an intent, and it removes the
intent once the effect is recorded (`MappingStore.record_effect`). An intent still there when
the same work comes again (a rerun after kill -9 between the send and the record, a retry of
the whole action, a redelivered webhook) says that the write may have happened although
nothing recorded it: the work then reads Jira with a strongly consistent read before it sends
anything, instead of trusting a search that may not show an issue created seconds ago.

Its own table (migration 0006), with no foreign key to `employee_link`: the first issue of an
employee is announced before their link exists, and announcing must not create the link (a
link changes how the employee is planned: a rehire is looked up only for someone without one).
The repository shares the store's engine: `Intents(store.engine)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import Field, col

from core.store.models import StoreModel, UTCDateTime, to_json_value, utc_now

GUARD_MAX_LENGTH = 300


class JiraIntent(StoreModel, table=True):
    """A Jira write announced before it was sent, not yet known to have been recorded."""

    __tablename__ = "jira_intent"

    id: int | None = Field(default=None, primary_key=True)
    # No foreign key: announced before the employee's first link exists (module docstring).
    employee_id: int = Field(index=True)
    # What finds the write in Jira again: the guard label of an issue, or the comment's issue
    # and a digest of its text. One employee's intents with the same guard are the same write.
    guard: str = Field(max_length=GUARD_MAX_LENGTH)
    operation: str = Field(max_length=64)  # "create_issue", "comment"
    issue_key: str | None = None  # the issue written to, when the write is not a create
    at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, nullable=False)
    flow_run_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)


class Intents:
    """Announce, find and settle write-ahead records; each call is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def announce(
        self,
        employee_id: int,
        operation: str,
        guard: str,
        *,
        issue_key: str | None = None,
        flow_run_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record that the write `guard` is about to be sent (committed before it is). True when
        the same write was announced before and is still open: it may have happened already.
        One transaction for both, as every create and comment asks both."""
        intent = JiraIntent(
            employee_id=employee_id,
            guard=guard,
            operation=operation,
            issue_key=issue_key,
            flow_run_id=flow_run_id,
            detail=to_json_value(dict(detail or {})),
        )
        earlier = sa.exists().where(
            col(JiraIntent.employee_id) == employee_id, col(JiraIntent.guard) == guard
        )
        async with self._sessions.begin() as session:
            in_doubt = bool(await session.scalar(sa.select(earlier)))
            session.add(intent)
        return in_doubt

    async def open(self, employee_id: int, guard: str) -> list[JiraIntent]:
        """The employee's intents for this write still in doubt, oldest first."""
        query = (
            sa.select(JiraIntent)
            .where(col(JiraIntent.employee_id) == employee_id, col(JiraIntent.guard) == guard)
            .order_by(col(JiraIntent.id))
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def settle(self, employee_id: int, guards: Iterable[str]) -> int:
        """The writes `guards` are recorded (or known not to have happened): forget them.
        Returns how many intents went."""
        wanted = sorted(set(guards))
        if not wanted:
            return 0
        async with self._sessions.begin() as session:
            result = await session.execute(
                sa.delete(JiraIntent).where(
                    col(JiraIntent.employee_id) == employee_id, col(JiraIntent.guard).in_(wanted)
                )
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def all_open(self) -> list[JiraIntent]:
        """Every intent still in doubt, oldest first (for operators and the fault suite)."""
        async with self._sessions() as session:
            return list(await session.scalars(sa.select(JiraIntent).order_by(col(JiraIntent.id))))
