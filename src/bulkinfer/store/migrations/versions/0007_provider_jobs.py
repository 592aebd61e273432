"""Provider batch jobs: one row per job a bulkinfer job runs as on a provider's batch API.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # (A database adopted from before migrations got today's tables from create_all: they are there.)
    if not sa.inspect(op.get_bind()).has_table("provider_jobs"):
        op.create_table(
            "provider_jobs",
            sa.Column("token", sa.String(64), primary_key=True),
            sa.Column("job_id", sa.String(64), nullable=False),
            sa.Column("model", sa.String(200), nullable=False),
            sa.Column("seq", sa.Integer(), nullable=False),
            sa.Column("attempt", sa.Integer(), nullable=False),
            sa.Column("keys", sa.Text(), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("provider_id", sa.Text(), nullable=True),
            sa.Column("provider_file", sa.Text(), nullable=True),
            sa.Column("provider_status", sa.String(32), nullable=True),
            sa.Column("total", sa.Integer(), nullable=False),
            sa.Column("done", sa.Integer(), nullable=False),
            sa.Column("failed", sa.Integer(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("heartbeat_at", sa.Float(), nullable=False),
            sa.Column("ended_at", sa.Float(), nullable=True),
            sa.Column("message", sa.Text(), nullable=True),
            sa.Column("cancelled", sa.Boolean(), nullable=False, server_default=sa.false()),
        )
    op.create_index("ix_provider_jobs_job", "provider_jobs", ["job_id", "seq"], if_not_exists=True)
    op.create_index("ix_provider_jobs_model_state", "provider_jobs", ["model", "state"], if_not_exists=True)


def downgrade() -> None:
    op.drop_table("provider_jobs")
