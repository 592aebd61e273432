"""One local run of a batch job: state file, lock, resume, the record pipeline, and finalization."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import orjson

from bulkinfer.dialects.registry import get_dialect
from bulkinfer.domain.job import TRANSITIONS, Counts, JobStatus, can_transition, new_job_id
from bulkinfer.domain.lineset import LineSet
from bulkinfer.domain.tally import MediaTally
from bulkinfer.domain.tenant import Grants
from bulkinfer.engine.cluster import (
    SHARDS_PER_ACTOR,
    ClusterUnavailable,
    RayExecutor,
    ShardWork,
    absolute_url,
    shard_lines,
    without_tally,
)
from bulkinfer.engine.committer import Committer, rebuild_chunks
from bulkinfer.engine.finalize import MANIFEST_NAME, finish_results, write_output
from bulkinfer.engine.progress import ProgressSink
from bulkinfer.engine.retry import RetryBase, carry_over, read_manifest
from bulkinfer.engine.runner import EngineSettings, RecordPipeline
from bulkinfer.engine.shards import ShardPlan, plan_shards
from bulkinfer.engine.validate import format_of_files
from bulkinfer.errors import BulkinferError, InputError, JobConflictError, JobLocked, UserError
from bulkinfer.faults import failpoint
from bulkinfer.formats.jsonl import count_lines
from bulkinfer.formats.manifest import ManifestInfo, build_manifest
from bulkinfer.formats.records import get_format, results_of_unrun
from bulkinfer.providers.base import JobContext, Provider
from bulkinfer.providers.catalog import Catalog, ImageSettings, ModelSpec
from bulkinfer.providers.cost import job_cost
from bulkinfer.providers.registry import load_provider
from bulkinfer.providers.remote.limits import LimitRegistry
from bulkinfer.storage.files import (
    DiskFull,
    InputFile,
    is_disk_full,
    list_inputs,
    read_blocks,
    remove_temp_files,
    write_durably,
)
from bulkinfer.store.state import DEFAULT_PATIENCE_S, ChunkRecord, JobRecord, StateStore, now

if TYPE_CHECKING:  # the media package (httpx, Pillow) loads only when a job runs
    from bulkinfer.media import MediaPolicy, MediaResolver, ObjectGet

STATE_DIR = ".bulkinfer"
PAUSE_CHECK_S = 0.5
COMMITS_POLL_S = 1.0
"""How often a job run elsewhere (on Ray) reads its progress from the state store."""

log = logging.getLogger(__name__)
T = TypeVar("T")


def media_policy(images: ImageSettings) -> MediaPolicy:
    """How a model's catalog entry says its images are checked and shrunk."""
    from bulkinfer.media import MediaPolicy

    return MediaPolicy(
        max_bytes=images.max_bytes,
        max_images_per_record=images.max_per_record,
        resize_max_side=images.max_side,
        resize_max_pixels=images.max_pixels,
        resize_format=images.format,
    )


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """Where a job may read the images its records reference from (besides its input's folder)."""

    fetch_allow: tuple[str, ...] = ()
    """Hosts or CIDRs that URL images may come from although they are private or loopback."""
    data_dir: Path | None = None
    """A service's data dir: ``s3://`` images come from its local buckets when no S3 endpoint is set."""
    s3_endpoint_url: str | None = None
    roots: tuple[Path, ...] = ()
    """Folders ``file://`` images may be read from."""
    grants: Grants | None = None
    """The ``s3://`` prefixes a service job's tenant may read images from; None reads any."""
    tally: MediaTally | None = None
    """Where a service counts images fetched and cache hits over all its jobs (for metrics)."""

    @classmethod
    def of_service(
        cls, fetch_allow: str | None, data_dir: Path, s3_endpoint_url: str | None
    ) -> MediaSettings:
        """A service's: ``fetch_allow`` is its comma-separated allowlist."""
        allow = tuple(h.strip() for h in (fetch_allow or "").split(",") if h.strip())
        return cls(allow, data_dir, s3_endpoint_url)

    def resolver(self, policy: MediaPolicy, decode_slots: asyncio.Semaphore | None = None) -> MediaResolver:
        from bulkinfer.media import FetchPolicy, FileReader, GuardedFetcher, MediaResolver

        fetcher = GuardedFetcher(FetchPolicy(max_bytes=policy.max_bytes, allow=self.fetch_allow))
        reader = FileReader(roots=self.roots, objects=self._objects(), max_bytes=policy.max_bytes)
        return MediaResolver(
            policy, fetcher=fetcher, reader=reader, decode_slots=decode_slots, tally=self.tally
        )

    def _objects(self) -> ObjectGet | None:
        from bulkinfer.media import granted_only

        objects = self._all_objects()
        if objects is None or self.grants is None:
            return objects
        return granted_only(objects, self.grants.may_read)

    def _all_objects(self) -> ObjectGet | None:
        from bulkinfer.media import local_buckets, s3fs_objects

        if self.s3_endpoint_url or self.data_dir is None:
            try:  # s3fs comes with the serve extra; without it s3:// images are refused with a message
                return s3fs_objects(self.s3_endpoint_url)
            except ImportError:
                return None
        # a symbolic link in a local bucket is granted by where it leads, not by its own name
        return local_buckets(self.data_dir, self.grants.may_read if self.grants else None)


