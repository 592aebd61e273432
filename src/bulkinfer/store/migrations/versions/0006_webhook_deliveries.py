"""The webhook outbox: one row per webhook request to send, with its attempts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # (A database adopted from before migrations got today's tables from create_all: they are there.)
    if not sa.inspect(op.get_bind()).has_table("webhook_deliveries"):
        op.create_table(
            "webhook_deliveries",
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            sa.Column("webhook_id", sa.String(64), nullable=False),
            sa.Column("job_id", sa.String(64), nullable=False),
            sa.Column("tenant", sa.String(128), nullable=True),
            sa.Column("url", sa.Text(), nullable=False),
            sa.Column("guarded", sa.Boolean(), nullable=False),
            sa.Column("payload", sa.Text(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", sa.Float(), nullable=True),
            sa.Column("delivered_at", sa.Float(), nullable=True),
            sa.Column("given_up", sa.Boolean(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=True),
        )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"], if_not_exists=True
    )
    op.create_index("ix_webhook_deliveries_job", "webhook_deliveries", ["job_id"], if_not_exists=True)


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
