"""The job store under faults: PostgreSQL restarted under running jobs, and concurrent creates racing on
one client token.

The restart test runs its own throwaway PostgreSQL cluster (the installation's own binaries, a temporary
folder, a free loopback port), so restarting it disturbs no other test's database; it is stopped and
removed at the end of the module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy
from botocore.exceptions import BotoCoreError, ClientError

from tests.faults.conftest import (
    Launcher,
    RunningSampler,
    Serve,
    assert_complete_outputs,
    client,
    create,
    free_port,
    job_id,
    local_outputs,
    wait_ended,
    write_records,
)

pytestmark = pytest.mark.slow

# Two models, so 8 jobs run at once under --jobs-per-model 4: 50 records a second per job.
TWO_MODELS = """
[models.slow-a]
provider = "echo"
batch_size = 5
concurrency = 1
[models.slow-a.options]
delay_s = 0.1

[models.slow-b]
provider = "echo"
batch_size = 5
concurrency = 1
[models.slow-b.options]
delay_s = 0.1
"""


@dataclass
class Cluster:
    """A PostgreSQL server of this module's own."""

    url: str
    data: Path
    bindir: Path
    as_owner: list[str]

    def pg_ctl(self, *args: str) -> None:
        command = [*self.as_owner, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]
        subprocess.run(command, check=True, capture_output=True, cwd=self.data.parent, timeout=60)

    def restart(self, down_s: float) -> None:
        """Stop it (connections are cut), stay down ``down_s``, start it again."""
        self.pg_ctl("-m", "fast", "-w", "stop")
        time.sleep(down_s)
        self.pg_ctl("-l", str(self.data.parent / "log"), "-w", "start")


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    which = shutil.which("pg_config")
    if which is None:
        return None
    bindir = Path(subprocess.run([which, "--bindir"], capture_output=True, text=True).stdout.strip())
    return bindir if (bindir / "pg_ctl").exists() else None


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[Cluster]:
    if not os.environ.get("BULKINFER_TEST_POSTGRES_URL"):
        pytest.skip("set BULKINFER_TEST_POSTGRES_URL (an admin URL) to run against PostgreSQL")
    bindir = _bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) to run a cluster of our own")
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # postgres refuses root
    root = Path(tempfile.mkdtemp(prefix="bulkinfer-faults-pg-"))
    if as_owner:
        shutil.chown(root, "postgres")
    port = free_port()
    cluster = Cluster(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", root / "data", bindir, as_owner
    )
    initdb = [*as_owner, str(bindir / "initdb"), "-D", str(cluster.data), "-A", "trust", "-U", "postgres"]
    subprocess.run([*initdb, "--no-sync"], check=True, capture_output=True, cwd=root, timeout=120)
    with (cluster.data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
            "fsync = off\nmax_connections = 300\n"
        )
    cluster.pg_ctl("-l", str(root / "log"), "-w", "start")
    try:
        yield cluster
    finally:
        subprocess.run(
            [*as_owner, str(bindir / "pg_ctl"), "-D", str(cluster.data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            cwd=root,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def committed(engine: sqlalchemy.Engine) -> dict[str, int]:
    """Records each job has committed, read from the engine's chunk rows in the database."""
    query = sqlalchemy.text("SELECT job_id, SUM(records) FROM chunks GROUP BY job_id")
    with engine.connect() as conn:
        return {str(job): int(total) for job, total in conn.execute(query).all()}


def test_a_postgresql_restart_under_eight_running_jobs_on_two_replicas(
    own_postgres: Cluster, launcher: Launcher, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(TWO_MODELS)
    data = tmp_path / "data"
    first, second = (
        launcher.start(data, catalog, database_url=own_postgres.url, jobs_per_model=4) for _ in range(2)
    )
    inputs = first.bucket("in-bucket")
    expected = {j: write_records(inputs / f"job{j}.jsonl", 400, f"J{j}R") for j in range(8)}
    bedrock = client(first)
    model = {j: f"slow-{'ab'[j % 2]}" for j in range(8)}
    arns = {
        j: create(bedrock, f"pg-restart-{j}", f"s3://in-bucket/job{j}.jsonl", "s3://out-bucket/", model[j])
        for j in range(8)
    }
    ids = {job_id(arn) for arn in arns.values()}
    engine = sqlalchemy.create_engine(own_postgres.url, pool_pre_ping=True)
    try:
        with RunningSampler(second.url) as sampler:
            deadline = time.monotonic() + 60
            while not (ids <= {j for j, n in committed(engine).items() if n > 0}):
                assert time.monotonic() < deadline, "the 8 jobs did not all start"
                time.sleep(0.1)
            before = committed(engine)
            own_postgres.restart(down_s=1.0)
            back = time.monotonic()
            recovery = _until_all_progress(engine, ids, before, timeout=300) - back
            # (ample: it asserts that the jobs end, and a loaded machine is slow)
            jobs = {j: wait_ended(client(second), arn, timeout=600) for j, arn in arns.items()}
    finally:
        engine.dispose()

    assert {j: job["status"] for j, job in jobs.items()} == dict.fromkeys(arns, "Completed"), [
        job.get("message") for job in jobs.values()
    ]
    for j, arn in arns.items():
        outputs = local_outputs(data / "s3" / "out-bucket" / job_id(arn))
        assert_complete_outputs(outputs, {f"job{j}.jsonl": expected[j]})
    assert sampler.samples > 0 and max(sampler.most.values()) <= 4, sampler.most  # --jobs-per-model 4
    assert first.process.poll() is None and second.process.poll() is None  # no one restarted them
    with capsys.disabled():
        print(f"\nPostgreSQL restart (1 s down): every job committing again {recovery:.1f} s after it was up")


def _until_all_progress(
    engine: sqlalchemy.Engine, ids: set[str], before: dict[str, int], timeout: float
) -> float:
    """When every job had committed more records than before the restart (the monotonic clock)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            now = committed(engine)
        except sqlalchemy.exc.OperationalError:  # still starting
            now = {}
        if all(now.get(j, 0) > before.get(j, 0) for j in ids):
            return time.monotonic()
        assert time.monotonic() < deadline, {j: (before.get(j), now.get(j)) for j in ids}
        time.sleep(0.05)


@contextlib.contextmanager
def writes_held(serve: Serve, seconds: float) -> Iterator[None]:
    """Hold the job table's write lock for ``seconds`` (reads go on), as a database that is slow to
    commit would: every create that starts meanwhile has looked for its token before any has inserted."""
    if serve.database_url is None:
        conn = sqlite3.connect(serve.data_dir / "bulkinfer.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            time.sleep(seconds)
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = sqlalchemy.create_engine(serve.database_url)
    try:
        with engine.begin() as held:
            held.execute(sqlalchemy.text("LOCK TABLE batch_jobs IN SHARE ROW EXCLUSIVE MODE"))
            yield
            time.sleep(seconds)
    finally:
        engine.dispose()


@pytest.mark.parametrize("slow_store", [False, True], ids=["at-once", "slow-store"])
def test_twenty_concurrent_creates_with_one_client_token_make_one_job(
    slow_store: bool, store: str | None, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    serve = launcher.start(tmp_path / "data", slow_catalog, database_url=store)
    expected = write_records(serve.bucket("in-bucket") / "in.jsonl", 20)
    racers = 20
    session = boto3.session.Session()  # clients made here, one per thread: making them is not thread-safe
    clients = [client(serve, session=session) for _ in range(racers)]
    start = threading.Barrier(racers)

    def one(bedrock: Any) -> object:
        start.wait()
        try:
            return create(bedrock, "once-only", "s3://in-bucket/in.jsonl", "s3://out-bucket/", "echo")
        except (BotoCoreError, ClientError) as exc:
            return exc

    with ThreadPoolExecutor(racers) as pool:
        with writes_held(serve, 1.0) if slow_store else contextlib.nullcontext():
            racing = [pool.submit(one, bedrock) for bedrock in clients]
        answers = [future.result() for future in racing]
    bedrock = client(serve)
    listed = bedrock.list_model_invocation_jobs(nameContains="once-only")["invocationJobSummaries"]
    assert len(listed) == 1, f"{len(listed)} jobs for one client token"
    assert answers == [listed[0]["jobArn"]] * racers, answers
    job = wait_ended(bedrock, listed[0]["jobArn"])
    assert job["status"] == "Completed", job.get("message")
    outputs = local_outputs(serve.bucket("out-bucket") / job_id(listed[0]["jobArn"]))
    assert_complete_outputs(outputs, {"in.jsonl": expected})
