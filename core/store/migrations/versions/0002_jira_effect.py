"""Jira effect: the audit row written with every change this service makes in Jira.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-09

Written by hand, frozen: later model changes get a new revision, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jira_effect",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("employee_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("issue_key", sa.String(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jira_effect"),
        sa.ForeignKeyConstraint(
            ["employee_id"],
            ["employee_link.employee_id"],
            name="fk_jira_effect_employee_id_employee_link",
        ),
    )
    op.create_index("ix_jira_effect_employee_id", "jira_effect", ["employee_id"])
    op.create_index("ix_jira_effect_issue_key", "jira_effect", ["issue_key"])


def downgrade() -> None:
    op.drop_index("ix_jira_effect_issue_key", table_name="jira_effect")
    op.drop_index("ix_jira_effect_employee_id", table_name="jira_effect")
    op.drop_table("jira_effect")
