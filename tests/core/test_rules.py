"""The rules file: the shipped example loads, and each kind of mistake names file, field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.rules import Rules, RulesError, load_rules
from tests.paths import ROOT

EXAMPLE = (ROOT / "rules.example.toml").read_text()
SCOPE_LINE = 'on_leaving_scope = "nothing"'
POSITION = 'position = { jira_field = "customfield_10050", type = "text" }'
HIRED_ON = 'hired_on = { jira_field = "customfield_10054", type = "date" }'
MANAGER = 'manager = { jira_field = "customfield_10052", type = "user" }'


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
        # The scope: no unknown key, no empty match, no empty list.
        (
            (SCOPE_LINE, f'{SCOPE_LINE}\n[[scope.exclude]]\nteam = "Platform"'),
            "scope.exclude.0.team: Extra inputs are not permitted",
        ),
        (
            (SCOPE_LINE, f'{SCOPE_LINE}\nonboard = "everyone"'),
            "scope.onboard: Extra inputs are not permitted",
        ),
        (
            (SCOPE_LINE, f"{SCOPE_LINE}\n[[scope.include]]\n"),
            "scope.include.0: give at least one of employment_type, department, division, "
            "location, position, fields",
        ),
        (
            (SCOPE_LINE, f'{SCOPE_LINE}\n[[scope.include]]\nname = "nobody"'),
            "scope.include.0: give at least one of",
        ),
        (
            (SCOPE_LINE, f"{SCOPE_LINE}\n[[scope.exclude]]\ndepartment = []"),
            "scope.exclude.0.department: Value should have at least 1 item",
        ),
        (
            (SCOPE_LINE, f'{SCOPE_LINE}\n[[scope.exclude]]\ndepartment = ""'),
            "scope.exclude.0.department.0: String should have at least 1 character",
        ),
        (
            (SCOPE_LINE, f"{SCOPE_LINE}\n[[scope.exclude]]\nfields = {{}}"),
            "scope.exclude.0.fields: Dictionary should have at least 1 item",
        ),
        (
            (SCOPE_LINE, f"{SCOPE_LINE}\n[[scope.exclude]]\nfields = {{ agency = [] }}"),
            "scope.exclude.0.fields.agency: Value should have at least 1 item",
        ),
        (
            (SCOPE_LINE, 'on_leaving_scope = "delete"'),
            "scope.on_leaving_scope: Input should be 'nothing' or 'offboard'",
        ),
        # Field map policies: a default goes with when_empty = "default", both ways.
        (
            (POSITION, POSITION.replace('"text" }', '"text", default = "n/a" }')),
            'field_map.position: a default is used only with when_empty = "default"',
        ),
        (
            (
                POSITION,
                POSITION.replace('"text" }', '"text", when_empty = "skip", default = "n/a" }'),
            ),
            'field_map.position: a default is used only with when_empty = "default"',
        ),
        (
            (POSITION, POSITION.replace('"text" }', '"text", when_empty = "default" }')),
            'field_map.position: when_empty = "default" needs a default = "<value>"',
        ),
        (
            (POSITION, POSITION.replace('"text" }', '"text", when_empty = "blank" }')),
            "field_map.position.when_empty: Input should be 'clear', 'skip' or 'default'",
        ),
        (
            (
                HIRED_ON,
                HIRED_ON.replace('"date" }', '"date", when_empty = "default", default = "soon" }'),
            ),
            "field_map.hired_on: default 'soon' is no date; write it as YYYY-MM-DD",
        ),
        (
            (
                MANAGER,
                MANAGER.replace(
                    '"user" }', '"user", when_empty = "default", default = "IT desk" }'
                ),
            ),
            "field_map.manager: default 'IT desk': a user field's default is an email",
        ),
        (
            (POSITION, POSITION.replace('"text" }', '"text", when = { salary = "high" } }')),
            "field_map.position.when.salary: 'salary' is not a PeopleForce field this service reads",
        ),
        (
            (POSITION, f'{POSITION}\nfields.github = {{ jira_field = "customfield_10060" }}'),
            'field_map: write a custom field in quotes, "fields.github" = ...',
        ),
        (
            (POSITION, POSITION.replace('"text" }', '"text", when = { fields.team = "red" } }')),
            'field_map.position.when: write a custom field in quotes, "fields.team" = ...',
        ),
        (
            (POSITION, POSITION.replace('"text" }', '"text", when = {} }')),
            "field_map.position.when: Dictionary should have at least 1 item",
        ),
        (
            (POSITION, POSITION.replace('"text" }', '"text", when = { department = [] } }')),
            "field_map.position.when.department: Value should have at least 1 item",
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


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="no such rules file"):
        load_rules(tmp_path / "absent.toml")
    with pytest.raises(RulesError, match="not valid TOML"):
        load_rules(write(tmp_path, "timezone = "))


def test_missing_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="offboarding: Field required"):
        load_rules(write(tmp_path, 'default_project = "HR"\n[onboarding]\nsummary = "x"\n'))


def test_the_examples_scope_entries_load_when_uncommented(tmp_path: Path) -> None:
    """rules.example.toml shows its scope entries commented out: uncommented, they are valid."""
    start = EXAMPLE.index("# [[scope.exclude]]")
    end = EXAMPLE.index("# Field map:")
    block = EXAMPLE[start:end]
    uncommented = "\n".join(
        line.removeprefix("# ")
        for line in block.splitlines()
        if line.startswith("# [[") or (line.startswith("# ") and " = " in line)
    )
    rules = load_rules(write(tmp_path, EXAMPLE.replace(block, uncommented + "\n\n")))
    scope = rules.scope
    assert [entry.wanted for entry in scope.exclude] == [
        {"employment_type": ("Contractor", "Intern")},
        {"department": ("Board",)},
    ]
    assert [entry.wanted for entry in scope.include] == [
        {"location": ("Kyiv",)},
        {"fields.onboarding_by_it": ("yes",)},
    ]
    assert scope.exclude[0].name == "contractors and interns"
    assert scope.reads_custom_fields


def test_the_examples_field_map_example_loads(tmp_path: Path) -> None:
    """The field map's commented example (a GitHub login for Engineering only) is valid."""
    line = next(line for line in EXAMPLE.splitlines() if line.startswith('# "fields.github"'))
    entry = line.removeprefix("# ")
    rules = load_rules(write(tmp_path, EXAMPLE.replace(POSITION, f"{POSITION}\n{entry}")))
    github = rules.field_map["fields.github"]
    assert (github.when_empty, github.when) == ("skip", {"department": ("Engineering",)})


