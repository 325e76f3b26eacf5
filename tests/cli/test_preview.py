"""`pf-jira-sync preview-rules NEW.toml`: the seeded company, read from the simulators over HTTP,
planned with the example rules and with a proposed change; what appears and disappears."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.seed import SeedPerson
from sandbox.stack import Simulators
from tests.cli.test_cli import cli_env
from tests.paths import RULES_EXAMPLE


@pytest.fixture(scope="module")
def simulators() -> Iterator[Simulators]:
    with Simulators() as running:
        yield running


def preview(proposed: Path, simulators: Simulators, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "preview-rules", str(proposed)],
        env=cli_env(**{**simulators.environment(), "RULES_FILE": str(RULES_EXAMPLE)}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def proposed_rules(tmp_path: Path, old: str, new: str) -> Path:
    """The example rules with one change."""
    text = RULES_EXAMPLE.read_text()
    assert old in text
    path = tmp_path / "proposed.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def by_employee(output: str) -> dict[str, list[str]]:
    """The preview's lines under each employee's heading."""
    found: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if " employees would change: " in line:
            break
        if line.startswith("  ") and current is not None:
            found[current].append(line.strip())
        elif line and line.split()[0].isdigit():
            current = line.split()[0]
            found[current] = []
    return found


def seeded(simulators: Simulators, last_name: str) -> SeedPerson:
    return next(person for person in simulators.people if person.last_name == last_name)


def test_an_added_checklist_item_appears_for_each_onboarding_and_nothing_else(
    simulators: Simulators, tmp_path: Path
) -> None:
    proposed = proposed_rules(
        tmp_path,
        "[[onboarding.checklist]]",
        '[[onboarding.checklist]]\nsummary = "Order a desk for {full_name}"\n\n'
        "[[onboarding.checklist]]",
    )
    result = preview(proposed, simulators, tmp_path)
    assert result.returncode == 0, result.stderr
    changes = by_employee(result.stdout)
    kumar, petrova, hall = (seeded(simulators, n) for n in ("Kumar", "Petrova", "Hall"))
    assert changes[str(kumar.id)] == ["+ subtask of onboarding: 'Order a desk for Ravi Kumar'"]
    assert changes[str(petrova.id)] == ["+ subtask of onboarding: 'Order a desk for Elena Petrova'"]
    assert str(hall.id) not in changes  # leaving: the onboarding checklist is no business of his
    assert all(len(lines) == 1 and lines[0].startswith("+") for lines in changes.values())
    assert f"{len(changes)} of {len(simulators.people)} employees would change" in result.stdout
    assert f"{len(changes)} line(s) appear (+), 0 disappear (-)" in result.stdout
    assert simulators.jira_state.writes == 0


def test_a_changed_project_moves_the_route_s_creations(
    simulators: Simulators, tmp_path: Path
) -> None:
    proposed = proposed_rules(
        tmp_path,
        'match = { department = "Engineering" }\nproject = "IT"',
        'match = { department = "Engineering" }\nproject = "ENG"',
    )
    result = preview(proposed, simulators, tmp_path)
    assert result.returncode == 0, result.stderr
    changes = by_employee(result.stdout)
    kumar, bondarenko, petrova = (seeded(simulators, n) for n in ("Kumar", "Bondarenko", "Petrova"))
    heading = f"create_issue (onboarding): {{}}: 'Onboarding: Ravi Kumar ({kumar.hired_on})'"
    assert [line.split(", due")[0] for line in changes[str(kumar.id)]] == [
        "- " + heading.format("IT"),
        "+ " + heading.format("ENG"),
    ]  # the subtasks are the same: only the parent's project changes
    assert [line[:36] for line in changes[str(bondarenko.id)]] == [
        "- create_issue (offboarding): IT: 'O",
        "+ create_issue (offboarding): ENG: '",
    ]
    assert str(petrova.id) not in changes  # Sales: not routed to Engineering's project
    assert simulators.jira_state.writes == 0


def test_identical_rules_say_no_difference(simulators: Simulators, tmp_path: Path) -> None:
    same = tmp_path / "same.toml"
    same.write_text(RULES_EXAMPLE.read_text())
    result = preview(same, simulators, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[0] == (
        "no difference: the proposed rules plan the same actions as the current ones "
        f"for all {len(simulators.people)} employees"
    )


def test_a_broken_proposed_file_is_refused_naming_the_entry(
    simulators: Simulators, tmp_path: Path
) -> None:
    proposed = proposed_rules(
        tmp_path, 'summary = "Prepare a laptop for {full_name}"', 'summary = "Laptop for {nmae}"'
    )
    result = preview(proposed, simulators, tmp_path)
    assert result.returncode == 2
    assert "proposed.toml" in result.stderr
    assert "onboarding.checklist" in result.stderr
    assert "{nmae}" in result.stderr
    assert result.stdout == ""
