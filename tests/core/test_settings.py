"""Settings: read once, refuse placeholders and bad values with one line, never show secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import (
    Settings,
    SettingsError,
    environment_proxies,
    get_settings,
    mask_url,
    url_secrets,
)
from tests.paths import ROOT

SETTING_NAMES = [name.upper() for name in Settings.model_fields]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No setting leaks in from the developer's shell or a .env file."""
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**base, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_defaults_need_no_environment(clean_env: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    assert str(settings.peopleforce_base_url) == "https://app.peopleforce.io/api/public/v3"
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.effective_database_url.endswith("/data/pf-jira-sync.db")
    assert settings.jira_api_base is None


def test_settings_are_read_once(clean_env: pytest.MonkeyPatch) -> None:
    first = get_settings()
    clean_env.setenv("LOG_LEVEL", "DEBUG")
    assert get_settings() is first


def test_dotenv_file_is_read(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("JIRA_EMAIL=bot@example.com\nJIRA_CLOUD_ID=\n")
    settings = get_settings()
    assert settings.jira_email == "bot@example.com"
    assert settings.jira_cloud_id is None  # empty means unset, not an invalid id


@pytest.mark.parametrize(
    ("site", "cloud_id", "expected"),
    [
        ("https://acme.atlassian.net/", None, "https://acme.atlassian.net"),
        (
            None,
            "11223344-a1b2-3b33-c444-def123456789",
            "https://api.atlassian.com/ex/jira/11223344-a1b2-3b33-c444-def123456789",
        ),
        (
            "https://acme.atlassian.net",
            "11223344-a1b2-3b33-c444-def123456789",
            "https://api.atlassian.com/ex/jira/11223344-a1b2-3b33-c444-def123456789",
        ),
    ],
)
def test_jira_api_base_picks_the_url_form(
    clean_env: pytest.MonkeyPatch, site: str | None, cloud_id: str | None, expected: str
) -> None:
    if site:
        clean_env.setenv("JIRA_BASE_URL", site)
    if cloud_id:
        clean_env.setenv("JIRA_CLOUD_ID", cloud_id)
    assert get_settings().jira_api_base == expected


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("PEOPLEFORCE_BASE_URL", "not a url", "PEOPLEFORCE_BASE_URL: Input should be a valid URL"),
        ("JIRA_API_TOKEN", "changeme", "JIRA_API_TOKEN: is a placeholder"),
        ("WEBHOOK_SECRET", "secret", "WEBHOOK_SECRET: is a placeholder"),
        ("JIRA_EMAIL", "not-an-email", "JIRA_EMAIL: String should match pattern"),
        (
            "SANDBOX_JIRA_PORT",
            "99999",
            "SANDBOX_JIRA_PORT: Input should be less than or equal to 65535",
        ),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL: Input should be"),
        (
            "ALLOW_UNSIGNED_WEBHOOKS",
            "perhaps",
            "ALLOW_UNSIGNED_WEBHOOKS: Input should be a valid boolean",
        ),
        # A silence shorter than two heartbeats would crash runs that are alive.
        (
            "FLOW_SILENT_CRASH_SECONDS",
            "60",
            "FLOW_SILENT_CRASH_SECONDS (60) must be at least two heartbeats and 15 s (75",
        ),
        ("FLOW_HEARTBEAT_SECONDS", "10", "FLOW_HEARTBEAT_SECONDS: Input should be greater than"),
        (
            "DISPATCH_CLAIM_SECONDS",
            "15",
            "DISPATCH_CLAIM_SECONDS (15) must be more than twice DISPATCH_PREFECT_TIMEOUT_SECONDS",
        ),
    ],
)
def test_invalid_setting_names_the_variable(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, complaint: str
) -> None:
    clean_env.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        get_settings()
    assert complaint in str(raised.value)
    assert "\n" not in str(raised.value)


def test_require_lists_each_missing_setting(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=r"JIRA_EMAIL is not set.*JIRA_API_TOKEN is not set"):
        get_settings().require("jira_email", "jira_api_token")


