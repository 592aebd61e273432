"""A job's input cut into shards (a file's byte range of whole lines), for executors that run them apart.

Each shard is read and run by the same record pipeline as a whole file is (`RecordPipeline.run_shard`),
on its own, anywhere. What a shard cannot know alone is found here, in one pass over the inputs before
any shard runs: where each record id was first seen (a duplicate id in another shard is an error line,
as it is when one process reads every file) and how many records each file holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bulkinfer.engine.seen import SeenIds, id_hash, position
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.formats.records import RecordFormat
from bulkinfer.storage.files import READ_BLOCK_BYTES, InputFile, read_blocks

MAX_LINE = (1 << 40) - 1
"""A line number past any file's last (see `engine.seen.position`)."""


@dataclass(frozen=True, slots=True)
class Shard:
    """Lines ``first_line``.. of one input file: the bytes from ``start`` up to ``end``."""

    file_index: int
    start: int
    end: int
    first_line: int
    end_line: int
    """The line after its last (the next shard's first)."""

    def firsts_in(self, firsts: dict[int, int]) -> dict[int, int]:
        """Of a plan's ``firsts``, those of this shard's lines."""
        low, high = position(self.file_index, self.first_line), position(self.file_index, self.end_line)
        return {where: first for where, first in firsts.items() if low <= where < high}

    @property
    def name(self) -> str:
        return f"{self.file_index}:{self.first_line}"


@dataclass(frozen=True, slots=True)
class ShardPlan:
    shards: tuple[Shard, ...]
    record_counts: dict[int, int]
    """Records of each file."""
    firsts: dict[int, int] = field(default_factory=dict)
    """Where each repeated record id was first seen: the position of each repeat to that of its first."""


def plan_shards(
    files: list[InputFile], fmt: RecordFormat, id_seed: str, shard_lines: int, max_line_bytes: int
) -> ShardPlan:
    """Cut every file into shards of at most ``shard_lines`` lines, and find the repeated record ids."""
    shards: list[Shard] = []
    counts: dict[int, int] = {}
    firsts: dict[int, int] = {}
    seen = SeenIds()
    for f in files:
        shards += _cut(f, shard_lines)
        counts[f.index] = _repeats(f, fmt, f"{id_seed}:{f.name}", max_line_bytes, seen, firsts)
    return ShardPlan(tuple(shards), counts, firsts)


def _repeats(
    f: InputFile, fmt: RecordFormat, seed: str, max_line_bytes: int, seen: SeenIds, firsts: dict[int, int]
) -> int:
    """Record the repeated ids of one file (as `RecordPipeline` would find them); its record count."""
    batch: list[tuple[int, int, bool]] = []
    count = 0

    def check() -> None:
        hashes = [h for h, _, _ in batch]
        positions = [p for _, p, _ in batch]
        for (_, where, valid), first in zip(batch, seen.first(hashes, positions), strict=True):
            if valid and first != where:
                firsts[where] = first
        batch.clear()

    for number, raw in split_lines(read_blocks(f.path), max_line_bytes):
        count += 1
        record = fmt.parse(raw, number, source=f.name, seed=seed)
        batch.append((id_hash(record.record_id), position(f.index, record.line), record.error is None))
        if len(batch) >= 4096:
            check()
    check()
    return count


def _cut(f: InputFile, shard_lines: int) -> list[Shard]:
    """One file's shards: byte ranges that start and end at line ends."""
    starts = list(_line_starts(f.path, shard_lines))
    ends = [*starts[1:], (f.path.stat().st_size, MAX_LINE)]
    pairs = zip(starts, ends, strict=True)
    return [Shard(f.index, start, end, line, after) for (start, line), (end, after) in pairs if start < end]


def _line_starts(path: Path, every: int) -> Iterator[tuple[int, int]]:
    """The byte offset and line number of line 1, and of every ``every``-th line after it."""
    yield 0, 1
    line, offset = 1, 0
    with path.open("rb") as f:
        while block := f.read(READ_BLOCK_BYTES):
            at = block.find(b"\n")
            while at >= 0:
                line += 1
                if (line - 1) % every == 0:
                    yield offset + at + 1, line
                at = block.find(b"\n", at + 1)
            offset += len(block)
