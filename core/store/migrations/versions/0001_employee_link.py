"""Employee link: one row per PeopleForce employee and the Jira work created for them.

Revision ID: 0001
Revises:
Create Date: 2026-05-09

Written by hand, frozen: later model changes get a new revision, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "employee_link",
        sa.Column("employee_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("email", sa.String(), nullable=True),
        sa.Column("display_name", sa.String(), nullable=True),
        sa.Column("jira_account_id", sa.String(), nullable=True),
        # The Lifecycle enum, stored as plain text (no database enum type or CHECK).
        sa.Column("lifecycle", sa.String(length=32), nullable=False),
        sa.Column("onboarding_issue_key", sa.String(), nullable=True),
        sa.Column("onboarding_subtask_keys", sa.JSON(), nullable=False),
        sa.Column("record_issue_key", sa.String(), nullable=True),
        sa.Column("offboarding_issue_key", sa.String(), nullable=True),
        sa.Column("offboarding_subtask_keys", sa.JSON(), nullable=False),
        sa.Column("termination_on", sa.Date(), nullable=True),
        sa.Column("previous_employee_id", sa.Integer(), nullable=True),
        sa.Column("synced_fields", sa.JSON(), nullable=False),
        sa.Column("synced_hash", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("employee_id", name="pk_employee_link"),
    )
    op.create_index("ix_employee_link_email", "employee_link", ["email"])


def downgrade() -> None:
    op.drop_index("ix_employee_link_email", table_name="employee_link")
    op.drop_table("employee_link")
