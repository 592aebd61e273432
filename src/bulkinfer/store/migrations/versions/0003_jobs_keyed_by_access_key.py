"""Jobs made before tenants: marked, so that once, at the first start with tenants, those stored under
an access key id (each key was its own tenant) join the tenant that key now belongs to, and no job made
later under a name that happens to be a key id is ever moved.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    # (A database adopted from before migrations got today's tables from create_all: the column is there.)
    if "keyed_by_access_key" not in {c["name"] for c in sa.inspect(conn).get_columns("batch_jobs")}:
        op.add_column(
            "batch_jobs",
            sa.Column("keyed_by_access_key", sa.Boolean(), nullable=False, server_default=sa.false()),
        )
    op.execute(sa.text("UPDATE batch_jobs SET keyed_by_access_key = :yes").bindparams(yes=True))


def downgrade() -> None:
    with op.batch_alter_table("batch_jobs") as batch:
        batch.drop_column("keyed_by_access_key")