@dataclass(frozen=True, slots=True)
class RunRequest:
    input: Path
    model: str
    output: Path
    job_id: str | None = None
    catalog_file: Path | None = None
    dialect: str | None = None
    settings: EngineSettings | None = None
    state_dir: Path | None = None
    """Where the state file and chunks live; by default OUTPUT/.bulkinfer (a service keeps its own)."""
    state_url: str | None = None
    """A database for the state instead of the file in ``state_dir`` (a service's PostgreSQL)."""
    keep_partial: bool = False
    """On stop, write the finished records and a manifest and end Stopped, as a service's Stop does,
    instead of leaving the job to be resumed."""
    store_patience_s: float = DEFAULT_PATIENCE_S
    """How long a state-store call waits out a database outage (a service keeps it under a lease)."""
    media: MediaSettings = MediaSettings()
    limits: LimitRegistry | None = field(default=None, compare=False)
    """Rate limits of remote models, shared by every job of the process (a service passes its own)."""
    input_within: Path | None = None
    """A folder every input file must resolve inside (a service's local bucket: no symlink out)."""
    retry_of: RetryBase | None = None
    """A new job is a retry of this finished job: it keeps its successes and runs the rest again."""
    record_format: str | None = None
    """The format of the input lines (see formats.records); None: found from the files' first lines."""
    deadline: float | None = None
    """When a service's job times out (epoch seconds): a provider batch API runs what it could not
    finish by then on its on-demand model."""
    executor: RayExecutor | None = field(default=None, compare=False)
    """Where the records run: None in this process; a `RayExecutor` on a Ray cluster's actors."""


@dataclass(frozen=True, slots=True)
class JobReport:
    job: JobRecord
    counts: Counts
    total_records: int
    output_dir: Path
    estimated_cost_usd: float | None
    """None where the model's price is not known."""
    error_samples: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None


JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _valid_job_id(job_id: str) -> str:
    """A job id names folders, so it may hold only letters, digits, '-' and '_'."""
    if not JOB_ID_PATTERN.fullmatch(job_id):
        rule = "up to 64 letters, digits, '-' or '_', starting with a letter or digit"
        raise UserError(f"invalid job id {job_id!r}: use {rule}")
    return job_id


def lock_path(work_dir: Path) -> Path:
    """The file a running job holds locked (``flock``): the lock goes with its process, however it ends."""
    return work_dir / "lock"


