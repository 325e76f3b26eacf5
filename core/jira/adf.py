"""Atlassian Document Format: the JSON tree Jira v3 wants for descriptions, comments and rich text fields.

Only what the service writes is built here (paragraphs, line breaks, bullet lists); reading back
walks any tree and keeps the text. Jira rejects empty text nodes, so no builder emits one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

AdfNode = dict[str, Any]

# Lone surrogates cannot be encoded as UTF-8 and C0 controls (other than tab and newline) are
# refused by Jira; both can arrive from copied HR text, so they are cleaned rather than sent.
_UNSENDABLE = re.compile(r"[\ud800-\udfff]|[\x00-\x08\x0b-\x1f\x7f]")
_BULLET = re.compile(r"^\s*[-*•]\s+")
_BLANK_LINES = re.compile(r"\n[ \t]*\n+")


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _UNSENDABLE.sub(lambda match: "\ufffd" if match.group() >= "\ud800" else "", text)


def inline(value: str) -> list[AdfNode]:
    """Inline nodes for `value`: text nodes separated by hard breaks, none of them empty."""
    nodes: list[AdfNode] = []
    for index, line in enumerate(_clean(value).split("\n")):
        if index:
            nodes.append({"type": "hardBreak"})
        if line:
            nodes.append({"type": "text", "text": line})
    return nodes


def paragraph(value: str = "") -> AdfNode:
    """A paragraph; newlines inside `value` become hard breaks."""
    return {"type": "paragraph", "content": inline(value)}


def bullet_list(items: Iterable[str | AdfNode]) -> AdfNode:
    """A bullet list: each item a string (one paragraph) or a ready block node."""
    return {
        "type": "bulletList",
        "content": [
            {"type": "listItem", "content": [paragraph(item) if isinstance(item, str) else item]}
            for item in items
        ],
    }


def doc(*blocks: AdfNode) -> AdfNode:
    """The document root that Jira accepts as a description or comment body."""
    return {"type": "doc", "version": 1, "content": list(blocks)}


def text_to_adf(value: str) -> AdfNode:
    """Plain text as a document: one paragraph per blank-line separated block.

    Single newlines inside a block become hard breaks, and a block whose lines all start with
    `- `, `* ` or `• ` becomes a bullet list, so rendered templates keep their shape in Jira.
    """
    blocks: list[AdfNode] = []
    for block in _BLANK_LINES.split(_clean(value).strip("\n")):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        if all(_BULLET.match(line) for line in lines):
            blocks.append(bullet_list(_BULLET.sub("", line) for line in lines))
        else:
            blocks.append(paragraph("\n".join(line.rstrip() for line in lines)))
    return doc(*blocks)


def adf_to_text(node: Mapping[str, Any] | None) -> str:
    """The text of a document, paragraphs separated by blank lines, list items as `- item`."""
    if not node:
        return ""
    return _blocks_text(node.get("content") or []).strip("\n")


def _blocks_text(blocks: Iterable[Mapping[str, Any]]) -> str:
    return "\n\n".join(part for part in (_block_text(block) for block in blocks) if part)


def _block_text(block: Mapping[str, Any]) -> str:
    kind = block.get("type")
    content = block.get("content") or []
    if kind in ("bulletList", "orderedList"):
        start = int((block.get("attrs") or {}).get("order", 1))
        lines = []
        for number, item in enumerate(content, start=start):
            marker = "-" if kind == "bulletList" else f"{number}."
            item_text = _blocks_text(item.get("content") or []).replace("\n\n", "\n")
            lines.append(f"{marker} {item_text}".rstrip())
        return "\n".join(lines)
    if kind in ("paragraph", "heading", "codeBlock"):
        return _inline_text(content)
    if any("text" in child or child.get("type") in ("hardBreak", "mention") for child in content):
        return _inline_text(content)
    return _blocks_text(content)


def _inline_text(nodes: Iterable[Mapping[str, Any]]) -> str:
    parts = []
    for node in nodes:
        kind = node.get("type")
        attrs = node.get("attrs") or {}
        if kind == "text":
            parts.append(node.get("text", ""))
        elif kind == "hardBreak":
            parts.append("\n")
        elif kind in ("mention", "emoji"):
            parts.append(attrs.get("text") or attrs.get("shortName") or "")
        elif kind in ("inlineCard", "blockCard"):
            parts.append(attrs.get("url", ""))
        else:
            parts.append(_inline_text(node.get("content") or []))
    return "".join(parts)
