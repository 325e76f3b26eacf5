"""Loguru, configured once per process: the console and Seq.

- The console gets human-readable lines.
- Seq (when `SEQ_URL` is set) gets every line as a structured CLEF event (`core.seq.SeqSink`:
  never blocks, drops and counts when Seq is down).
- The standard library's `logging` (uvicorn, httpx, Prefect) is routed into loguru.
- A flow-run process also sends its lines to the Prefect run log (`tasks.run_log`, which adds
  its sink and the run ids here: this floor knows nothing of Prefect).

Lines carry their context as properties: `EventKey`, `EmployeeId`, `Action` and `JiraKey` where
the code binds them (`logger.contextualize`), `FlowRunId` and `TaskRunId` inside Prefect runs
(`tasks.run_log`), `Logger` for lines from the standard library, `Component` for the process.

Secrets never leave: one patcher masks the values of the secret settings, the passwords and
tokens inside the URL settings, the proxies and Prefect's URLs (`Settings.url_secrets`), the
Prefect API credentials, credential headers, webhook signatures, and the password or credential
query value of any URL (as `core.settings.mask_url` shows URLs) in every line,
property and traceback, once, before any sink sees the record (it renders the traceback itself,
as the `@x` property, and takes the exception off the record, so no sink renders it unmasked).
A filter does the same for what Prefect's own loggers send to the run logs.
"""

from __future__ import annotations

import base64
import inspect
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from loguru import logger

from core.seq import SeqSink
from core.settings import MASK, is_secret_query_name

if TYPE_CHECKING:
    from loguru import Message, Record

    from core.settings import Settings

# Values shorter than this are not masked: masking "ab" everywhere would ruin every line.
MIN_SECRET_LENGTH = 4
# Credentials that may show up in a line whatever their value: PeopleForce's webhook signature,
# and the values of HTTP credential headers (the header name is kept).
_CREDENTIAL_PATTERNS = [
    r"sha256=[0-9a-fA-F]{64}",
    r"(?P<header>(?i:authorization|x-api-key|x-seq-apikey|x-peopleforce-signature)"
    r"[\"']?\s*[:=]\s*[\"']?)(?:(?i:basic|bearer) )?[^\s\"',;}]{4,}",
    # The password of any URL (`scheme://user:PASSWORD@host`), the user kept.
    r"(?P<userinfo>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@\"']*:)[^\s/@\"']+(?=@)",
    # A query parameter: its value is masked when its name says it is a credential (`?password=`,
    # `&access_token=` ...: `core.settings.is_secret_query_name`, as `mask_url` does).
    r"(?P<query>[?&](?P<qname>[A-Za-z0-9_.%-]+)=)(?P<qvalue>[^\s&#\"']+)",
]
# Prefect's own credentials, read from the environment (this module does not import Prefect).
PREFECT_SECRET_VARIABLES = ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")

_configured = False
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] = re.compile("|".join(_CREDENTIAL_PATTERNS))
# The registered values alone, for the parts of a credential pattern's match that are kept.
_literal_pattern: re.Pattern[str] | None = None
# Where the patcher puts the masked traceback text: CLEF's name for it, so Seq gets it as is.
TRACEBACK = "@x"


# --- Redaction --------------------------------------------------------------------------------


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask these values in every line from now on."""
    added = {value for value in values if value and len(value) >= MIN_SECRET_LENGTH}
    if added - _secrets:
        _secrets.update(added)
        _compile()


def clear_secrets() -> None:
    """Forget the registered values (the credential patterns stay); for tests."""
    _secrets.clear()
    _compile()


def _compile() -> None:
    global _secret_pattern, _literal_pattern
    # Longest first, so a secret that contains another is masked whole.
    literal = [re.escape(value) for value in sorted(_secrets, key=len, reverse=True)]
    _secret_pattern = re.compile("|".join([*literal, *_CREDENTIAL_PATTERNS]))
    _literal_pattern = re.compile("|".join(literal)) if literal else None


def _mask_literals(text: str) -> str:
    return _literal_pattern.sub(MASK, text) if _literal_pattern is not None else text


def _mask(match: re.Match[str]) -> str:
    groups = match.groupdict()
    if groups.get("qname") is not None:
        value = groups["qvalue"]
        shown = MASK if is_secret_query_name(groups["qname"]) else _mask_literals(value)
        return _mask_literals(groups["query"]) + shown
    # What a credential pattern keeps (a header's name, a URL's user) may hold a secret too.
    return _mask_literals(groups.get("header") or groups.get("userinfo") or "") + MASK


def redact(text: str) -> str:
    """`text` with every registered secret and credential pattern masked."""
    return _secret_pattern.sub(_mask, text) if text else text


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold, in the forms it may travel in."""
    values: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            values.append(value.get_secret_value())
    if settings.jira_email and settings.jira_api_token:
        pair = f"{settings.jira_email}:{settings.jira_api_token.get_secret_value()}"
        values.append(base64.b64encode(pair.encode()).decode())
    values += settings.url_secrets()
    for name in PREFECT_SECRET_VARIABLES:
        if value := os.environ.get(name):
            values += [value, base64.b64encode(value.encode()).decode()]  # as basic auth too
    return [value for value in values if value]


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(item) for item in value)
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    return value


