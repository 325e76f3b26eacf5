"""Jira rate governor: one token bucket per endpoint class, shared by every run.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

`jira_rate_bucket`: per endpoint class (`PUT issue/{issueIdOrKey}`), the tokens it held at `at`
and until when it is paused or slowed, in seconds since the epoch (`core.store.pace`).

Written by hand, frozen: later model changes get a new revision, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jira_rate_bucket",
        sa.Column("endpoint_class", sa.String(length=200), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("paused_until", sa.Float(), server_default="0", nullable=False),
        sa.Column("slowed_until", sa.Float(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("endpoint_class", name="pk_jira_rate_bucket"),
    )


def downgrade() -> None:
    op.drop_table("jira_rate_bucket")
