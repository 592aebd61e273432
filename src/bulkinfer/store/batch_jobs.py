"""Service jobs: what was asked for (the request as sent), where each job stands, and its counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from sqlalchemy import Engine, func, insert, select, update

from bulkinfer.domain.job import JobStatus
from bulkinfer.store.migrate import upgrade
from bulkinfer.store.notify import Listener, announce
from bulkinfer.store.schema import batch_jobs
from bulkinfer.store.state import make_engine


@dataclass(frozen=True, slots=True)
class BatchJob:
    job_id: str
    tenant: str
    name: str
    model_id: str
    status: JobStatus
    submit_time: float
    last_modified: float
    request: dict[str, Any] = field(default_factory=dict)
    """The create request as validated: data configs, role, timeout, tags, invocation type."""
    client_token: str | None = None
    owner: str | None = None
    """The server replica running the job, while its lease lasts."""
    lease_until: float | None = None
    message: str | None = None
    start_time: float | None = None
    """When the job last got a slot (a resumed job: when it got one again)."""
    end_time: float | None = None
    total: int | None = None
    processed: int | None = None
    success: int | None = None
    errors: int | None = None


@dataclass(frozen=True, slots=True)
class JobFilter:
    tenant: str
    status: JobStatus | None = None
    name_contains: str | None = None
    submitted_after: float | None = None
    submitted_before: float | None = None
    ascending: bool = False


class BatchJobStore:
    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: Engine = make_engine(url)
        upgrade(self._engine)

    def listen(self, on_change: Callable[[], None]) -> Listener | None:
        """Call ``on_change`` whenever another replica changes a job; None where only one process can
        use the store (SQLite), so there is no one else to hear from."""
        if self._engine.dialect.name != "postgresql":
            return None
        return Listener(self._url, on_change).start()

    def close(self) -> None:
        self._engine.dispose()

    def create(self, job: BatchJob) -> None:
        with self._engine.begin() as conn:
            conn.execute(insert(batch_jobs).values(**_row(job)))
            announce(conn, job.job_id)

    def get(self, job_id: str) -> BatchJob | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(batch_jobs).where(batch_jobs.c.job_id == job_id)).mappings().first()
        return None if row is None else _job(row)

    def by_token(self, tenant: str, token: str) -> BatchJob | None:
        query = select(batch_jobs).where(batch_jobs.c.tenant == tenant, batch_jobs.c.client_token == token)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _job(row)

    def update(self, job: BatchJob, **changes: Any) -> BatchJob:
        new = replace(job, last_modified=time.time(), **changes)
        row = _row(new)
        del row["job_id"]
        with self._engine.begin() as conn:
            conn.execute(update(batch_jobs).where(batch_jobs.c.job_id == job.job_id).values(**row))
            if "status" in changes:
                announce(conn, job.job_id)
        return new

    def find(self, wanted: JobFilter, offset: int = 0, limit: int | None = None) -> list[BatchJob]:
        c = batch_jobs.c
        query = select(batch_jobs).where(c.tenant == wanted.tenant)
        if wanted.status is not None:
            query = query.where(c.status == wanted.status.value)
        if wanted.name_contains:
            query = query.where(c.name.contains(wanted.name_contains, autoescape=True))
        if wanted.submitted_after is not None:
            query = query.where(c.submit_time > wanted.submitted_after)
        if wanted.submitted_before is not None:
            query = query.where(c.submit_time < wanted.submitted_before)
        order = (
            (c.submit_time.asc(), c.job_id.asc())
            if wanted.ascending
            else (c.submit_time.desc(), c.job_id.desc())
        )
        query = query.order_by(*order).offset(offset).limit(limit)
        with self._engine.connect() as conn:
            return [_job(r) for r in conn.execute(query).mappings().all()]

    def move(self, job: BatchJob, expected: JobStatus, new: JobStatus) -> BatchJob | None:
        """Compare-and-set the status: None when another replica moved the job first."""
        now = time.time()
        query = (
            update(batch_jobs)
            .where(batch_jobs.c.job_id == job.job_id, batch_jobs.c.status == expected.value)
            .values(status=new.value, last_modified=now)
        )
        with self._engine.begin() as conn:
            if conn.execute(query).rowcount != 1:
                return None
            announce(conn, job.job_id)
        return replace(job, status=new, last_modified=now)

    def claim(self, model: str, owner: str, slots: int, lease_s: float) -> BatchJob | None:
        """Take the oldest Scheduled job of a model if fewer than ``slots`` of its jobs run anywhere.

        Safe across replicas: on PostgreSQL a per-model advisory lock makes count-then-claim atomic and
        ``SKIP LOCKED`` keeps replicas off each other's rows; SQLite serves a single replica.
        """
        c = batch_jobs.c
        now = time.time()
        with self._engine.begin() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(model))))
            running = conn.execute(
                select(func.count())
                .select_from(batch_jobs)
                .where(
                    c.model_id == model, c.status.in_([JobStatus.IN_PROGRESS.value, JobStatus.STOPPING.value])
                )
            ).scalar_one()
            if running >= slots:
                return None
            query = (
                select(batch_jobs)
                .where(c.model_id == model, c.status == JobStatus.SCHEDULED.value)
                .order_by(c.submit_time, c.job_id)
                .limit(1)
            )
            row = (
                conn.execute(query.with_for_update(skip_locked=True) if postgres else query)
                .mappings()
                .first()
            )
            if row is None:
                return None
            changes: dict[str, Any] = {
                "owner": owner,
                "lease_until": now + lease_s,
                "start_time": now,
                "last_modified": now,
            }
            claimed = update(batch_jobs).where(c.job_id == row["job_id"])
            conn.execute(claimed.values(status=JobStatus.IN_PROGRESS.value, **changes))
        return replace(_job(row), status=JobStatus.IN_PROGRESS, **changes)

    def renew(self, owner: str, job_ids: list[str], lease_s: float) -> list[BatchJob]:
        """Extend the leases of the jobs this replica runs; returns them as stored (to see Stopping)."""
        if not job_ids:
            return []
        c = batch_jobs.c
        with self._engine.begin() as conn:
            conn.execute(
                update(batch_jobs)
                .where(c.owner == owner, c.job_id.in_(job_ids))
                .values(lease_until=time.time() + lease_s)
            )
            rows = conn.execute(select(batch_jobs).where(c.job_id.in_(job_ids))).mappings().all()
        return [_job(r) for r in rows]

    def requeue_expired(self) -> int:
        """Jobs whose replica stopped renewing its lease go back to Scheduled, to resume elsewhere."""
        c = batch_jobs.c
        live = [JobStatus.IN_PROGRESS.value, JobStatus.STOPPING.value]
        with self._engine.begin() as conn:
            result = conn.execute(
                update(batch_jobs)
                .where(c.status.in_(live), c.lease_until < time.time())
                .values(
                    status=JobStatus.SCHEDULED.value, owner=None, lease_until=None, last_modified=time.time()
                )
            )
        return int(result.rowcount)

    def with_status(self, *statuses: JobStatus) -> list[BatchJob]:
        """Jobs in these statuses, oldest first (the order they are served in)."""
        query = select(batch_jobs).where(batch_jobs.c.status.in_([s.value for s in statuses]))
        with self._engine.connect() as conn:
            rows = (
                conn.execute(query.order_by(batch_jobs.c.submit_time, batch_jobs.c.job_id)).mappings().all()
            )
        return [_job(r) for r in rows]


def _row(job: BatchJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "tenant": job.tenant,
        "name": job.name,
        "model_id": job.model_id,
        "client_token": job.client_token,
        "status": job.status.value,
        "message": job.message,
        "submit_time": job.submit_time,
        "last_modified": job.last_modified,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "request": orjson.dumps(job.request).decode(),
        "owner": job.owner,
        "lease_until": job.lease_until,
        "total": job.total,
        "processed": job.processed,
        "success": job.success,
        "errors": job.errors,
    }


def _job(row: Any) -> BatchJob:
    values = dict(row)
    values["status"] = JobStatus(values["status"])
    values["request"] = orjson.loads(values["request"])
    return BatchJob(**values)
