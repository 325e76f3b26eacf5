"""Where the suite finds the project and `../shared` (specs, fixtures), wherever a test file sits."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SPECS = SHARED / "specs"
PEOPLEFORCE_FIXTURES = SHARED / "fixtures" / "peopleforce"
RULES_EXAMPLE = ROOT / "rules.example.toml"
