"""The tables as the code before migrations created them: jobs, chunks, batch_jobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
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
        "jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_uri", sa.Text(), nullable=False),
        sa.Column("output_uri", sa.Text(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float()),
        sa.Column("ended_at", sa.Float()),
        sa.Column("total_records", sa.Integer()),
    )
    op.create_table(
        "chunks",
        sa.Column("chunk_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("file_index", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("lines", sa.Text(), nullable=False),
        sa.Column("first_line", sa.Integer(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("success", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("error_codes", sa.Text(), nullable=False),
    )
    op.create_index("ix_chunks_job_id", "chunks", ["job_id"])
    op.create_table(
        "batch_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("model_id", sa.String(2048), nullable=False),
        sa.Column("client_token", sa.String(256)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("submit_time", sa.Float(), nullable=False),
        sa.Column("last_modified", sa.Float(), nullable=False),
        sa.Column("start_time", sa.Float()),
        sa.Column("end_time", sa.Float()),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(64)),
        sa.Column("lease_until", sa.Float()),
        sa.Column("total", sa.BigInteger()),
        sa.Column("processed", sa.BigInteger()),
        sa.Column("success", sa.BigInteger()),
        sa.Column("errors", sa.BigInteger()),
    )
    op.create_index("ix_batch_jobs_tenant", "batch_jobs", ["tenant"])
    op.create_index("ix_batch_jobs_client_token", "batch_jobs", ["client_token"])
    op.create_index("ix_batch_jobs_status", "batch_jobs", ["status"])


def downgrade() -> None:
    op.drop_table("batch_jobs")
    op.drop_table("chunks")
    op.drop_table("jobs")
