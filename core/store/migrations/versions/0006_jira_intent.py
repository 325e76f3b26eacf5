"""Jira intent: a write-ahead record of a Jira write that is not idempotent, until recorded.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

Written by hand, frozen: later model changes get a new revision, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jira_intent",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("employee_id", sa.Integer(), nullable=False),
        sa.Column("guard", sa.String(length=300), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("issue_key", sa.String(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jira_intent"),
    )
    op.create_index("ix_jira_intent_employee_id", "jira_intent", ["employee_id"])


def downgrade() -> None:
    op.drop_index("ix_jira_intent_employee_id", table_name="jira_intent")
    op.drop_table("jira_intent")
