"""The mapping store: what this service did in Jira for each employee, read and written by the flows.

Every method opens its own short session, so one store serves many concurrent tasks. Writes
are upserts (`INSERT ... ON CONFLICT`), so two tasks saving the same employee never collide.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col

from core import lifecycle
from core.database import create_engine
from core.lifecycle import Lifecycle, LifecycleError, LinkChange
from core.store.migrate import is_at_head, migrate
from core.store.models import (
    EmployeeLink,
    JiraEffect,
    StoreModel,
    dialect_insert,
    to_json_value,
    utc_now,
)

_LINKS = StoreModel.metadata.tables["employee_link"]
# Written once, when the row is created; never part of an update.
_CREATE_ONLY = frozenset({"employee_id", "created_at"})
_UPDATABLE = frozenset(column.key for column in _LINKS.columns) - _CREATE_ONLY - {"updated_at"}
# Well under SQLite's and asyncpg's limits on bound parameters per statement.
_CHUNK = 500


class UnsupportedDatabase(Exception):
    """The store runs on SQLite and PostgreSQL only."""


def normalize_email(email: str | None) -> str | None:
    """Emails are stored and looked up lower-cased and trimmed; blank means none."""
    if email is None:
        return None
    return email.strip().lower() or None


def previous_link(
    employee_id: int, email: str | None, same_email: Sequence[EmployeeLink]
) -> EmployeeLink | None:
    """An earlier employee's link with the same email (a rehire under a new id), the latest."""
    others = [link for link in same_email if link.employee_id != employee_id]
    return others[-1] if email and others else None


