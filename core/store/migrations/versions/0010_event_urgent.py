"""Webhook event: whether it is a joiner's or a leaver's (the dispatcher's urgent lane).

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-07

Hires, first days, terminations and their reverts are dispatched before a backlog of field
updates. Most are known by their topic, but a future termination comes as `employee_update`
with its date, which only the body says: the gateway reads it once, as it stores the event,
and the dispatcher asks this column (indexed with the status) every round. Events stored
before this revision are urgent by their topic alone.

Number 0010: 0009 is taken by a revision made beside this one; whichever lands second revises
the other.

Written by hand, frozen: later model changes get a new revision, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JOINER_LEAVER_ACTIONS = (
    "employee_create",
    "employee_start",
    "employee_terminate",
    "employee_termination_revert",
)


def upgrade() -> None:
    op.add_column(
        "webhook_event",
        sa.Column("urgent", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    event = sa.table("webhook_event", sa.column("action", sa.String), sa.column("urgent"))
    op.execute(event.update().where(event.c.action.in_(JOINER_LEAVER_ACTIONS)).values(urgent=True))
    op.create_index("ix_webhook_event_status_urgent", "webhook_event", ["status", "urgent"])


def downgrade() -> None:
    op.drop_index("ix_webhook_event_status_urgent", table_name="webhook_event")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE webhook_event DROP COLUMN urgent")
    else:
        op.drop_column("webhook_event", "urgent")
