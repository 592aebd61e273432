"""Durable commits of finished output lines, in small chunks.

A chunk file is written whole (temp, fsync, rename) before its row lands in the state store, so a crash
leaves either a committed chunk or an orphan file that the next run deletes; never half a chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bulkinfer.domain.job import Counts
from bulkinfer.domain.lineset import LineSet
from bulkinfer.storage.files import remove_quietly, write_durably
from bulkinfer.store.state import ChunkRecord, StateStore


@dataclass(slots=True)  # not frozen: built per record (see domain.request)
class Finished:
    """One record's rendered output line and what it counts for."""

    line: int
    data: bytes
    input_tokens: int = 0
    output_tokens: int = 0
    error_code: int | None = None


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
                await asyncio.to_thread(self._commit, taken)

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

    def _commit(self, taken: dict[int, list[Finished]]) -> None:
        for file_index, items in taken.items():
            items.sort(key=lambda f: f.line)
            name = f"{file_index:05d}-{uuid.uuid4().hex[:16]}.jsonl"
            path = self._folder / name
            write_durably(path, (f.data + b"\n" for f in items))
            chunk = ChunkRecord(
                file_index, name, LineSet.of(f.line for f in items), items[0].line, _count(items)
            )
            try:
                self._store.add_chunk(self._job_id, chunk)
            except BaseException:
                remove_quietly(path)
                raise

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
