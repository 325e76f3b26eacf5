"""The rules file: the shipped example loads, and each kind of mistake names file, field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.rules import Rules, RulesError, load_rules
from tests.paths import ROOT

EXAMPLE = (ROOT / "rules.example.toml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def test_example_rules_load() -> None:
    rules = load_rules(ROOT / "rules.example.toml")
    assert rules.default_project == "HR"
    assert rules.prehire_lead_days == 14
    assert str(rules.zone) == "Europe/Kyiv"
    assert [item.assignee for item in rules.onboarding.checklist][-1] == "manager"
    assert rules.field_map["manager"].type == "user"


@pytest.mark.parametrize(
    ("department", "division", "location", "route"),
    [
        ("Engineering", None, None, "engineering"),
        ("engineering", "R&D", "Kyiv", "engineering"),  # names match case-insensitively
        ("IT", None, None, "it-department"),
        ("Sales", None, None, None),  # no route: defaults apply
        (None, None, None, None),
    ],
)
def test_first_matching_route_wins(
    department: str | None, division: str | None, location: str | None, route: str | None
) -> None:
    rules = load_rules(ROOT / "rules.example.toml")
    found = rules.route_for(department=department, division=division, location=location)
    assert (found.name if found else None) == route


def test_route_with_several_keys_needs_all_of_them() -> None:
    rules = Rules.model_validate(
        {
            "default_project": "HR",
            "onboarding": {"summary": "On {full_name}"},
            "offboarding": {"summary": "Off {full_name}"},
            "routes": [
                {"name": "kyiv-eng", "match": {"department": "Engineering", "location": "Kyiv"}},
                {"name": "eng", "match": {"department": "Engineering"}},
            ],
        }
    )
    kyiv = rules.route_for(department="Engineering", division=None, location="Kyiv")
    lviv = rules.route_for(department="Engineering", division=None, location="Lviv")
    assert (kyiv.name if kyiv else None, lviv.name if lviv else None) == ("kyiv-eng", "eng")


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (
            ('timezone = "Europe/Kyiv"', 'timezone = "Mars/Olympus"'),
            "timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            ("prehire_lead_days = 14", "prehire_lead_days = -1"),
            "prehire_lead_days: Input should be greater than or equal to 0",
        ),
        (
            ("# prehire_lead_days = 21", "prehire_lead_days = 400"),
            "routes.0.prehire_lead_days: Input should be less than or equal to 365",
        ),
        (
            ('default_project = "HR"', 'default_project = "hr team"'),
            "default_project: String should match pattern",
        ),
        (
            (
                'summary = "Onboarding: {full_name} ({hired_on})"',
                'summary = "Onboarding: {fullname}"',
            ),
            "onboarding.summary: unknown placeholder(s) {fullname}",
        ),
        (
            (
                'summary = "Welcome meeting with {full_name}"\nassignee = "manager"',
                'summary = "Welcome meeting"\nassignee = "boss"',
            ),
            "onboarding.checklist.2.assignee: must be 'manager', 'unassigned' or 'account:<Jira accountId>'",
        ),
        (
            (
                'position = { jira_field = "customfield_10050", type = "text" }',
                'salary = { jira_field = "customfield_10050" }',
            ),
            "field_map: 'salary' is not a PeopleForce field this service reads",
        ),
        (
            (
                'location = { jira_field = "customfield_10053", type = "text" }',
                'location = { jira_field = "customfield_10053", type = "colour" }',
            ),
            "field_map.location.type: Input should be 'text', 'date', 'user', 'option' or 'labels'",
        ),
        (
            ('issue = "onboarding"', 'issue = "onboarding"\ncolour = "blue"'),
            "record.colour: Extra inputs are not permitted",
        ),
        (
            ('match = { department = "IT" }', "match = {}"),
            "routes.1.match: Value error, give at least one",
        ),
    ],
)
def test_mistakes_name_the_file_and_the_field(
    tmp_path: Path, change: tuple[str, str], complaint: str
) -> None:
    old, new = change
    assert old in EXAMPLE
    path = write(tmp_path, EXAMPLE.replace(old, new, 1))
    with pytest.raises(RulesError) as raised:
        load_rules(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ")
    assert complaint.replace("Value error, ", "") in message


def test_a_route_s_lead_time_is_its_own_or_the_rules(tmp_path: Path) -> None:
    assert [
        route.prehire_lead_days for route in load_rules(ROOT / "rules.example.toml").routes
    ] == [None, None]
    path = write(tmp_path, EXAMPLE.replace("# prehire_lead_days = 21", "prehire_lead_days = 21"))
    rules = load_rules(path)
    assert [route.prehire_lead_days for route in rules.routes] == [21, None]
    assert rules.prehire_lead_days == 14


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="no such rules file"):
        load_rules(tmp_path / "absent.toml")
    with pytest.raises(RulesError, match="not valid TOML"):
        load_rules(write(tmp_path, "timezone = "))


def test_missing_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="offboarding: Field required"):
        load_rules(write(tmp_path, 'default_project = "HR"\n[onboarding]\nsummary = "x"\n'))
