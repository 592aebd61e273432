"""A model's rate limit held by several processes on one state store (SQLite file, PostgreSQL): together
they stay under it, each with its own process and its own clock readings."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from bulkinfer.domain.job import JobStatus
from bulkinfer.engine.job import RunRequest
from bulkinfer.errors import JobFault
from bulkinfer.providers.remote.limits import BURST_SECONDS, HEADROOM, SharedBucket
from bulkinfer.store.state import StateStore
from bulkinfer.testing import SimulatorConfig, SimulatorThread
from tests.conftest import run_job, write_jsonl
from tests.integration.test_bedrock_api import database
from tests.integration.test_remote_reliability import catalog, records

pytestmark = pytest.mark.slow

PER_MINUTE = 3000
WINDOW_S = 2.0
TAKERS = 4
"""Calls waiting at once in each process."""


def take_for(url: str, start: Any, out: Any) -> None:
    """One process: take requests one at a time, from `TAKERS` tasks, for `WINDOW_S`; report when."""
    store = StateStore(url)
    bucket = SharedBucket(store.rate_buckets(), "m", "requests", PER_MINUTE)

    async def taker(until: float, stamps: list[float]) -> None:
        while time.monotonic() < until:
            await bucket.take(1)
            stamps.append(time.monotonic())

    async def main() -> tuple[float, float, list[float]]:
        stamps: list[float] = []
        began = time.monotonic()
        await asyncio.gather(*(taker(began + WINDOW_S, stamps) for _ in range(TAKERS)))
        return began, time.monotonic(), stamps

    start.wait(60)
    out.put(asyncio.run(main()))
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_processes_on_one_store_take_the_rate_together(kind: str, tmp_path: Path) -> None:
    with database(kind) as pg:
        url = pg or f"sqlite:///{tmp_path / 'state.db'}"
        StateStore(url).close()  # migrated once, before the two open it
        spawn = multiprocessing.get_context("spawn")
        start, out = spawn.Barrier(2), spawn.Queue()
        workers = [spawn.Process(target=take_for, args=(url, start, out), daemon=True) for _ in range(2)]
        for worker in workers:
            worker.start()
        reports = [out.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(10)
    began = max(report[0] for report in reports)
    ended = min(report[1] for report in reports)
    each = [sum(began <= t <= ended for t in report[2]) for report in reports]
    window = ended - began
    assert window > WINDOW_S / 2  # they ran together
    assert sum(each) <= PER_MINUTE / 60 * (window + BURST_SECONDS) + 2  # not twice the rate
    assert sum(each) >= PER_MINUTE * HEADROOM / 60 * window * 0.7  # and not much less than it
    assert min(each) >= 0.1 * sum(each)  # both took their part


def test_two_runs_on_one_state_file_stay_under_the_providers_limit(tmp_path: Path) -> None:
    count = 60
    config = SimulatorConfig(requests_per_minute=600, latency_median_s=0.01)
    with SimulatorThread(config) as sim:
        models = catalog(tmp_path / "m.toml", sim, requests_per_minute=600, max_attempts=20)
        runs = []
        for name in ("one", "two"):
            source = write_jsonl(tmp_path / name / "a.jsonl", records(count, name))
            command = [sys.executable, "-m", "bulkinfer", "run", str(source.parent), "--model", "remote"]
            command += ["--models", str(models), "--output", str(tmp_path / "out"), "--job-id", name]
            runs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for run in runs:
            _, err = run.communicate(timeout=120)
            assert run.returncode == 0, err.decode()
        stats = sim.idle_stats()
    assert stats.successes == 2 * count
    assert stats.rate_limited <= 0.01 * stats.calls, stats.by_outcome
    times = stats.success_times
    assert len(times) <= 600 / 60 * (times[-1] - times[0] + config.burst_s) + 1  # at most the limit
    store = StateStore.at(tmp_path / "out" / ".bulkinfer" / "state.db")
    try:
        one, two = (store.get_job(name) for name in ("one", "two"))
    finally:
        store.close()
    assert one is not None and two is not None and one.started_at and two.started_at
    assert one.ended_at and two.ended_at
    overlap = min(one.ended_at, two.ended_at) - max(one.started_at, two.started_at)
    assert overlap > 0.5 * min(one.ended_at - one.started_at, two.ended_at - two.started_at)  # at once


def test_a_limit_the_database_refuses_fails_the_job_and_no_record(tmp_path: Path) -> None:
    """The state store's role may no longer read the limits (its grant revoked): waiting will not pass
    and no record is at fault, so the job fails saying why, with no call sent and no error line."""
    role = f"limited_{uuid.uuid4().hex[:8]}"
    with database("postgres") as url, SimulatorThread(SimulatorConfig(latency_median_s=0.01)) as sim:
        assert url is not None
        StateStore(url).close()  # migrated by the owner
        admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for grant in (
                f"CREATE ROLE {role} LOGIN PASSWORD 'limited'",
                f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
                f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}",
                f"REVOKE ALL ON rate_buckets FROM {role}",
            ):
                conn.execute(sqlalchemy.text(grant))
        limited = sqlalchemy.make_url(url).set(username=role, password="limited")
        source = write_jsonl(tmp_path / "in" / "a.jsonl", records(20))
        models = catalog(tmp_path / "m.toml", sim, requests_per_minute=600)
        state = limited.render_as_string(hide_password=False)
        request = RunRequest(source.parent, "remote", tmp_path / "out", "refused", models, state_url=state)
        with pytest.raises(JobFault, match="requests limit of remote could not be read"):
            run_job(request)
        store = StateStore(url)
        try:
            job = store.get_job("refused")
            assert job is not None and job.status == JobStatus.FAILED
            assert "permission denied" in (job.message or "")
        finally:
            store.close()
        assert sim.idle_stats().calls == 0
        admin.dispose()
    admin_url = os.environ["BULKINFER_TEST_POSTGRES_URL"]
    dropper = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with dropper.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP ROLE IF EXISTS {role}"))
    dropper.dispose()