def test_secrets_never_show(clean_env: pytest.MonkeyPatch) -> None:
    secrets = {
        "PEOPLEFORCE_API_KEY": "pf-key-7f3a9c",
        "WEBHOOK_SECRET": "hook-secret-19d2",
        "JIRA_API_TOKEN": "ATATT3xFfGF0-token",
        "SEQ_API_KEY": "seq-key-0c41",
    }
    for name, value in secrets.items():
        clean_env.setenv(name, value)
    settings = get_settings()
    shown = f"{settings!r} {settings} {settings.masked()} {settings.model_dump()}"
    for value in secrets.values():
        assert value not in shown
    assert settings.masked()["JIRA_API_TOKEN"] == "**********"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+asyncpg://pfjs:s3cr%40t@db:5432/pf_jira_sync",
            "postgresql+asyncpg://pfjs:********@db:5432/pf_jira_sync",
        ),
        ("http://admin:p@ss:w0rd@prefect:4200/api", "http://admin:********@prefect:4200/api"),
        ("http://:only-a-password@proxy:3128", "http://:********@proxy:3128"),
        (
            "https://seq.example.com/?apiKey=k3y&level=info&X-Amz-Signature=abc",
            "https://seq.example.com/?apiKey=********&level=info&X-Amz-Signature=********",
        ),
        (
            "postgresql://db/x?sslpassword=pw&access_token=t&password=p",
            "postgresql://db/x?sslpassword=********&access_token=********&password=********",
        ),
        # Nothing to mask: returned as it is (a user alone, a cursor, a path, no URL at all).
        ("http://user@proxy:3128", "http://user@proxy:3128"),
        (
            "https://x.atlassian.net/rest?nextPageToken=c42",
            "https://x.atlassian.net/rest?nextPageToken=c42",
        ),
        (
            "sqlite+aiosqlite:////srv/data/pf-jira-sync.db",
            "sqlite+aiosqlite:////srv/data/pf-jira-sync.db",
        ),
        ("30 1 * * *", "30 1 * * *"),
        ("http://[broken/x", "http://********"),
    ],
)
def test_mask_url_keeps_the_user_and_masks_passwords_and_tokens(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_url_secrets_are_found_as_written_and_decoded() -> None:
    found = url_secrets("postgresql://pfjs:s3cr%40t@db/x?token=a%2Fb&page=2")
    assert set(found) == {"s3cr%40t", "s3cr@t", "a%2Fb", "a/b"}
    assert url_secrets("http://user@host/x?page=2") == []
    assert url_secrets(None) == []


def test_environment_proxies_are_read_from_the_environment() -> None:
    proxies = environment_proxies({"HTTPS_PROXY": "http://u:p4ss@proxy:3128", "PATH": "/bin"})
    assert proxies == {"HTTPS_PROXY": "http://u:p4ss@proxy:3128"}
    assert mask_url(proxies["HTTPS_PROXY"]) == "http://u:********@proxy:3128"


def test_masked_settings_hide_the_passwords_inside_urls(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", "postgresql+asyncpg://pfjs:db-pw-31@db:5432/pf_jira_sync")
    clean_env.setenv("PREFECT_API_URL", "http://admin:prefect-pw-32@prefect:4200/api")
    clean_env.setenv("SEQ_URL", "http://seq:seq-pw-33@seq:5341/?token=seq-token-34")
    clean_env.setenv("HTTPS_PROXY", "http://proxy:proxy-pw-35@proxy:3128")
    shown = get_settings().masked()
    text = str(shown)
    for secret in ("db-pw-31", "prefect-pw-32", "seq-pw-33", "seq-token-34", "proxy-pw-35"):
        assert secret not in text
    assert shown["DATABASE_URL"] == "postgresql+asyncpg://pfjs:********@db:5432/pf_jira_sync"
    assert shown["DATABASE_URL (effective)"] == shown["DATABASE_URL"]
    assert shown["PREFECT_API_URL"] == "http://admin:********@prefect:4200/api"
    assert shown["SEQ_URL"] == "http://seq:********@seq:5341/?token=********"
    assert shown["HTTPS_PROXY (environment)"] == "http://proxy:********@proxy:3128"


def test_config_command_masks_secrets(tmp_path: Path) -> None:
    result = run_cli(
        "config",
        env={"JIRA_API_TOKEN": "ATATT3xFfGF0-token", "JIRA_EMAIL": "bot@example.com"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "ATATT3xFfGF0-token" not in result.stdout + result.stderr
    assert "JIRA_API_TOKEN" in result.stdout
    assert "bot@example.com" in result.stdout


def test_bad_setting_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    result = run_cli("config", env={"JIRA_API_TOKEN": "changeme"}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: invalid settings: JIRA_API_TOKEN: is a placeholder; set the real value or leave it unset"
    ]
    assert "Traceback" not in result.stderr