def lock_is_held(work_dir: Path) -> bool:
    """Whether a process is running the job of this work folder, which holds the job's lock until it ends
    (a killed process's lock is let go by the kernel). Probed by taking the lock without waiting and
    letting it go at once: a run starting in that instant is told the job is running, and may start again.
    """
    try:
        handle = lock_path(work_dir).open("r")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class LocalJob:
    """A job run in this process. Open it, ``await execute()``, then ``close()``."""

    def __init__(self, request: RunRequest, spec: ModelSpec, files: list[InputFile]) -> None:
        self.request = request
        self.spec = spec
        self.files = files
        self.job_id = _valid_job_id(request.job_id) if request.job_id else new_job_id()
        self.output_dir = request.output / self.job_id
        state_root = request.state_dir or request.output / STATE_DIR
        self.work_dir = state_root / self.job_id
        self.store_file = state_root / "state.db"
        """The state file, where no ``state_url`` names a database instead."""
        self._followed = Counts()
        self.chunk_dir = self.work_dir / "chunks"
        self.settings = request.settings or EngineSettings.for_model(spec)
        self._forced = get_dialect(request.dialect) if request.dialect else None
        found = request.record_format or format_of_files(files, self.settings.max_line_bytes)
        self.format = get_format(found)
        if request.retry_of is not None and found != "bedrock":  # (its carry-over reads Bedrock lines)
            raise UserError(f"retrying the failed records of {found} batch lines is not supported yet")
        self._lock: IO[str] | None = None
        self._pipeline: RecordPipeline | None = None
        self._executor = request.executor
        self._committer: Committer | None = None
        self._stop_requested = False
        self.writing: str | None = None
        """What the job is writing in a thread right now (its outputs, a retry's carried records): a
        thread cannot be interrupted, so an interrupt then waits for it rather than leave it running
        with the job's lock released."""
        self.paused: str | None = None
        """Why the model holds this job's records back right now (its provider is down), if it does."""
        self.activity: str | None = None
        """What the job's message says while it runs: why it is paused, or what its provider is doing
        (the provider jobs behind it)."""
        self._final_on_stop = JobStatus.STOPPED
        self._run_started = time.monotonic()
        self.store = (
            StateStore(request.state_url, patience_s=request.store_patience_s)
            if request.state_url
            else StateStore.at(self.store_file, patience_s=request.store_patience_s)
        )
        self.limits = request.limits or LimitRegistry(shared=self.store.rate_buckets())
        """Remote models' rate limits: a service's, or this run's, shared with every process on its store."""
        try:
            self.job = self._open_job()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, request: RunRequest) -> LocalJob:
        catalog = Catalog.load(request.catalog_file)
        spec = catalog.get(request.model)
        files = list_inputs(request.input, request.input_within)
        return cls(request, spec, files)

    # set-up

    def _check_own_folder(self) -> None:
        """A service job on local buckets (``input_within`` set) writes only into a folder of its own:
        one that is a symbolic link, put there to send its outputs into someone else's folder, is
        refused (a file link needs no check: a durable write replaces the link, not its target)."""
        if self.request.input_within is not None and self.output_dir.is_symlink():
            raise InputError(
                f"{self.job_id}: its output folder is a symbolic link; nothing is written through it"
            )

    def _open_job(self) -> JobRecord:
        self._check_own_folder()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        # Temp files of writes a kill interrupted: never part of a result.
        remove_temp_files(self.output_dir)
        remove_temp_files(self.chunk_dir)
        existing = self.store.get_job(self.job_id)
        options = {
            "dialect": self.request.dialect,
            "format": self.format.name,
            "inputs": {f.name: f.fingerprint for f in self.files},
        }
        if self.request.retry_of is not None:
            options["retry"] = self.request.retry_of.to_options()
        if existing is None:
            job = JobRecord(
                job_id=self.job_id,
                model=self.spec.name,
                input_uri=str(self.request.input.resolve()),
                output_uri=str(self.request.output.resolve()),
                status=JobStatus.SUBMITTED,
                created_at=now(),
                options=options,
            )
            self.store.create_job(job)
            self._take_back_chunks(self.request.retry_of.seed if self.request.retry_of else self.job_id)
            return job
        finished, _ = self._finished(existing)
        self._check_same(existing, options, finished)
        if finished:  # a kill may have interrupted the clean-up after its outputs were written
            shutil.rmtree(self.chunk_dir, ignore_errors=True)
        return existing

    def _take_back_chunks(self, seed: str) -> None:
        """A new job row over a chunk folder that holds files: the state was lost (a damaged state file
        moved aside). Take back the chunks that can be placed exactly; the others' records run again."""
        if not self.chunk_dir.is_dir() or not any(self.chunk_dir.iterdir()):
            return
        if self.format.name != "bedrock":  # (chunk lines are placed by their recordId: Bedrock's only)
            log.warning("job %s had no state: its %s records run again", self.job_id, self.format.name)
            shutil.rmtree(self.chunk_dir, ignore_errors=True)
            return
        rebuilt = rebuild_chunks(self.chunk_dir, self.files, seed, self.settings.max_line_bytes)
        self.store.add_chunks(self.job_id, rebuilt.chunks)
        records = sum(c.counts.processed for c in rebuilt.chunks)
        if rebuilt.chunks:
            log.warning(
                "job %s had no state: %d finished records taken back from %d chunk files",
                self.job_id,
                records,
                len(rebuilt.chunks),
            )
        for name, why in rebuilt.dropped.items():
            log.warning("job %s: chunk file %s dropped, its records run again: %s", self.job_id, name, why)
            (self.chunk_dir / name).unlink(missing_ok=True)

    def _check_same(self, job: JobRecord, options: dict[str, Any], finished: bool) -> None:
        problems = []
        if job.model != self.spec.name:
            problems.append(f"model {job.model!r}, not {self.spec.name!r}")
        if job.input_uri != str(self.request.input.resolve()):
            problems.append(f"input {job.input_uri}")
        if job.options.get("dialect") != options["dialect"]:
            problems.append(f"--dialect {job.options.get('dialect')}")
        if job.options.get("format", "bedrock") != options["format"]:
            problems.append(f"--format {job.options.get('format', 'bedrock')}")
        if "retry" in options and job.options.get("retry", {}).get("of") != options["retry"]["of"]:
            problems.append(f"retry of {job.options.get('retry', {}).get('of')}")
        if job.options.get("inputs") != options["inputs"] and not finished:
            problems.append("input files that have changed since (names, sizes or modification times)")
        if problems:
            raise JobConflictError(f"job {self.job_id} was started with " + "; ".join(problems))

    def _finished(self, job: JobRecord) -> tuple[bool, dict[str, Any] | None]:
        """Whether nothing is left to run, and the manifest to report then.

        A job is finished once it ends for good (Completed, PartiallyCompleted, Expired), and for a
        service (``keep_partial``) also once its stop was written: Stopped, with a manifest that says so.
        """
        if not TRANSITIONS[job.status]:
            return True, read_manifest(self.output_dir)
        if self.request.keep_partial and job.status == JobStatus.STOPPED:
            manifest = read_manifest(self.output_dir)
            if manifest is not None and manifest.get("status") == job.status.value:
                return True, manifest
        return False, None

    def _take_lock(self) -> None:
        handle = self.lock_path.open("a+")  # not "w": that would wipe a running job's pid
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise JobLocked(
                f"job {self.job_id} is already running in another process (pid {holder})"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    @property
    def lock_path(self) -> Path:
        return lock_path(self.work_dir)

    def close(self) -> None:
        """Release the job. A commit still running in its thread (the run was cancelled) is waited for
        first: the lock is what keeps the next run from taking the chunk folder while it writes."""
        if self._committer is not None:
            self._committer.settle()
        self.store.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def retry(self) -> RetryBase | None:
        """The finished job this one retries, if it is a retry job."""
        stored = self.job.options.get("retry")
        return RetryBase.from_options(stored) if stored else None

    @property
    def id_seed(self) -> str:
        """The job id whose seed generates missing record ids: a retry chain's root's, so they agree."""
        retry = self.retry
        return retry.seed if retry is not None else self.job_id

    # facts for the progress display

    @property
    def completed(self) -> bool:
        return self.job.status == JobStatus.COMPLETED

    def estimated_total(self) -> int:
        """The record count: exact once a run has read every file, a quick line count before."""
        if self.job.total_records is not None:
            return self.job.total_records
        if "estimated_records" not in self.job.options:
            estimate = sum(count_lines(read_blocks(f.path)) for f in self.files)
            options = {**self.job.options, "estimated_records": estimate}
            self.job = self.store.update_job(self.job, options=options)
        return int(self.job.options["estimated_records"])

    def committed(self) -> Counts:
        return self.store.counts(self.job_id)

    def request_stop(self, final: JobStatus = JobStatus.STOPPED) -> None:
        """Stop gracefully: also honoured when asked while the model is still loading.

        With ``keep_partial``, the job then ends in ``final``: Stopped for a user's stop,
        PartiallyCompleted when its time ran out.
        """
        self._stop_requested = True
        self._final_on_stop = final
        if self._pipeline is not None:
            self._pipeline.request_stop()
        if self._executor is not None:
            self._executor.request_stop()

    # running

    async def execute(
        self, progress: ProgressSink, status: Callable[[str], None] = lambda _: None
    ) -> JobReport:
        """Run the job to its end; a finished job (see `_finished`) returns its report at once.

        A failure is recorded (Failed) and raised; a full disk is raised as `DiskFull`. An interrupt of
        a local run records Stopped; a service's job (``keep_partial``) that is cancelled (shutdown, a
        lost lease) is left as it was, InProgress, to resume at its next open.
        """
        finished, manifest = self._finished(self.job)
        if finished:
            return self.report(manifest)
        self._run_started = time.monotonic()
        provider: Provider | None = None
        try:
            if self._executor is not None and self._executor.takes(self.spec):
                return await self._run_on(self._executor, progress, status)
            status(f"loading model {self.spec.name}")
            provider = await asyncio.to_thread(load_provider, self.spec, self.limits, self._context())
            return await self._run(provider, progress, status)
        except BaseException as exc:
            named = self._named(exc)
            if not self.request.keep_partial:
                self._record_end(named)
            elif isinstance(exc, Exception) and not isinstance(exc, ClusterUnavailable):
                await asyncio.to_thread(self._record_end, named)  # a service's: off its event loop
            # a service's job cancelled (shutdown, a lost lease) or its Ray cluster gone records
            # nothing: its row is the service's to keep, and the database may be what is failing
            if named is not exc:
                raise named from exc
            raise
        finally:
            if provider is not None:
                await provider.aclose()

    def _context(self) -> JobContext:
        """What a provider that runs the whole job (a provider batch API) is told of it."""
        batch = self.spec.remote.batch if self.spec.remote is not None else None
        on_demand = None
        if batch is not None and batch.on_demand is not None:
            spec = Catalog.load(self.request.catalog_file).get(batch.on_demand)
            on_demand = partial(load_provider, spec, self.limits)
        return JobContext(self.job_id, self.store.provider_jobs(), self.request.deadline, on_demand)

    def _named(self, exc: BaseException) -> BaseException:
        """A full disk said plainly, whichever write found it."""
        if isinstance(exc, DiskFull) or not is_disk_full(exc):
            return exc
        filename = getattr(exc, "filename", None)
        return DiskFull(Path(filename).parent if filename else self.work_dir)

    def _record_end(self, exc: BaseException) -> None:
        """Record how a run ended early: Failed for an error, Stopped for an interrupt.

        Nothing is undone: a job that completed meanwhile (finalize runs in a thread) stays Completed,
        and a Stopped job whose model failed to load stays Stopped, with the error as its message.
        Failing to record (the database is what failed) is logged; the caller raises ``exc`` anyway.
        """
        try:
            self._write_end(exc)
        except Exception as store_error:
            log.warning("job %s: could not record its end (%s): %s", self.job_id, exc, store_error)

    def _write_end(self, exc: BaseException) -> None:
        stored = self.store.get_job(self.job_id) or self.job
        self.job = stored
        failed = isinstance(exc, Exception)
        if not failed and self.request.keep_partial:
            if stored.status == JobStatus.IN_PROGRESS:
                self.job = self.store.update_job(stored, options=self._with_active_time(stored))
            return
        target = JobStatus.FAILED if failed else JobStatus.STOPPED
        message = _describe(exc) if failed else "interrupted"
        if can_transition(stored.status, target):
            self.job = self.store.update_job(
                stored, status=target, message=message, ended_at=now(), options=self._with_active_time(stored)
            )
        elif failed and not stored.status.is_terminal:  # Stopped: it stays resumable
            self.job = self.store.update_job(stored, message=message)

    def _with_active_time(self, job: JobRecord) -> dict[str, Any]:
        """Job options with this run's running time added, so rates leave out the gaps between runs."""
        ran = time.monotonic() - self._run_started
        return {**job.options, "active_seconds": job.options.get("active_seconds", 0.0) + ran}

    async def _start(self, progress: ProgressSink, status: Callable[[str], None]) -> Committer:
        """The job InProgress, its chunk folder repaired, a retry's successes carried over."""
        started = self.job.started_at or now()
        # store calls go to a thread: a service runs many jobs on one event loop
        self.job = await asyncio.to_thread(
            self.store.update_job, self.job, status=JobStatus.IN_PROGRESS, started_at=started, message=None
        )
        settings = self.settings
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        committer = self._committer = Committer(
            self.store, self.job_id, self.chunk_dir, settings.chunk_records, settings.commit_interval_s
        )
        await asyncio.to_thread(committer.repair)  # before orphans: a mismatched file becomes one
        await asyncio.to_thread(committer.remove_orphans)
        await self._carry_over(committer, progress, status)
        return committer

    async def _run(
        self, provider: Provider, progress: ProgressSink, status: Callable[[str], None]
    ) -> JobReport:
        committer = await self._start(progress, status)
        settings = self.settings
        media = self.request.media.resolver(media_policy(self.spec.images))
        self._pipeline = RecordPipeline(
            job_id=self.job_id,
            spec=self.spec,
            provider=provider,
            store=self.store,
            committer=committer,
            progress=progress,
            settings=settings,
            forced_dialect=self._forced,
            media=media,
            id_seed=self.id_seed,
            record_format=self.format,
        )
        if self._stop_requested:
            self._pipeline.request_stop()
        status(f"running {self.spec.name}")
        timer = asyncio.create_task(committer.run_timer())
        watch = asyncio.create_task(self._watch_pause(provider, status))
        try:
            await self._pipeline.run(self.files)
        finally:
            timer.cancel()
            watch.cancel()
            await media.aclose()
        return await self._end(self._pipeline.ran_everything, self._pipeline.record_counts, status)

    async def _run_on(
        self, executor: RayExecutor, progress: ProgressSink, status: Callable[[str], None]
    ) -> JobReport:
        """Run the job's records elsewhere (a Ray cluster's actors), shard by shard; outputs are
        written here, as a local run writes them."""
        watch: asyncio.Task[None] | None = None
        try:  # (whatever happens, `close` ends the actors and gives back the connection to Ray)
            await asyncio.to_thread(executor.ready, self.spec)
            await self._start(progress, status)
            work = self._shard_work()
            self._followed = await asyncio.to_thread(self.committed)  # (what the progress starts from)
            watch = asyncio.create_task(self._follow_commits(progress))
            status(f"starting actors of {self.spec.name} on Ray")
            actors = await executor.start(work)
            status(f"planning shards of {len(self.files)} files")  # (while the actors load the model)
            plan = await asyncio.to_thread(self._plan, actors * SHARDS_PER_ACTOR)
            status(f"running {self.spec.name} on {actors} Ray actors ({len(plan.shards)} shards)")
            ran_everything = await executor.run(work, plan, status)
        finally:
            if watch is not None:
                watch.cancel()
            await executor.close()
        await asyncio.to_thread(self._committer_of().remove_orphans)  # an actor killed mid-commit
        await self._read_commits(progress)
        return await self._end(ran_everything, plan.record_counts, status)

    def _shard_work(self) -> ShardWork:
        return ShardWork(
            job_id=self.job_id,
            id_seed=self.id_seed,
            spec=self.spec,
            settings=self.settings,
            record_format=self.format.name,
            dialect=self.request.dialect,
            # absolute: an actor's working directory is its raylet's, not this process's
            files=tuple(replace(f, path=f.path.absolute()) for f in self.files),
            chunk_dir=self.chunk_dir.absolute(),
            state_url=absolute_url(self.request.state_url),
            state_file=self.store_file.absolute(),
            store_patience_s=self.request.store_patience_s,
            media=without_tally(self.request.media),
        )

    def _plan(self, parts: int) -> ShardPlan:
        total = self.estimated_total()
        lines = shard_lines(total, parts, self.spec)
        return plan_shards(self.files, self.format, self.id_seed, lines, self.settings.max_line_bytes)

    def _committer_of(self) -> Committer:
        assert self._committer is not None
        return self._committer

    async def _follow_commits(self, progress: ProgressSink) -> None:
        """Advance ``progress`` by what other processes commit, polled from the state store."""
        while True:
            await asyncio.sleep(COMMITS_POLL_S)
            await self._read_commits(progress)

    async def _read_commits(self, progress: ProgressSink) -> None:
        try:
            counts = await asyncio.to_thread(self.committed)
        except Exception:  # (progress is a courtesy: the next poll tries again)
            log.warning("job %s: could not read its progress", self.job_id, exc_info=True)
            return
        last, self._followed = self._followed, counts
        if counts.processed > last.processed:
            progress.advance(
                counts.processed - last.processed,
                counts.errors - last.errors,
                counts.input_tokens - last.input_tokens,
                counts.output_tokens - last.output_tokens,
            )

    async def _end(
        self, ran_everything: bool, counts: dict[int, int], status: Callable[[str], None]
    ) -> JobReport:
        """Write the outputs of a run that read every record, or what finished of one stopped early."""
        chunk_dir = self.chunk_dir
        if not ran_everything and self.request.keep_partial:
            status("writing the finished records")
            final = self._final_on_stop
            return await self._writing("writing what finished", self._finalize, counts, chunk_dir, final)
        if not ran_everything:
            self.job = self.store.update_job(
                self.job, status=JobStatus.STOPPED, ended_at=now(), options=self._with_active_time(self.job)
            )
            return self.report()
        status("writing outputs")
        return await self._writing("writing outputs", self._finalize, counts, chunk_dir, JobStatus.COMPLETED)

    async def _writing(self, what: str, write: Callable[..., T], *args: Any) -> T:
        """Run ``write`` in a thread, saying what it writes while it does (see ``writing``)."""
        self.writing = what
        try:
            return await asyncio.to_thread(write, *args)
        finally:
            self.writing = None

    async def _carry_over(
        self, committer: Committer, progress: ProgressSink, status: Callable[[str], None]
    ) -> None:
        """A retry job's first step: commit its base's successes as its own (once; see engine.retry)."""
        retry = self.retry
        if retry is None or retry.carried is not None:
            return
        if self.request.retry_of is not None:  # where its outputs are now (a service fetches them anew)
            retry = replace(retry, outputs=self.request.retry_of.outputs)
        status(f"carrying over the successes of job {retry.job_id}")
        args = (self.files, retry, self.store, committer, self.job_id, self.settings)
        carried, committed = await self._writing(
            "carrying over", carry_over, *args, lambda: self._stop_requested
        )
        progress.advance(committed, 0, 0, 0)
        if carried is None:  # stopped part-way: the next run carries the rest over
            return
        options = {**self.job.options, "retry": replace(retry, carried=carried).to_options()}
        self.job = await asyncio.to_thread(self.store.update_job, self.job, options=options)

    async def _watch_pause(self, provider: Provider, status: Callable[[str], None]) -> None:
        """Show, in the progress line and the job's message, when the provider holds dispatch back."""
        shown: str | None = None
        while True:
            await asyncio.sleep(PAUSE_CHECK_S)
            self.paused = paused = provider.paused()
            self.activity = said = paused or provider.activity()
            if said != shown:
                status(said or f"running {self.spec.name}")
                try:
                    self.job = await asyncio.to_thread(self.store.update_job, self.job, message=said)
                except Exception:  # the message is a courtesy: shown live, stored at the next change
                    log.warning("job %s: could not store its message", self.job_id, exc_info=True)
                    continue
                shown = said

    def _finalize(self, record_counts: dict[int, int], chunk_dir: Path, final: JobStatus) -> JobReport:
        """Write outputs and manifest. Completed: every record, checked; Stopped: what finished."""
        complete = final == JobStatus.COMPLETED
        errors: list[str] = []
        failpoint("writing-outputs")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._check_own_folder()
        lists_every_request = self.format.unrun is not None
        for f in self.files:
            chunks = self.store.chunks(self.job_id, f.index)
            if complete or chunks or lists_every_request:
                target = self.output_dir / f"{f.name}.out"
                expected = record_counts.get(f.index) if complete else None  # (a stop releases some)
                write_output(chunks, chunk_dir, target, expected, errors)
                unrun = None if complete or not lists_every_request else self._unrun_lines(f, chunks, final)
                finish_results(target, self.format, unrun)
        total = sum(record_counts.values()) if complete else self.estimated_total()
        options = self._with_active_time(self.job)  # once: the manifest and the job row must agree
        ended = now()
        counts = self.committed()
        own = job_cost(self.spec, counts.input_tokens, counts.output_tokens)
        cost, retry = own.usd, self.retry
        if retry is not None:  # the combined records, the tokens and cost of both jobs
            counts, cost = retry.combined(counts, cost)
        info = ManifestInfo(
            job_id=self.job_id,
            model=self.spec.name,
            status=final.value,
            total_records=total,
            counts=counts,
            started_at=self.job.started_at or ended,
            ended_at=ended,
            inputs=[f.name for f in self.files],
            active_seconds=options["active_seconds"],
            estimated_cost_usd=cost,
            prices=own.prices.as_json(),
        )
        manifest = build_manifest(info)
        if retry is not None:
            manifest["retry"] = retry.summary(counts.processed)
        manifest["errorSamples"] = errors
        write_durably(self.output_dir / MANIFEST_NAME, [orjson.dumps(manifest, option=orjson.OPT_INDENT_2)])
        self.job = self.store.update_job(
            self.job,
            status=final,
            ended_at=ended,
            total_records=total,
            options=options,
        )
        failpoint("output-written")
        shutil.rmtree(chunk_dir, ignore_errors=True)  # if a kill stops this, the next open finishes it
        return self.report(manifest)

    def _unrun_lines(self, f: InputFile, chunks: list[ChunkRecord], final: JobStatus) -> Iterator[bytes]:
        """The lines of ``f``'s records that a stopped (cancelled) or timed-out (expired) job never ran,
        for formats whose results list every request."""
        unrun = self.format.unrun
        if unrun is None:
            return
        why = "expired" if final == JobStatus.PARTIALLY_COMPLETED else "cancelled"
        done = LineSet()
        for chunk in chunks:
            done = done.union(chunk.lines)
        yield from results_of_unrun(
            read_blocks(f.path),
            self.format,
            lambda record: unrun(record, why),
            source=f.name,
            seed=f"{self.id_seed}:{f.name}",
            max_line_bytes=self.settings.max_line_bytes,
            done=done,
        )

    def report(self, manifest: dict[str, Any] | None = None) -> JobReport:
        if manifest is not None:
            counts = Counts(
                processed=manifest["processedRecordCount"],
                success=manifest["successRecordCount"],
                errors=manifest["errorRecordCount"],
                input_tokens=manifest["inputTokenCount"],
                output_tokens=manifest["outputTokenCount"],
                error_codes=manifest.get("errorCodeCounts", {}),
            )
            total = manifest["totalRecordCount"]
        else:
            counts = self.committed()
            total = self.job.total_records or self.estimated_total()
        return JobReport(
            job=self.job,
            counts=counts,
            total_records=total,
            output_dir=self.output_dir,
            estimated_cost_usd=self._cost(counts, manifest),
            error_samples=list((manifest or {}).get("errorSamples", [])),
            manifest=manifest,
        )

    def _cost(self, counts: Counts, manifest: dict[str, Any] | None) -> float | None:
        if manifest is not None and "retry" in manifest:  # two jobs' tokens, maybe at two prices
            cost = manifest.get("estimatedCostUSD")
            return None if cost is None else float(cost)
        return job_cost(self.spec, counts.input_tokens, counts.output_tokens).usd


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BulkinferError) else f"{type(exc).__name__}: {exc}"
