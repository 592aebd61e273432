"""Keeps each model's job slots full.

Event-driven: submitting, stopping or finishing a job wakes the loop, which validates new jobs and starts
Scheduled ones (oldest first) the moment their model has a free slot. After a restart, jobs that were
running are scheduled again and resume from their committed chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bulkinfer.domain.job import JobStatus
from bulkinfer.engine.job import LocalJob, RunRequest
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.errors import BulkinferError
from bulkinfer.providers.catalog import Catalog
from bulkinfer.scheduler.quotas import check_quotas
from bulkinfer.settings import ServerSettings
from bulkinfer.storage.files import list_inputs
from bulkinfer.storage.uris import LocalBuckets
from bulkinfer.store.batch_jobs import BatchJob, BatchJobStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LiveCounts:
    """Counts of a running job, updated as records finish (the engine's progress sink)."""

    processed: int = 0
    errors: int = 0

    def advance(self, records: int, errors: int, input_tokens: int, output_tokens: int) -> None:
        self.processed += records
        self.errors += errors


@dataclass(slots=True)
class Running:
    job: LocalJob
    task: asyncio.Task[None]
    counts: LiveCounts = field(default_factory=LiveCounts)


DEFAULT_TIMEOUT_HOURS = 24
MAX_SLEEP_S = 60.0
_WAITING = (JobStatus.SUBMITTED, JobStatus.VALIDATING, JobStatus.SCHEDULED)


def deadline(job: BatchJob) -> float:
    """When the job times out: ``timeoutDurationInHours`` after it was submitted (Bedrock's
    jobExpirationTime). A job still waiting then expires; a running one ends PartiallyCompleted."""
    hours = job.request.get("timeoutDurationInHours") or DEFAULT_TIMEOUT_HOURS
    return job.submit_time + hours * 3600


class Scheduler:
    def __init__(
        self,
        store: BatchJobStore,
        settings: ServerSettings,
        catalog: Catalog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._store = store
        self._settings = settings
        self._catalog = catalog
        self._buckets = LocalBuckets(settings.data_dir)
        self._wake = asyncio.Event()
        self._running: dict[str, Running] = {}

    def notify(self) -> None:
        self._wake.set()

    def live_counts(self, job_id: str) -> LiveCounts | None:
        running = self._running.get(job_id)
        return running.counts if running else None

    async def run(self) -> None:
        self._recover()
        self._wake.set()
        while True:
            with contextlib.suppress(TimeoutError):  # woken by an event, or by the next deadline
                await asyncio.wait_for(self._wake.wait(), timeout=self._sleep_s())
            self._wake.clear()
            try:
                self._enforce_deadlines()
                await self._advance()
            except Exception:  # keep scheduling whatever one job did
                log.exception("scheduler step failed")

    def _sleep_s(self) -> float:
        pending = self._store.with_status(*_WAITING, JobStatus.IN_PROGRESS)
        soonest = min((deadline(j) for j in pending), default=self._clock() + MAX_SLEEP_S)
        return min(max(soonest - self._clock(), 0.0), MAX_SLEEP_S)

    def _enforce_deadlines(self) -> None:
        now = self._clock()
        for job in self._store.with_status(*_WAITING, JobStatus.IN_PROGRESS):
            if deadline(job) > now:
                continue
            running = self._running.get(job.job_id)
            if running is not None:
                running.job.request_stop(JobStatus.PARTIALLY_COMPLETED)  # it ends when its batches do
            elif job.status in _WAITING:
                message = "the job did not start before its timeout"
                self._store.update(job, status=JobStatus.EXPIRED, message=message, end_time=now)

    async def close(self) -> None:
        for running in list(self._running.values()):
            running.job.request_stop()
            running.task.cancel()
        await asyncio.gather(*(r.task for r in self._running.values()), return_exceptions=True)

    def _recover(self) -> None:
        """Jobs a previous server left running go back to the queue; they resume where they were."""
        for job in self._store.with_status(JobStatus.IN_PROGRESS, JobStatus.VALIDATING):
            self._store.update(job, status=JobStatus.SCHEDULED)
        for job in self._store.with_status(JobStatus.STOPPING):
            self._store.update(job, status=JobStatus.STOPPED, end_time=time.time())

    async def _advance(self) -> None:
        for job in self._store.with_status(JobStatus.SUBMITTED):
            await self._validate(job)
        busy: dict[str, int] = {}
        for running in self._running.values():
            busy[running.job.spec.name] = busy.get(running.job.spec.name, 0) + 1
        for job in self._store.with_status(JobStatus.SCHEDULED):
            if busy.get(job.model_id, 0) < self._settings.jobs_per_model and job.job_id not in self._running:
                busy[job.model_id] = busy.get(job.model_id, 0) + 1
                self._start(job)

    async def _validate(self, job: BatchJob) -> None:
        job = self._store.update(job, status=JobStatus.VALIDATING)
        uri = job.request["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
        try:
            files = list_inputs(self._input_path(job))
            quotas, max_line = self._settings.quotas, EngineSettings().max_line_bytes
            total = await asyncio.to_thread(check_quotas, files, quotas, max_line, uri)
        except BulkinferError as exc:
            self._store.update(job, status=JobStatus.FAILED, message=str(exc), end_time=time.time())
            return
        self._store.update(job, status=JobStatus.SCHEDULED, total=total)

    def _input_path(self, job: BatchJob) -> Path:
        return self._buckets.path(job.request["inputDataConfig"]["s3InputDataConfig"]["s3Uri"])

    def _start(self, job: BatchJob) -> None:
        try:
            request = RunRequest(
                input=self._input_path(job),
                model=job.model_id,
                output=self._buckets.path(
                    job.request["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"], must_exist=False
                ),
                job_id=job.job_id,
                catalog_file=self._settings.models,
                state_dir=self._settings.engine_state_dir,
                state_url=self._settings.database_url,
                keep_partial=True,
            )
            local = LocalJob.open(request)
        except BulkinferError as exc:
            self._store.update(job, status=JobStatus.FAILED, message=str(exc), end_time=time.time())
            return
        job = self._store.update(job, status=JobStatus.IN_PROGRESS)
        counts = LiveCounts(processed=local.committed().processed)
        task = asyncio.create_task(self._execute(job, local, counts))
        self._running[job.job_id] = Running(local, task, counts)

    async def _execute(self, job: BatchJob, local: LocalJob, counts: LiveCounts) -> None:
        try:
            report = await local.execute(counts)
            c = report.counts
            status = report.job.status
            self._store.update(
                job,
                status=status,
                total=report.total_records,
                processed=c.processed,
                success=c.success,
                errors=c.errors,
                end_time=time.time(),
            )
        except asyncio.CancelledError:
            raise  # server shutting down: the job stays InProgress and resumes at the next start
        except Exception as exc:
            message = str(exc) if isinstance(exc, BulkinferError) else f"{type(exc).__name__}: {exc}"
            self._store.update(job, status=JobStatus.FAILED, message=message, end_time=time.time())
        finally:
            local.close()
            self._running.pop(job.job_id, None)
            self.notify()

    def stop(self, job: BatchJob) -> BatchJob:
        """Stop a job: a running one finishes its records in flight, then writes what it has."""
        running = self._running.get(job.job_id)
        if running is not None:
            running.job.request_stop()
            return self._store.update(job, status=JobStatus.STOPPING)
        return self._store.update(job, status=JobStatus.STOPPED, end_time=time.time())
