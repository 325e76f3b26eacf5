"""`why` and `stuck` as an operator runs them: a real process on a real SQLite store, filled
through the store's own repositories (as the gateway and the flows fill it)."""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import timedelta
from pathlib import Path

import pytest
from prefect import flow, get_client
from prefect.settings import PREFECT_API_URL

from core import one_host
from core.render import FlowRunFacts, timeline_markdown, timeline_rows
from core.store import (
    EmployeeLink,
    EventStatus,
    InboxRepository,
    JiraEffect,
    Leases,
    MappingStore,
    WebhookEvent,
)
from core.store.models import EffectAction, utc_now
from sandbox.server import free_port
from tests.cli.test_cli import run_cli

RUN_CREATE = "3b615a26-3330-4d67-a78c-b312965eccde"
RUN_UPDATE = "d6299457-85d8-4b8a-b8c6-30e4a708635f"
RUN_FAILED = "5e0b2b8e-7d7b-4f0c-9a55-0a2f3c6e1d42"
HIRE_WHY = "within the pre-hire lead time"


def store_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'pf-jira-sync.db'}"


async def fill_store(
    url: str, runs: tuple[str, str, str] = (RUN_CREATE, RUN_UPDATE, RUN_FAILED)
) -> None:
    """Ada (1041): hired and moved, both done, IT-1 with a subtask. Grace (1042): her last
    update failed. Alan (1043): a termination pending for an hour. Edsger (1044): a run died
    holding his lease. Stored in this order, so that time order is the order written. `runs`:
    the flow runs of Ada's two events and Grace's."""
    run_create, run_update, run_failed = runs
    async with await MappingStore.open(url) as store:
        inbox = InboxRepository(store.engine)

        async def receive(key: str, action: str, employee_id: int, **fields) -> WebhookEvent:
            event, _ = await inbox.add(
                WebhookEvent(
                    event_key=key, action=action, employee_id=employee_id, body="{}", **fields
                )
            )
            return event

        await store.save(
            EmployeeLink(
                employee_id=1041,
                display_name="Ada Lovelace",
                onboarding_issue_key="IT-1",
                onboarding_subtask_keys=["IT-2"],
            )
        )
        created = await receive("employee_create:1041:1", "employee_create", 1041)
        await inbox.mark_dispatched([created.event_key], run_create)
        await store.record_effect(
            1041,
            EffectAction.create_onboarding,
            issue_key="IT-1",
            flow_run_id=run_create,
            detail={"kind": "onboarding", "summary": "Onboarding: Ada Lovelace", "why": HIRE_WHY},
        )
        await store.record_effect(
            1041,
            EffectAction.create_subtask,
            issue_key="IT-1",
            flow_run_id=run_create,
            detail={"created": ["IT-2"], "already_there": []},
        )
        await inbox.close_run(run_create, EventStatus.done, "Jira IT-1; completed in flow run sync")

        moved = await receive("employee_update:1041:2", "employee_update", 1041)
        await inbox.mark_dispatched([moved.event_key], run_update)
        await store.record_effect(
            1041,
            EffectAction.update_fields,
            issue_key="IT-1",
            flow_run_id=run_update,
            detail={"changes": [["department", "Engineering", "Sales"]]},
        )
        await inbox.close_run(run_update, EventStatus.done, "Jira IT-1; completed in flow run sync")

        failed = await receive("employee_update:1042:1", "employee_update", 1042)
        await inbox.mark_dispatched([failed.event_key], run_failed)
        await inbox.close_run(run_failed, EventStatus.failed, "Jira 400: customfield_10050")

        an_hour_ago = utc_now() - timedelta(hours=1)
        await receive(
            "employee_terminate:1043:1",
            "employee_terminate",
            1043,
            received_at=an_hour_ago,
            updated_at=an_hour_ago,
        )
        # A lease that lapsed five minutes ago: its holder's process died before releasing it.
        await Leases(store.engine).try_acquire(1044, "worker-7 run 42", ttl=timedelta(minutes=-5))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    asyncio.run(fill_store(store_url(data_dir)))
    return data_dir


def unreachable_prefect() -> str:
    return f"http://127.0.0.1:{free_port()}/api"


def rows(output: str) -> list[list[str]]:
    """The table lines' cells (split on runs of 2+ spaces), headers and notes left out."""
    found = []
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if re.fullmatch(r"\d\d-\d\d \d\d:\d\d:\d\d", cells[0]):
            found.append(cells)
    return found


def test_why_an_issue_tells_its_employees_story_oldest_first(
    data_dir: Path, tmp_path: Path
) -> None:
    ui = unreachable_prefect()
    result = run_cli("why", "it-1", cwd=tmp_path, DATA_DIR=str(data_dir), PREFECT_API_URL=ui)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == "Jira IT-1 belongs to employee 1041, oldest first:"
    story = [cells[1:] for cells in rows(result.stdout)]
    link = ui.removesuffix("/api") + "/runs/flow-run/"
    assert story == [
        ["webhook e1", "employee_create: done; Jira IT-1; completed in flow run sync"],
        ["run 3b615a26", link + RUN_CREATE],
        ["plan", HIRE_WHY],
        ["Jira IT-1", "create_onboarding Onboarding: Ada Lovelace"],
        ["Jira IT-1", "create_subtask created IT-2"],
        ["webhook e2", "employee_update: done; Jira IT-1; completed in flow run sync"],
        ["run d6299457", link + RUN_UPDATE],
        ["Jira IT-1", "update_fields department: Engineering -> Sales"],
    ]
    # Prefect did not answer: one line says so, and the store's story stands.
    assert re.fullmatch(
        r"note: no Prefect server answers at \S+ \(.*\): flow runs shown by id, without their "
        r"names and states\n",
        result.stderr,
    ), result.stderr


