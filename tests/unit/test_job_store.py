"""The service's job store on a real SQLite file: transitions checked against the table and set only
from the status the caller saw, one job per client token under concurrent creates, leases."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy

from bulkinfer.domain.job import IllegalTransition, JobStatus, new_job_id
from bulkinfer.store.batch_jobs import BatchJob, BatchJobStore, TooManyActiveJobs


@pytest.fixture
def store(tmp_path: Path) -> BatchJobStore:
    return BatchJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")


def job(token: str | None = None, tenant: str = "team") -> BatchJob:
    now = time.time()
    return BatchJob(
        job_id=new_job_id(),
        tenant=tenant,
        name="n",
        model_id="echo",
        status=JobStatus.SUBMITTED,
        submit_time=now,
        last_modified=now,
        client_token=token,
        expires_at=now + 3600,
    )


def test_a_forbidden_transition_raises_and_changes_nothing(store: BatchJobStore) -> None:
    created = store.create(job())
    with pytest.raises(IllegalTransition, match="Submitted may not become Completed"):
        store.transition(created, JobStatus.COMPLETED)
    stored = store.get(created.job_id)
    assert stored is not None and stored.status == JobStatus.SUBMITTED


def test_a_transition_from_a_status_the_job_left_is_refused(store: BatchJobStore) -> None:
    created = store.create(job())
    assert store.transition(created, JobStatus.STOPPED) is not None  # a user's stop came first
    assert store.transition(created, JobStatus.VALIDATING) is None  # the scheduler saw Submitted
    stored = store.get(created.job_id)
    assert stored is not None and stored.status == JobStatus.STOPPED


def test_a_replica_that_no_longer_holds_a_job_cannot_change_it(store: BatchJobStore) -> None:
    validating = store.transition(store.create(job()), JobStatus.VALIDATING, owner="a", lease_until=0.0)
    assert validating is not None
    assert store.release_expired() == 1  # a's lease lapsed: the job stays Validating, held by no one
    assert store.transition(validating, JobStatus.SCHEDULED, held_by="a") is None
    adopted = store.adopt(replace(validating, owner=None), "b", 10)
    assert adopted is not None and adopted.owner == "b"
    assert store.update(adopted, held_by="a", message="late") is None
    assert store.transition(adopted, JobStatus.SCHEDULED, held_by="b") is not None


def test_an_update_writes_only_what_it_names(store: BatchJobStore) -> None:
    created = store.create(job())
    store.transition(created, JobStatus.STOPPED)
    store.update(created, message="hello")  # a stale copy says Submitted; the status is not written
    stored = store.get(created.job_id)
    assert stored is not None and (stored.status, stored.message) == (JobStatus.STOPPED, "hello")


def test_concurrent_creates_with_one_token_make_one_job(store: BatchJobStore) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        made = list(pool.map(lambda _: store.create(job("token-1")), range(40)))
    assert len({m.job_id for m in made}) == 1
    assert store.by_token("team", "token-1") == store.get(made[0].job_id)
    other_tenant = store.create(job("token-1", tenant="other"))
    assert other_tenant.job_id != made[0].job_id


def test_creates_without_tokens_in_one_burst_are_all_kept(store: BatchJobStore) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        made = list(pool.map(lambda _: store.create(job()), range(200)))
    assert len({m.job_id for m in made}) == 200
    assert len(store.with_status(JobStatus.SUBMITTED)) == 200


def test_lapsed_leases_requeue_running_jobs_and_orphan_held_ones(store: BatchJobStore) -> None:
    running = store.transition(store.create(job()), JobStatus.VALIDATING, owner="a", lease_until=0.0)
    assert running is not None
    scheduled = store.transition(running, JobStatus.SCHEDULED, owner=None, lease_until=None)
    assert scheduled is not None
    claimed = store.claim("echo", "a", slots=1, lease_s=-1)  # a lease already over
    assert claimed is not None and claimed.status == JobStatus.IN_PROGRESS
    assert store.claim("echo", "b", slots=1, lease_s=10) is None  # the one slot is taken
    stopping = store.transition(claimed, JobStatus.STOPPING)
    assert stopping is not None
    assert store.release_expired() == 1
    stored = store.get(claimed.job_id)
    assert stored is not None and (stored.status, stored.owner) == (JobStatus.STOPPING, None)
    assert [j.job_id for j in store.unowned(JobStatus.STOPPING)] == [claimed.job_id]


def test_deadlines_are_found_by_the_index(store: BatchJobStore) -> None:
    soon, later = store.create(job()), store.create(job())
    store.update(soon, expires_at=100.0)
    store.update(later, expires_at=200.0)
    assert store.next_expiry(0.0, JobStatus.SUBMITTED) == 100.0
    assert store.next_expiry(150.0, JobStatus.SUBMITTED) == 200.0
    assert [j.job_id for j in store.expired(150.0, JobStatus.SUBMITTED)] == [soon.job_id]
    assert store.models_with(JobStatus.SUBMITTED) == ["echo"]


async def test_reads_and_creates_awaited_together_answer_each_caller(store: BatchJobStore) -> None:
    import asyncio

    made = await asyncio.gather(*(store.create_async(job(f"t{i % 50}")) for i in range(200)))
    assert len({m.job_id for m in made}) == 50  # one job per token, whoever came first
    read = await asyncio.gather(*(store.get_async(m.job_id) for m in made), store.get_async("missing"))
    assert read[:-1] == [store.get(m.job_id) for m in made] and read[-1] is None


def test_a_tenant_may_have_at_most_its_active_jobs(store: BatchJobStore) -> None:
    first = store.create(job("t1"), max_active=2)
    store.create(job("t2"), max_active=2)
    with pytest.raises(TooManyActiveJobs, match="max_active_jobs"):
        store.create(job("t3"), max_active=2)
    assert store.create(job("t1"), max_active=2).job_id == first.job_id  # a retried create: its job
    assert store.create(job("other", tenant="another-team"), max_active=2) is not None
    store.transition(first, JobStatus.STOPPED)  # an ended job no longer counts
    assert store.create(job("t3"), max_active=2).client_token == "t3"


def test_concurrent_creates_never_pass_the_limit(store: BatchJobStore) -> None:
    def create(i: int) -> BatchJob | None:
        try:
            return store.create(job(f"c{i}"), max_active=5)
        except TooManyActiveJobs:
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        made = [j for j in pool.map(create, range(40)) if j is not None]
    assert len(made) == 5


def test_jobs_of_an_access_key_move_to_its_tenant(store: BatchJobStore, tmp_path: Path) -> None:
    old = store.create(job("k", tenant="AKIDOLD"))
    store.create(job("k", tenant="team"))  # the tenant has a job with the same token
    clash = store.create(job("k", tenant="AKIDCLASH"))
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    with engine.begin() as conn:  # as the migration marks the jobs made before tenants
        conn.execute(sqlalchemy.text("UPDATE batch_jobs SET keyed_by_access_key = 1"))
    engine.dispose()
    later = store.create(job("later", tenant="AKIDOLD"))  # made since, by a tenant of that name
    assert store.rename_tenants({"AKIDOLD": "moved-team", "AKIDCLASH": "team", "same": "same"}) == 1
    moved, kept, unmoved = store.get(old.job_id), store.get(clash.job_id), store.get(later.job_id)
    assert moved is not None and moved.tenant == "moved-team"
    assert kept is not None and kept.tenant == "AKIDCLASH"  # kept rather than lose a token's job
    assert unmoved is not None and unmoved.tenant == "AKIDOLD"
    assert store.rename_tenants({"AKIDOLD": "elsewhere"}) == 0  # once only


def test_one_token_repeated_at_the_limit_is_one_job(store: BatchJobStore) -> None:
    store.create(job("a"), max_active=2)

    def create(_: int) -> BatchJob | BaseException:
        try:
            return store.create(job("same"), max_active=2)
        except TooManyActiveJobs as exc:
            return exc

    with ThreadPoolExecutor(max_workers=10) as pool:
        made = list(pool.map(create, range(10)))
    assert all(isinstance(m, BatchJob) for m in made), made
    assert len({m.job_id for m in made if isinstance(m, BatchJob)}) == 1


def test_details_noted_at_once_by_several_writers_all_stay(store: BatchJobStore) -> None:
    """Two requests showing one batch note different keys from what each read: neither undoes the
    other; ``keep`` leaves a key noted first as it was."""
    created = store.create(job())
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.merge_details(created.job_id, {f"key{n}": n}), range(16)))
    noted = store.get(created.job_id)
    assert noted is not None and noted.details == {f"key{n}": n for n in range(16)}
    store.merge_details(created.job_id, {"key0": "again", "new": 1}, keep=True)
    again = store.get(created.job_id)
    assert again is not None and again.details is not None
    assert again.details["key0"] == 0 and again.details["new"] == 1


def test_every_change_is_on_the_timeline_with_its_reason(store: BatchJobStore) -> None:
    created = store.create(job())
    validating = store.transition(created, JobStatus.VALIDATING, owner="a", lease_until=time.time() + 60)
    assert validating is not None
    scheduled = store.transition(validating, JobStatus.SCHEDULED, owner=None, lease_until=None)
    assert scheduled is not None
    claimed = store.claim("echo", "a", slots=1, lease_s=-1)
    assert claimed is not None
    assert store.release_expired() == 1  # its replica stopped renewing: back to Scheduled
    again = store.claim("echo", "b", slots=1, lease_s=60)
    assert again is not None
    store.note(again, "job.paused", "paused: echo not answering since 12:00:00 (refused); retrying")
    ended = store.transition(again, JobStatus.FAILED, message="the model crashed")
    assert ended is not None
    assert store.transition(again, JobStatus.COMPLETED) is None  # a change that lost leaves no event

    timeline = store.events(created.job_id)
    assert [(e.name, e.status) for e in timeline] == [
        ("job.submitted", "Submitted"),
        ("job.validating", "Validating"),
        ("job.scheduled", "Scheduled"),
        ("job.started", "InProgress"),
        ("job.let_go", "Scheduled"),
        ("job.resumed", "InProgress"),
        ("job.paused", "InProgress"),
        ("job.failed", "Failed"),
    ]
    reasons = [e.reason or "" for e in timeline]
    assert "echo's job slots" in reasons[2] and "echo's job slots" in reasons[3]
    assert "stopped renewing its lease" in reasons[4]
    assert reasons[6].startswith("paused: echo not answering") and reasons[7] == "the model crashed"
    assert [e.at for e in timeline] == sorted(e.at for e in timeline)
    assert {e.tenant for e in timeline} == {"team"} and store.events("no-such-job") == []


def test_the_timeline_keeps_the_newest_events_and_goes_with_its_job(store: BatchJobStore) -> None:
    created = store.create(job())
    for n in range(5):
        store.note(created, "job.paused", f"pause {n}")
    assert [e.reason for e in store.events(created.job_id, limit=2)] == ["pause 3", "pause 4"]
    stopped = store.transition(created, JobStatus.STOPPED)
    assert stopped is not None and store.delete(stopped)
    assert store.events(created.job_id) == []
