"""Store migrations on SQLite and, with BULKINFER_TEST_POSTGRES_URL set, on a fresh PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, func, insert, inspect, make_url, select, text

from bulkinfer.store import migrate
from bulkinfer.store.schema import batch_jobs, chunks, jobs, metadata
from bulkinfer.store.state import make_engine

EngineFactory = Callable[[], Engine]

JOB_ROW = {
    "job_id": "J1",
    "model": "echo",
    "input_uri": "in.jsonl",
    "output_uri": "out/",
    "status": "InProgress",
    "options": "{}",
    "created_at": 1.0,
}


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no one has touched: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    admin_url = os.environ.get("BULKINFER_TEST_POSTGRES_URL")
    if not admin_url:
        pytest.skip("set BULKINFER_TEST_POSTGRES_URL (an admin URL; scripts/postgres prints one)")
    name = f"bulkinfer_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture
def engines(url: str) -> Iterator[EngineFactory]:
    """Open engines on the test's database as the stores do; all are disposed at the end."""
    opened: list[Engine] = []

    def open_engine() -> Engine:
        opened.append(make_engine(url))
        return opened[-1]

    yield open_engine
    for engine in opened:
        engine.dispose()


def table_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def drift(engine: Engine) -> list[object]:
    """What autogenerate would put in a new revision: empty when the database matches schema.py."""
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))


def test_upgrade_creates_every_table_of_the_schema(engines: EngineFactory) -> None:
    engine = engines()
    migrate.upgrade(engine)
    assert table_names(engine) == {*metadata.tables, migrate.VERSION_TABLE}
    assert migrate.current_revision(engine) == migrate.HEAD


def test_migrated_database_matches_the_schema(engines: EngineFactory) -> None:
    """A change to schema.py without a migration (or a migration without the change) fails here."""
    engine = engines()
    migrate.upgrade(engine)
    assert drift(engine) == []


def test_head_is_the_newest_packaged_revision(engines: EngineFactory) -> None:
    with engines().connect() as conn:
        scripts = ScriptDirectory.from_config(migrate.alembic_config(conn))
    assert scripts.get_heads() == [migrate.HEAD]
    assert scripts.get_base() == migrate.INITIAL


def test_upgrading_a_current_database_changes_nothing(engines: EngineFactory) -> None:
    engine = engines()
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(insert(jobs).values(JOB_ROW))
    migrate.upgrade(engines())
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.job_id)).scalars().all() == ["J1"]
        assert conn.execute(text(f"SELECT count(*) FROM {migrate.VERSION_TABLE}")).scalar() == 1
    assert migrate.current_revision(engine) == migrate.HEAD


def test_legacy_database_is_stamped_and_keeps_its_rows(engines: EngineFactory) -> None:
    legacy = engines()
    metadata.create_all(legacy)  # what the store did before it had migrations
    with legacy.begin() as conn:
        conn.execute(insert(jobs).values(JOB_ROW))
    assert migrate.current_revision(legacy) is None

    migrate.upgrade(engines())

    assert migrate.current_revision(legacy) == migrate.HEAD
    with legacy.connect() as conn:
        assert conn.execute(select(jobs.c.job_id)).scalars().all() == ["J1"]
    assert drift(legacy) == []


def test_legacy_database_from_before_the_service_tables_gets_them(engines: EngineFactory) -> None:
    legacy = engines()
    metadata.create_all(legacy, tables=[jobs, chunks])
    with legacy.begin() as conn:
        conn.execute(insert(jobs).values(JOB_ROW))

    migrate.upgrade(engines())

    assert table_names(legacy) == {*metadata.tables, migrate.VERSION_TABLE}
    with legacy.connect() as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(batch_jobs)).scalar() == 0
    assert drift(legacy) == []


def test_downgrade_to_base_and_back(engines: EngineFactory) -> None:
    engine = engines()
    migrate.upgrade(engine)
    with engine.connect() as conn, conn.begin():
        command.downgrade(migrate.alembic_config(conn), "base")
    assert table_names(engine) == {migrate.VERSION_TABLE}
    migrate.upgrade(engine)
    assert drift(engine) == []


def test_concurrent_upgrades_of_one_database_take_turns(engines: EngineFactory) -> None:
    """Several replicas starting at once against an empty database: one migrates, the rest wait."""
    starters = [engines() for _ in range(4)]
    barrier = threading.Barrier(len(starters))
    errors: list[BaseException] = []

    def start(engine: Engine) -> None:
        barrier.wait()
        try:
            migrate.upgrade(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(engine,)) for engine in starters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert migrate.current_revision(starters[0]) == migrate.HEAD
    assert drift(starters[0]) == []


def test_a_current_database_does_not_load_alembic(tmp_path: Path) -> None:
    """Every start checks the revision; only a database that needs migrating pays for alembic's import."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    script = (
        "import sys\n"
        "from bulkinfer.store.state import StateStore\n"
        f"StateStore({url!r}).close()\n"
        "assert 'alembic' not in sys.modules, 'alembic was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_a_database_at_0003_with_jobs_upgrades_by_replicas_at_once(engines: EngineFactory) -> None:
    """0004 on a database made at 0003 holding a Bedrock job: two replicas upgrade it at once; the job
    is kept, made by Bedrock's API, with no details or tokens."""
    engine = engines()
    with engine.connect() as conn, conn.begin():
        command.upgrade(migrate.alembic_config(conn), "0003")
    row = {
        "job_id": "j1",
        "tenant": "a",
        "name": "n",
        "model_id": "echo",
        "status": "InProgress",
        "submit_time": 1.0,
        "last_modified": 1.0,
        "request": "{}",
    }
    with engine.begin() as conn:
        names, values = ", ".join(row), ", ".join(f":{k}" for k in row)
        conn.execute(text(f"INSERT INTO batch_jobs ({names}) VALUES ({values})"), row)
    starters = [engines() for _ in range(2)]
    barrier = threading.Barrier(len(starters))
    errors: list[BaseException] = []

    def start(replica: Engine) -> None:
        barrier.wait()
        try:
            migrate.upgrade(replica)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(replica,)) for replica in starters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert migrate.current_revision(engine) == migrate.HEAD
    with engine.connect() as conn:
        found = conn.execute(select(batch_jobs.c.job_id, batch_jobs.c.api, batch_jobs.c.details)).all()
    assert [tuple(r) for r in found] == [("j1", "bedrock", None)]
    assert drift(engine) == []
