"""`ProviderJobs.claim` on SQLite and on PostgreSQL: a model's provider slots are taken one transaction
at a time, so threads (standing in for replicas) claiming at once never hold more rows than the slots;
an ended row or one whose heartbeat stopped frees its slot; a retried claim writes no second row."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from bulkinfer.store.provider_jobs import CREATING, ENDED, ProviderJob, ProviderJobs
from bulkinfer.store.state import StateStore
from tests.integration.test_bedrock_api import database

MODEL = "gpt-batch"
THREADS = 12
STALE_S = 600.0


@pytest.fixture(params=["sqlite", "postgres"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProviderJobs]:
    """The provider jobs of a fresh store: a SQLite file, then a fresh PostgreSQL database."""
    with database(request.param) as url:
        store = StateStore(url) if url else StateStore.at(tmp_path / "state.db")
        try:
            yield store.provider_jobs()
        finally:
            store.close()


def provider_job(
    job_id: str, seq: int, *, model: str = MODEL, heartbeat_at: float | None = None
) -> ProviderJob:
    now = time.time()
    return ProviderJob(
        token=f"test-{job_id}-{seq}",
        job_id=job_id,
        model=model,
        seq=seq,
        attempt=1,
        keys=(f"{job_id}:{seq}",),
        state=CREATING,
        created_at=now,
        heartbeat_at=now if heartbeat_at is None else heartbeat_at,
        total=1,
    )


def rows_of(jobs: ProviderJobs, job_ids: list[str]) -> list[ProviderJob]:
    return [row for job_id in job_ids for row in jobs.of_job(job_id)]


def test_threads_claiming_at_once_get_only_the_slots(jobs: ProviderJobs) -> None:
    start = threading.Barrier(THREADS)

    def claim(n: int) -> bool:
        start.wait()
        return jobs.claim(provider_job(f"job-{n}", 1), 2, STALE_S)

    with ThreadPoolExecutor(THREADS) as pool:
        claimed = list(pool.map(claim, range(THREADS)))
    assert claimed.count(True) == 2
    assert jobs.live(MODEL, STALE_S) == 2
    rows = rows_of(jobs, [f"job-{n}" for n in range(THREADS)])
    assert sorted(r.job_id for r in rows) == sorted(f"job-{n}" for n, ok in enumerate(claimed) if ok)


def test_threads_taking_and_freeing_slots_never_hold_more_than_the_slots(jobs: ProviderJobs) -> None:
    """Each thread claims until it holds a slot, holds it, and ends its row; a count of the rows held,
    entered after a claim commits and left before an end commits, never passes the slots."""
    rounds = 4
    lock = threading.Lock()
    holding = 0
    most = 0
    start = threading.Barrier(THREADS)

    def work(n: int) -> int:
        nonlocal holding, most
        start.wait()
        claims = 0
        for seq in range(1, rounds + 1):
            row = provider_job(f"job-{n}", seq)
            while not jobs.claim(row, 2, STALE_S):
                time.sleep(0.001)
            claims += 1
            with lock:
                holding += 1
                most = max(most, holding)
            time.sleep(0.001)
            with lock:
                holding -= 1
            jobs.save(row, state=ENDED, ended_at=time.time())
        return claims

    with ThreadPoolExecutor(THREADS) as pool:
        claims = list(pool.map(work, range(THREADS)))
    assert claims == [rounds] * THREADS
    assert 1 <= most <= 2
    rows = rows_of(jobs, [f"job-{n}" for n in range(THREADS)])
    assert len(rows) == THREADS * rounds
    assert {r.state for r in rows} == {ENDED}
    assert jobs.live(MODEL, STALE_S) == 0


def test_an_ended_row_frees_its_slot(jobs: ProviderJobs) -> None:
    first, second, third = (provider_job("job-a", seq) for seq in (1, 2, 3))
    assert jobs.claim(first, 2, STALE_S)
    assert jobs.claim(second, 2, STALE_S)
    assert not jobs.claim(third, 2, STALE_S)
    assert [r.seq for r in jobs.of_job("job-a")] == [1, 2]  # a refused claim writes nothing
    jobs.save(first, state=ENDED, ended_at=time.time())
    assert jobs.live(MODEL, STALE_S) == 1
    assert jobs.claim(third, 2, STALE_S)
    assert [(r.seq, r.state) for r in jobs.of_job("job-a")] == [(1, ENDED), (2, CREATING), (3, CREATING)]


def test_a_row_whose_heartbeat_stopped_holds_no_slot(jobs: ProviderJobs) -> None:
    gone = provider_job("job-a", 1, heartbeat_at=time.time() - 2 * STALE_S)  # its follower died
    assert jobs.claim(gone, 2, STALE_S)
    assert jobs.live(MODEL, STALE_S) == 0
    assert jobs.claim(provider_job("job-b", 1), 2, STALE_S)
    assert jobs.claim(provider_job("job-b", 2), 2, STALE_S)
    assert not jobs.claim(provider_job("job-b", 3), 2, STALE_S)
    jobs.save(gone, provider_status="in_progress")  # followed again: it beats, and holds a slot again
    assert jobs.live(MODEL, STALE_S) == 3


def test_claiming_a_recorded_token_again_is_true_and_writes_no_second_row(jobs: ProviderJobs) -> None:
    row = provider_job("job-a", 1)
    assert jobs.claim(row, 1, STALE_S)
    assert jobs.claim(row, 1, STALE_S)  # a retried commit: the model is full, but this row is in
    assert jobs.claim(replace(row, keys=("other",)), 1, STALE_S)
    assert [(r.token, r.keys) for r in jobs.of_job("job-a")] == [(row.token, row.keys)]
    assert jobs.live(MODEL, STALE_S) == 1


def test_slots_are_per_model(jobs: ProviderJobs) -> None:
    assert jobs.claim(provider_job("job-a", 1), 1, STALE_S)
    assert not jobs.claim(provider_job("job-a", 2), 1, STALE_S)
    assert jobs.claim(provider_job("job-b", 1, model="claude-batch"), 1, STALE_S)
    assert (jobs.live(MODEL, STALE_S), jobs.live("claude-batch", STALE_S)) == (1, 1)
