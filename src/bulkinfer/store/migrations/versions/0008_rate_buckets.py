"""Rate buckets: one token bucket per model and limit kind, shared by the processes on one database.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # (A database adopted from before migrations got today's tables from create_all: they are there.)
    if not sa.inspect(op.get_bind()).has_table("rate_buckets"):
        op.create_table(
            "rate_buckets",
            sa.Column("model", sa.String(200), primary_key=True),
            sa.Column("kind", sa.String(16), primary_key=True),
            sa.Column("level", sa.Float(), nullable=False),
            sa.Column("stamp", sa.Float(), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("rate_buckets")
