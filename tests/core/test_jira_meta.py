"""JiraClient's configuration reads (what `doctor` holds the rules against) against the Jira
simulator over real HTTP, every request and every answer held to Atlassian's spec."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from core.jira import JiraClient, meta
from core.jira.meta import FieldSchema, IssueTypeStatuses, Project
from sandbox.jira_meta import rest_api
from tests.contract import SpecContract
from tests.fixtures_jira import JiraSandbox, jira_account

TEXT_FIELD = "com.atlassian.jira.plugin.system.customfieldtypes:textfield"


@pytest.fixture
def sim(jira_sim: JiraSandbox) -> Iterator[JiraSandbox]:
    """The simulator with its configuration reads at their defaults before and after."""
    httpx.delete(f"{jira_sim.url}/_sandbox/meta").raise_for_status()
    yield jira_sim
    httpx.delete(f"{jira_sim.url}/_sandbox/meta").raise_for_status()


def configure(sim: JiraSandbox, **config: Any) -> None:
    current = httpx.get(f"{sim.url}/_sandbox/meta").json()
    httpx.put(f"{sim.url}/_sandbox/meta", json={**current, **config}).raise_for_status()


@pytest.fixture
async def client(sim: JiraSandbox, jira_contract: SpecContract) -> AsyncIterator[JiraClient]:
    async with sim.client(jira_contract) as jira:
        yield jira


async def task_id(jira: JiraClient, project: str = "IT", name: str = "Task") -> str:
    types = await jira.create_issue_types(project)
    return next(t.id for t in types if t.name == name)


def test_every_simulated_read_is_in_the_spec_and_current() -> None:
    operations = SpecContract.load("jira-platform-v3.json").served_operations(rest_api)
    assert len(operations) == 7
    for operation in operations:
        assert not operation.definition.get("deprecated")


async def test_projects_are_read_and_an_unknown_one_is_none(client: JiraClient) -> None:
    it = await client.get_project("IT")
    assert it is not None
    assert it.key == "IT"
    assert await client.get_project(it.id) == it
    assert await client.get_project("NOPE") is None
    assert [p.key for p in await client.list_projects()] == ["HR", "IT"]
    assert all(isinstance(p, Project) for p in await client.list_projects())


async def test_createmeta_names_the_issue_types_and_which_are_subtasks(client: JiraClient) -> None:
    types = {t.name: t.subtask for t in await client.create_issue_types("HR")}
    assert types == {"Epic": False, "Task": False, "Sub-task": True}


async def test_createmeta_fields_say_what_is_required_and_of_which_type(
    client: JiraClient,
) -> None:
    fields = {f.field_id: f for f in await client.create_fields("IT", await task_id(client))}
    assert (fields["summary"].required, fields["summary"].has_default) == (True, False)
    assert (fields["reporter"].required, fields["reporter"].has_default) == (True, True)
    assert "parent" not in fields
    assert not fields["customfield_10050"].required
    assert fields["customfield_10050"].schema == FieldSchema("string", None, None, TEXT_FIELD)
    assert fields["labels"].schema == FieldSchema("array", "string", "labels", None)
    subtask = await client.create_fields("IT", await task_id(client, name="Sub-task"))
    assert any(f.field_id == "parent" and f.required for f in subtask)


async def test_a_test_can_make_a_field_required_or_take_it_off_the_screen(
    sim: JiraSandbox, client: JiraClient
) -> None:
    configure(
        sim,
        required={"IT/Task": ["customfield_10057"]},
        off_screen={"Task": ["duedate"]},
    )
    it_task = {f.field_id: f for f in await client.create_fields("IT", await task_id(client))}
    hr_task = {f.field_id: f for f in await client.create_fields("HR", await task_id(client, "HR"))}
    assert it_task["customfield_10057"].required
    assert not hr_task["customfield_10057"].required
    assert "duedate" not in {*it_task, *hr_task}


async def test_createmeta_is_read_page_by_page(
    client: JiraClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = await client.create_fields("IT", await task_id(client))
    monkeypatch.setattr(meta, "PAGE_SIZE", 4)
    assert await client.create_fields("IT", await task_id(client)) == everything
    assert len(everything) > 3 * 4


async def test_every_field_is_listed_with_its_schema(sim: JiraSandbox, client: JiraClient) -> None:
    configure(sim, custom_fields={"customfield_10050": {"name": "Job title", "type": "paragraph"}})
    fields = {f.id: f for f in await client.list_fields()}
    assert fields["duedate"].schema == FieldSchema("date", None, "duedate", None)
    assert fields["customfield_10050"].name == "Job title"
    assert fields["customfield_10050"].custom
    schema = fields["customfield_10050"].schema
    assert schema is not None
    assert (schema.custom or "").endswith(":textarea")


async def test_statuses_are_read_per_issue_type(sim: JiraSandbox, client: JiraClient) -> None:
    configure(sim, statuses={"Task": ["To Do", "Done"]})
    statuses = {s.issue_type: s for s in await client.project_statuses("HR")}
    assert statuses["Task"] == IssueTypeStatuses("Task", False, ("To Do", "Done"))
    assert "Cancelled" in statuses["Sub-task"].statuses


def test_statuses_the_simulator_does_not_have_are_refused(sim: JiraSandbox) -> None:
    answer = httpx.put(f"{sim.url}/_sandbox/meta", json={"statuses": {"Task": ["Closed"]}})
    assert answer.status_code == 422


async def test_assignable_accounts(sim: JiraSandbox, client: JiraClient) -> None:
    ana = jira_account("ana.garcia@example.com")
    assert await client.is_assignable("IT", ana)
    assert not await client.is_assignable("IT", "712020:no-such-account")
    configure(sim, unassignable={"IT": [ana]})
    assert not await client.is_assignable("IT", ana)
    assert await client.is_assignable("HR", ana)
    sim.state.users[ana].active = False
    assert not await client.is_assignable("HR", ana)
