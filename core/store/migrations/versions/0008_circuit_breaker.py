"""Circuit breaker: the webhook path's admitted creates per window, and the work it holds.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08

`breaker_write`: one row per employee and count (offboarding, creation) admitted on the webhook
path, what the sliding window counts. `breaker_hold`: one row per employee whose work the
breaker held, open until an operator releases or drops it (`core.store.breaker`).

Written by hand, frozen: later model changes get a new revision, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "breaker_write",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("employee_id", sa.Integer(), nullable=False),
        sa.Column("counted_as", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("released", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_breaker_write"),
    )
    op.create_index("ix_breaker_write_employee_id", "breaker_write", ["employee_id"])
    op.create_index("ix_breaker_write_counted_as_at", "breaker_write", ["counted_as", "at"])
    op.create_table(
        "breaker_hold",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("employee_id", sa.Integer(), nullable=False),
        sa.Column("who", sa.String(), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("tripped_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_how", sa.String(length=16), nullable=True),
        sa.Column("grant_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_breaker_hold"),
    )
    op.create_index("ix_breaker_hold_employee_id", "breaker_hold", ["employee_id"])


def downgrade() -> None:
    op.drop_index("ix_breaker_hold_employee_id", table_name="breaker_hold")
    op.drop_table("breaker_hold")
    op.drop_index("ix_breaker_write_counted_as_at", table_name="breaker_write")
    op.drop_index("ix_breaker_write_employee_id", table_name="breaker_write")
    op.drop_table("breaker_write")
