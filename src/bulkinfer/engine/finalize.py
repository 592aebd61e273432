"""Merge a file's committed chunks into its output in input order, and write the manifest."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import count
from pathlib import Path
from typing import IO

import orjson

from bulkinfer.errors import BulkinferError
from bulkinfer.storage.files import write_durably
from bulkinfer.store.state import ChunkRecord

_ERROR_MARK = b'"error":{'


class IncompleteOutput(BulkinferError):
    """The committed chunks do not hold every record of a file exactly once."""


def merged_lines(chunks: Sequence[ChunkRecord], folder: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line, data)`` in line order across chunks sorted by their first line.

    A chunk is opened only once the merge reaches its first line, so only the few chunks that overlap
    the current position are open at once.
    """
    waiting = deque(sorted(chunks, key=lambda c: c.first_line))
    heap: list[tuple[int, int, bytes, Iterator[tuple[int, bytes]]]] = []
    ticket = count()
    handles: list[IO[bytes]] = []

    def open_next() -> None:
        chunk = waiting.popleft()
        handle = (folder / chunk.path).open("rb")
        handles.append(handle)
        pairs = zip(chunk.lines, (raw.rstrip(b"\n") for raw in handle), strict=True)
        _push(heap, pairs, ticket)

    try:
        while waiting or heap:
            while waiting and (not heap or waiting[0].first_line <= heap[0][0]):
                open_next()
            line, _, data, pairs = heapq.heappop(heap)
            yield line, data
            _push(heap, pairs, ticket)
    finally:
        for handle in handles:
            handle.close()


def _push(
    heap: list[tuple[int, int, bytes, Iterator[tuple[int, bytes]]]],
    pairs: Iterator[tuple[int, bytes]],
    ticket: Iterator[int],
) -> None:
    item = next(pairs, None)
    if item is not None:
        heapq.heappush(heap, (item[0], next(ticket), item[1], pairs))


def write_output(
    chunks: Sequence[ChunkRecord], folder: Path, target: Path, expected: int, errors: list[str]
) -> None:
    """Write one output file; fails rather than write a file missing or repeating a record.

    Appends the first few error messages it passes to ``errors`` for the run summary.
    """
    written = 0
    last = 0

    def lines() -> Iterator[bytes]:
        nonlocal written, last
        for line, data in merged_lines(chunks, folder):
            if line <= last:
                raise IncompleteOutput(f"{target.name}: line {line} committed twice")
            last = line
            written += 1
            if len(errors) < 10 and _ERROR_MARK in data:
                errors.append(orjson.loads(data)["error"]["errorMessage"])
            yield data + b"\n"

    write_durably(target, lines())
    if written != expected:
        raise IncompleteOutput(f"{target.name}: {written} records committed, {expected} expected")