@pytest.mark.parametrize(
    ("values", "in_scope"),
    [
        ({"employment_type": "Full-Time", "department": "Finance"}, True),
        ({"employment_type": "full-time", "department": "Sales"}, True),  # any case
        ({"employment_type": "Contractor", "department": "Finance"}, False),  # excluded
        ({"employment_type": "Part-Time", "department": "Finance"}, False),  # not included
        ({"employment_type": None, "department": "Finance"}, False),  # not known: no match
        ({"employment_type": "Full-Time", "fields.board": "True"}, False),  # TOML true
        ({"employment_type": "Full-Time", "fields.grade": "7"}, False),  # TOML 7
    ],
)
def test_a_scope_reads_names_lists_and_toml_scalars(values: dict, in_scope: bool) -> None:
    rules = Rules.model_validate(
        {
            "default_project": "HR",
            "onboarding": {"summary": "On {full_name}"},
            "offboarding": {"summary": "Off {full_name}"},
            "scope": {
                "include": [{"employment_type": ["Full-Time", "Intern"]}],
                "exclude": [
                    {"employment_type": "Contractor"},
                    {"fields": {"board": True}},
                    {"fields": {"grade": [7, 8]}},
                ],
            },
        }
    )
    assert (rules.scope.left_out_by(values.get) is None) == in_scope
