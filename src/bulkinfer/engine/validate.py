"""Read and validate every record of a job without running it.

One pass over each file parses every line, translates its body through the dialect the engine would
pick, and finds repeated record ids, counting records and estimating tokens on the way. ``bulkinfer run
--dry-run`` prints the report; a service job's Validating step checks its quotas from the same pass, so
inputs of gigabytes are read once. Memory stays bounded: the report keeps only ``MAX_SAMPLES`` problems,
and repeated ids are found with the engine's compact ``SeenIds`` (16 bytes an id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bulkinfer.dialects.base import Dialect
from bulkinfer.domain.request import ChatRequest, Request
from bulkinfer.engine.prepare import prepare
from bulkinfer.engine.seen import SeenIds, id_hash, position, unpack
from bulkinfer.formats.bedrock import InputRecord, parse_line
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.storage.files import InputFile, read_blocks

MAX_SAMPLES = 20
BLOCK_RECORDS = 4096
"""Records whose ids are looked up in one ``SeenIds`` call (a call per record would cost more)."""


@dataclass(frozen=True, slots=True)
class FileCheck:
    name: str
    records: int
    invalid: int


@dataclass(slots=True)
class DryRunReport:
    files: list[FileCheck] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    """The first problems, each naming file, line and field; at most ``MAX_SAMPLES``."""
    input_tokens: int = 0
    output_tokens: int = 0
    dialects: dict[str, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    @property
    def invalid(self) -> int:
        return sum(f.invalid for f in self.files)


def dry_run(
    files: list[InputFile],
    spec: ModelSpec,
    forced: Dialect[Any] | None,
    max_line_bytes: int,
    on_file: Callable[[FileCheck], None] | None = None,
) -> DryRunReport:
    """Check every record of ``files`` for ``spec``'s model; ``on_file`` sees each file's counts as soon
    as it is read (and may raise to stop before the next file is read)."""
    check = _Pass(spec, forced, {f.index: f.name for f in files})
    for f in files:
        counts = check.file(f, max_line_bytes)
        check.report.files.append(counts)
        if on_file is not None:
            on_file(counts)
    return check.report


class _Pass:
    """The state of one pass over a job's files: the report so far and the record ids seen."""

    def __init__(self, spec: ModelSpec, forced: Dialect[Any] | None, names: dict[int, str]) -> None:
        self.report = DryRunReport()
        self._spec = spec
        self._forced = forced
        self._names = names
        self._seen = SeenIds()

    def file(self, f: InputFile, max_line_bytes: int) -> FileCheck:
        records = invalid = 0
        block: list[InputRecord] = []
        for number, raw in split_lines(read_blocks(f.path), max_line_bytes):
            records += 1
            block.append(parse_line(raw, number, source=f.name, seed=f.name))
            if len(block) >= BLOCK_RECORDS:
                invalid += self._block(f, block)
                block = []
        invalid += self._block(f, block)
        return FileCheck(f.name, records, invalid)

    def _block(self, f: InputFile, block: list[InputRecord]) -> int:
        """Check records in line order; the number that are invalid."""
        firsts = self._seen.first(
            [id_hash(r.record_id) for r in block], [position(f.index, r.line) for r in block]
        )
        invalid = 0
        for record, first in zip(block, firsts, strict=True):
            problem = self._problem(f, record, first)
            if problem is not None:
                invalid += 1
                if len(self.report.samples) < MAX_SAMPLES:
                    self.report.samples.append(problem)
        return invalid

    def _problem(self, f: InputFile, record: InputRecord, first: int) -> str | None:
        # In the engine's order: an unreadable line, then a repeated id, then a body that does not fit.
        if record.error is None and first != position(f.index, record.line):
            return self._duplicate(f, record, first)
        item = prepare(record, source=f.name, default_dialect=self._spec.default_dialect, forced=self._forced)
        if item.error is not None or item.request is None or item.dialect is None:
            return item.error.message if item.error else f"{f.name} line {record.line}: invalid record"
        self.report.dialects[item.dialect.name] = self.report.dialects.get(item.dialect.name, 0) + 1
        _estimate(self.report, item.request, self._spec)
        return None

    def _duplicate(self, f: InputFile, record: InputRecord, first: int) -> str:
        file_index, line = unpack(first)
        where = f"line {line}" if file_index == f.index else f"{self._names[file_index]} line {line}"
        return (
            f"{f.name} line {record.line}: recordId: duplicate of {record.record_id!r} first seen at "
            f"{where}; record ids must be unique in a job"
        )


def _estimate(report: DryRunReport, request: Request, spec: ModelSpec) -> None:
    report.input_tokens += request.char_count() // 4 + 1
    if isinstance(request, ChatRequest):
        report.output_tokens += request.params.max_tokens or spec.default_max_tokens
