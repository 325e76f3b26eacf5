"""Shared test fixtures. API-specific fixtures live in their own plugin modules below."""

from __future__ import annotations

import os
import tempfile

import pytest

# Before anything imports prefect: a private Prefect home, no telemetry, no silent
# ephemeral server (flows run against the session's test harness).
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pf-jira-sync-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from tests.contract import SpecContract

pytest_plugins = [
    "tests.fixtures_database",
    "tests.fixtures_jira",
    "tests.fixtures_peopleforce",
    "tests.fixtures_flows",
]


@pytest.fixture(scope="session")
def jira_contract() -> SpecContract:
    """Every request our Jira client sends, and every simulator answer, is held to Atlassian's spec."""
    return SpecContract.load("jira-platform-v3.json", validate_responses=True)


@pytest.fixture(scope="session")
def peopleforce_contract() -> SpecContract:
    """PeopleForce's response schemas are unreliable: requests only (paths, methods, parameters)."""
    return SpecContract.load("peopleforce-v3.json")
