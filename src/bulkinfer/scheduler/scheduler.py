"""Keeps each model's job slots full, and every job moving whatever fails around it.

Supervised loops (see `supervisor`), each small and on its own so none waits behind another:

- **leases**: renews the leases of the jobs this replica holds and stops work on any it no longer holds;
- **lease watchdog**: stops work on every job held here once the database has not confirmed the leases
  for most of a lease, before another replica may take them, so no job ever runs twice;
- **reaper**: lets go of other replicas' lapsed leases and clears what ended jobs left staged;
- **validation**: takes Submitted jobs (and Validating ones whose replica died) and validates them;
- **slots**: ends waiting jobs past their deadline, takes up Stopping jobs whose replica died, and starts
  Scheduled jobs the moment their model has a free slot.

They wake on events (a submit, a stop, a job ending here or, through LISTEN/NOTIFY, on another replica)
and at least every ``poll_seconds``. Every store call runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from bulkinfer.domain.job import SERVICE_ENDED, JobStatus
from bulkinfer.domain.tally import MediaTally
from bulkinfer.domain.tenant import EVERYTHING, NotGranted, Tenant, Tenants
from bulkinfer.engine.cluster import ClusterUnavailable, RayExecutor
from bulkinfer.engine.job import PAUSE_CHECK_S, LocalJob, MediaSettings, RunRequest
from bulkinfer.engine.retry import RetryBase, manifest_usage, read_manifest
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.errors import BulkinferError, InputError, JobLocked
from bulkinfer.faults import failpoint
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.formats.openai_batch import FileCheck, check_file
from bulkinfer.formats.records import OPENAI, get_format
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.extras import require_model
from bulkinfer.providers.remote.limits import LimitRegistry
from bulkinfer.scheduler.pressure import Pressure
from bulkinfer.scheduler.quotas import invalid_records, validate_input
from bulkinfer.scheduler.supervisor import Loops
from bulkinfer.settings import ServerSettings
from bulkinfer.storage.files import InputFile, list_inputs, read_blocks
from bulkinfer.storage.s3 import S3Staging
from bulkinfer.storage.uris import LocalBuckets
from bulkinfer.store.batch_jobs import LEASED, BatchJob, BatchJobStore
from bulkinfer.transient import Outage, is_transient_db, retrying_await

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(slots=True)
class LiveCounts:
    """Counts of a running job, updated as records finish (the engine's progress sink)."""

    processed: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def advance(self, records: int, errors: int, input_tokens: int, output_tokens: int) -> None:
        self.processed += records
        self.errors += errors
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens


@dataclass(slots=True)
class Running:
    job: LocalJob | None
    task: asyncio.Task[None]
    counts: LiveCounts = field(default_factory=LiveCounts)
    stop: JobStatus | None = None
    """The status a stop asked for before the engine job was open (Stopped, or PartiallyCompleted)."""

    def request_stop(self, final: JobStatus = JobStatus.STOPPED) -> None:
        self.stop = final
        if self.job is not None:
            self.job.request_stop(final)


def input_uri(request: dict[str, Any]) -> str:
    return str(request["inputDataConfig"]["s3InputDataConfig"]["s3Uri"])


def output_uri(request: dict[str, Any]) -> str:
    return str(request["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])


DEFAULT_TIMEOUT_HOURS = 24
VALIDATION_BATCH = 20
"""Submitted jobs one pass of the validation loop takes up (it looks again at once if there were more)."""
SWEEP_S = 60.0
"""How often staged copies of ended jobs are looked for."""
CONFLICT_RETRY_S = 1.0
"""A job whose files another run still holds (one winding down) waits this long before it queues again."""
CLUSTER_RETRY_S = 15.0
"""How long a job whose Ray cluster is gone waits before it is taken up again."""
WAITING_FOR_CLUSTER = "waiting for the Ray cluster: "
FENCE_FRACTION = 0.7
"""Work on held jobs stops once the database has not confirmed their leases for this part of a lease:
before another replica may take them (at the whole lease)."""
_WAITING = (JobStatus.SUBMITTED, JobStatus.VALIDATING, JobStatus.SCHEDULED)


def deadline(submit_time: float, request: dict[str, Any]) -> float:
    """When a job times out: ``timeoutDurationInHours`` after it was submitted (Bedrock's
    jobExpirationTime). A job still waiting then expires; a running one ends PartiallyCompleted."""
    hours = request.get("timeoutDurationInHours") or DEFAULT_TIMEOUT_HOURS
    return submit_time + hours * 3600


class LeaseLost(Exception):
    """This replica no longer holds the job: its work stops and nothing more is written for it."""


class Scheduler:
    def __init__(
        self,
        store: BatchJobStore,
        settings: ServerSettings,
        catalog: Catalog,
        clock: Callable[[], float] = time.time,
        pressure: Pressure | None = None,
        tenants: Tenants | None = None,
    ) -> None:
        self._clock = clock
        self._pressure = pressure or Pressure()
        self._store = store
        self._settings = settings
        self._catalog = catalog
        self._buckets = LocalBuckets(settings.data_dir)
        endpoint = settings.s3_endpoint_url
        self._staging = S3Staging(endpoint, settings.data_dir) if endpoint else None
        self._slots_wake = asyncio.Event()
        self._validation_wake = asyncio.Event()
        self._leases_wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[str, Running] = {}
        self._validating: set[str] = set()
        self.limits = LimitRegistry(shared=store.rate_buckets())  # every job on a model, every replica
        self.media_tally = MediaTally()  # (both read by the metrics)
        self._media = replace(
            MediaSettings.of_service(settings.fetch_allow, settings.data_dir, settings.s3_endpoint_url),
            tally=self.media_tally,
        )
        self._tenants = tenants or Tenants(open=True)
        self._loops = Loops()
        self._lease_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leases")
        self._lease_confirmed = time.monotonic()
        self._next_sweep = 0.0
        self.replica = uuid.uuid4().hex[:16]

    # what the API asks of it (from its worker threads)

    def notify(self) -> None:
        """Something changed: look at the store again now. Safe to call from any thread."""
        loop = self._loop
        if loop is None:
            self._wake_all()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while we were told
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        self._slots_wake.set()
        self._validation_wake.set()
        self._leases_wake.set()  # a job held here may have been stopped through another replica

    def stopped(self, job_id: str) -> None:
        """A stop of this job was recorded: if it runs here, it stops now. Safe from any thread."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stop_here, job_id)

    def _stop_here(self, job_id: str) -> None:
        running = self._running.get(job_id)
        if running is not None:
            running.request_stop()
        self._wake_all()

    def live_counts(self, job_id: str) -> LiveCounts | None:
        running = self._running.get(job_id)
        return running.counts if running else None

    def running_counts(self) -> dict[str, LiveCounts]:
        """Each job running here and its live counts (a copy of the mapping; the counts go on moving)."""
        return {job_id: running.counts for job_id, running in self._running.items()}

    def paused(self, job_id: str) -> str | None:
        """Why a job running here is held back (its model's provider is down), if it is."""
        running = self._running.get(job_id)
        return running.job.paused if running and running.job else None

    def activity(self, job_id: str) -> str | None:
        """What a job running here is doing, as its message says: why it is paused, or its provider's
        jobs (a provider batch API's)."""
        running = self._running.get(job_id)
        return running.job.activity if running and running.job else None

    # the loops

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self._store.shared:
            # The embedded store has one server: whatever a previous run held is nobody's now.
            released = await self._db(self._store.release_expired, True)
            if released:
                log.info("took up %d jobs left by the previous run", released)
        listener = self._store.listen(self.notify)
        self._loops.start("leases", self._leases_step)
        self._loops.start("lease watchdog", self._watchdog_step)
        self._loops.start("reaper", self._reaper_step)
        self._loops.start("validation", self._validation_step)
        self._loops.start("slots", self._slots_step)
        self._wake_all()
        try:
            await asyncio.Event().wait()  # the loops run until the server shuts down
        finally:
            await self._loops.stop()
            if listener is not None:
                await asyncio.to_thread(listener.stop)

    async def close(self) -> None:
        """Shut down: jobs running here stop where they are (no outputs written) and stay InProgress, to
        resume from their committed chunks at the next start or on another replica."""
        await self._loops.stop()
        running = list(self._running.values())
        for item in running:
            item.task.cancel()
        await asyncio.gather(*(r.task for r in running), return_exceptions=True)
        self._lease_thread.shutdown(wait=False, cancel_futures=True)

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call, in a thread so the event loop never waits on the database."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _lease_call(self, fn: Callable[..., T], *args: Any) -> T:
        """A store call of the leases loop, on its own thread: never queued behind validation, commits
        or other store calls waiting out an outage in the shared pool."""
        return await asyncio.get_running_loop().run_in_executor(self._lease_thread, fn, *args)

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:
        # (asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that comes as its
        # wait ends, and a loop that swallows its cancel keeps `close` waiting for good)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout, 0.0)):
                await event.wait()
        event.clear()

    # leases

    async def _leases_step(self) -> None:
        lease = self._settings.lease_seconds
        await self._wait(self._leases_wake, lease / 4)
        held = list(self._running) + sorted(self._validating)
        asked = time.monotonic()
        async with asyncio.timeout(lease / 3):
            rows = await self._lease_call(self._store.renew, self.replica, held, lease)
        self._lease_confirmed = asked
        self._check_held({row.job_id: row for row in rows}, held)

    async def _watchdog_step(self) -> None:
        """Stop work on held jobs once their leases may have lapsed unseen (see `FENCE_FRACTION`),
        checked on its own, however long the leases loop waits on a database that does not answer."""
        await asyncio.sleep(self._settings.lease_seconds / 10)
        self._fence_if_out_of_touch()

    async def _reaper_step(self) -> None:
        """Take up other replicas' lapsed leases, and clear what ended jobs left staged."""
        await asyncio.sleep(self._settings.lease_seconds / 2)
        if await self._db(self._store.release_expired):
            self._slots_wake.set()  # another replica's jobs are free to take
            self._validation_wake.set()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_S
            await self._sweep_staging()

    def _check_held(self, stored: dict[str, BatchJob], held: list[str]) -> None:
        for job_id in held:
            row = stored.get(job_id)
            if row is not None and row.status in SERVICE_ENDED and row.owner is None:
                continue  # it just ended (its task is closing it)
            if row is None or row.owner != self.replica or row.status not in LEASED:
                self._fence(job_id, f"no longer held here ({row.status.value if row else 'gone'})")
            elif row.status == JobStatus.STOPPING and job_id in self._running:
                self._running[job_id].request_stop()

    def _fence_if_out_of_touch(self) -> None:
        if not self._store.shared:
            return  # the embedded store has one replica: nobody else can take its jobs
        silent = time.monotonic() - self._lease_confirmed
        if silent > FENCE_FRACTION * self._settings.lease_seconds and (self._running or self._validating):
            log.error(
                "no word from the job database for %.1f s: stopping work on every job held here", silent
            )
            for job_id in list(self._running) + list(self._validating):
                self._fence(job_id, "the job database stopped answering")

    def _fence(self, job_id: str, why: str) -> None:
        """Stop working on a job at once, writing nothing more for it: another replica may take it."""
        running = self._running.get(job_id)
        if running is not None and not running.task.done():
            log.warning("job %s: %s; its work here stops", job_id, why)
            running.task.cancel(msg=why)
        self._validating.discard(job_id)  # its validation's result will not be stored (owner check)

    # validation

    async def _validation_step(self) -> None:
        await self._wait(self._validation_wake, self._settings.poll_seconds)
        submitted = await self._db(self._store.with_status, JobStatus.SUBMITTED, limit=VALIDATION_BATCH)
        for job in submitted:
            await self._pressure.calm()
            taken = await self._take_for_validation(job)
            if taken is not None:
                await self._validate(taken)
        if len(submitted) == VALIDATION_BATCH:
            self._validation_wake.set()  # more are waiting
        for job in await self._db(self._store.unowned, JobStatus.VALIDATING):
            adopted = await self._db(self._store.adopt, job, self.replica, self._settings.lease_seconds)
            if adopted is not None:
                log.info("job %s: validating it again (its replica stopped)", job.job_id)
                await self._validate(adopted)

    async def _take_for_validation(self, job: BatchJob) -> BatchJob | None:
        lease_until = time.time() + self._settings.lease_seconds
        # None: another replica took it first, or it was stopped meanwhile
        return await self._db(
            self._store.transition, job, JobStatus.VALIDATING, owner=self.replica, lease_until=lease_until
        )

    async def _validate(self, job: BatchJob) -> None:
        self._validating.add(job.job_id)
        try:
            failpoint("validating")
            outcome = await self._validated(job)
        finally:
            self._validating.discard(job.job_id)
        new, changes = outcome
        done = await self._db(self._store.transition, job, new, held_by=self.replica, **changes)
        if done is None:
            log.info("job %s changed while it was validated (stopped, expired, or taken over)", job.job_id)
            await self._discard_if_ended(job.job_id)
        elif new == JobStatus.FAILED:
            await self._discard_staging(job.job_id)
        elif new == JobStatus.SCHEDULED:
            failpoint("scheduled")
            self._slots_wake.set()

    async def _validated(self, job: BatchJob) -> tuple[JobStatus, dict[str, Any]]:
        """The status validation moves the job to, with its changes."""
        uri = input_uri(job.request)
        fmt = get_format(record_format(job.request))
        try:
            # an OpenAI batch's model is checked below, with the line of each request naming it
            await asyncio.to_thread(self._check_grants, job, fmt is not OPENAI)
            if self._staging is not None:
                staged = await self._stage(job, uri)
                updated = await self._db(self._store.update, job, held_by=self.replica, request=staged)
                job = updated or job
            within = self._buckets.bucket_dir(uri) if self._staging is None else None
            files = await asyncio.to_thread(list_inputs, self._input_path(job), within)
            if fmt is OPENAI:
                check = await asyncio.to_thread(self._check_openai_file, job, files)
                if check.error_count:
                    return JobStatus.FAILED, _openai_invalid(job, check)
            spec = self._catalog.get(job.model_id)  # its default dialect reads bodies, as the engine's will
            require_model(spec)
            quotas, max_line = self._settings.quotas, EngineSettings().max_line_bytes
            usable = [s for s in self._catalog if self._tenants.get(job.tenant).may_use(s.name)]
            checks = (files, quotas, spec, max_line, uri, usable, fmt, fmt is not OPENAI)
            report = await asyncio.to_thread(validate_input, *checks)
        except BulkinferError as exc:
            message = self._public(job, str(exc))
            return JobStatus.FAILED, {"message": message, "end_time": time.time(), "owner": None}
        except OSError as exc:  # S3 past its outage limit, or the data dir itself failing
            message = self._public(job, f"validating: {type(exc).__name__}: {exc}")
            return JobStatus.FAILED, {"message": message, "end_time": time.time(), "owner": None}
        changes = {"total": report.records, "message": invalid_records(report), "owner": None}
        return JobStatus.SCHEDULED, {**changes, "lease_until": None}

    def _check_grants(self, job: BatchJob, model: bool = True) -> None:
        """The job's tenant may still use its model, read its input and write its output: grants checked
        at create may have been taken away since (a changed tenants file and a restart)."""
        tenant = self._tenants.get(job.tenant)
        if model:
            tenant.check_model(job.model_id)
            self._catalog.get(job.model_id, tenant.may_use)  # (an unknown one's error names only its models)
        source, target = input_uri(job.request), output_uri(job.request)
        tenant.check_read(source, "inputDataConfig.s3InputDataConfig.s3Uri")
        tenant.check_write(target, "outputDataConfig.s3OutputDataConfig.s3Uri")
        if self._staging is None and not tenant.grants.may_write(EVERYTHING):
            self._check_links(tenant, source, target)

    def _check_links(self, tenant: Tenant, source: str, target: str) -> None:
        """In local buckets a folder or file may be a symbolic link: each input file and the output
        folder are granted by where they lead, so a link in one tenant's folder to another's (in the
        same bucket) reads or writes nothing of the other's."""
        buckets = self._buckets
        for file in list_inputs(buckets.path(source), buckets.bucket_dir(source)):
            if not tenant.grants.may_read(buckets.uri_of(file.path, source)):
                raise NotGranted(f"{source}: {file.name} leads outside what tenant {tenant.name!r} may read")
        if not tenant.grants.may_write(buckets.uri_of(buckets.path(target, must_exist=False), target)):
            raise NotGranted(f"{target}: leads outside what tenant {tenant.name!r} may write")

    def _check_openai_file(self, job: BatchJob, files: list[InputFile]) -> FileCheck:
        """An OpenAI batch's input file checked line by line as OpenAI does (see formats.openai_batch)."""
        tenant = self._tenants.get(job.tenant)
        names = {spec.name for spec in self._catalog}

        def usable(model: str) -> bool:
            return model == job.model_id and model in names and tenant.may_use(model)

        max_line = EngineSettings().max_line_bytes
        lines = (line for f in files for line in split_lines(read_blocks(f.path), max_line))
        return check_file(lines, str(job.request.get("endpoint", "")), usable)

    def _public(self, job: BatchJob, message: str) -> str:
        """A message for the job's owner: the server's own paths in it told as the s3:// URIs they
        stand for, and any other path under the data dir hidden."""
        swaps = [(str(self._buckets.root) + "/", "s3://")]
        if self._staging is not None:
            source = input_uri(job.request).rstrip("/")
            staged = job.request.get("stagedInput", "")
            base = source.rsplit("/", 1)[0] if staged.endswith(".jsonl") else source
            staged_dir = str(self._staging.input_dir(job.job_id))
            swaps.append((staged_dir + ".partial", base))  # (where objects land before all are there)
            swaps.append((staged_dir, base))
            swaps.append((str(self._staging.output_dir(job.job_id)), output_uri(job.request).rstrip("/")))
        for data_dir in {str(self._settings.data_dir.resolve()), str(self._settings.data_dir)}:
            swaps.append((data_dir, "<data-dir>"))
        for local, public in swaps:
            message = message.replace(local, public)
        return message

    async def _stage(self, job: BatchJob, uri: str) -> dict[str, Any]:
        """Copy the job's input objects here, waiting out an S3 outage (shown in the job's message)."""
        assert self._staging is not None
        staging = self._staging
        on_wait = self._show_outage(job, "validating")
        patience, most = self._settings.outage_seconds, self._settings.max_job_bytes
        staged = await asyncio.to_thread(
            staging.fetch, job.job_id, uri, on_wait=on_wait, patience_s=patience, max_bytes=most
        )
        return {**job.request, "stagedInput": str(staged)}

    def _show_outage(self, job: BatchJob, doing: str) -> Callable[[Outage], None]:
        """A callback (run in a worker thread) that puts an outage in the job's message."""

        def show(outage: Outage) -> None:
            with contextlib.suppress(Exception):  # the message is a courtesy; the retry goes on
                self._store.update(job, held_by=self.replica, message=f"{doing}: {outage}")

        return show

    async def _discard_staging(self, job_id: str) -> None:
        """Remove an ended job's staged copies (S3 endpoint only)."""
        if self._staging is not None:
            await asyncio.to_thread(self._staging.discard, job_id)

    async def _discard_if_ended(self, job_id: str) -> None:
        if self._staging is None:
            return
        job = await self._db(self._store.get, job_id)
        if job is None or job.status in SERVICE_ENDED:
            await self._discard_staging(job_id)

    async def _sweep_staging(self) -> None:
        """Discard what ended jobs left staged: stopped or expired elsewhere, or a crash between."""
        if self._staging is None:
            return
        for job_id in await asyncio.to_thread(self._staging.staged_jobs):
            if job_id not in self._running and job_id not in self._validating:
                await self._discard_if_ended(job_id)

    def _input_path(self, job: BatchJob) -> Path:
        if self._staging is not None:
            return Path(job.request["stagedInput"])
        return self._buckets.path(input_uri(job.request))

    def _output_path(self, job: BatchJob) -> Path:
        if self._staging is not None:
            return self._staging.output_dir(job.job_id)
        return self._buckets.path(output_uri(job.request), must_exist=False)

    # slots

    async def _slots_step(self) -> None:
        await self._wait(self._slots_wake, await self._sleep_s())
        await self._enforce_deadlines()
        for job in await self._db(self._store.unowned, JobStatus.STOPPING):
            adopted = await self._db(self._store.adopt, job, self.replica, self._settings.lease_seconds)
            if adopted is not None:
                log.info("job %s: writing what it finished (its replica stopped)", job.job_id)
                timed_out = adopted.expires_at is not None and adopted.expires_at <= self._clock()
                self._start(adopted, stop=JobStatus.PARTIALLY_COMPLETED if timed_out else JobStatus.STOPPED)
        for model in await self._db(self._store.models_with, JobStatus.SCHEDULED):
            await self._fill_slots(model)

    async def _sleep_s(self) -> float:
        soonest = await self._db(self._store.next_expiry, self._clock(), *_WAITING, JobStatus.IN_PROGRESS)
        longest = self._settings.poll_seconds  # other replicas' changes are seen within this
        if soonest is None:
            return longest
        return min(max(soonest - self._clock(), 0.0), longest)

    async def _enforce_deadlines(self) -> None:
        now = self._clock()
        for job in await self._db(self._store.expired, now, *_WAITING, JobStatus.IN_PROGRESS):
            running = self._running.get(job.job_id)
            if running is not None:
                running.request_stop(JobStatus.PARTIALLY_COMPLETED)  # it ends when its batches do
            elif job.status == JobStatus.SCHEDULED and job.start_time is not None:
                # it ran before (its replica died): it keeps what it finished, as a running one does
                await self._db(self._store.transition, job, JobStatus.STOPPING, owner=None, lease_until=None)
            elif job.status in _WAITING:
                message = "the job did not start before its timeout"
                changes = {"message": message, "end_time": now, "owner": None, "lease_until": None}
                if await self._db(self._store.transition, job, JobStatus.EXPIRED, **changes):
                    await self._discard_staging(job.job_id)

    async def _fill_slots(self, model: str) -> None:
        slots, lease = self._settings.jobs_per_model, self._settings.lease_seconds
        await self._pressure.calm()
        while (claimed := await self._db(self._store.claim, model, self.replica, slots, lease)) is not None:
            self._start(claimed)

    # running a job

    def _start(self, job: BatchJob, stop: JobStatus | None = None) -> None:
        task = asyncio.create_task(self._execute(job), name=f"job-{job.job_id}")
        self._running[job.job_id] = Running(None, task, stop=stop)
        task.add_done_callback(lambda _: self._ended(job.job_id, task))

    def _ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._running.get(job_id) is not None and self._running[job_id].task is task:
            del self._running[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s: its task failed", job_id, exc_info=task.exception())
        self._wake_all()

    async def _execute(self, job: BatchJob) -> None:
        failpoint("in-progress")
        running = self._running[job.job_id]
        try:
            # a tenant may have lost a grant since the job validated, or a link in a local bucket changed
            await asyncio.to_thread(self._check_grants, job)
            retry_of = await self._retry_of(job)
            local = await _open(self._run_request(job, retry_of))
        except JobLocked as exc:  # its files are still held by a run winding down: try later
            log.warning("job %s: %s; it is taken up again shortly", job.job_id, exc)
            await asyncio.sleep(CONFLICT_RETRY_S)
            await self._let_go(job)
            return
        except BulkinferError as exc:
            await self._end(job, JobStatus.FAILED, message=self._public(job, str(exc)))
            return
        except Exception as exc:  # a surprise before the job opened: it ends, never left InProgress
            if _database_outage(exc):
                log.warning("job %s: the database stopped answering (%s); letting it go", job.job_id, exc)
                await self._let_go(job)
                return
            log.exception("job %s could not be opened", job.job_id)
            await self._end(job, JobStatus.FAILED, message=self._public(job, f"{type(exc).__name__}: {exc}"))
            return
        cluster_gone: ClusterUnavailable | None = None
        try:  # from here on the job is open: whatever happens, close() releases its lock
            running.job = local
            if (job.message or "").startswith(WAITING_FOR_CLUSTER):  # (it was, and runs now)
                cleared: BatchJob | None = await self._db(
                    self._store.update, job, held_by=self.replica, message=None
                )
                job = cleared or job
            committed = await asyncio.to_thread(local.committed)
            running.counts.processed = committed.processed
            running.counts.input_tokens = committed.input_tokens
            running.counts.output_tokens = committed.output_tokens
            if running.stop is not None:
                local.request_stop(running.stop)
            await self._finish(job, local, running.counts)
        except (asyncio.CancelledError, LeaseLost):
            raise  # shut down or fenced: the job resumes where it is held next
        except ClusterUnavailable as exc:  # not the job's fault: it resumes once the cluster is back
            cluster_gone = exc
        except Exception as exc:
            if _database_outage(exc):  # not the job's fault: it resumes once the database is back
                log.warning("job %s: the database stopped answering (%s); letting it go", job.job_id, exc)
                await self._let_go(job)
                return
            message = str(exc) if isinstance(exc, BulkinferError) else f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed", job.job_id)
            await self._end(job, JobStatus.FAILED, message=self._public(job, message))
        finally:
            await close_job(local)
        if cluster_gone is not None:
            await self._wait_for_cluster(job, cluster_gone)

    async def _wait_for_cluster(self, job: BatchJob, why: ClusterUnavailable) -> None:
        """Say why a job waits, hold it a while (a cluster down answers at once: taken up again at once,
        it would spin), then let it go to be taken up again from where it is."""
        log.warning("job %s: %s; it is taken up again in %g s", job.job_id, why, CLUSTER_RETRY_S)
        waiting = self._public(job, f"{WAITING_FOR_CLUSTER}{why}")[:2048]
        await self._say(job, waiting)
        await asyncio.sleep(CLUSTER_RETRY_S)
        if not (job.message or "").startswith(WAITING_FOR_CLUSTER):
            await self._say(job, job.message)  # (validation's word on invalid records, kept)
        await self._let_go(job)

    async def _say(self, job: BatchJob, message: str | None) -> None:
        try:
            await self._db(self._store.update, job, held_by=self.replica, message=message)
        except Exception:  # (the message is a courtesy)
            log.warning("job %s: could not store its message", job.job_id, exc_info=True)

    async def _let_go(self, job: BatchJob) -> None:
        """Give up holding a job so it is taken up again (here or elsewhere) from where it is:
        InProgress back to Scheduled, Stopping left without an owner."""

        async def write() -> None:
            current = await self._db(self._store.get, job.job_id)
            if current is None or current.owner != self.replica:
                return
            free = {"owner": None, "lease_until": None}
            if current.status == JobStatus.IN_PROGRESS:
                await self._db(
                    self._store.transition, current, JobStatus.SCHEDULED, held_by=self.replica, **free
                )
            else:
                await self._db(self._store.update, current, held_by=self.replica, **free)

        await retrying_await(
            write,
            what="the job database",
            transient=is_transient_db,
            patience_s=self._settings.outage_seconds,
        )

    async def _finish(self, job: BatchJob, local: LocalJob, counts: LiveCounts) -> None:
        pauses = asyncio.create_task(self._note_pauses(job, local), name=f"pauses-{job.job_id}")
        try:
            report = await local.execute(counts)
        finally:
            pauses.cancel()
            await asyncio.gather(pauses, return_exceptions=True)
        if self._staging is not None:
            await self._publish(job)
        c = report.counts
        await self._end(
            job,
            report.job.status,
            total=report.total_records,
            processed=c.processed,
            success=c.success,
            errors=c.errors,
            input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
            message=job.message,  # validation's word on invalid records; no outage is current any more
        )

    async def _note_pauses(self, job: BatchJob, local: LocalJob) -> None:
        """Put each time the job's provider stops answering, and answers again, on its timeline."""
        noted: str | None = None
        while True:
            await asyncio.sleep(PAUSE_CHECK_S)
            paused = local.paused
            if paused == noted:
                continue
            name, reason = ("job.paused", paused) if paused else ("job.answering", f"{job.model_id} answers")
            try:
                await self._db(self._store.note, job, name, reason)
            except Exception:  # the timeline is a courtesy: the job goes on, the next change is noted
                log.warning("job %s: could not store %s", job.job_id, name, exc_info=True)
            noted = paused

    async def _publish(self, job: BatchJob) -> None:
        """Upload the outputs, waiting out an S3 outage with the job InProgress and saying why."""
        assert self._staging is not None
        staging = self._staging
        on_wait = self._show_outage(job, "publishing")
        uri = output_uri(job.request)
        patience = self._settings.outage_seconds
        await asyncio.to_thread(staging.publish, job.job_id, uri, on_wait=on_wait, patience_s=patience)

    async def _end(self, job: BatchJob, final: JobStatus, **changes: Any) -> None:
        """Record how the job ended, from whatever status it is in now (a stop may have come meanwhile),
        retrying through database outages; nothing is written if this replica no longer holds it."""

        async def write() -> None:
            for _ in range(5):  # each try reads the status afresh; a concurrent change makes another
                current = await self._db(self._store.get, job.job_id)
                if current is None or current.owner != self.replica:
                    raise LeaseLost(f"job {job.job_id} is no longer held here")
                ended = {"end_time": time.time(), "owner": None, "lease_until": None, **changes}
                if await self._db(self._store.transition, current, final, held_by=self.replica, **ended):
                    await self._discard_staging(job.job_id)
                    return
            raise LeaseLost(f"job {job.job_id} kept changing while its end was written")

        await retrying_await(
            write,
            what="the job database",
            transient=is_transient_db,
            patience_s=self._settings.outage_seconds,
        )

    async def _retry_of(self, job: BatchJob) -> RetryBase | None:
        """A retry job's base: its output files (fetched here from S3, once) and its tokens and cost."""
        retry = job.request.get("retryOf")
        if not retry:
            return None
        base = await self._db(self._store.get, retry["jobId"])
        if base is None or base.tenant != job.tenant:
            raise InputError(f"job {retry['jobId']}, which this job retries, is gone")
        uri = f"{output_uri(base.request).rstrip('/')}/{base.job_id}"
        if self._staging is not None:
            on_wait, patience = (
                self._show_outage(job, "fetching the base's outputs"),
                self._settings.outage_seconds,
            )
            fetch = self._staging.fetch_outputs
            try:
                folder = await asyncio.to_thread(fetch, job.job_id, uri, on_wait=on_wait, patience_s=patience)
            except OSError as exc:  # S3 past its outage limit: the job fails, saying so
                raise InputError(f"fetching the outputs of job {base.job_id}: {exc}") from exc
        else:
            folder = self._buckets.path(uri, must_exist=False)
            granted = self._tenants.get(job.tenant).grants.may_read(self._buckets.uri_of(folder, uri))
            if folder.is_symlink() or not granted:
                raise NotGranted(f"{uri}: the outputs of job {base.job_id} may not be read")
        manifest = await asyncio.to_thread(read_manifest, folder) or {}
        input_tokens, output_tokens, cost = manifest_usage(manifest, base.job_id)
        return RetryBase(
            job_id=base.job_id,
            seed=str(retry["seed"]),
            outputs=str(folder),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            estimated_cost_usd=cost,
        )

    def _run_request(self, job: BatchJob, retry_of: RetryBase | None = None) -> RunRequest:
        return RunRequest(
            input=self._input_path(job),
            input_within=self._buckets.bucket_dir(input_uri(job.request)) if self._staging is None else None,
            model=job.model_id,
            output=self._output_path(job),
            job_id=job.job_id,
            catalog_file=self._settings.models,
            state_dir=self._settings.engine_state_dir,
            state_url=self._settings.database_url,
            keep_partial=True,
            store_patience_s=self._settings.lease_seconds / 2,  # then the job is let go, not run blind
            limits=self.limits,
            media=replace(self._media, grants=self._tenants.get(job.tenant).grants),
            retry_of=retry_of,
            record_format=record_format(job.request),
            deadline=job.expires_at,
            executor=self._executor(),
        )

    def _executor(self) -> RayExecutor | None:
        """A job's own executor (it holds the job's actors): None runs the job in this process."""
        settings = self._settings
        return RayExecutor(settings.ray_address, settings.ray_actors) if settings.executor == "ray" else None


def _openai_invalid(job: BatchJob, check: FileCheck) -> dict[str, Any]:
    """A failed OpenAI batch's changes: its errors, each with its line, and a message saying them."""
    first = check.errors[0]
    where = f"line {first.line}: " if first.line else ""
    message = f"{check.error_count:,} error(s) in the input file; first: {where}{first.message}"
    errors = [e.to_wire() for e in check.errors]
    details = {**(job.details or {}), "errors": errors, "errorCount": check.error_count}
    return {"message": message, "details": details, "end_time": time.time(), "owner": None}


def record_format(request: dict[str, Any]) -> str:
    """The format of a job's input lines: Bedrock's, unless the API that made it says otherwise."""
    return str(request.get("recordFormat", "bedrock"))


def _database_outage(exc: BaseException) -> bool:
    """Whether an error (or what caused it) is the database being away."""
    seen: BaseException | None = exc
    while seen is not None:
        if is_transient_db(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_closing: set[asyncio.Task[None]] = set()
"""Closes under way that a cancellation left running (held here so they are not collected)."""


async def close_job(job: LocalJob) -> None:
    """Close a job in a thread, whatever cancels us meanwhile (a fence, repeated; a shutdown).

    A close cancelled while it waited for a free thread (all busy retrying a database that is down)
    would never run: the job's file lock would stay held by this process, and every replica would find
    the job "already running" for good. Shielded, the close runs once a thread is free.
    """
    closing = asyncio.ensure_future(asyncio.to_thread(job.close))
    _closing.add(closing)
    closing.add_done_callback(_closing.discard)
    await asyncio.shield(closing)


async def _open(request: RunRequest) -> LocalJob:
    """Open a job in a thread; if we are cancelled meanwhile, the job is closed once open (it holds a
    file lock that would otherwise keep the job from ever running here again)."""
    opening = asyncio.ensure_future(asyncio.to_thread(LocalJob.open, request))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[LocalJob]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
