"""Shared test fixtures. API-specific fixtures live in their own plugin modules below."""

from __future__ import annotations

import pytest

from tests.contract import SpecContract

pytest_plugins = ["tests.fixtures_jira", "tests.fixtures_peopleforce"]


@pytest.fixture(scope="session")
def jira_contract() -> SpecContract:
    """Every request our Jira client sends, and every simulator answer, is held to Atlassian's spec."""
    return SpecContract.load("jira-platform-v3.json", validate_responses=True)


@pytest.fixture(scope="session")
def peopleforce_contract() -> SpecContract:
    """PeopleForce's response schemas are unreliable: requests only (paths, methods, parameters)."""
    return SpecContract.load("peopleforce-v3.json")
