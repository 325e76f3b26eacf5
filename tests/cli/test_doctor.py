"""`pf-jira-sync doctor` as an operator runs it: a real process against the simulators on
loopback, the Prefect test server and a real store. Each rules mistake is one FAIL line naming
the entry to fix; the sandbox passes, run after run, on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from sandbox.jira import account_id_for
from sandbox.jira_meta import JiraMeta
from sandbox.server import free_port
from sandbox.stack import Simulators
from tests.cli.test_cli import lines_by_check, run_cli
from tests.paths import RULES_EXAMPLE

EXAMPLE = RULES_EXAMPLE.read_text()
CHECKS = ["settings", "rules", "peopleforce", "jira", "jira-rules", "prefect", "database"]
NO_PROJECT = "no such project, or this account cannot browse it (it can browse: HR, IT)"
NOT_ASSIGNABLE = (
    "cannot be assigned issues there (no such active user, or not assignable in the project)"
)


@pytest.fixture(scope="module")
def simulators() -> Iterator[Simulators]:
    with Simulators() as running:
        yield running


@pytest.fixture
def sims(simulators: Simulators) -> Iterator[Simulators]:
    """The simulators as they start: no issues, Jira's configuration at its defaults."""
    meta: JiraMeta = simulators.jira_app.state.jira_meta
    simulators.jira_state.reset()
    meta.reset()
    yield simulators
    meta.reset()


@pytest.fixture
def prefect_api(prefect_server: None) -> str:
    return PREFECT_API_URL.value()


@pytest.fixture
def doctor(sims: Simulators, tmp_path: Path):
    """Run doctor with the given rules text (default: rules.example.toml) and settings; no
    Prefect answers unless PREFECT_API_URL is given (`prefect` then only warns)."""

    def run(rules: str = EXAMPLE, **settings: str | None) -> subprocess.CompletedProcess[str]:
        """`None` leaves a setting unset."""
        rules_file = tmp_path / "rules.toml"
        rules_file.write_text(rules)
        env = {
            **sims.environment(),
            "RULES_FILE": str(rules_file),
            "DATA_DIR": str(tmp_path / "data"),
            "PREFECT_SERVER_PORT": str(free_port()),
            **settings,
        }
        return run_cli("doctor", cwd=tmp_path, **{k: v for k, v in env.items() if v is not None})

    return run


def failures(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line.removeprefix("FAIL ") for line in result.stdout.splitlines() if line.startswith("FAIL")
    ]


def only(rules: str, old: str, new: str) -> str:
    """The rules with the first `old` replaced by `new` (which must be there)."""
    assert old in rules, old
    return rules.replace(old, new, 1)


def assert_all_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines_by_check(result.stdout)
    assert list(checks) == CHECKS, result.stdout
    assert all(line.startswith("ok") for line in checks.values()), result.stdout


def store_tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def test_doctor_passes_on_the_sandbox_twice_in_a_row(
    doctor, prefect_api: str, tmp_path: Path
) -> None:
    first = doctor(PREFECT_API_URL=prefect_api)
    assert_all_ok(first)
    second = doctor(PREFECT_API_URL=prefect_api)
    assert_all_ok(second)
    checks = lines_by_check(second.stdout)
    assert "HR, IT have the issue types, 5 mapped fields" in checks["jira-rules"]
    assert re.search(r"reachable at http://127\.0\.0\.1:\d+/api, Prefect 3\.", checks["prefect"])
    assert store_tables(tmp_path / "data" / "pf-jira-sync.db") == set()


def test_doctor_passes_twice_on_postgresql(
    doctor, prefect_api: str, postgresql_database_url: str
) -> None:
    for _ in range(2):
        result = doctor(DATABASE_URL=postgresql_database_url, PREFECT_API_URL=prefect_api)
        assert_all_ok(result)
        assert "writable: postgresql+asyncpg://" in lines_by_check(result.stdout)["database"]


