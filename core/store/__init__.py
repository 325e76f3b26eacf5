"""The mapping store: per employee, the Jira work this service created, and an audit of every Jira effect.

The same database holds the gateway's webhook inbox (`WebhookEvent`, `InboxRepository`), the
employee leases (`Leases`), the write-ahead records of Jira writes in doubt (`Intents`) and the
webhook path's circuit breaker (`CircuitBreaker`) and the Jira rate governor's buckets
(`StoreTokens`).

SQLite by default, PostgreSQL through the same database URL setting; the schema is versioned
with Alembic and upgraded in place when the store is opened.
"""

from core.lifecycle import ALLOWED_TRANSITIONS, Lifecycle, LifecycleError, LinkChange
from core.store.breaker import (
    Admission,
    BreakerHold,
    BreakerState,
    BreakerWrite,
    CircuitBreaker,
    HoldsEnded,
    Limits,
)
from core.store.inbox import (
    EventStatus,
    InboxRepository,
    Requeued,
    Settled,
    WebhookEvent,
    WorkResult,
    employee_story,
    event_ref,
    parse_ref,
)
from core.store.intents import Intents, JiraIntent
from core.store.lease import EmployeeLease, Leases, LeaseTimeout
from core.store.migrate import current_revision, downgrade, head_revision, migrate
from core.store.models import EffectAction, EmployeeLink, JiraEffect, snapshot_hash
from core.store.pace import JiraRateBucket, StoreTokens
from core.store.repository import (
    MappingStore,
    UnsupportedDatabase,
    normalize_email,
    previous_link,
)

__all__ = [
    "ALLOWED_TRANSITIONS",
    "Admission",
    "BreakerHold",
    "BreakerState",
    "BreakerWrite",
    "CircuitBreaker",
    "EffectAction",
    "EmployeeLease",
    "EmployeeLink",
    "EventStatus",
    "HoldsEnded",
    "InboxRepository",
    "Intents",
    "JiraEffect",
    "JiraIntent",
    "JiraRateBucket",
    "LeaseTimeout",
    "Leases",
    "Lifecycle",
    "LifecycleError",
    "Limits",
    "LinkChange",
    "MappingStore",
    "Requeued",
    "Settled",
    "StoreTokens",
    "UnsupportedDatabase",
    "WebhookEvent",
    "WorkResult",
    "current_revision",
    "downgrade",
    "employee_story",
    "event_ref",
    "head_revision",
    "migrate",
    "normalize_email",
    "parse_ref",
    "previous_link",
    "snapshot_hash",
]
