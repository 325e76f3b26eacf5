"""Sender-controlled text, escaped for one line and bounded before it is shown anywhere."""

from __future__ import annotations

import pytest

from core.text import bounded, is_printable, printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Ada Lovelace", "Ada Lovelace"),
        ("Zoë Ñúñez 李小龍 👩‍💻", "Zoë Ñúñez 李小龍 👩‍💻"),  # any script, emoji and joiners kept
        ("x\n12:00:00 ERROR forged", "x\\n12:00:00 ERROR forged"),
        ("a\r\tb", "a\\r\\tb"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00", "nul\\x00"),
        ("Eve\ud800", "Eve\\ud800"),
        ("line\u2028sep", "line\\u2028sep"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
    ],
)
def test_printable_escapes_what_could_forge_or_break_a_line(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert is_printable(shown)
    shown.encode()  # always encodable


def test_printable_bounds_the_length_before_and_after_escaping() -> None:
    assert printable("E" * 900_000, 100) == "E" * 99 + "…"
    assert len(printable("\n" * 1_000, 100)) == 100
    assert printable(12345) == "12345"
    assert bounded("short", 10) == "short"
    assert bounded("x" * 11, 10) == "x" * 9 + "…"
