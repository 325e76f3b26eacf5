"""Loguru, configured once per process, with the standard library's logging routed into it."""

from __future__ import annotations

import inspect
import logging
import sys

from loguru import logger

_configured = False


class InterceptHandler(logging.Handler):
    """Send records of libraries that use `logging` (uvicorn, httpx, prefect) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        # Skip logging's own frames so loguru reports the caller's module and line.
        while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(level: str = "INFO") -> None:
    """Idempotent: the first call wins, so every entry point may call it."""
    global _configured
    if _configured:
        return
    _configured = True
    logger.remove()
    logger.add(
        sys.stderr,
        level=level,
        format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "<cyan>{name}</cyan> {message}",
        backtrace=False,
        diagnose=False,  # never print local variables: they may hold secrets
    )
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
