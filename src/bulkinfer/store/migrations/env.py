"""Alembic's entry point: migrate over the connection `bulkinfer.store.migrate` hands in.

There is no alembic.ini and no URL here: the application opens the database (with its own engine
settings, such as SQLite's WAL pragmas), begins a transaction and passes the connection in
``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from bulkinfer.store.schema import metadata

connection: Connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place; batch mode rewrites the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
