"""Fixtures the gateway's tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from loguru import logger


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every loguru message (with its level) logged during the test."""
    lines: list[str] = []
    sink_id = logger.add(lines.append, level="DEBUG", format="{level} {message}")
    try:
        yield lines
    finally:
        logger.remove(sink_id)
