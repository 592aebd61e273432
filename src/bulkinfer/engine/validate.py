"""Read and validate every record of a job without running it.

One pass over each file parses every line, translates its body through the dialect the engine would
pick, and finds repeated record ids, counting records and estimating tokens on the way. ``bulkinfer run
--dry-run`` prints the report; a service job's Validating step checks its quotas from the same pass, so
inputs of gigabytes are read once. Memory stays bounded: the report keeps only ``MAX_SAMPLES`` problems,
and repeated ids are found with the engine's compact ``SeenIds`` (16 bytes an id).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bulkinfer.dialects.base import Dialect
from bulkinfer.domain.request import ChatRequest, RecordError, Request
from bulkinfer.engine.prepare import Prepared, at_line, prepare
from bulkinfer.engine.seen import SeenIds, id_hash, position, unpack
from bulkinfer.errors import InputError
from bulkinfer.formats.bedrock import InputRecord, foreign_batch_line
from bulkinfer.formats.jsonl import OversizeLine, split_lines
from bulkinfer.formats.records import BEDROCK, RecordFormat, duplicate_id, format_of_line
from bulkinfer.providers.base import refusal
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.registry import capabilities_of
from bulkinfer.providers.tokens import TokenCounter
from bulkinfer.storage.files import InputFile, read_blocks

MAX_SAMPLES = 20
BLOCK_RECORDS = 4096
"""Records whose ids are looked up in one ``SeenIds`` call (a call per record would cost more)."""
FIT_SAMPLE = 100
"""Records at the start of each file that `check_fit` reads."""


@dataclass(frozen=True, slots=True)
class FileCheck:
    name: str
    records: int
    invalid: int


@dataclass(slots=True)
class Problems:
    """Records of one kind of problem: how many, and the first ``MAX_SAMPLES`` messages."""

    count: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(message)


@dataclass(slots=True)
class DryRunReport:
    files: list[FileCheck] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    """The first problems, each naming file, line and field; at most ``MAX_SAMPLES``."""
    input_tokens: int = 0
    output_tokens: int = 0
    dialects: dict[str, int] = field(default_factory=dict)
    refused: Problems = field(default_factory=lambda: Problems())
    """Valid records of a kind the model does not take (a chat body sent to an embedding model)."""
    over_context: Problems = field(default_factory=lambda: Problems())
    """Records whose prompt plus max_tokens exceeds the model's context (only with a token counter)."""

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    @property
    def invalid(self) -> int:
        return sum(f.invalid for f in self.files)


def format_of_files(files: list[InputFile], max_line_bytes: int) -> str:
    """The record format of a job's files (see formats.records), by the first line of each; files in
    different formats are refused (``InputError``): a job's lines are all in one."""
    found: dict[str, str] = {}
    for f in files:
        first = next(split_lines(read_blocks(f.path), max_line_bytes), None)
        name = format_of_line(first[1]) if first is not None else None
        if name is not None:
            found.setdefault(name, f.name)
    if len(found) > 1:
        which = ", ".join(f"{file} ({name})" for name, file in found.items())
        raise InputError(f"the input files hold records of different formats: {which}; give one format a job")
    return next(iter(found), BEDROCK.name)


def check_inputs(files: list[InputFile], max_line_bytes: int, fmt: RecordFormat = BEDROCK) -> None:
    """Refuse an input no record of which could run, reading only the start of each file, before a job
    exists: one holding no record, a JSON array saved as JSON Lines, another provider's batch lines.
    Raises ``InputError`` naming each file and what to do."""
    problems: list[str] = []
    empty: list[str] = []
    for f in files:
        # a generator left unfinished closes its file as soon as it is dropped
        first = next(split_lines(read_blocks(f.path), max_line_bytes), None)
        if first is None:
            empty.append(f.name)
        elif (problem := _shape_problem(f, *first, fmt)) is not None:
            problems.append(problem)
    if len(empty) == len(files):
        which = empty[0] if len(empty) == 1 else f"every input file ({', '.join(empty)})"
        problems.append(
            f"{which} is empty: give JSON Lines of Bedrock batch records, one {{recordId, modelInput}} a line"
        )
    if problems:
        raise InputError("\n".join(problems))


UTF16 = "is UTF-16 text: convert it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8 {name} > records.jsonl"
ENCODINGS = (
    (b"\x1f\x8b", "is gzip-compressed: uncompress it first, e.g. gunzip -c {name} > records.jsonl"),
    (b"\xff\xfe", UTF16),
    (b"\xfe\xff", UTF16),
)
"""A file's first bytes that say it is not UTF-8 text at all, and what to do about it."""


