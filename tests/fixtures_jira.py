"""Jira fixtures: one simulator over real HTTP per session, reset before every test.

`jira` is a `JiraClient` whose every request (and every 2xx answer) is held to Atlassian's
published spec by a `ContractTransport`; `jira_sim` gives the test the simulator's URL and state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from core.jira import JiraClient
from sandbox.jira import JiraState, account_id_for, create_app
from sandbox.server import BackgroundServer
from tests.contract import ContractTransport, SpecContract

JIRA_EMAIL = "sync-bot@example.com"
JIRA_API_TOKEN = "jira-sandbox-token"
JIRA_USERS = [
    ("ana.garcia@example.com", "Ana García"),
    ("ana.garcia.lopez@example.com", "Ana García López"),
    ("zoe.nunez@example.com", "Zoë Ñúñez-Łukasz"),
    ("li.lei@example.com", "李雷"),
    ("it.lead@example.com", "IT Lead"),
]


def jira_account(email: str) -> str:
    """The account id the simulator gives a user (derived from the email)."""
    return account_id_for(email)


@dataclass
class JiraSandbox:
    """The running simulator: `url` is both the server root and the client's base URL."""

    url: str
    state: JiraState

    def client(
        self,
        contract: SpecContract,
        *,
        base_url: str | None = None,
        email: str = JIRA_EMAIL,
        api_token: str = JIRA_API_TOKEN,
        **kwargs: Any,
    ) -> JiraClient:
        """A further client held to the contract, e.g. with other credentials or a timeout."""
        base_url = base_url or self.url
        transport = ContractTransport(contract, base_url, httpx.AsyncHTTPTransport())
        return JiraClient(base_url, email, api_token, transport=transport, **kwargs)


@pytest.fixture(scope="session")
def jira_server() -> Iterator[JiraSandbox]:
    app = create_app(email=JIRA_EMAIL, api_token=JIRA_API_TOKEN, users=JIRA_USERS)
    with BackgroundServer(app) as server:
        yield JiraSandbox(url=server.url, state=app.state.jira)


@pytest.fixture
def jira_sim(jira_server: JiraSandbox) -> JiraSandbox:
    """The shared simulator with its issues, extra users, counts and faults reset."""
    jira_server.state.reset()
    return jira_server


@pytest.fixture
async def jira(jira_sim: JiraSandbox, jira_contract: SpecContract) -> AsyncIterator[JiraClient]:
    async with jira_sim.client(jira_contract) as client:
        yield client
