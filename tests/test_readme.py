"""The README's commands work as typed on the machine `make run` and `make test` set up: uv is
in `.tools/` (not on PATH) and nothing activates the virtual environment."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from deployments.stack import try_command
from tests.paths import ROOT

README = (ROOT / "README.md").read_text()
FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`([^`\n]+)`")
ENTRY_POINT = ".venv/bin/pf-jira-sync"


def typed_commands() -> list[str]:
    """Every command the README shows: fenced lines and inline spans that run something."""
    lines = [line.strip() for block in FENCED.findall(README) for line in block.splitlines()]
    without_blocks = FENCED.sub("", README)
    spans = [span.strip() for span in INLINE.findall(without_blocks)]
    return [text for text in lines + spans if text]


def test_no_command_needs_uv_on_path() -> None:
    mentions = [line for line in README.splitlines() if "uv run" in line]
    # One sentence says it works too where uv is on PATH; nothing tells you to type it.
    assert len(mentions) == 1, mentions
    assert "where uv is" in mentions[0]
    assert [cmd for cmd in typed_commands() if cmd.startswith("uv run")] == ["uv run pf-jira-sync"]


def test_every_typed_pf_jira_sync_command_is_the_installed_entry_point() -> None:
    commands = [cmd for cmd in typed_commands() if re.match(r"(\S*/)?pf-jira-sync\s+\w", cmd)]
    assert commands, "the README shows no command"
    # A bare `pf-jira-sync X` in running text names a command; what to type (a line of its
    # own, or a step's `Check:`/`Start:`) is spelled with the path.
    typed = [cmd for cmd in commands if "/" in cmd.split()[0]]
    assert {cmd.split()[0] for cmd in typed} == {ENTRY_POINT}
    for step in ("Check:", "Start:", "Dry run:", "Apply by hand:"):
        line = next(line for line in README.splitlines() if step in line)
        assert f"`{ENTRY_POINT} " in line, line
    assert (ROOT / ENTRY_POINT).is_file()  # `make sync` put it there


def test_the_readme_shows_the_try_command_the_banner_prints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "executable", str(ROOT / ".venv" / "bin" / "python"))
    monkeypatch.chdir(ROOT)  # `make run` runs in the checkout
    banner = try_command()
    assert banner == f'{ENTRY_POINT} sandbox hire "Ada Lovelace" --department Engineering'
    blocks = [block.strip() for block in FENCED.findall(README)]
    assert banner in blocks


def test_the_backup_one_liner_uses_the_venv_python() -> None:
    line = next(line for line in README.splitlines() if "sqlite3.connect(" in line)
    assert "`.venv/bin/python -c" in line
    assert Path(ROOT / ".venv" / "bin" / "python").exists()


def test_the_rules_the_readme_shows_are_valid() -> None:
    """Each TOML block of the README, put in the example rules in place of its tables, loads."""
    import tomllib

    from core.rules import Rules

    example = tomllib.loads((ROOT / "rules.example.toml").read_text())
    blocks = re.findall(r"^```toml\n(.*?)^```", README, re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 2
    for block in blocks:
        rules = Rules.model_validate(example | tomllib.loads(block))
        assert rules.scope.exclude or "fields.github" in rules.field_map
