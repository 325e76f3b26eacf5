"""Webhook event: the gateway's inbox of accepted PeopleForce deliveries.

Revision ID: 0003
Revises: 0002
Create Date: 2026-05-10

Written by hand, frozen: later model changes get a new revision, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_event",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_key", sa.String(length=300), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("employee_id", sa.Integer(), nullable=True),
        # The EventStatus enum, stored as plain text (no database enum type or CHECK).
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("dispatch_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_event"),
        sa.UniqueConstraint("event_key", name="uq_webhook_event_event_key"),
    )
    op.create_index("ix_webhook_event_employee_id", "webhook_event", ["employee_id"])
    op.create_index(
        "ix_webhook_event_status_employee_id", "webhook_event", ["status", "employee_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_event_status_employee_id", table_name="webhook_event")
    op.drop_index("ix_webhook_event_employee_id", table_name="webhook_event")
    op.drop_table("webhook_event")
