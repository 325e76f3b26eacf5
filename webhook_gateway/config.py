"""What one gateway app runs with: its settings checked once, and what its builder plugged in.

`create_app` builds a `GatewayConfig` and keeps it as `app.state.config`; the lifespan and the
routes' dependencies read it from there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from core.settings import Settings
from webhook_gateway.errors import GatewayConfigError

# A readiness check fails by raising (or returning False); its function name names it.
ReadinessCheck = Callable[[], Awaitable[object]]
LifespanExtension = Callable[[FastAPI], AbstractAsyncContextManager[object]]


def setting_default(setting: str) -> Any:
    """The default of a `Settings` field: what a part built without settings (tests) runs with."""
    return Settings.model_fields[setting].default


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The inbox's database, the webhook secret (None: unsigned webhooks are accepted), the
    bounds the app keeps itself (`webhook_gateway.bounds`: the body deadline, the refusals
    that get a client limited and how they are logged) and the hooks `create_app` documents."""

    database_url: str
    secret: str | None
    on_stored: Callable[[], None] | None = None
    readiness_checks: Sequence[ReadinessCheck] = ()
    extra_lifespan: LifespanExtension | None = None
    body_timeout: float = setting_default("gateway_body_timeout_seconds")
    reject_limit: int = setting_default("gateway_reject_limit")
    reject_window: float = setting_default("gateway_reject_window_seconds")
    reject_log_every: int = setting_default("gateway_reject_log_every")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        store_url: str | None = None,
        on_stored: Callable[[], None] | None = None,
        readiness_checks: Sequence[ReadinessCheck] = (),
        extra_lifespan: LifespanExtension | None = None,
    ) -> GatewayConfig:
        """Raises `GatewayConfigError` when no webhook secret is set and unsigned webhooks are
        not explicitly allowed."""
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        if secret is None and not settings.allow_unsigned_webhooks:
            raise GatewayConfigError(
                "WEBHOOK_SECRET is not set: set it to the secret configured in PeopleForce "
                "(Settings -> Webhooks), or set ALLOW_UNSIGNED_WEBHOOKS=true on a closed test "
                "network"
            )
        return cls(
            database_url=store_url or settings.effective_database_url,
            secret=secret,
            on_stored=on_stored,
            readiness_checks=readiness_checks,
            extra_lifespan=extra_lifespan,
            body_timeout=settings.gateway_body_timeout_seconds,
            reject_limit=settings.gateway_reject_limit,
            reject_window=settings.gateway_reject_window_seconds,
            reject_log_every=settings.gateway_reject_log_every,
        )


def require_prefect_api_url(settings: Settings) -> str:
    """The Prefect API the gateway hands events to; refuses to go on without one, before
    serving (a Prefect client without a URL would silently start a temporary server)."""
    if not settings.prefect_api_url:
        raise GatewayConfigError(
            "PREFECT_API_URL is not set: the gateway hands events to Prefect at that URL "
            "(e.g. http://127.0.0.1:4200/api)"
        )
    return str(settings.prefect_api_url).rstrip("/")
