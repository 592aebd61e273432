"""Merge a file's committed chunks into its output in input order, and write the manifest."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import count
from pathlib import Path
from typing import IO

import orjson

from bulkinfer.errors import BulkinferError
from bulkinfer.formats.records import ERRORS_SUFFIX, RecordFormat
from bulkinfer.storage.files import write_durably
from bulkinfer.store.state import ChunkRecord

_ERROR_MARK = b'"error":{'
MANIFEST_NAME = "manifest.json.out"


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
    chunks: Sequence[ChunkRecord], folder: Path, target: Path, expected: int | None, errors: list[str]
) -> None:
    """Write one output file; fails rather than write a file missing or repeating a record.

    ``expected`` is the file's record count, or None for a stopped job's partial output.

    Chunks that overlap no other are copied whole (the usual case: records finish nearly in order);
    only overlapping ones are merged line by line. Appends the first few error messages it passes to
    ``errors`` for the run summary.
    """
    written = 0

    def parts() -> Iterator[bytes]:
        nonlocal written
        for group in _overlapping_groups(chunks):
            if len(group) == 1:
                data = (folder / group[0].path).read_bytes()
                if data.count(b"\n") != len(group[0].lines):
                    raise IncompleteOutput(f"{target.name}: chunk {group[0].path} does not match its lines")
                written += len(group[0].lines)
                _sample_errors(data, errors)
                yield data
            else:
                for data in _merged(group, folder, target):
                    written += 1
                    _sample_errors(data, errors)
                    yield data

    write_durably(target, parts())
    if expected is not None and written != expected:
        raise IncompleteOutput(f"{target.name}: {written} records committed, {expected} expected")


def _overlapping_groups(chunks: Sequence[ChunkRecord]) -> list[list[ChunkRecord]]:
    groups: list[list[ChunkRecord]] = []
    reach = -1
    for chunk in sorted(chunks, key=lambda c: c.first_line):
        if groups and chunk.first_line <= reach:
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
        reach = max(reach, chunk.lines.last)
    return groups


def _merged(group: list[ChunkRecord], folder: Path, target: Path) -> Iterator[bytes]:
    last = -1
    try:
        for line, data in merged_lines(group, folder):
            if line <= last:
                raise IncompleteOutput(f"{target.name}: line {line} committed twice")
            last = line
            yield data + b"\n"
    except ValueError as exc:  # zip(strict=True): a chunk file and its recorded lines disagree
        raise IncompleteOutput(f"{target.name}: a chunk does not match its recorded lines") from exc


def _sample_errors(data: bytes, errors: list[str]) -> None:
    if len(errors) >= 10 or _ERROR_MARK not in data:
        return
    for line in data.splitlines():
        if _ERROR_MARK in line and len(errors) < 10:
            message = error_message(orjson.loads(line))  # the mark may also sit inside an echoed input
            if message is not None:
                errors.append(message)


_MESSAGE_PATHS = (
    ("error", "errorMessage"),  # Bedrock
    ("response", "body", "error", "message"),  # OpenAI's error file
    ("result", "error", "error", "message"),  # Anthropic's errored result
    ("error", "message"),  # OpenAI's line of a request never run
)
"""Where each record format's error line holds its message."""


def error_message(line: object) -> str | None:
    """The message of an error line in any record format; None for a success (or no message)."""
    for path in _MESSAGE_PATHS:
        value = line
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            return str(value)
    return None


def finish_results(target: Path, fmt: RecordFormat, unrun: Iterable[bytes] | None = None) -> None:
    """The result files of a format beyond Bedrock's, from ``target`` (every finished record's line, in
    input order, as `write_output` wrote it): the lines of records that never ran (``unrun``, a
    cancelled or expired job's) added, and for a split format the failures moved to their own file
    (``<input>.errors.out``), leaving ``target`` the successes. Rewriting from ``target`` again gives the
    same files, so a kill part-way is mended by finalizing again (the chunks are still there)."""
    if fmt.succeeded is None:
        if unrun is not None:  # (None: nothing to add, and a Bedrock output is left as written)
            write_durably(target, _chain(_lines_of(target), unrun))
        return
    succeeded = fmt.succeeded
    errors = target.with_name(target.name.removesuffix(".out") + ERRORS_SUFFIX)
    failed = (line for line in _lines_of(target) if not succeeded(line))
    write_durably(errors, _chain(failed, unrun or ()))
    write_durably(target, (line for line in _lines_of(target) if succeeded(line)))


def _lines_of(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from f


def _chain(lines: Iterable[bytes], more: Iterable[bytes]) -> Iterator[bytes]:
    yield from lines
    for line in more:
        yield line + b"\n"
