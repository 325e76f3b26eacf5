"""PeopleForce fixtures: one simulator over real HTTP per session, reset before every test.

`peopleforce` is a `PeopleForceClient` whose every request is held to PeopleForce's published
spec by `ContractTransport`; `peopleforce_sim` gives the test the simulator's URL and state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date

import httpx
import pytest

from core.peopleforce import PeopleForceClient
from sandbox.peopleforce import API_PREFIX, PeopleForceState, create_app
from sandbox.seed import SeedPerson, seed_people
from sandbox.server import BackgroundServer
from tests.contract import ContractTransport, SpecContract

PEOPLEFORCE_API_KEY = "pf-sandbox-key"
# A fixed day makes statuses, hire horizons and timestamps repeatable.
PEOPLEFORCE_TODAY = date(2025, 6, 2)


@dataclass
class PeopleForceSandbox:
    """The running simulator: `url` is the server root, `base_url` the API root the client uses."""

    url: str
    base_url: str
    state: PeopleForceState
    people: list[SeedPerson]

    def client(
        self, contract: SpecContract, *, api_key: str = PEOPLEFORCE_API_KEY, **kwargs
    ) -> PeopleForceClient:
        """A further client held to the contract, e.g. with another key or timeout."""
        transport = ContractTransport(contract, self.base_url, httpx.AsyncHTTPTransport())
        return PeopleForceClient(self.base_url, api_key, transport=transport, **kwargs)


@pytest.fixture(scope="session")
def peopleforce_server() -> Iterator[PeopleForceSandbox]:
    people = seed_people(today=PEOPLEFORCE_TODAY)
    app = create_app(api_key=PEOPLEFORCE_API_KEY, people=people, today=PEOPLEFORCE_TODAY)
    with BackgroundServer(app) as server:
        yield PeopleForceSandbox(
            url=server.url,
            base_url=server.url + API_PREFIX,
            state=app.state.peopleforce,
            people=people,
        )


@pytest.fixture
def peopleforce_sim(peopleforce_server: PeopleForceSandbox) -> PeopleForceSandbox:
    """The shared simulator with its seed people, clock, quirks, faults and webhooks reset."""
    peopleforce_server.state.reset()
    return peopleforce_server


@pytest.fixture
async def peopleforce(
    peopleforce_sim: PeopleForceSandbox, peopleforce_contract: SpecContract
) -> AsyncIterator[PeopleForceClient]:
    async with peopleforce_sim.client(peopleforce_contract) as client:
        yield client