def test_why_an_employee_id_and_an_issue_key_tell_the_same_story(
    data_dir: Path, tmp_path: Path
) -> None:
    env = {"DATA_DIR": str(data_dir), "PREFECT_API_URL": unreachable_prefect()}
    by_key = run_cli("why", "IT-1", cwd=tmp_path, **env)
    by_id = run_cli("why", "1041", cwd=tmp_path, **env)
    # A subtask's key leads to the same employee, through the link that lists it.
    by_subtask = run_cli("why", "IT-2", cwd=tmp_path, **env)
    grace = run_cli("why", "1042", cwd=tmp_path, **env)

    assert by_id.returncode == 0, by_id.stdout + by_id.stderr
    assert by_id.stdout.splitlines()[0] == "employee 1041, oldest first:"
    assert rows(by_id.stdout) == rows(by_key.stdout) == rows(by_subtask.stdout)
    assert by_subtask.stdout.splitlines()[0] == "Jira IT-2 belongs to employee 1041, oldest first:"
    assert grace.returncode == 0, grace.stdout + grace.stderr
    assert [cells[1:] for cells in rows(grace.stdout)] == [
        ["webhook e3", "employee_update: failed; Jira 400: customfield_10050"],
        [
            "run 5e0b2b8e",
            f"{env['PREFECT_API_URL'].removesuffix('/api')}/runs/flow-run/{RUN_FAILED}",
        ],
    ]


@pytest.mark.parametrize(
    ("subject", "code", "message"),
    [
        ("IT-999", 1, "error: no employee in sqlite+aiosqlite:///{db} has Jira issue IT-999"),
        ("9999", 1, "error: nothing about employee 9999 in sqlite+aiosqlite:///{db}"),
        ("ada", 2, "error: 'ada' is neither a Jira issue key (IT-42) nor an employee id (1041)"),
    ],
)
def test_why_something_unknown_is_one_line_and_an_exit_code(
    subject: str, code: int, message: str, data_dir: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "why", subject, cwd=tmp_path, DATA_DIR=str(data_dir), PREFECT_API_URL=unreachable_prefect()
    )

    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.strip() == message.format(db=data_dir / "pf-jira-sync.db")


def test_stuck_lists_each_kind_with_its_age_and_the_command_that_re_drives_it(
    data_dir: Path, tmp_path: Path
) -> None:
    result = run_cli("stuck", cwd=tmp_path, DATA_DIR=str(data_dir))
    monitored = run_cli("stuck", "--fail-on-stuck", cwd=tmp_path, DATA_DIR=str(data_dir))

    assert result.returncode == 0, result.stdout + result.stderr
    assert monitored.returncode == 1, monitored.stdout + monitored.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if re.fullmatch(r".* \(\d+\)", line)] == [
        "inbox events waiting longer than 10m (1)",
        "employees whose last work failed (1)",
        "leases held past expiry (1)",
    ]
    # Two lines a row: the age and what is stuck, then the command that re-drives it.
    entries = [
        (re.split(r"\s{2,}", first.strip(), maxsplit=1), second.strip())
        for first, second in itertools.pairwise(lines)
        if second.strip().startswith("re-drive: ")
    ]
    waiting, failed, lease = entries
    # Ages as a loaded machine may make them: the event an hour old, the lease 5 minutes.
    assert re.fullmatch(r"(59m \d\ds|1h \d\dm)", waiting[0][0]), waiting
    assert waiting[0][1] == "e4 employee_terminate of employee 1043: pending, 0 dispatch attempt(s)"
    assert waiting[1] == "re-drive: " + one_host.command("replay", "e4", cwd=tmp_path)
    assert re.fullmatch(r"\d+s|\d+m \d\ds", failed[0][0]), failed
    assert failed[0][1] == "employee 1042 (e3 employee_update): failed: Jira 400: customfield_10050"
    assert failed[1] == "re-drive: " + one_host.command(
        "replay", "--employee", "1042", cwd=tmp_path
    )
    assert re.fullmatch(r"[4-9]m \d\ds|\d\dm \d\ds", lease[0][0]), lease
    assert lease[0][1] == "employee 1044: lease of worker-7 run 42 lapsed, never released"
    assert lease[1] == "re-drive: " + one_host.command("replay", "--employee", "1044", cwd=tmp_path)


