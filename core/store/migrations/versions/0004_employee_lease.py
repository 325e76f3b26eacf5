"""Employee lease: one run at a time per employee, across processes and workers.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Written by hand, frozen: later model changes get a new revision, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "employee_lease",
        sa.Column("employee_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("employee_id", name="pk_employee_lease"),
    )


def downgrade() -> None:
    op.drop_table("employee_lease")
