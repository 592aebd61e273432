"""Split a stream of byte blocks into numbered JSONL lines, bounded in memory.

A line longer than the limit is never held whole: its bytes are dropped as they arrive and an
``OversizeLine`` marker takes its place, so one huge line cannot exhaust memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OversizeLine:
    size: int


Line = bytes | OversizeLine


class _Pending:
    """The unterminated tail of the blocks seen so far."""

    __slots__ = ("limit", "parts", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= self.limit:
            self.parts.append(data)
        else:
            self.parts.clear()

    def take(self, tail: bytes) -> Line:
        self.add(tail)
        line: Line = b"".join(self.parts) if self.size <= self.limit else OversizeLine(self.size)
        self.parts = []
        self.size = 0
        return line


def split_lines(blocks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[int, Line]]:
    """Yield ``(line_number, line)`` for every non-blank line; numbers are 1-based physical lines."""
    pending = _Pending(max_line_bytes)
    number = 0
    for block in blocks:
        pieces = block.split(b"\n")
        if len(pieces) == 1:
            pending.add(block)
            continue
        first: Line = pending.take(pieces[0])
        number += 1
        if isinstance(first, OversizeLine) or first.strip():
            yield number, _trimmed(first)
        for piece in pieces[1:-1]:
            number += 1
            if len(piece) > max_line_bytes:
                yield number, OversizeLine(len(piece))
            elif piece.strip():
                yield number, _trimmed(piece)
        pending.add(pieces[-1])
    if pending.size:
        last = pending.take(b"")
        if isinstance(last, OversizeLine) or last.strip():
            yield number + 1, _trimmed(last)


def _trimmed(line: Line) -> Line:
    if isinstance(line, bytes) and line.endswith(b"\r"):
        return line[:-1]
    return line


def count_lines(blocks: Iterable[bytes]) -> int:
    """A quick upper bound on the record count (newline count, plus an unterminated last line)."""
    count = 0
    last = b"\n"
    for block in blocks:
        if block:
            count += block.count(b"\n")
            last = block
    return count + (0 if last.endswith(b"\n") else 1)