class MappingStore:
    """Async access to employee links and the Jira effect audit. Open with `MappingStore.open`."""

    def __init__(self, engine: AsyncEngine) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise UnsupportedDatabase(f"the mapping store cannot use {engine.dialect.name!r}")
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(cls, database_url: str) -> MappingStore:
        """Connect, upgrading the schema in place first when it is not the newest."""
        engine = create_engine(database_url)
        if not await is_at_head(engine):
            await migrate(database_url)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # Reading

    async def get(self, employee_id: int) -> EmployeeLink | None:
        async with self._sessions() as session:
            return await session.get(EmployeeLink, employee_id)

    async def get_many(self, employee_ids: Iterable[int]) -> dict[int, EmployeeLink]:
        """The links that exist among `employee_ids`, by id; any number of ids."""
        wanted = sorted(set(employee_ids))
        found: dict[int, EmployeeLink] = {}
        async with self._sessions() as session:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                query = sa.select(EmployeeLink).where(col(EmployeeLink.employee_id).in_(chunk))
                found.update((link.employee_id, link) for link in await session.scalars(query))
        return found

    async def link_and_previous(
        self, employee_id: int, email: str | None
    ) -> tuple[EmployeeLink | None, EmployeeLink | None]:
        """This employee's link, and (when they have none) an earlier employee's link with the
        same email: a rehire under a new id."""
        link = await self.get(employee_id)
        if link is not None or not email:
            return link, None
        return None, previous_link(employee_id, email, await self.find_by_email(email))

    async def find_by_email(self, email: str) -> list[EmployeeLink]:
        """Every link with this email, case-insensitively, oldest employee id first.

        More than one means a rehire under a new id (or a reused address).
        """
        wanted = normalize_email(email)
        if wanted is None:
            return []
        query = (
            sa.select(EmployeeLink)
            .where(col(EmployeeLink.email) == wanted)
            .order_by(col(EmployeeLink.employee_id))
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def all_links(self, page_size: int = _CHUNK) -> AsyncIterator[EmployeeLink]:
        """Every link by employee id, read a page at a time, each page in its own session.

        No session stays open while the caller works through a page.
        """
        after: int | None = None
        while True:
            query = sa.select(EmployeeLink).order_by(col(EmployeeLink.employee_id)).limit(page_size)
            if after is not None:
                query = query.where(col(EmployeeLink.employee_id) > after)
            async with self._sessions() as session:
                page = list(await session.scalars(query))
            for link in page:
                yield link
            if len(page) < page_size:
                return
            after = page[-1].employee_id

    async def effects(self, employee_id: int) -> list[JiraEffect]:
        """The audit of Jira effects for one employee, oldest first."""
        query = (
            sa.select(JiraEffect)
            .where(col(JiraEffect.employee_id) == employee_id)
            .order_by(col(JiraEffect.at), col(JiraEffect.id))
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))

    # Writing

    async def save(self, link: EmployeeLink) -> EmployeeLink:
        """Insert or replace the whole link; returns it with its stored timestamps.

        Last writer wins for every field, but the lifecycle only moves along a declared
        transition (`core.lifecycle`): otherwise `LifecycleError`, and nothing is written.
        Changes that follow a Jira effect go through `record_effect` instead, which reads and
        writes inside one transaction.
        """
        _normalize(link)
        link.updated_at = utc_now()
        insert = self._insert().values(_row_values(link))
        upsert = insert.on_conflict_do_update(
            index_elements=[_LINKS.c.employee_id],
            set_={key: insert.excluded[key] for key in _UPDATABLE | {"updated_at"}},
            # The stored row's lifecycle: an undeclared move updates nothing, and returns no row.
            where=_LINKS.c.lifecycle.in_(sorted(lifecycle.sources_of(link.lifecycle))),
        ).returning(_LINKS.c.created_at)
        async with self._sessions.begin() as session:
            created_at = (await session.execute(upsert)).scalar_one_or_none()
            if created_at is None:
                stored = await session.scalar(
                    sa.select(_LINKS.c.lifecycle).where(_LINKS.c.employee_id == link.employee_id)
                )
                lifecycle.check_transition(link.employee_id, Lifecycle(stored), link.lifecycle)
                # Declared from the state read now: another writer moved it in between.
                raise LifecycleError(
                    f"employee {link.employee_id}: lifecycle changed while saving; save again"
                )
            link.created_at = created_at
        return link

    async def record_effect(
        self,
        employee_id: int,
        action: str,
        *,
        issue_key: str | None = None,
        flow_run_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
        link_update: LinkChange | None = None,
    ) -> EmployeeLink:
        """Record a Jira effect: the audit row and the link change in one transaction.

        `link_update` (made by `core.lifecycle`) is applied by `core.lifecycle.apply` to the link
        as stored, read and locked inside the transaction. Either both are stored or neither:
        if the change moves the lifecycle along an undeclared transition (`LifecycleError`), or
        the audit row cannot be written, nothing is. A link that does not exist yet is created
        (as `pending`) first. Returns the link as stored.
        """
        now = utc_now()
        new_link = EmployeeLink(employee_id=employee_id, created_at=now, updated_at=now)
        ensure_row = (
            self._insert()
            .values(_row_values(new_link))
            .on_conflict_do_nothing(index_elements=[_LINKS.c.employee_id])
        )
        read_link = (
            sa.select(EmployeeLink)
            .where(col(EmployeeLink.employee_id) == employee_id)
            .with_for_update()
        )
        async with self._sessions.begin() as session:
            # A write first: on SQLite it takes the database's write lock before the link is
            # read, as `FOR UPDATE` locks the row on PostgreSQL, so concurrent recorders for
            # one employee apply their changes one after the other instead of losing one.
            await session.execute(ensure_row)
            link = (await session.scalars(read_link)).one()
            # Detached, the link is written below as a whole, as the change left it.
            session.expunge(link)
            link = lifecycle.apply(link, link_update)
            _normalize(link)
            link.updated_at = now
            values = _row_values(link)
            await session.execute(
                sa.update(_LINKS)
                .where(_LINKS.c.employee_id == employee_id)
                .values({key: values[key] for key in _UPDATABLE | {"updated_at"}})
            )
            session.add(
                JiraEffect(
                    employee_id=employee_id,
                    at=now,
                    flow_run_id=flow_run_id,
                    action=str(action),
                    issue_key=issue_key,
                    detail=to_json_value(dict(detail or {})),
                )
            )
        return link

    def _insert(self) -> sqlite.Insert | postgresql.Insert:
        return dialect_insert(self.engine, _LINKS)

    # Reading, for `pf-jira-sync why`

    async def employee_of_issue(self, issue_key: str) -> int | None:
        """The employee whose link names `issue_key` as one of its issues, else the employee of
        the latest Jira effect on it (a subtask, or an issue the link has moved away from)."""
        key = issue_key.strip().upper()
        # A subtask: its key, quoted, in the JSON list (the LIKE wildcards in it escaped).
        quoted = '%"' + key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + '"%'
        named = sa.or_(
            col(EmployeeLink.onboarding_issue_key) == key,
            col(EmployeeLink.record_issue_key) == key,
            col(EmployeeLink.offboarding_issue_key) == key,
            *(
                sa.cast(col(keys), sa.Text).like(quoted, escape="\\")
                for keys in (
                    EmployeeLink.onboarding_subtask_keys,
                    EmployeeLink.offboarding_subtask_keys,
                )
            ),
        )
        by_link = (
            sa.select(col(EmployeeLink.employee_id))
            .where(named)
            .order_by(col(EmployeeLink.employee_id))
            .limit(1)
        )
        by_effect = (
            sa.select(col(JiraEffect.employee_id))
            .where(sa.func.upper(col(JiraEffect.issue_key)) == key)
            .order_by(col(JiraEffect.at).desc(), col(JiraEffect.id).desc())
            .limit(1)
        )
        async with self._sessions() as session:
            found = await session.scalar(by_link)
            if found is None:
                found = await session.scalar(by_effect)
        return found


def _normalize(link: EmployeeLink) -> None:
    """Bring a link's values into the form they read back in."""
    link.email = normalize_email(link.email)
    link.lifecycle = Lifecycle(link.lifecycle)  # also refuses unknown states early
    link.onboarding_subtask_keys = list(link.onboarding_subtask_keys)
    link.offboarding_subtask_keys = list(link.offboarding_subtask_keys)
    link.synced_fields = to_json_value(dict(link.synced_fields))


def _row_values(link: EmployeeLink) -> dict[str, Any]:
    return {column.key: getattr(link, column.key) for column in _LINKS.columns}
