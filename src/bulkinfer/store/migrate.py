"""Bring a store's database to the newest schema revision before it is used.

The revisions are alembic scripts shipped in ``migrations/versions``; alembic runs them on the
application's own engine, so there is no alembic.ini. Every ``bulkinfer serve`` start and every
``bulkinfer run`` state file goes through `upgrade`, so a database already at `HEAD` is recognized
with two small queries and alembic (about 0.1 s to import) is never loaded for it.

A new revision: write ``versions/000N_<what>.py`` (``down_revision`` the previous one), move `HEAD`,
and let ``tests/unit/test_migrations.py`` check that the migrated database matches ``schema.py``.
Autogenerate can draft it: ``command.revision(alembic_config(conn), "what", autogenerate=True,
rev_id="000N")`` with ``conn`` open on a database at the previous head.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, column, func, inspect, select, table

from bulkinfer.store.schema import metadata

if TYPE_CHECKING:
    from alembic.config import Config

HEAD = "0008"
"""The newest revision in ``migrations/versions`` (a test keeps the two in step)."""

INITIAL = "0001"
"""The revision that creates the tables the code before migrations made with ``create_all``."""

VERSION_TABLE = "alembic_version"
_versions = table(VERSION_TABLE, column("version_num"))

# pg_advisory_xact_lock key that serializes upgrades of one PostgreSQL database by several replicas.
_PG_LOCK_KEY = 0x62756C6B696E6672  # "bulkinfr"


def upgrade(engine: Engine) -> None:
    """Migrate the database to `HEAD`; a no-op (two small queries) when it is there.

    Concurrent callers on one database take turns: PostgreSQL through an advisory lock held for the
    migration's transaction, SQLite through its write lock (``BEGIN IMMEDIATE``).
    """
    if current_revision(engine) == HEAD:
        return
    from alembic import command

    with engine.connect() as conn, conn.begin():
        _lock(conn)
        config = alembic_config(conn)
        if _is_legacy(conn):
            # Made by create_all before there were migrations: add the tables it predates, as create_all
            # did at every start, and adopt it at the initial revision. Sound while schema.py declares
            # INITIAL's tables; the legacy tests in test_migrations.py fail once a revision changes them.
            metadata.create_all(conn)
            command.stamp(config, INITIAL)
        command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    """The database's revision, None when it has none (empty, or made before migrations)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        revisions = conn.execute(select(_versions.c.version_num)).scalars().all()
    return revisions[0] if len(revisions) == 1 else None


def alembic_config(conn: Connection) -> Config:
    """Alembic's configuration, in code: the packaged scripts, run on ``conn``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("bulkinfer.store") / "migrations"))
    config.attributes["connection"] = conn
    return config


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
    elif conn.dialect.name == "sqlite":
        # pysqlite defers BEGIN to the first write; take the write lock before reading the schema.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _is_legacy(conn: Connection) -> bool:
    tables = set(inspect(conn).get_table_names())
    return VERSION_TABLE not in tables and bool(tables & set(metadata.tables))
