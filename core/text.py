"""Text a sender controls, made safe to show: escaped for one line, bounded in length.

A webhook's action, keys and names are whatever its sender wrote. Before such text becomes a
log line, a log property, a Prefect run name, a tag or an artifact it goes through `printable`:

- a newline or any other control character could forge a log line (`"x\\n12:00:00 ERROR ..."`)
  or rewrite a terminal; a line or paragraph separator, or a bidirectional override, could make
  a line read as something else; a lone surrogate (`"\\ud800"`, valid as a JSON escape) cannot
  be encoded as UTF-8 at all, so every write of it fails. Each is written as its Python escape
  (`\\n`, `\\x1b`, `\\u2028`, `\\ud800`): visible, one line, encodable.
- a 900 KB name must not become a 900 KB run name or log line: text longer than `limit`
  characters is cut, and ends with `…`.

Everything else (letters of any script, emoji, joiners) is kept as is.
"""

from __future__ import annotations

import re

# Names and short values (a run name's person, a tag); log lines allow a little more.
NAME_LIMIT = 100
LOG_LIMIT = 200
ELLIPSIS = "…"

# C0 and C1 controls and DEL, line and paragraph separators, bidirectional embeddings,
# overrides and isolates, and surrogates (which only occur alone in a Python string).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def is_printable(text: str) -> bool:
    """True when `text` holds nothing `printable` would escape."""
    return _UNSAFE.search(text) is None


def bounded(text: str, limit: int = LOG_LIMIT) -> str:
    """`text`, cut to at most `limit` characters (ending in `…`) when longer."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS


def printable(value: object, limit: int = LOG_LIMIT) -> str:
    """`value` as text fit for one log line, name or tag: escaped (see the module) and at most
    `limit` characters long."""
    text = value if isinstance(value, str) else str(value)
    # Cut before escaping (escaping a 900 KB string to keep 200 characters of it is waste),
    # and after, since escapes are longer than what they stand for.
    text = bounded(text, limit)
    if _UNSAFE.search(text) is None:
        return text
    return bounded(_UNSAFE.sub(_escape, text), limit)
