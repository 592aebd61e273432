"""Durable commits of finished output lines, in small chunks, and the repair of the chunk folder.

A chunk file is written whole (temp, fsync, rename) before its row lands in the state store, so a crash
leaves either a committed chunk or an orphan file that the next run deletes; never half a chunk.

A chunk file's name carries what its lines alone do not: ``<file index:05d>-<unique>-<input tokens>-
<output tokens>.jsonl``. With the output lines (record id, input, output or error) that is enough to
rebuild the chunk's row when the state itself is lost (`rebuild_chunks`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bulkinfer.domain.job import Counts
from bulkinfer.domain.lineset import LineSet
from bulkinfer.errors import InputError
from bulkinfer.faults import failpoint
from bulkinfer.formats.bedrock import parse_line
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.storage.files import InputFile, read_blocks, remove_quietly, write_durably
from bulkinfer.store.state import ChunkRecord, StateStore

log = logging.getLogger(__name__)

CHUNK_NAME = re.compile(r"(?P<file>\d{5})-[0-9a-f]{16}-(?P<tokens_in>\d+)-(?P<tokens_out>\d+)\.jsonl")


@dataclass(slots=True)  # not frozen: built per record (see domain.request)
class Finished:
    """One record's rendered output line and what it counts for."""

    line: int
    data: bytes
    input_tokens: int = 0
    output_tokens: int = 0
    error_code: int | None = None


_COMMITS = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="commits")
"""Where commits run (fsync and the database): off the event loop, each job one at a time."""


class Committer:
    """Buffers finished records and commits them when enough have gathered or enough time has passed."""

    def __init__(
        self, store: StateStore, job_id: str, folder: Path, max_records: int, interval_s: float
    ) -> None:
        self._store = store
        self._job_id = job_id
        self._folder = folder
        self._max_records = max_records
        self._interval = interval_s
        self._pending: dict[int, list[Finished]] = {}
        self._pending_count = 0
        self._lock = asyncio.Lock()
        self._last_flush = time.monotonic()
        self._failure: BaseException | None = None
        self._in_flight: concurrent.futures.Future[None] | None = None

    async def add(self, file_index: int, finished: list[Finished]) -> None:
        if self._failure is not None:
            raise self._failure
        self._pending.setdefault(file_index, []).extend(finished)
        self._pending_count += len(finished)
        due = time.monotonic() - self._last_flush >= self._interval
        if self._pending_count >= self._max_records or due:
            await self.flush()

    async def flush(self) -> None:
        if self._failure is not None:
            raise self._failure
        async with self._lock:
            taken, self._pending, self._pending_count = self._pending, {}, 0
            self._last_flush = time.monotonic()
            if taken:
                # kept, so settle() can wait for it: a cancelled flush leaves its thread running
                self._in_flight = _COMMITS.submit(self._commit, taken)
                await asyncio.wrap_future(self._in_flight)

    def settle(self) -> None:
        """Wait (in this thread) for a commit still running in its thread, however it ends."""
        if self._in_flight is not None:
            concurrent.futures.wait([self._in_flight])

    async def run_timer(self) -> None:
        """Commit at least every interval while records trickle in slowly."""
        while True:
            await asyncio.sleep(self._interval / 2)
            if self._pending_count and time.monotonic() - self._last_flush >= self._interval:
                try:
                    await self.flush()
                except Exception as exc:  # the next add() or flush() raises it in the pipeline
                    self._failure = exc
                    return

    def commit_now(self, file_index: int, items: list[Finished]) -> None:
        """Commit these records at once, in this thread (a retry job's carried lines)."""
        self._commit({file_index: items})

    def _commit(self, taken: dict[int, list[Finished]]) -> None:
        for file_index, items in taken.items():
            items.sort(key=lambda f: f.line)
            counts = _count(items)
            name = (
                f"{file_index:05d}-{uuid.uuid4().hex[:16]}-{counts.input_tokens}-{counts.output_tokens}.jsonl"
            )
            path = self._folder / name
            write_durably(path, (f.data + b"\n" for f in items))
            chunk = ChunkRecord(file_index, name, LineSet.of(f.line for f in items), items[0].line, counts)
            try:
                self._store.add_chunk(self._job_id, chunk)
            except BaseException:
                remove_quietly(path)
                raise
            failpoint("chunk-committed")

    def repair(self) -> list[str]:
        """Forget committed chunks whose file is missing or does not hold its recorded lines.

        Their lines then count as not done and run again, so a resume completes instead of failing at
        "writing outputs" forever. Returns what was found, one sentence per chunk.
        """
        found = []
        for chunk in self._store.chunks(self._job_id):
            path = self._folder / chunk.path
            lines = _line_count(path)
            if lines == len(chunk.lines):
                continue
            state = "is missing" if lines is None else f"holds {lines} lines, not {len(chunk.lines)}"
            self._store.forget_chunk(self._job_id, chunk.path)
            remove_quietly(path)
            found.append(f"chunk {chunk.path} {state}: its {len(chunk.lines)} records run again")
            log.warning("job %s: %s", self._job_id, found[-1])
        return found

    def remove_orphans(self) -> int:
        """Delete chunk files no committed row refers to (left by a crash between write and commit)."""
        known = {c.path for c in self._store.chunks(self._job_id)}
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for path in self._folder.iterdir():
                if path.name not in known:
                    path.unlink()
                    removed += 1
        return removed


