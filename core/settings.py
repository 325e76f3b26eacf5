"""The one settings object: read once from the environment and `.env`, documented in `.env.example`."""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {
    "changeme",
    "change-me",
    "changethis",
    "secret",
    "xxx",
    "todo",
    "your-api-key",
    "...",
}


# How a secret is shown, in a URL or a log line.
MASK = "********"
# Query parameters whose value is a credential (`?password=`, `?token=`, `?api_key=` ...): the
# name is matched case-insensitively, with `-` and `_` ignored, and also as a suffix
# (`access_token`, `sslpassword`, `X-Amz-Signature`).
SECRET_QUERY_NAMES = (
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "token",
    "key",
    "apikey",
    "auth",
    "sig",
    "signature",
    "credential",
    "credentials",
)
# The environment's proxies (httpx and Prefect follow them), shown by `config` and masked.
PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "https_proxy",
    "http_proxy",
    "all_proxy",
)
# Settings that are URLs (a password or token may be inside), besides the secret ones.
URL_SETTINGS = (
    "peopleforce_base_url",
    "jira_base_url",
    "database_url",
    "prefect_api_url",
    "seq_url",
    "sandbox_webhook_url",
)
# URLs Prefect reads from the environment itself (its server's database on PostgreSQL).
PREFECT_URL_VARIABLES = (
    "PREFECT_API_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
)


def is_secret_query_name(name: str) -> bool:
    """Whether a query parameter of this name carries a credential (Jira's `nextPageToken`, a
    pagination cursor, does not)."""
    normalized = re.sub(r"[-_.]", "", unquote(name).lower())
    if normalized.endswith("pagetoken"):
        return False
    return any(normalized.endswith(secret) for secret in SECRET_QUERY_NAMES)


def mask_url(url: str | object) -> str:
    """How a URL is shown anywhere (`config`, `doctor`, banners, log lines): the user is kept,
    the password and the values of credential query parameters (`?password=`, `?token=` ...)
    become `********`. Anything else is returned as it is, also text that is no URL."""
    text = str(url)
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        has_password = parts.password is not None
    except ValueError:  # unparseable (a broken IPv6 bracket): show nothing that may be a secret
        return text.split("://", 1)[0] + "://" + MASK
    netloc = parts.netloc
    if has_password:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = query.split("&")
        query = "&".join(
            f"{pair.split('=', 1)[0]}={MASK}"
            if "=" in pair and is_secret_query_name(pair.split("=", 1)[0])
            else pair
            for pair in pairs
        )
    if netloc == parts.netloc and query == parts.query:
        return text
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str | object | None) -> list[str]:
    """The secrets inside a URL (its password, the credential query values), as written and
    decoded: what the log redaction registers so that they are masked wherever they travel."""
    if url is None or "://" not in str(url):
        return []
    try:
        parts = urlsplit(str(url))
        values = [parts.password or ""]
    except ValueError:
        return []
    values += [
        value
        for name, value in parse_qsl(parts.query, keep_blank_values=False)
        if is_secret_query_name(name)
    ]
    values += [
        pair.split("=", 1)[1]
        for pair in parts.query.split("&")
        if "=" in pair and is_secret_query_name(pair.split("=", 1)[0])
    ]
    values += [unquote(value) for value in values]
    return list(dict.fromkeys(value for value in values if value))


