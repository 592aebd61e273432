"""The job store's listing as the dashboard asks it: by model, and (development mode) every tenant's."""

from __future__ import annotations

from pathlib import Path

from bulkinfer.domain.job import JobStatus
from bulkinfer.store.batch_jobs import BatchJob, BatchJobStore, JobFilter


def stored(store: BatchJobStore, job_id: str, tenant: str, model: str, at: float) -> None:
    store.create(BatchJob(job_id, tenant, job_id, model, JobStatus.SUBMITTED, at, at, expires_at=at + 3600))


def test_jobs_are_listed_by_tenant_and_model_or_for_every_tenant(tmp_path: Path) -> None:
    store = BatchJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        stored(store, "a1", "alpha", "echo", 1.0)
        stored(store, "a2", "alpha", "slow", 2.0)
        stored(store, "b1", "beta", "echo", 3.0)

        def ids(wanted: JobFilter) -> list[str]:
            return [job.job_id for job in store.find(wanted)]

        assert ids(JobFilter(tenant="alpha")) == ["a2", "a1"]  # newest first
        assert ids(JobFilter(tenant="alpha", model="echo")) == ["a1"]
        assert ids(JobFilter(tenant=None)) == ["b1", "a2", "a1"]
        assert ids(JobFilter(tenant=None, model="echo")) == ["b1", "a1"]
        assert ids(JobFilter(tenant="gamma")) == []
    finally:
        store.close()