# --- The patcher: run context and redaction for every line ----------------------------------


PropertyProvider = Callable[[], dict[str, str]]
# Properties of the context a line is logged in, found at each line (`tasks.run_log` adds the
# Prefect flow and task run ids; this floor knows nothing of Prefect).
_context_properties: list[PropertyProvider] = []


def add_context_properties(provider: PropertyProvider) -> None:
    """Have every line carry what `provider()` returns (unless the line binds it itself)."""
    if provider not in _context_properties:
        _context_properties.append(provider)


def patch_record(record: Record) -> None:
    extra = record["extra"]
    for provider in _context_properties:
        for name, value in provider().items():
            extra.setdefault(name, value)
    record["message"] = redact(record["message"])
    for name, value in extra.items():
        extra[name] = _redact_value(value)
    exception = record["exception"]
    if exception is not None:
        if exception.type is not None:
            text = "".join(traceback.format_exception(*exception))
            extra[TRACEBACK] = redact(text.rstrip("\n"))
        record["exception"] = None


# --- Sinks ------------------------------------------------------------------------------------

CONSOLE_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> <cyan>{name}</cyan> {message}"
)


def console_format(record: Record) -> str:
    """`CONSOLE_FORMAT`, and the masked traceback below it when the line has one."""
    return CONSOLE_FORMAT + ("\n{extra[@x]}\n" if TRACEBACK in record["extra"] else "\n")


def console_sink(message: Message) -> None:
    """stderr, looked up at each line (tests capture it)."""
    sys.stderr.write(message)


class RedactingFilter(logging.Filter):
    """Masks secrets in a standard-library record (its message and traceback) in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def mask_standard_loggers(names: Iterable[str]) -> None:
    """Mask secrets in what these standard-library loggers' own handlers send (Prefect's run-log
    loggers, whose handlers send records to the Prefect API without passing through loguru)."""
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
                handler.addFilter(RedactingFilter())


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
        logger.bind(Logger=record.name).opt(depth=depth, exception=record.exc_info).log(
            level, record.getMessage()
        )


def add_seq_sink(
    url: str, api_key: str | None = None, *, level: str = "INFO", **options: Any
) -> tuple[int, SeqSink]:
    """Ship lines at `level` and above to Seq; returns the loguru handler id and the sink."""
    sink = SeqSink(url, api_key, **options)
    return logger.add(sink, level=level, format="{message}"), sink


def remove_seq_sink(handler_id: int, sink: SeqSink) -> None:
    logger.remove(handler_id)
    sink.close()


def configure_logging(
    settings: Settings | None = None, *, level: str | None = None, component: str | None = None
) -> None:
    """Idempotent: the first call wins, so every entry point may call it.

    `settings` bring the level, Seq (`SEQ_URL`, `SEQ_API_KEY`) and the secrets to mask; `level`
    overrides the settings' level; `component` names the process in Seq (gateway, flow-run ...).
    """
    global _configured
    if _configured:
        return
    _configured = True
    level = level or (settings.log_level if settings is not None else "INFO")
    if settings is not None:
        register_secrets(secret_values(settings))
    logger.remove()
    logger.configure(
        patcher=patch_record,
        extra={"Application": "pf-jira-sync", "Component": component or "pf-jira-sync"},
    )
    logger.add(console_sink, level=level, format=console_format, colorize=_colorize(sys.stderr))
    if settings is not None and settings.seq_url is not None:
        api_key = settings.seq_api_key.get_secret_value() if settings.seq_api_key else None
        add_seq_sink(str(settings.seq_url), api_key, level=level)
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _colorize(stream: Any) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
