"""The record pipeline of one job: read, translate, micro-batch, infer, render, commit.

Reading is a stream: at most ``blocks_in_flight`` blocks of records are between the reader and the
committer at any time, so memory stays flat whatever the input size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bulkinfer.dialects.base import Dialect
from bulkinfer.domain.lineset import LineSet
from bulkinfer.domain.request import ChatRequest, ImagePart, Native, Outcome, RecordError, Request, Unsent
from bulkinfer.engine.batching import Item, plan_batches
from bulkinfer.engine.committer import Committer, Finished
from bulkinfer.engine.prepare import Prepared, at_line, finish, prepare, sampling_group, with_error
from bulkinfer.engine.progress import ProgressSink
from bulkinfer.engine.seen import SeenIds, id_hash, position, unpack
from bulkinfer.engine.shards import Shard
from bulkinfer.errors import JobFault
from bulkinfer.formats.bedrock import InputRecord
from bulkinfer.formats.jsonl import Line, split_lines
from bulkinfer.formats.records import BEDROCK, RecordFormat, duplicate_id
from bulkinfer.providers.base import Provider
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.stopping import STOPPED, StopSignal
from bulkinfer.storage.files import InputFile, read_blocks
from bulkinfer.store.state import StateStore

if TYPE_CHECKING:
    from bulkinfer.media import MediaResolver

REMOTE_WINDOW = 4
"""Records read ahead for a remote model, as a multiple of its concurrency."""
REMOTE_COMMIT_S = 0.05
"""Commit interval for a remote model: a record answered but not yet committed when the process dies
is paid for twice, so commit within a few calls' time (commits are group commits in a thread)."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    block_records: int = 1024
    """Records read and planned together; local models sort each block into micro-batches by length."""
    blocks_in_flight: int = 4
    chunk_records: int = 4096
    """Commit once this many records have finished..."""
    commit_interval_s: float = 1.0
    """...or once this much time has passed since the last commit."""
    max_line_bytes: int = 25_000_000
    """Bedrock's InvokeModel body limit; a longer line becomes an error line without being held."""

    @classmethod
    def for_model(cls, spec: ModelSpec) -> EngineSettings:
        if spec.remote is not None and spec.remote.batch is not None:
            # A batch is a provider job: read one more than the provider runs at once, so the next
            # is ready the moment a slot frees.
            size = spec.remote.batch.max_records_per_job
            return cls(block_records=size, blocks_in_flight=spec.concurrency + 1, chunk_records=size)
        block = min(4096, max(64, spec.batch_size * 4))
        if spec.remote is not None:
            # One record per call. A block is done when its slowest record is, and a record may
            # spend seconds in retry backoff, so allow several times the model's concurrency in
            # blocks, or a few slow records would leave the allowed calls idle. Commit often: a
            # record finished but not committed when the process dies is paid for twice.
            in_flight = 2 + -(-REMOTE_WINDOW * spec.concurrency // block)
            return cls(block_records=block, blocks_in_flight=in_flight, commit_interval_s=REMOTE_COMMIT_S)
        return cls(block_records=block, blocks_in_flight=max(2, spec.concurrency + 1))


def _has_images(request: Request | None) -> bool:
    return isinstance(request, ChatRequest) and any(
        type(part) is ImagePart for message in request.messages for part in message.parts
    )


class RecordPipeline:
    """Runs every uncommitted record of a job's files through the provider."""

    def __init__(
        self,
        *,
        job_id: str,
        spec: ModelSpec,
        provider: Provider,
        store: StateStore,
        committer: Committer,
        progress: ProgressSink,
        settings: EngineSettings,
        forced_dialect: Dialect[Any] | None = None,
        media: MediaResolver | None = None,
        id_seed: str | None = None,
        record_format: RecordFormat = BEDROCK,
    ) -> None:
        self._job_id = job_id
        self._format = record_format
        self._id_seed = id_seed or job_id
        """Generated record ids derive from it: a retry job's is its root job's id."""
        self._spec = spec
        self._provider = provider
        self._store = store
        self._committer = committer
        self._progress = progress
        self._settings = settings
        self._forced = forced_dialect
        self._media = media
        self._slots = asyncio.Semaphore(spec.concurrency)
        self._stopping = False
        self._stop = StopSignal()
        self.released = 0
        """Records given up unstarted at a stop: read, but neither run nor committed."""
        self._failure: BaseException | None = None
        self._seen = SeenIds()
        self._firsts: Mapping[int, int] | None = None
        self._names: dict[int, str] = {}
        self._reading: set[int] = set()
        """The files being read (their indexes)."""
        self.record_counts: dict[int, int] = {}
        """Records seen per file index (committed or not), known once a file was read to its end."""

    def request_stop(self) -> None:
        """Start nothing more: records waiting for a slot, a limiter or a retry are released at once
        (left uncommitted, to run when the job resumes); calls under way finish and are committed."""
        self._stopping = True
        self._stop.set()
        self._provider.stop()

    @property
    def ran_everything(self) -> bool:
        """Every record of every file (or of the shard) was read and none was released at a stop."""
        return self._reading <= self.record_counts.keys() and not self.released

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def run(self, files: Sequence[InputFile]) -> None:
        """Run every record of these files (the job's inputs, all of them)."""
        self._names = {f.index: f.name for f in files}
        self._reading = set(self._names)
        max_line = self._settings.max_line_bytes
        await self._drive((f, split_lines(read_blocks(f.path), max_line)) for f in files)

    async def run_shard(self, files: Sequence[InputFile], shard: Shard, firsts: Mapping[int, int]) -> None:
        """Run the records of one shard of the job's ``files``; ``firsts`` says where each repeated
        record id was first seen (see `engine.shards`). ``ran_everything`` then says whether every
        record of the shard was run."""
        self._names = {f.index: f.name for f in files}
        self._firsts = firsts
        f = next(f for f in files if f.index == shard.file_index)
        blocks = read_blocks(f.path, start=shard.start, end=shard.end)
        lines = (
            (shard.first_line - 1 + n, raw) for n, raw in split_lines(blocks, self._settings.max_line_bytes)
        )
        self._reading = {f.index}
        await self._drive([(f, lines)])

    async def _drive(self, sources: Iterable[tuple[InputFile, Iterable[tuple[int, Line]]]]) -> None:
        window = asyncio.Semaphore(self._settings.blocks_in_flight)
        running: set[asyncio.Task[None]] = set()
        cancelled = False
        try:
            for f, lines in sources:
                if self._stopping:
                    break
                await self._read_file(f, lines, window, running)
            await asyncio.gather(*running)
            if self._failure is not None:
                raise self._failure
        except asyncio.CancelledError:
            cancelled = True  # shut down, or the job is no longer ours: commit nothing more
            raise
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            if not cancelled:
                await self._committer.flush()

    async def _read_file(
        self,
        f: InputFile,
        lines: Iterable[tuple[int, Line]],
        window: asyncio.Semaphore,
        running: set[asyncio.Task[None]],
    ) -> None:
        done = LineSet()
        for chunk in await asyncio.to_thread(self._store.chunks, self._job_id, f.index):
            done = done.union(chunk.lines)
        seed = f"{self._id_seed}:{f.name}"
        # Committed lines are parsed too, so their ids count when looking for duplicates: the first
        # sighting of an id must be the same in a resumed run as in an uninterrupted one.
        size = self._settings.block_records
        pending: list[InputRecord] = []
        ready: list[InputRecord] = []
        count = 0
        for number, raw in lines:
            count += 1
            pending.append(self._format.parse(raw, number, source=f.name, seed=seed))
            if len(pending) >= size:
                ready += self._checked(f, pending, done)
                pending = []
                await asyncio.sleep(0)  # a long resume scan must not starve signals and the timer
                if len(ready) >= size:
                    if not await self._start(f, ready, window, running):
                        return
                    ready = []
        ready += self._checked(f, pending, done)
        if ready and not await self._start(f, ready, window, running):
            return
        self.record_counts[f.index] = count  # only once every record of the file is under way

    def _checked(self, f: InputFile, records: list[InputRecord], done: LineSet) -> list[InputRecord]:
        """The records still to run, with repeated record ids turned into errors. Call in line order."""
        positions = [position(f.index, r.line) for r in records]
        if self._firsts is not None:  # a shard: found before it ran
            firsts = [self._firsts.get(where, where) for where in positions]
        else:
            firsts = self._seen.first([id_hash(r.record_id) for r in records], positions)
        block = []
        for record, first in zip(records, firsts, strict=True):
            if record.line in done:
                continue
            if record.error is None and first != position(f.index, record.line):
                record = InputRecord(
                    record.line, record.record_id, record.model_input, self._duplicate(f, record, first)
                )
            block.append(record)
        return block

    def _duplicate(self, f: InputFile, record: InputRecord, first: int) -> RecordError:
        file_index, line = unpack(first)
        where = f"line {line}" if file_index == f.index else f"{self._names[file_index]} line {line}"
        message = duplicate_id(self._format, f.name, record.line, record.record_id, where)
        return RecordError(400, message, "DuplicateRecordId")

    async def _start(
        self,
        f: InputFile,
        block: list[InputRecord],
        window: asyncio.Semaphore,
        running: set[asyncio.Task[None]],
    ) -> bool:
        """Start a block once there is room; False (and nothing started) when the run is stopping."""
        if self._stopping:
            return False
        await window.acquire()
        if self._stopping:  # asked to stop while waiting for room
            window.release()
            return False
        task = asyncio.create_task(self._run_block(f, block))
        running.add(task)

        def _done(t: asyncio.Task[None]) -> None:
            running.discard(t)
            window.release()
            if not t.cancelled() and t.exception() is not None:
                self._failure = self._failure or t.exception()
                self._stopping = True

        task.add_done_callback(_done)
        await asyncio.sleep(0)
        return True

    async def _run_block(self, f: InputFile, block: list[InputRecord]) -> None:
        default = self._spec.default_dialect
        items = [prepare(r, source=f.name, default_dialect=default, forced=self._forced) for r in block]
        items = [self._refuse(f, item) for item in items]
        failed = [finish(item, item.error, self._format) for item in items if item.error is not None]
        if failed:
            await self._finished(f, failed)
        runnable = [item for item in items if item.error is None]
        # A task group: if one batch fails, its siblings are cancelled rather than left running.
        try:
            async with asyncio.TaskGroup() as group:
                for batch in self._plan(runnable):
                    group.create_task(self._run_batch(f, batch))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def _resolve_images(self, f: InputFile, items: list[Prepared]) -> list[Prepared]:
        """Fetch and check every image before the model sees it; a bad one is its record's error line."""
        media = self._media
        if media is None or not any(_has_images(item.request) for item in items):
            return items
        base_dir = f.path.parent

        async def resolve(item: Prepared) -> Prepared:
            if item.error is not None or not _has_images(item.request):
                return item
            assert item.request is not None
            outcome = await media.resolve(item.request, base_dir=base_dir)
            if isinstance(outcome, RecordError):
                message = f"{f.name} line {item.record.line}: {outcome.message}"
                return with_error(item, RecordError(outcome.code, message, outcome.kind))
            return Prepared(item.record, item.dialect, outcome)

        return list(await asyncio.gather(*(resolve(item) for item in items)))

    def _refuse(self, f: InputFile, item: Prepared) -> Prepared:
        if item.error is not None or item.request is None:
            return item
        refusal = self._provider.refusal(item.request)
        if refusal is not None:  # said as --dry-run says it (engine.validate)
            return with_error(item, at_line(refusal, f.name, item.record.line))
        capabilities = self._provider.capabilities
        if item.dialect is not None and item.dialect.name in capabilities.native_dialects:
            item.request.native = Native(item.dialect.name, item.record.model_input)
        if capabilities.keyed:
            item.request.key = f"{self._job_id}:{item.record.record_id}"
        return item

    def _plan(self, runnable: list[Prepared]) -> list[list[Prepared]]:
        spec = self._spec
        if not self._provider.capabilities.padded_batches:
            size = spec.batch_size
            return [runnable[i : i + size] for i in range(0, len(runnable), size)]
        sized = [
            Item(i, self._provider.count_tokens(p.request) + self._max_new(p), sampling_group(p.request))
            for i, p in enumerate(runnable)
            if p.request is not None
        ]
        return [
            [runnable[i] for i in batch] for batch in plan_batches(sized, spec.batch_size, spec.token_budget)
        ]

    def _max_new(self, item: Prepared) -> int:
        request = item.request
        if isinstance(request, ChatRequest):
            return request.params.max_tokens or self._spec.default_max_tokens
        return 0

    async def _run_batch(self, f: InputFile, batch: list[Prepared]) -> None:
        if not await self._slot():
            self.released += len(batch)
            return
        try:
            # Images are fetched and decoded here, inside the slot, so only the batches being run
            # hold image bytes: the blocks read ahead hold just their records.
            batch = await self._resolve_images(f, batch)
            refused = [finish(item, item.error, self._format) for item in batch if item.error is not None]
            batch = [item for item in batch if item.error is None]
            requests = [item.request for item in batch if item.request is not None]
            outcomes = await self._infer(requests) if requests else []
        finally:
            self._slots.release()
        pairs = list(zip(batch, outcomes, strict=True))
        fmt = self._format
        finished = [finish(item, outcome, fmt) for item, outcome in pairs if not isinstance(outcome, Unsent)]
        self.released += len(pairs) - len(finished)
        await self._finished(f, refused + finished)

    async def _slot(self) -> bool:
        """Take a slot to run a batch; False (and none taken) once the job is stopping."""
        if self._stop.is_set:
            return False
        if not self._slots.locked():
            await self._slots.acquire()  # free: taken at once, so no stop can come between
            return True
        taken = await self._stop.unless_stopped(self._slots.acquire(), undo=lambda _: self._slots.release())
        return taken is not STOPPED

    async def _infer(self, requests: list[Any]) -> list[Outcome]:
        try:
            outcomes = await self._provider.infer(requests)
        except JobFault:
            raise
        except Exception as exc:  # a model failure fails these records, not the job
            error = RecordError(500, f"model error: {type(exc).__name__}: {exc}", "ModelError")
            return [error] * len(requests)
        if len(outcomes) != len(requests):
            error = RecordError(500, "model returned a wrong number of results", "ModelError")
            return [error] * len(requests)
        return outcomes

    async def _finished(self, f: InputFile, finished: list[Finished]) -> None:
        if not finished:  # a batch given up whole at a stop
            return
        errors = sum(1 for x in finished if x.error_code is not None)
        await self._committer.add(f.index, finished)
        self._progress.advance(
            len(finished),
            errors,
            sum(x.input_tokens for x in finished),
            sum(x.output_tokens for x in finished),
        )
