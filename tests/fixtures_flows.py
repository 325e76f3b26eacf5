"""Flow fixtures: one Prefect test server per session, and the services flows use, wired to the
simulators over real HTTP (held to the specs) and to a fresh SQLite mapping store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness
from pydantic import SecretStr

from core.plan import today_in
from core.rules import load_rules
from core.settings import Settings
from core.store import MappingStore
from sandbox.jira import SimIssue
from sandbox.seed import SeedAsset, SeedPerson
from sandbox.server import BackgroundServer
from tasks.services import Services, use
from tests.contract import SpecContract
from tests.fixtures_jira import JiraSandbox
from tests.fixtures_peopleforce import PeopleForceSandbox
from tests.paths import RULES_EXAMPLE
from webhook_gateway import create_app
from webhook_gateway.dispatch import Dispatching

RULES_FILE = RULES_EXAMPLE


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A Prefect API server on a temporary SQLite database (about 8 s to start, once)."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@dataclass
class World:
    """Both simulators, the store and the services, with helpers to make people."""

    services: Services
    peopleforce: PeopleForceSandbox
    jira: JiraSandbox
    today: date
    database_url: str

    def days(self, n: int) -> date:
        return self.today + timedelta(days=n)

    def hire(self, first: str, last: str, *, in_days: int = 3, **fields) -> SeedPerson:
        """A new hire in PeopleForce; their manager gets a Jira account, as a colleague would."""
        person = self.peopleforce.state.hire(
            first_name=first, last_name=last, hired_on=self.days(in_days), **fields
        )
        if person.manager_id is not None:
            manager = self.peopleforce.state.get(person.manager_id)
            if manager.email:
                self.jira.state.add_user(manager.email, manager.full_name)
        return person

    def give_asset(self, person: SeedPerson, name: str, serial: str) -> None:
        person.assets.append(
            SeedAsset(
                id=9000 + len(person.assets),
                category="Laptop",
                name=name,
                code=f"A-{serial}",
                serial_number=serial,
                issued_on=self.days(-100),
            )
        )

    def issues_of(self, employee_id: int) -> list[SimIssue]:
        """Every Jira issue this service made for the employee (parents and subtasks), by key."""
        label = f"pf-employee-{employee_id}"
        issues = [issue for issue in self.jira.state.issues.values() if label in issue.labels]
        return sorted(issues, key=lambda issue: (issue.project, issue.number))

    def parents_of(self, employee_id: int) -> list[SimIssue]:
        return [issue for issue in self.issues_of(employee_id) if issue.parent_key is None]


@contextmanager
def webhook_gateway(
    world: World, secret: str, prefect_api_url: str, *, poll: float
) -> Generator[tuple[str, Dispatching]]:
    """The gateway with its dispatcher over real HTTP on the world's store, PeopleForce's webhook
    target; yields its URL and the dispatching."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        webhook_secret=SecretStr(secret),
        prefect_api_url=prefect_api_url,
        database_url=world.database_url,
    )
    dispatching = Dispatching(settings, poll=poll)
    app = create_app(settings, on_stored=dispatching.wake, extra_lifespan=dispatching.lifespan)
    with BackgroundServer(app) as server:
        world.peopleforce.state.set_webhook_target(f"{server.url}/webhooks/peopleforce", secret)
        yield server.url, dispatching


@pytest.fixture
async def world(
    prefect_server: None,
    jira_sim: JiraSandbox,
    peopleforce_sim: PeopleForceSandbox,
    jira_contract: SpecContract,
    peopleforce_contract: SpecContract,
    tmp_path: Path,
) -> AsyncIterator[World]:
    rules = load_rules(RULES_FILE)
    today = today_in(rules.zone, datetime.now(UTC))
    peopleforce_sim.state.set_today(today)
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    store = await MappingStore.open(database_url)
    try:
        async with (
            jira_sim.client(jira_contract) as jira,
            peopleforce_sim.client(peopleforce_contract) as peopleforce,
        ):
            services = Services(peopleforce, jira, store, rules, RULES_FILE)
            async with use(services):
                yield World(services, peopleforce_sim, jira_sim, today, database_url)
    finally:
        await store.close()
