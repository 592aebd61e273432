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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bulkinfer.domain.job import JobStatus
from bulkinfer.engine.job import LocalJob, MediaSettings, RunRequest
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.errors import BulkinferError
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.remote.limits import LimitRegistry
from bulkinfer.scheduler.quotas import invalid_records, validate_input
from bulkinfer.settings import ServerSettings
from bulkinfer.storage.files import list_inputs
from bulkinfer.storage.s3 import S3Staging
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


def _input_uri(job: BatchJob) -> str:
    return str(job.request["inputDataConfig"]["s3InputDataConfig"]["s3Uri"])


def _output_uri(job: BatchJob) -> str:
    return str(job.request["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])


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
        endpoint = settings.s3_endpoint_url
        self._staging = S3Staging(endpoint, settings.data_dir) if endpoint else None
        self._wake = asyncio.Event()
        self._running: dict[str, Running] = {}
        self._limits = LimitRegistry()  # every job on a remote model shares that model's rate limits
        allow = tuple(h.strip() for h in (settings.fetch_allow or "").split(",") if h.strip())
        self._media = MediaSettings(allow, settings.data_dir, settings.s3_endpoint_url)
        self.replica = uuid.uuid4().hex[:16]

    def notify(self) -> None:
        self._wake.set()

    def live_counts(self, job_id: str) -> LiveCounts | None:
        running = self._running.get(job_id)
        return running.counts if running else None

    def paused(self, job_id: str) -> str | None:
        """Why a job running here is held back (its model's provider is down), if it is."""
        running = self._running.get(job_id)
        return running.job.paused if running else None

    async def run(self) -> None:
        self._recover()
        self._wake.set()
        loop = asyncio.get_running_loop()

        def changed_elsewhere() -> None:  # called from the listener's thread
            with contextlib.suppress(RuntimeError):  # the loop closed while we were told
                loop.call_soon_threadsafe(self.notify)

        listener = self._store.listen(changed_elsewhere)
        try:
            await self._loop()
        finally:
            if listener is not None:
                await asyncio.to_thread(listener.stop)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # woken by an event, or by the next deadline
                await asyncio.wait_for(self._wake.wait(), timeout=self._sleep_s())
            self._wake.clear()
            try:
                self._store.requeue_expired()
                self._heartbeat()
                self._enforce_deadlines()
                await self._advance()
            except Exception:  # keep scheduling whatever one job did
                log.exception("scheduler step failed")

    def _sleep_s(self) -> float:
        pending = self._store.with_status(*_WAITING, JobStatus.IN_PROGRESS)
        longest = self._settings.poll_seconds  # other replicas' changes are seen within this
        soonest = min((deadline(j) for j in pending), default=self._clock() + longest)
        return min(max(soonest - self._clock(), 0.0), longest)

    def _heartbeat(self) -> None:
        """Renew the leases of this replica's jobs, and stop those a user stopped through another one."""
        for job in self._store.renew(self.replica, list(self._running), self._settings.lease_seconds):
            if job.status == JobStatus.STOPPING and job.job_id in self._running:
                self._running[job.job_id].job.request_stop()

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
        """With the embedded store this is the only server, so whatever a previous run left running
        goes back to the queue at once; with a shared database, expired leases do that instead."""
        if self._settings.database_url is not None:
            return
        for job in self._store.with_status(JobStatus.IN_PROGRESS, JobStatus.VALIDATING):
            self._store.update(job, status=JobStatus.SCHEDULED, owner=None, lease_until=None)
        for job in self._store.with_status(JobStatus.STOPPING):
            self._store.update(job, status=JobStatus.STOPPED, end_time=time.time())

    async def _advance(self) -> None:
        for job in self._store.with_status(JobStatus.SUBMITTED):
            claimed = self._store.move(job, JobStatus.SUBMITTED, JobStatus.VALIDATING)
            if claimed is not None:  # None: another replica is validating it
                await self._validate(claimed)
        models = {job.model_id for job in self._store.with_status(JobStatus.SCHEDULED)}
        for model in sorted(models):
            self._fill_slots(model)

    def _fill_slots(self, model: str) -> None:
        slots, lease = self._settings.jobs_per_model, self._settings.lease_seconds
        while (claimed := self._store.claim(model, self.replica, slots, lease)) is not None:
            self._start(claimed)

    async def _validate(self, job: BatchJob) -> None:
        uri = _input_uri(job)
        try:
            if self._staging is not None:
                staged = await asyncio.to_thread(self._staging.fetch, job.job_id, uri)
                job = self._store.update(job, request={**job.request, "stagedInput": str(staged)})
            files = list_inputs(self._input_path(job))
            spec = self._catalog.get(job.model_id)  # its default dialect reads bodies, as the engine's will
            quotas, max_line = self._settings.quotas, EngineSettings().max_line_bytes
            report = await asyncio.to_thread(validate_input, files, quotas, spec, max_line, uri)
        except BulkinferError as exc:
            self._store.update(job, status=JobStatus.FAILED, message=str(exc), end_time=time.time())
            return
        self._store.update(
            job, status=JobStatus.SCHEDULED, total=report.records, message=invalid_records(report)
        )

    def _input_path(self, job: BatchJob) -> Path:
        if self._staging is not None:
            return Path(job.request["stagedInput"])
        return self._buckets.path(_input_uri(job))

    def _output_path(self, job: BatchJob) -> Path:
        if self._staging is not None:
            return self._staging.output_dir(job.job_id)
        return self._buckets.path(_output_uri(job), must_exist=False)

    def _start(self, job: BatchJob) -> None:
        try:
            request = RunRequest(
                input=self._input_path(job),
                model=job.model_id,
                output=self._output_path(job),
                job_id=job.job_id,
                catalog_file=self._settings.models,
                state_dir=self._settings.engine_state_dir,
                state_url=self._settings.database_url,
                keep_partial=True,
                limits=self._limits,
                media=self._media,
            )
            local = LocalJob.open(request)
        except BulkinferError as exc:
            self._store.update(job, status=JobStatus.FAILED, message=str(exc), end_time=time.time())
            return
        counts = LiveCounts(processed=local.committed().processed)
        task = asyncio.create_task(self._execute(job, local, counts))
        self._running[job.job_id] = Running(local, task, counts)

    async def _execute(self, job: BatchJob, local: LocalJob, counts: LiveCounts) -> None:
        try:
            report = await local.execute(counts)
            if self._staging is not None:
                await asyncio.to_thread(self._staging.publish, job.job_id, _output_uri(job))
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
                owner=None,
                lease_until=None,
            )
        except asyncio.CancelledError:
            raise  # server shutting down: the job stays InProgress and resumes at the next start
        except Exception as exc:
            message = str(exc) if isinstance(exc, BulkinferError) else f"{type(exc).__name__}: {exc}"
            self._store.update(
                job,
                status=JobStatus.FAILED,
                message=message,
                end_time=time.time(),
                owner=None,
                lease_until=None,
            )
        finally:
            local.close()
            self._running.pop(job.job_id, None)
            self.notify()

    def stop(self, job: BatchJob) -> BatchJob:
        """Stop a job: a running one finishes its records in flight, then writes what it has."""
        running = self._running.get(job.job_id)
        if running is not None:
            running.job.request_stop()
        if job.status == JobStatus.IN_PROGRESS:  # here, or on the replica that holds its lease
            return self._store.update(job, status=JobStatus.STOPPING)
        return self._store.update(job, status=JobStatus.STOPPED, end_time=time.time())