def chunk_name(file_index: int, counts: Counts) -> str:
    """A new chunk file's name (see the module's doc)."""
    unique = uuid.uuid4().hex[:16]
    return f"{file_index:05d}-{unique}-{counts.input_tokens}-{counts.output_tokens}.jsonl"


def _line_count(path: Path) -> int | None:
    """The lines in a file, None when it is missing."""
    try:
        return sum(block.count(b"\n") for block in read_blocks(path))
    except InputError:
        return None


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """Chunk rows recovered from chunk files, and the chunk files that could not be taken back."""

    chunks: list[ChunkRecord] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    """Chunk file name -> why it was not taken back."""


class _NotExact(Exception):
    """A chunk file whose lines cannot be placed exactly."""


def rebuild_chunks(folder: Path, files: Sequence[InputFile], job_id: str, max_line_bytes: int) -> Rebuilt:
    """Rebuild the committed chunk rows of a job whose state is lost from its chunk files alone.

    Each output line names its record id; the input file maps ids to line numbers, and only where
    that is exact: every record id of the file unique, each line's input the same as the file's. A
    chunk that does not fit (an unknown name, an id not in the file or placed twice, a changed input)
    is not taken back; its records run again.
    """
    by_file: dict[int, list[Path]] = {}
    result = Rebuilt()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = CHUNK_NAME.fullmatch(path.name)
        if match is None or int(match["file"]) >= len(files):
            result.dropped[path.name] = "not a chunk file of this job's input files"
            continue
        by_file.setdefault(int(match["file"]), []).append(path)
    for index, paths in sorted(by_file.items()):
        f = files[index]
        places = _record_places(f, job_id, max_line_bytes)
        if places is None:
            for path in paths:
                result.dropped[path.name] = f"the record ids of {f.name} are not all unique"
            continue
        taken: set[int] = set()
        for path in paths:
            try:
                chunk = _rebuilt_chunk(path, index, places, taken)
            except _NotExact as exc:
                result.dropped[path.name] = str(exc)
                continue
            taken.update(chunk.lines)
            result.chunks.append(chunk)
    return result


def _record_places(f: InputFile, job_id: str, max_line_bytes: int) -> dict[str, tuple[int, bytes]] | None:
    """Record id -> (line, digest of its modelInput) for one input file; None when an id repeats."""
    seed = f"{job_id}:{f.name}"  # as the pipeline reads it, so generated ids come out the same
    places: dict[str, tuple[int, bytes]] = {}
    for number, raw in split_lines(read_blocks(f.path), max_line_bytes):
        record = parse_line(raw, number, source=f.name, seed=seed)
        if record.record_id in places:
            return None
        places[record.record_id] = (number, _digest(record.model_input))
    return places


def _rebuilt_chunk(
    path: Path, index: int, places: dict[str, tuple[int, bytes]], taken: set[int]
) -> ChunkRecord:
    match = CHUNK_NAME.fullmatch(path.name)
    assert match is not None
    lines: list[int] = []
    codes: Counter[str] = Counter()
    for raw in path.read_bytes().splitlines():
        try:
            output = orjson.loads(raw)
            line, digest = places[output["recordId"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise _NotExact(f"a line names no record id of the input file ({exc!r})") from None
        if digest != _digest(output.get("modelInput")) and output.get("modelInput") is not None:
            raise _NotExact(f"line {line}'s input differs from the input file's")
        if line in taken or (lines and line <= lines[-1]):
            raise _NotExact(f"line {line} is there twice or out of order")
        lines.append(line)
        if isinstance(output.get("error"), dict):
            codes[str(output["error"].get("errorCode"))] += 1
    if not lines:
        raise _NotExact("the chunk file is empty")
    errors = sum(codes.values())
    counts = Counts(
        processed=len(lines),
        success=len(lines) - errors,
        errors=errors,
        input_tokens=int(match["tokens_in"]),
        output_tokens=int(match["tokens_out"]),
        error_codes=dict(codes),
    )
    return ChunkRecord(index, path.name, LineSet.of(lines), lines[0], counts)


def _digest(model_input: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(model_input), digest_size=16).digest()


def _count(items: list[Finished]) -> Counts:
    codes = Counter(str(f.error_code) for f in items if f.error_code is not None)
    errors = sum(codes.values())
    return Counts(
        processed=len(items),
        success=len(items) - errors,
        errors=errors,
        input_tokens=sum(f.input_tokens for f in items),
        output_tokens=sum(f.output_tokens for f in items),
        error_codes=dict(codes),
    )