def test_doctor_explains_rejected_credentials(doctor) -> None:
    result = doctor(PEOPLEFORCE_API_KEY="wrong-key-0042", JIRA_API_TOKEN="wrong-token-0042")
    assert result.returncode == 1
    checks = lines_by_check(result.stdout)
    assert checks["peopleforce"].startswith("FAIL")
    assert "PEOPLEFORCE_API_KEY" in checks["peopleforce"]
    assert checks["jira"].startswith("FAIL")
    assert "JIRA_API_TOKEN" in checks["jira"]
    assert checks["jira-rules"] == "skip jira-rules   not checked: Jira does not answer"
    assert checks["database"].startswith("ok")
    assert "wrong-key-0042" not in result.stdout + result.stderr
    assert "wrong-token-0042" not in result.stdout + result.stderr


def test_doctor_reports_missing_settings_and_unreachable_services(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    result = run_cli(
        "doctor",
        cwd=tmp_path,
        PEOPLEFORCE_BASE_URL=dead,
        PEOPLEFORCE_API_KEY="k-123",
        DATABASE_URL=f"sqlite+aiosqlite:///{blocked}/x.db",
        PREFECT_SERVER_PORT=str(free_port()),
    )
    assert result.returncode == 1
    checks = lines_by_check(result.stdout)
    assert list(checks) == CHECKS
    assert checks["settings"].startswith("ok")
    assert checks["rules"].startswith("FAIL")
    assert "rules.example.toml: no such rules file (set RULES_FILE)" in checks["rules"]
    assert checks["peopleforce"].startswith("FAIL")
    assert "no answer" in checks["peopleforce"]
    assert "JIRA_EMAIL is not set" in checks["jira"]
    assert checks["jira-rules"].startswith("skip")
    assert checks["prefect"].startswith("warn")
    assert checks["database"].startswith("FAIL")


def test_doctor_reports_invalid_settings_as_a_failed_check(tmp_path: Path) -> None:
    result = run_cli("doctor", cwd=tmp_path, JIRA_BASE_URL="nope")
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL settings")
    assert "JIRA_BASE_URL" in result.stdout
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- rules mistakes


def unknown_project() -> str:
    # The first `project = "IT"` is the engineering route's.
    return only(EXAMPLE, 'project = "IT"', 'project = "ITX"')


RULES_MISTAKES = [
    pytest.param(
        unknown_project(),
        [f'jira-rules   routes.engineering.project "ITX": {NO_PROJECT}'],
        id="unknown project",
    ),
    pytest.param(
        only(EXAMPLE, 'issue_type = "Task"', 'issue_type = "Tsk"'),
        ['jira-rules   onboarding.issue_type "Tsk" in projects HR, IT: no such issue type; issue types there: Epic, Task'],
        id="unknown issue type",
    ),
    pytest.param(
        only(EXAMPLE, 'subtask_type = "Sub-task"', 'subtask_type = "Subtask"'),
        ['jira-rules   onboarding.subtask_type "Subtask" in projects HR, IT: no such subtask type; subtask types there: Sub-task'],
        id="unknown subtask type",
    ),
    pytest.param(
        only(EXAMPLE, 'jira_field = "customfield_10050"', 'jira_field = "customfield_10099"'),
        ['jira-rules   field_map.position.jira_field "customfield_10099": no such field in Jira; single-line text fields there: customfield_10050 (Position), customfield_10053 (Location)'],
        id="unknown field",
    ),
    pytest.param(
        only(EXAMPLE, 'jira_field = "customfield_10052"', 'jira_field = "customfield_10053"'),
        ['jira-rules   field_map.manager.type "user": customfield_10053 (Location) is a text field, not a user picker'],
        id="wrong field type",
    ),
    pytest.param(
        only(EXAMPLE, 'assignee = "unassigned"\n# One subtask', 'assignee = "account:712020:gone"\n# One subtask'),
        [f'jira-rules   offboarding.assignee "account:712020:gone" in projects HR, IT: {NOT_ASSIGNABLE}'],
        id="unassignable assignee",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("rules", "expected"), RULES_MISTAKES)
def test_each_rules_mistake_is_one_fail_line(doctor, rules: str, expected: list[str]) -> None:
    result = doctor(rules)
    assert result.returncode == 1, result.stdout + result.stderr
    assert failures(result) == expected, result.stdout
    assert list(lines_by_check(result.stdout)) == CHECKS


def test_a_required_create_field_nobody_sets(doctor, sims: Simulators) -> None:
    sims.jira_app.state.jira_meta.config.required = {"IT/Task": ["customfield_10057"]}
    result = doctor()
    assert result.returncode == 1
    assert failures(result) == [
        'jira-rules   onboarding.issue_type "Task" in project IT: Jira requires Team '
        "(customfield_10057) to create one, and the rules do not set it: map it in [field_map], "
        "or give it a default in Jira",
        'jira-rules   offboarding.issue_type "Task" in project IT: Jira requires Team '
        "(customfield_10057) to create one, and the rules do not set it: give it a default in "
        "Jira, or make it optional",
    ]


def test_a_workflow_without_cancelled(doctor, sims: Simulators) -> None:
    sims.jira_app.state.jira_meta.config.statuses = {"Task": ["To Do", "In Progress", "Done"]}
    result = doctor()
    assert result.returncode == 1
    assert failures(result) == [
        'jira-rules   offboarding.issue_type "Task" in projects HR, IT: its workflow has no '
        "status Cancelled (it has To Do, In Progress, Done): a reverted termination cannot cancel it"
    ]


def test_a_person_who_cannot_be_assigned_in_the_routed_project(doctor, sims: Simulators) -> None:
    lead = account_id_for(sims.people[0].email or "")
    rules = only(
        EXAMPLE, 'onboarding_assignee = "manager"', f'onboarding_assignee = "account:{lead}"'
    )
    sims.jira_app.state.jira_meta.config.unassignable = {"IT": [lead]}
    result = doctor(rules)
    assert result.returncode == 1
    assert failures(result) == [
        f'jira-rules   routes.engineering.onboarding_assignee "account:{lead}" in project IT: '
        f"{NOT_ASSIGNABLE}"
    ]
    sims.jira_app.state.jira_meta.config.unassignable = {}
    assert failures(doctor(rules)) == []


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        (EXAMPLE.replace("[onboarding]", "[onboarding"), "not valid TOML"),
        (only(EXAMPLE, "Onboarding: {full_name}", "Onboarding: {fullname}"),
         "onboarding.summary: unknown placeholder(s) {fullname}"),
    ],
    ids=["not TOML", "invalid entry"],
)  # fmt: skip
def test_a_broken_rules_file_is_one_fail_line(doctor, rules: str, says: str) -> None:
    result = doctor(rules)
    assert result.returncode == 1
    (line,) = failures(result)
    assert line.startswith("rules        ")
    assert says in line
    assert lines_by_check(result.stdout)["jira-rules"].startswith("skip")


# --------------------------------------------------------------------------- Prefect


def test_a_prefect_api_that_does_not_answer_fails(doctor) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    result = doctor(PREFECT_API_URL=dead)
    assert result.returncode == 1
    (line,) = failures(result)
    assert line.startswith(f"prefect      no Prefect server answers at {dead}")


def test_no_prefect_api_url_is_a_warning_that_says_what_to_set(doctor) -> None:
    port = free_port()
    result = doctor(PREFECT_SERVER_PORT=str(port))
    assert result.returncode == 0, result.stdout
    prefect = lines_by_check(result.stdout)["prefect"]
    assert prefect.startswith(
        f"warn prefect      PREFECT_API_URL is unset, and no Prefect server answers at "
        f"http://127.0.0.1:{port}/api, where `up` starts one"
    )
    assert "set PREFECT_API_URL" in prefect


def test_no_prefect_api_url_asks_the_server_up_starts_on_this_host(
    doctor, prefect_api: str
) -> None:
    port = prefect_api.removesuffix("/api").rsplit(":", 1)[1]
    result = doctor(PREFECT_SERVER_PORT=port)
    assert_all_ok(result)
    assert "(PREFECT_API_URL is unset: the server `up` starts here)" in result.stdout
