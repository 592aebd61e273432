"""One job per (tenant, clientRequestToken), enforced by the database, so concurrent creates with one
token make one job. Duplicates made before (check-then-insert raced) keep their oldest job's token.
And each job's deadline as a column (``expires_at``), so the scheduler finds the next one with an index
instead of reading every waiting job's request.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT_TIMEOUT_HOURS = 24  # Bedrock's, as the scheduler applies it


def upgrade() -> None:
    # Forget the token on every job but the first of its (tenant, token) pair: the first is the one a
    # retried create has been answered with (the lookup returned the oldest row).
    op.execute(
        """
        UPDATE batch_jobs SET client_token = NULL
        WHERE client_token IS NOT NULL AND EXISTS (
            SELECT 1 FROM batch_jobs AS first
            WHERE first.tenant = batch_jobs.tenant AND first.client_token = batch_jobs.client_token
              AND (first.submit_time < batch_jobs.submit_time
                   OR (first.submit_time = batch_jobs.submit_time AND first.job_id < batch_jobs.job_id))
        )
        """
    )
    # (A database adopted from before migrations got today's tables from create_all: the old index is
    # not there and the new one already is.)
    op.drop_index("ix_batch_jobs_client_token", table_name="batch_jobs", if_exists=True)
    op.create_index(
        "uq_batch_jobs_tenant_token",
        "batch_jobs",
        ["tenant", "client_token"],
        unique=True,
        if_not_exists=True,
    )

    conn = op.get_bind()
    if "expires_at" not in {column["name"] for column in sa.inspect(conn).get_columns("batch_jobs")}:
        op.add_column("batch_jobs", sa.Column("expires_at", sa.Float(), nullable=True))
    op.create_index("ix_batch_jobs_expires_at", "batch_jobs", ["expires_at"], if_not_exists=True)
    jobs = sa.table(
        "batch_jobs",
        sa.column("job_id", sa.String),
        sa.column("submit_time", sa.Float),
        sa.column("request", sa.Text),
        sa.column("expires_at", sa.Float),
    )
    rows = conn.execute(sa.select(jobs.c.job_id, jobs.c.submit_time, jobs.c.request)).all()
    for job_id, submitted, request in rows:
        hours = json.loads(request).get("timeoutDurationInHours") or DEFAULT_TIMEOUT_HOURS
        conn.execute(jobs.update().where(jobs.c.job_id == job_id).values(expires_at=submitted + hours * 3600))


def downgrade() -> None:
    with op.batch_alter_table("batch_jobs") as batch:
        batch.drop_index("ix_batch_jobs_expires_at")
        batch.drop_column("expires_at")
    op.drop_index("uq_batch_jobs_tenant_token", table_name="batch_jobs")
    op.create_index("ix_batch_jobs_client_token", "batch_jobs", ["client_token"])