def _shape_problem(f: InputFile, number: int, line: bytes | OversizeLine, fmt: RecordFormat) -> str | None:
    """Why a file whose first record is ``line`` cannot be a job's input, if it cannot."""
    with f.path.open("rb") as handle:
        start = handle.read(2)
    for magic, problem in ENCODINGS:
        if start == magic:
            return f"{f.name} {problem.format(name=f.name)}"
    if isinstance(line, bytes) and b"\x00" in line:
        return f"{f.name} holds NUL bytes: it is not UTF-8 text (UTF-16 or UTF-32? convert it with iconv)"
    if _first_byte(f, line) == b"[":
        return (
            f"{f.name} holds a JSON array, not JSON Lines: put each record on a line of its own, "
            f"e.g. jq -c '.[]' {f.name} > records.jsonl"
        )
    if isinstance(line, OversizeLine) or fmt is not BEDROCK:
        return None
    with contextlib.suppress(orjson.JSONDecodeError):
        obj = orjson.loads(line)
        if type(obj) is dict and (foreign := foreign_batch_line(obj)) is not None:
            return f"{f.name} line {number}: {foreign}"
    return None


def check_fit(
    files: list[InputFile],
    spec: ModelSpec,
    forced: Dialect[Any] | None,
    max_line_bytes: int,
    catalog: Iterable[ModelSpec] = (),
    fmt: RecordFormat = BEDROCK,
) -> None:
    """Refuse a model that takes none of the valid records at the start of each file (an embedding
    model given chat bodies, a text-only model given images), before a job exists. Raises
    ``InputError`` naming the first such record, what the model lacks and which of ``catalog``'s models
    take it. A job of which some records fit runs; the others become error lines."""
    capabilities = capabilities_of(spec)
    first: tuple[Prepared, RecordError] | None = None
    read = 0
    for f in files:
        for item in _prepared(f, spec, forced, max_line_bytes, fmt):
            if item.request is None or item.error is not None:
                continue  # an invalid record is an error line whichever the model
            read += 1
            why = refusal(capabilities, item.request)
            if why is None:
                return
            first = first or (item, at_line(why, f.name, item.record.line))
    if first is not None:
        item, why = first
        assert item.request is not None
        request = item.request
        takers = [s.name for s in catalog if refusal(capabilities_of(s), request) is None]
        models = f"choose one that does: {', '.join(takers)}" if takers else "no model of the catalog does"
        said = fmt.in_own_words(why.message)
        raise InputError(
            f"{said}. Model {spec.name} takes none of the first records ({read:,} read, up to "
            f"{FIT_SAMPLE} a file); {models}"
        )


def check_some_valid(
    files: list[InputFile],
    spec: ModelSpec,
    forced: Dialect[Any] | None,
    max_line_bytes: int,
    fmt: RecordFormat = BEDROCK,
) -> None:
    """Refuse, before a job exists, an input none of whose first records (of any file) is valid: a
    file of something else (CSV, text), or a ``--dialect`` that fits none of them. Raises
    ``InputError`` with the first records' problems. (A service job reads every record when it
    validates, and fails when none is valid.)"""
    problems: list[str] = []
    for f in files:
        for item in _prepared(f, spec, forced, max_line_bytes, fmt):
            if item.error is None:
                return
            if len(problems) < 3:
                problems.append(fmt.in_own_words(item.error.message))
    if problems:
        hint = "; or drop --dialect, which none of them is in" if forced is not None else ""
        raise InputError(
            "\n".join(problems) + f"\nnone of the first records (up to {FIT_SAMPLE} a file) is a valid "
            f"{_RECORDS[fmt.name]}{hint}"
        )


_RECORDS = {
    "bedrock": "Bedrock batch record: give JSON Lines of {recordId, modelInput} records",
    "openai": "OpenAI batch line: give JSON Lines of {custom_id, method, url, body}",
    "anthropic": "Anthropic batch request: give JSON Lines of {custom_id, params}",
}


def _prepared(
    f: InputFile, spec: ModelSpec, forced: Dialect[Any] | None, max_line_bytes: int, fmt: RecordFormat
) -> Iterable[Prepared]:
    lines = itertools.islice(split_lines(read_blocks(f.path), max_line_bytes), FIT_SAMPLE)
    for number, raw in lines:
        record = fmt.parse(raw, number, source=f.name, seed=f.name)
        yield prepare(record, source=f.name, default_dialect=spec.default_dialect, forced=forced)