def environment_proxies(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The proxies set in the environment, by variable."""
    environ = dict(os.environ) if environ is None else environ
    return {name: environ[name] for name in PROXY_VARIABLES if environ.get(name)}


class SettingsError(Exception):
    """A setting is missing or invalid; the text names the variable and what is wrong."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        validate_default=True,
    )

    # PeopleForce
    peopleforce_base_url: AnyHttpUrl = AnyHttpUrl("https://app.peopleforce.io/api/public/v3")
    peopleforce_api_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    allow_unsigned_webhooks: bool = False

    # Jira: the site URL for classic tokens, or a cloud id for scoped tokens (api.atlassian.com form)
    jira_base_url: AnyHttpUrl | None = None
    jira_cloud_id: str | None = Field(None, pattern=r"^[0-9a-fA-F-]{8,}$")
    jira_email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+$")
    jira_api_token: SecretStr | None = None
    # The rate governor (core/jira/pace.py), shared by every flow run and worker of the
    # deployment through the store: requests a second to one Jira endpoint, by method (Jira's
    # burst limits: GET/POST 100/s, PUT/DELETE 50/s per endpoint, as third parties transcribe
    # them; 0: not paced), a bucket holding this many seconds of it, and at most `writes` writes
    # to one issue within any `seconds` (Jira: 20 in 2 s, 100 in 30 s), as JSON pairs.
    jira_rate_get: float = Field(80.0, ge=0, le=10_000)
    jira_rate_post: float = Field(80.0, ge=0, le=10_000)
    jira_rate_put: float = Field(40.0, ge=0, le=10_000)
    jira_rate_delete: float = Field(40.0, ge=0, le=10_000)
    jira_rate_burst_seconds: float = Field(0.5, gt=0, le=60)
    jira_issue_write_windows: list[tuple[int, float]] = Field(
        default=[(15, 2.0), (80, 30.0)],
        description="Per-issue write pacing: [[writes, seconds], ...] (JSON).",
    )

    # Storage, Prefect, rules
    data_dir: Path = Path("data")
    database_url: str | None = None
    prefect_api_url: AnyHttpUrl | None = None
    rules_file: Path = Path("rules.example.toml")
    # How many employees one flow run works on at once (bounded by Jira's rate limits).
    employee_concurrency: int = Field(10, ge=1, le=100)

    # Gateway and the one-host stack (`pf-jira-sync up`)
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8700, ge=1, le=65535)
    prefect_server_port: int = Field(4200, ge=1, le=65535)
    # Flow runs the served deployments run at once (each is a process of its own).
    serve_limit: int = Field(4, ge=1, le=64)
    # How often the served deployments ask the Prefect server for runs to start: on average
    # half of it is a webhook's wait for its run to be taken. Each poll costs the one-host
    # Prefect server about 12 ms of CPU (measured): 0.25 s, about 3 CPU-s a minute.
    serve_poll_seconds: float = Field(0.25, gt=0, le=60)
    # Most employees one dispatched flow run carries; a burst beyond it is split across runs.
    dispatch_batch_max: int = Field(200, ge=1, le=5000)
    # Dispatched routine runs (field updates) not yet finished before new routine events wait
    # for them (and then go together); urgent runs have a lane of their own (below).
    dispatch_max_in_flight: int = Field(3, ge=1, le=64)
    # A run started less than this many seconds ago holds back the next (0: never). One large
    # run at a time suits one host; with several workers, lower it so runs go side by side.
    dispatch_run_alone_seconds: float = Field(15.0, ge=0, le=600)
    # Urgent runs (joiners and leavers: a hire, a first day, a termination or its revert) go
    # in a lane of their own: claimed before any field update, each in runs of their own, up to
    # this many at once beside DISPATCH_MAX_IN_FLIGHT routine runs, whatever holds those back.
    # On one host keep DISPATCH_MAX_IN_FLIGHT + this <= SERVE_LIMIT, so that the backlog never
    # takes the runner slots they need (`up` warns otherwise).
    dispatch_urgent_max_in_flight: int = Field(
        1,
        ge=1,
        le=64,
        description="Urgent flow runs (joiners and leavers) in flight beside the routine ones.",
    )
    # A routine webhook run (field updates, a reorg's backlog) lowers its own process's CPU
    # priority by this much (`nice`), so that on a busy host a hire's run, starting beside it,
    # gets the CPU first; the backlog takes what is left. 0 leaves every run as it is.
    routine_run_niceness: int = Field(10, ge=0, le=19)
    # Recovery (README, "When processes die"). Every call the dispatcher makes to Prefect is
    # bounded by this many seconds, so a hung server never stalls it; past a failure it says
    # "cannot reach Prefect" (within 30 s, then every minute) and again when Prefect is back.
    dispatch_prefect_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=120,
        description="Seconds any one call of the dispatcher to the Prefect API may take.",
    )
    # Events a dispatcher is handing to Prefect are claimed for it this long: a dispatcher that
    # died meanwhile leaves them to the next (another gateway on the store, or itself restarted).
    # Longer than a call may take (DISPATCH_PREFECT_TIMEOUT_SECONDS), short enough to be quick.
    dispatch_claim_seconds: float = Field(
        30.0,
        ge=5,
        le=3600,
        description="Seconds a dispatcher's claim on the events it is dispatching lasts.",
    )
    # A dispatched run still Pending (its runner died while starting it) this long, or still
    # Scheduled (no runner or worker took it) this long, is marked Crashed and worked again.
    dispatch_pending_orphan_seconds: float = Field(
        90.0,
        ge=10,
        le=86_400,
        description="Seconds a dispatched run may stay Pending before it is marked Crashed.",
    )
    dispatch_scheduled_orphan_seconds: float = Field(
        1800.0,
        ge=60,
        le=7 * 86_400,
        description="Seconds a dispatched run may stay Scheduled before it is marked Crashed.",
    )
    # A run that crashed, or failed for a cause that passes, sends its events back to work, at
    # most this many runs in all, waiting DISPATCH_RETRY_DELAY_SECONDS after the first, four
    # times longer after each next (at most an hour); an event still failing then, or failing
    # for a cause that retrying cannot change (Jira refused a field), ends `failed`.
    dispatch_max_attempts: int = Field(
        5,
        ge=1,
        le=100,
        description="Flow runs an event gets before it ends failed.",
    )
    dispatch_retry_delay_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Seconds before an event of a crashed or failed run is worked again.",
    )
    # Flow runs heartbeat this often (Prefect's PREFECT_FLOWS_HEARTBEAT_FREQUENCY, at least 30)
    # and a Prefect automation marks a running run Crashed after FLOW_SILENT_CRASH_SECONDS
    # without any sign of it (deployments/alerts.py: a process killed, a host gone).
    flow_heartbeat_seconds: int = Field(
        30,
        ge=30,
        le=3600,
        description="Seconds between the heartbeats of the flow runs this service starts.",
    )
    flow_silent_crash_seconds: int = Field(
        90,
        ge=35,
        le=86_400,
        description="Seconds without a heartbeat before a running flow run is marked Crashed.",
    )

    # Gateway bounds (README, "Security"). A client that has not sent a whole request head
    # (request line and headers) this many seconds after it connected or began the request is
    # cut off (408), and so is one whose body has not all arrived this many seconds after its
    # head; an idle keep-alive connection is closed after GATEWAY_KEEP_ALIVE_SECONDS.
    gateway_header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    gateway_body_timeout_seconds: float = Field(30.0, gt=0, le=600)
    gateway_keep_alive_seconds: int = Field(5, ge=1, le=300)
    # Connections open at once; a request beyond it is answered 503 (uvicorn's limit).
    gateway_max_connections: int = Field(200, ge=2, le=100_000)
    # A client refused this many times (400, 401, 408, 413, 422) within the window is answered
    # 429 with Retry-After, before its request is read, until the window lets it in (0: off).
    gateway_reject_limit: int = Field(20, ge=0, le=1_000_000)
    gateway_reject_window_seconds: float = Field(60.0, gt=0, le=86_400)
    # Refusals are logged counted: the first, then one line per this many, with the counts.
    gateway_reject_log_every: int = Field(100, ge=1, le=1_000_000)
    # Proxies whose X-Forwarded-For names the client (uvicorn's FORWARDED_ALLOW_IPS: addresses
    # or networks, comma-separated): behind a tunnel, its address, so that clients are told apart.
    gateway_forwarded_allow_ips: str = "127.0.0.1,::1"

    # Inbox retention: events done or ignored are removed this many days after they were
    # last changed, by the `prune-inbox/scheduled` deployment at INBOX_PRUNE_CRON (in UTC).
    # Pending, dispatched and failed events are never removed.
    inbox_retention_days: int = Field(30, ge=1, le=36_500)
    inbox_prune_cron: str = "15 3 * * *"

    # Scale-out: the Prefect work pool of `pf-jira-sync deploy` and `pf-jira-sync worker`
    work_pool: str = Field("pf-jira-sync", min_length=1, max_length=100)
    # Flow runs one worker runs at once (each is a process of its own).
    worker_limit: int = Field(4, ge=1, le=64)

    # Reconciliation: the `reconcile` flow, its deployment and `pf-jira-sync reconcile`
    # When the scheduled run starts (cron in RECONCILE_TIMEZONE): after PeopleForce's 01:00 UTC batch.
    reconcile_cron: str = "30 1 * * *"
    reconcile_timezone: str = "UTC"
    # PeopleForce pages, full records and Jira searches read at once.
    reconcile_read_concurrency: int = Field(10, ge=1, le=50)
    # People changed in PeopleForce within this many days are read in full: a future termination
    # and custom fields are only on the full record (`--full` reads everyone's).
    reconcile_lookback_days: int = Field(7, ge=1, le=365)
    # Safeguard: a run that would touch more than this share of the employees, or create more
    # offboardings than this, stops before applying anything (unless forced).
    safeguard_max_share: float = Field(0.2, gt=0, le=1)
    safeguard_max_offboard: int = Field(10, ge=0)

    # Circuit breaker: the webhook path's safeguard (README, "Circuit breaker"). Employees whose
    # webhook work would create an offboarding, or an onboarding or employee record, are
    # counted over the last BREAKER_WINDOW_SECONDS across all runs; the one past a limit trips
    # the breaker and is held, and so is every such work after it until an operator releases
    # or drops what is held (0: that count is off). The defaults sit far above a real day's
    # webhooks (a company of thousands has a few leavers a day; a Monday of hires is tens,
    # spread over the nightly batch) and far below a bulk edit or a bad batch (hundreds in
    # minutes); twice the reconciliation's SAFEGUARD_MAX_OFFBOARD, since these are changes
    # PeopleForce announced one by one.
    breaker_max_offboard: int = Field(
        20,
        ge=0,
        le=1_000_000,
        description="Offboardings the webhook path creates per window before it holds (0: off).",
    )
    breaker_max_create: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="Onboardings and records the webhook path creates per window (0: off).",
    )
    breaker_window_seconds: float = Field(
        600.0,
        ge=10,
        le=7 * 86_400,
        description="The circuit breaker's sliding window, in seconds.",
    )

    # Logging
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    seq_url: AnyHttpUrl | None = None
    seq_api_key: SecretStr | None = None
    # Alerts: a Prefect automation posts every failed or crashed run of the deployments here (a
    # Slack or Teams incoming webhook, or any URL); a secret, since such URLs are credentials.
    alert_webhook_url: SecretStr | None = None

    # Local simulators (`pf-jira-sync sandbox`)
    sandbox_host: str = "127.0.0.1"
    sandbox_peopleforce_port: int = Field(8701, ge=1, le=65535)
    sandbox_jira_port: int = Field(8702, ge=1, le=65535)
    sandbox_webhook_url: AnyHttpUrl | None = None
    # The Jira simulator enforces Jira's burst and per-issue limits (sandbox/jira_limits.py:
    # GET/POST 100/s, PUT/DELETE 50/s per endpoint, 20 writes to one issue in 2 s, 100 in 30 s)
    # and answers 429 past them. Off for a first look at `up --sandbox`; the benchmarks turn
    # it on (bench/stack_throughput.py).
    sandbox_jira_rate_limits: bool = False

    @field_validator("jira_issue_write_windows")
    @classmethod
    def _whole_windows(cls, value: list[tuple[int, float]]) -> list[tuple[int, float]]:
        if any(writes < 1 or seconds <= 0 for writes, seconds in value):
            raise ValueError("each window is [writes (at least 1), seconds (more than 0)]")
        return value

    @field_validator(
        "peopleforce_api_key",
        "webhook_secret",
        "jira_api_token",
        "seq_api_key",
        "alert_webhook_url",
    )
    @classmethod
    def _refuse_placeholders(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value().strip()
        if not text:
            return None
        if text.lower() in PLACEHOLDER_SECRETS:
            raise ValueError("is a placeholder; set the real value or leave it unset")
        return SecretStr(text)

    @field_validator("reconcile_cron", "inbox_prune_cron")
    @classmethod
    def _five_cron_fields(cls, value: str) -> str:
        # Prefect checks the expression itself when the deployment is created.
        if len(value.split()) != 5:
            raise ValueError(
                f"{value!r} is not a cron expression of five fields (minute hour day month "
                "weekday), e.g. '30 1 * * *'"
            )
        return " ".join(value.split())

    @field_validator("reconcile_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as UTC") from None
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _alert_url_is_http(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().lower().startswith(
            ("http://", "https://")
        ):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _recovery_bounds_fit(self) -> Settings:
        # A run is crashed after this silence: shorter than two heartbeats (and a margin for a
        # late one), it would crash runs that are alive.
        least = 2 * self.flow_heartbeat_seconds + 15
        if self.flow_silent_crash_seconds < least:
            raise ValueError(
                f"FLOW_SILENT_CRASH_SECONDS ({self.flow_silent_crash_seconds}) must be at least "
                f"two heartbeats and 15 s ({least}, with FLOW_HEARTBEAT_SECONDS="
                f"{self.flow_heartbeat_seconds}): a shorter silence crashes live runs"
            )
        # A claim that ends before the call it covers lets another dispatcher send the same
        # batch meanwhile: harmless (the same key, the same run), but wasted.
        if self.dispatch_claim_seconds <= 2 * self.dispatch_prefect_timeout_seconds:
            raise ValueError(
                f"DISPATCH_CLAIM_SECONDS ({self.dispatch_claim_seconds:g}) must be more than "
                f"twice DISPATCH_PREFECT_TIMEOUT_SECONDS ({self.dispatch_prefect_timeout_seconds:g})"
                ": a claim must outlast the calls it covers"
            )
        return self

    @property
    def jira_api_base(self) -> str | None:
        """Where Jira's REST paths start: the cloud-id gateway when a cloud id is set, else the site."""
        if self.jira_cloud_id:
            return f"https://api.atlassian.com/ex/jira/{self.jira_cloud_id}"
        return str(self.jira_base_url).rstrip("/") if self.jira_base_url else None

    @property
    def effective_database_url(self) -> str:
        return (
            self.database_url
            or f"sqlite+aiosqlite:///{(self.data_dir / 'pf-jira-sync.db').resolve()}"
        )

    def require(self, *names: str) -> None:
        """Fail with one line per missing setting that this command needs."""
        missing = [name for name in names if getattr(self, name) in (None, "")]
        if missing:
            raise SettingsError(
                "; ".join(f"{name.upper()} is not set (see .env.example)" for name in missing)
            )

    def masked(self) -> dict[str, Any]:
        """The effective settings for display: secrets shown only as set or unset, the
        passwords and tokens inside URLs masked (`mask_url`); the environment's proxies too."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            shown[name.upper()] = "" if value is None else mask_url(value)
        shown["JIRA_API_BASE (derived)"] = mask_url(self.jira_api_base or "")
        shown["DATABASE_URL (effective)"] = mask_url(self.effective_database_url)
        for name, value in environment_proxies().items():
            shown[f"{name} (environment)"] = mask_url(value)
        return shown

    def url_secrets(self) -> list[str]:
        """The secrets inside the URL settings, the environment's proxies and Prefect's URLs."""
        urls: list[object] = [getattr(self, name) for name in URL_SETTINGS]
        urls += environment_proxies().values()
        urls += [os.environ.get(name) for name in PREFECT_URL_VARIABLES]
        return [value for url in urls for value in url_secrets(url)]


def describe_validation_error(error: ValidationError) -> str:
    """One line: each offending variable by its environment name and what is wrong with it."""
    parts = []
    for item in error.errors():
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        parts.append(f"{name}: {item['msg'].removeprefix('Value error, ')}")
    return "invalid settings: " + "; ".join(parts)


@cache
def get_settings() -> Settings:
    """The settings, read once per process. Raises `SettingsError` with a one-line reason."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
