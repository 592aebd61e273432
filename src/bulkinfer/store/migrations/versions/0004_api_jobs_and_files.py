"""Jobs of every API: which API made a job (``api``), what that API keeps beside Bedrock's fields
(``details``) and the job's tokens (``input_tokens``, ``output_tokens``, which OpenAI's ``usage`` shows);
and the files uploaded through the OpenAI Files API.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    # (A database adopted from before migrations got today's tables from create_all: they are there.)
    columns = {c["name"] for c in sa.inspect(conn).get_columns("batch_jobs")}
    if "api" not in columns:
        op.add_column("batch_jobs", sa.Column("api", sa.String(16), nullable=False, server_default="bedrock"))
    if "details" not in columns:
        op.add_column("batch_jobs", sa.Column("details", sa.Text(), nullable=True))
    for tokens in ("input_tokens", "output_tokens"):
        if tokens not in columns:
            op.add_column("batch_jobs", sa.Column(tokens, sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_batch_jobs_tenant_api", "batch_jobs", ["tenant", "api", "submit_time"], if_not_exists=True
    )
    if not sa.inspect(conn).has_table("files"):
        op.create_table(
            "files",
            sa.Column("file_id", sa.String(64), primary_key=True),
            sa.Column("tenant", sa.String(128), nullable=False),
            sa.Column("filename", sa.Text(), nullable=False),
            sa.Column("purpose", sa.String(32), nullable=False),
            sa.Column("bytes", sa.BigInteger(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("expires_at", sa.Float(), nullable=True),
            sa.Column("uri", sa.Text(), nullable=False),
        )
    op.create_index("ix_files_expires_at", "files", ["expires_at"], if_not_exists=True)
    op.create_index("ix_files_tenant_created", "files", ["tenant", "created_at"], if_not_exists=True)


def downgrade() -> None:
    op.drop_table("files")
    op.drop_index("ix_batch_jobs_tenant_api", table_name="batch_jobs")
    with op.batch_alter_table("batch_jobs") as batch:
        batch.drop_column("details")
        batch.drop_column("input_tokens")
        batch.drop_column("output_tokens")
        batch.drop_column("api")
