"""Webhook event: dispatch claims (several gateways on one store) and per-run attempts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Written by hand, frozen: later model changes get a new revision, never an edit here.

- `claimed_by`, `claim_expires_at`, `claim_token`: the dispatcher handing an event to Prefect,
  until when, and under which batch (the batch names the Prefect idempotency key, so a
  dispatcher taking over a dead one's batch gets the run the dead one created, if it did);
- `failed_runs`: flow runs that carried the event and ended without doing its work;
- `work_result`: what the flow recorded for the event's employee (done, retry, permanent).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_event") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("claim_token", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("failed_runs", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("work_result", sa.String(length=16), nullable=True))


def downgrade() -> None:
    # Events being dispatched go back to pending: the older dispatcher knows no claims.
    op.execute("UPDATE webhook_event SET status = 'pending' WHERE status = 'dispatching'")
    with op.batch_alter_table("webhook_event") as batch:
        batch.drop_column("work_result")
        batch.drop_column("failed_runs")
        batch.drop_column("claim_token")
        batch.drop_column("claim_expires_at")
        batch.drop_column("claimed_by")
