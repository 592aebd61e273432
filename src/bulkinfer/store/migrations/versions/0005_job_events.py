"""The job timeline: one row per change of a service job, with its time and reason.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # (A database adopted from before migrations got today's tables from create_all: they are there.)
    if not sa.inspect(op.get_bind()).has_table("job_events"):
        op.create_table(
            "job_events",
            sa.Column(
                "seq",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            sa.Column("job_id", sa.String(64), nullable=False),
            sa.Column("tenant", sa.String(128), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.Column("name", sa.String(32), nullable=False),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
        )
    op.create_index("ix_job_events_job_seq", "job_events", ["job_id", "seq"], if_not_exists=True)


def downgrade() -> None:
    op.drop_table("job_events")
