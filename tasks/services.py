"""What the tasks of one process talk to: the two API clients, the mapping store and the rules.

Opened once per flow run (not per task: a client owns a connection pool, and Prefect cannot
hash a client as a task input), and reached by tasks through `current()`. Tests open their
own (clients on the simulators, held to the specs) with `use(services)`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from core.jira.client import JiraClient
from core.jira.pace import Governor, Rates
from core.logging import configure_logging
from core.peopleforce.client import PeopleForceClient
from core.peopleforce.models import Employee
from core.rules import Rules, load_rules
from core.settings import Settings, get_settings
from core.store import MappingStore, StoreTokens
from tasks.run_log import send_to_run_logs


@dataclass
class Services:
    peopleforce: PeopleForceClient
    jira: JiraClient
    store: MappingStore
    rules: Rules
    rules_file: Path
    # Jira accountIds by lower-cased email, found during this run (None: no such user).
    account_ids: dict[str, str | None] = field(default_factory=dict)
    # PeopleForce records the sync flow's triage read, each taken once by the process flow
    # that works the employee next (saves reading everyone twice in one run).
    records: dict[int, Employee] = field(default_factory=dict)


_current: ContextVar[Services | None] = ContextVar("pf_jira_sync_services", default=None)


def current() -> Services:
    services = _current.get()
    if services is None:
        raise RuntimeError("no services open: run tasks inside a flow (flows open them)")
    return services


@asynccontextmanager
async def use(services: Services) -> AsyncGenerator[Services, None]:
    """Make `services` the ones tasks use, for the duration of the block."""
    token = _current.set(services)
    try:
        yield services
    finally:
        _current.reset(token)


def shared_pacer(settings: Settings, store: MappingStore) -> Governor:
    """The Jira rate governor of a flow run: its endpoint rates kept in the store, so every
    run and worker of the deployment shares them (Jira limits the tenant, not the run)."""
    return Governor(Rates.from_settings(settings), StoreTokens(store.engine))


@asynccontextmanager
async def open_services(settings: Settings | None = None) -> AsyncGenerator[Services, None]:
    """The services of this run: the ones already in use (tests), or new ones from settings."""
    existing = _current.get()
    if existing is not None:
        yield existing
        return
    settings = settings or get_settings()
    # A flow-run process logs like every other process of the service (console, Seq), and in
    # the run logs of the Prefect UI.
    configure_logging(settings, component="flow-run")
    send_to_run_logs(settings.log_level)
    rules = load_rules(settings.rules_file)
    store = await MappingStore.open(settings.effective_database_url)
    try:
        async with (
            PeopleForceClient.from_settings(settings) as peopleforce,
            JiraClient.from_settings(settings, pacer=shared_pacer(settings, store)) as jira,
        ):
            services = Services(peopleforce, jira, store, rules, settings.rules_file)
            async with use(services):
                yield services
    finally:
        await store.close()