def test_stuck_says_when_nothing_is_and_a_longer_threshold_leaves_the_waiting_event(
    data_dir: Path, tmp_path: Path
) -> None:
    async def settle() -> None:
        async with await MappingStore.open(store_url(data_dir)) as store:
            inbox = InboxRepository(store.engine)
            # Grace's latest event is on its way again: her failure is not the last word.
            await inbox.requeue("employee_update:1042:1")
            await Leases(store.engine).try_acquire(1044, "worker-8")
            await Leases(store.engine).release(1044, "worker-8")

    asyncio.run(settle())
    patient = run_cli("stuck", "--older-than", "2h", cwd=tmp_path, DATA_DIR=str(data_dir))
    asyncio.run(_drop_alans_event(store_url(data_dir)))
    calm = run_cli("stuck", "--fail-on-stuck", cwd=tmp_path, DATA_DIR=str(data_dir))
    bad_age = run_cli("stuck", "--older-than", "10", cwd=tmp_path, DATA_DIR=str(data_dir))

    assert patient.returncode == 0, patient.stdout + patient.stderr
    assert patient.stdout.startswith("nothing stuck in "), patient.stdout
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert "nothing stuck" in calm.stdout
    assert bad_age.returncode == 2
    assert "--older-than '10' is not an age" in bad_age.stderr


async def _drop_alans_event(url: str) -> None:
    """Alan's termination was worked: its run closed it."""
    async with await MappingStore.open(url) as store:
        inbox = InboxRepository(store.engine)
        await inbox.mark_dispatched(["employee_terminate:1043:1"], RUN_FAILED)
        await inbox.close_run(RUN_FAILED, EventStatus.done, "no change in Jira")


@flow(name="sync")
def sync_flow() -> None:
    """Stands for the webhook's sync flow: only its runs' names, states and tags matter here."""


def test_why_names_the_runs_prefect_knows_and_links_them_in_its_ui(
    data_dir: Path, tmp_path: Path, prefect_server: None
) -> None:
    api_url = PREFECT_API_URL.value()

    async def create_run() -> str:
        # The reconciliation's run for Ada: the store has no event of it, only its tag.
        async with get_client() as client:
            run = await client.create_flow_run(
                sync_flow, name="reconcile · 1 employee", tags=["employee:1041"]
            )
        return str(run.id)

    run_id = asyncio.run(create_run())
    result = run_cli("why", "1041", cwd=tmp_path, DATA_DIR=str(data_dir), PREFECT_API_URL=api_url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # Prefect answered: no note
    story = [cells[1:] for cells in rows(result.stdout)]
    ui = api_url.removesuffix("/api")
    assert ["run reconcile · 1 employee", f"Pending {ui}/runs/flow-run/{run_id}"] in story
    # The store's runs Prefect does not know (this server never ran them) stay, by id.
    assert ["run 3b615a26", f"{ui}/runs/flow-run/{RUN_CREATE}"] in story


def test_the_timeline_as_markdown_keeps_each_row_in_its_cells_and_links_the_runs() -> None:
    at = utc_now()
    event = WebhookEvent(
        id=7,
        event_key="k",
        action="employee_update",
        employee_id=1041,
        status=EventStatus.failed,
        outcome="Jira 400 | bad",
        flow_run_id=RUN_FAILED,
        body="{}",
        received_at=at,
        updated_at=at,
    )
    effect = JiraEffect(employee_id=1041, at=at, action="comment", issue_key="IT-1")
    runs = {RUN_FAILED: FlowRunFacts(RUN_FAILED, "sync · Ada", "Failed", at)}

    rows = timeline_rows([event], [effect], runs, "http://prefect:4200")
    markdown = timeline_markdown(1041, rows).splitlines()

    assert markdown[0] == "## Why: employee 1041"
    assert markdown[-3:] == [
        f"| {rows[0]['time']} | webhook e7 | employee_update: failed; Jira 400 \\| bad |",
        f"| {rows[1]['time']} | run sync · Ada | Failed "
        f"[http://prefect:4200/runs/flow-run/{RUN_FAILED}](http://prefect:4200/runs/flow-run/{RUN_FAILED}) |",
        f"| {rows[2]['time']} | Jira IT-1 | comment |",
    ]


async def test_the_store_answers_why_and_stuck_alike_on_sqlite_and_postgresql(
    database_url: str,
) -> None:
    await fill_store(database_url)
    async with await MappingStore.open(database_url) as store:
        inbox = InboxRepository(store.engine)
        by_key = [await store.employee_of_issue(key) for key in ("it-1", "IT-2", "IT-9", "I_-1")]
        waiting = await inbox.waiting_since(utc_now() - timedelta(minutes=10))
        failed = await inbox.last_work_failed()
        now, lapsed = await Leases(store.engine).held_past_expiry()
        events = await inbox.of_employee(1041)

    assert by_key == [1041, 1041, None, None]
    assert [event.employee_id for event in waiting] == [1043]
    assert [event.employee_id for event in failed] == [1042]
    assert [(lease.employee_id, lease.holder) for lease in lapsed] == [(1044, "worker-7 run 42")]
    assert timedelta(minutes=4) < now - lapsed[0].expires_at < timedelta(minutes=30)
    assert [event.action for event in events] == ["employee_create", "employee_update"]