def _first_byte(f: InputFile, line: bytes | OversizeLine) -> bytes:
    """The first byte of a file that is not white space (it begins ``line``, its first non-blank line)."""
    if not isinstance(line, OversizeLine):
        return line.lstrip()[:1]
    for block in read_blocks(f.path):
        if stripped := block.lstrip():
            return stripped[:1]
    return b""


def dry_run(
    files: list[InputFile],
    spec: ModelSpec,
    forced: Dialect[Any] | None,
    max_line_bytes: int,
    on_file: Callable[[FileCheck], None] | None = None,
    fmt: RecordFormat = BEDROCK,
    count: TokenCounter | None = None,
) -> DryRunReport:
    """Check every record of ``files`` for ``spec``'s model; ``on_file`` sees each file's counts as soon
    as it is read (and may raise to stop before the next file is read). With ``count`` (the model's own
    token count), input tokens are counted with it, and a chat record over the model's context is a
    problem, as the model would make it one; otherwise tokens are estimated at 4 characters each."""
    check = _Pass(spec, forced, {f.index: f.name for f in files}, fmt, count)
    for f in files:
        counts = check.file(f, max_line_bytes)
        check.report.files.append(counts)
        if on_file is not None:
            on_file(counts)
    return check.report


class _Pass:
    """The state of one pass over a job's files: the report so far and the record ids seen."""

    def __init__(
        self,
        spec: ModelSpec,
        forced: Dialect[Any] | None,
        names: dict[int, str],
        fmt: RecordFormat,
        count: TokenCounter | None = None,
    ) -> None:
        self.report = DryRunReport()
        self._count = count
        self._format = fmt
        self._spec = spec
        self._capabilities = capabilities_of(spec)
        self._forced = forced
        self._names = names
        self._seen = SeenIds()

    def file(self, f: InputFile, max_line_bytes: int) -> FileCheck:
        records = invalid = 0
        block: list[InputRecord] = []
        for number, raw in split_lines(read_blocks(f.path), max_line_bytes):
            records += 1
            block.append(self._format.parse(raw, number, source=f.name, seed=f.name))
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
                    self.report.samples.append(self._format.in_own_words(problem))
        return invalid

    def _problem(self, f: InputFile, record: InputRecord, first: int) -> str | None:
        # In the engine's order: an unreadable line, then a repeated id, then a body that does not fit.
        if record.error is None and first != position(f.index, record.line):
            return self._duplicate(f, record, first)
        item = prepare(record, source=f.name, default_dialect=self._spec.default_dialect, forced=self._forced)
        if item.error is not None or item.request is None or item.dialect is None:
            return item.error.message if item.error else f"{f.name} line {record.line}: invalid record"
        if (why := refusal(self._capabilities, item.request)) is not None:
            message = at_line(why, f.name, record.line).message
            self.report.refused.add(self._format.in_own_words(message))
            return message
        self.report.dialects[item.dialect.name] = self.report.dialects.get(item.dialect.name, 0) + 1
        if self._count is None:
            _estimate(self.report, item.request, self._spec)
            return None
        return self._counted(f, record, item.request)

    def _counted(self, f: InputFile, record: InputRecord, request: Request) -> str | None:
        """Count a valid record's tokens as its model does; a chat record over its context is a problem
        (as the model makes it an error line), and its tokens are not counted (nor by the job)."""
        assert self._count is not None
        tokens = self._count(request)
        if not isinstance(request, ChatRequest):
            self.report.input_tokens += tokens
            return None
        most = request.params.max_tokens or self._spec.default_max_tokens
        if self._spec.context_known and tokens + most > self._spec.context_length:
            message = (
                f"{f.name} line {record.line}: prompt of {tokens:,} tokens plus max_tokens {most:,} "
                f"exceeds the context of {self._spec.context_length:,} tokens"
            )
            self.report.over_context.add(self._format.in_own_words(message))
            return message
        self.report.input_tokens += tokens
        self.report.output_tokens += most
        return None

    def _duplicate(self, f: InputFile, record: InputRecord, first: int) -> str:
        file_index, line = unpack(first)
        where = f"line {line}" if file_index == f.index else f"{self._names[file_index]} line {line}"
        return duplicate_id(self._format, f.name, record.line, record.record_id, where)


def _estimate(report: DryRunReport, request: Request, spec: ModelSpec) -> None:
    report.input_tokens += request.char_count() // 4 + 1
    if isinstance(request, ChatRequest):
        report.output_tokens += request.params.max_tokens or spec.default_max_tokens
