"""``--dry-run``: read and validate every record, count records and estimate tokens, run nothing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from bulkinfer.dialects.base import Dialect
from bulkinfer.domain.request import ChatRequest, Request
from bulkinfer.engine.prepare import prepare
from bulkinfer.formats.bedrock import parse_line
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.storage.files import InputFile, read_blocks

MAX_SAMPLES = 20


@dataclass(frozen=True, slots=True)
class FileCheck:
    name: str
    records: int
    invalid: int


@dataclass(slots=True)
class DryRunReport:
    files: list[FileCheck] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
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
    files: list[InputFile], spec: ModelSpec, forced: Dialect[Any] | None, max_line_bytes: int
) -> DryRunReport:
    report = DryRunReport()
    seen: set[bytes] = set()
    for f in files:
        records = invalid = 0
        for number, raw in split_lines(read_blocks(f.path), max_line_bytes):
            records += 1
            item = prepare(
                parse_line(raw, number, source=f.name, seed=f.name),
                source=f.name,
                default_dialect=spec.default_dialect,
                forced=forced,
            )
            key = hashlib.blake2b(item.record.record_id.encode(), digest_size=12).digest()
            problem = item.error.message if item.error else None
            if problem is None and key in seen:
                problem = f"{f.name} line {number}: recordId: duplicate {item.record.record_id!r}"
            seen.add(key)
            if problem is not None or item.request is None or item.dialect is None:
                invalid += 1
                if len(report.samples) < MAX_SAMPLES:
                    report.samples.append(problem or "invalid record")
                continue
            report.dialects[item.dialect.name] = report.dialects.get(item.dialect.name, 0) + 1
            _estimate(report, item.request, spec)
        report.files.append(FileCheck(f.name, records, invalid))
    return report


def _estimate(report: DryRunReport, request: Request, spec: ModelSpec) -> None:
    report.input_tokens += request.char_count() // 4 + 1
    if isinstance(request, ChatRequest):
        report.output_tokens += request.params.max_tokens or spec.default_max_tokens
