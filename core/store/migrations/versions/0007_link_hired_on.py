"""Employee link: the hire date the onboarding issue was made for.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

A moved hire date re-plans the onboarding (due date, summary), and a hire deleted in
PeopleForce before day one is withdrawn: both need the date the onboarding was planned for,
the way `termination_on` keeps the offboarding's. NULL for links made before this revision.

Written by hand, frozen: later model changes get a new revision, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("employee_link", sa.Column("hired_on", sa.Date(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Not a batch rebuild: `jira_effect` refers to this table, and SQLite with foreign keys
        # on refuses to drop it. SQLite drops a plain column in place (3.35+).
        op.execute("ALTER TABLE employee_link DROP COLUMN hired_on")
    else:
        op.drop_column("employee_link", "hired_on")
