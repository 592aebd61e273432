"""What a service job's input must pass while Validating: its quotas, and at least one valid record.

Pure, apart from reading the files it is given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bulkinfer.engine.validate import DryRunReport, check_fit, check_inputs, dry_run
from bulkinfer.errors import InputError
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.formats.records import BEDROCK, RecordFormat
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.storage.files import InputFile, read_blocks

MESSAGE_SAMPLES = 3
"""Problems a job's message names; the rest are in its error lines."""
MAX_SAMPLE_CHARS = 300


@dataclass(frozen=True, slots=True)
class Quotas:
    """Limits per job. The defaults are Bedrock's published ones, except its minimum of 100 records,
    which suits a managed service's billing, not a self-hosted one."""

    min_records_per_job: int = 1
    max_records_per_job: int = 50_000
    max_records_per_file: int = 50_000
    max_file_bytes: int = 200 * 2**20
    max_job_bytes: int = 2**30


def validate_input(
    files: list[InputFile],
    quotas: Quotas,
    spec: ModelSpec,
    max_line_bytes: int,
    where: str,
    models: Iterable[ModelSpec] = (),
    fmt: RecordFormat = BEDROCK,
    all_invalid_fails: bool = True,
) -> DryRunReport:
    """Read every record once, checking it as the engine will for ``spec``'s model and enforcing the
    quotas; an ``InputError`` naming the file and the limit, or the first problems when no record is
    valid (a job with some valid records goes on: the others become error lines). An input that
    ``bulkinfer run`` refuses (empty, a JSON array, another provider's batch lines, records of a kind
    the model does not take) is refused first, with the same message; ``models`` are those the message
    may suggest instead. Without ``all_invalid_fails`` (an OpenAI batch, whose bad bodies are each the
    endpoint's 400 in the error file, its file already checked line by line) no record valid still runs."""
    check_sizes(files, quotas, where)
    check_inputs(files, max_line_bytes, fmt)
    check_fit(files, spec, None, max_line_bytes, models, fmt)
    report = dry_run(
        files, spec, None, max_line_bytes, on_file=lambda f: _check_file(f.name, f.records, quotas), fmt=fmt
    )
    _check_total(report.records, quotas, where)
    if all_invalid_fails and report.records and report.invalid == report.records:
        raise InputError(f"all {report.records:,} records are invalid; first: {_first_problems(report)}")
    return report


def invalid_records(report: DryRunReport) -> str | None:
    """What to tell the owner of a job that runs with some invalid records, if it has any."""
    if not report.invalid:
        return None
    return (
        f"{report.invalid:,} of {report.records:,} records are invalid and will be written as error lines: "
        + _first_problems(report)
    )


def check_quotas(files: list[InputFile], quotas: Quotas, max_line_bytes: int, where: str) -> int:
    """The job's record count, reading only line breaks; an ``InputError`` naming the file and the limit
    when one is passed."""
    check_sizes(files, quotas, where)
    total = 0
    for f in files:
        records = sum(1 for _ in split_lines(read_blocks(f.path), max_line_bytes))
        _check_file(f.name, records, quotas)
        total += records
    _check_total(total, quotas, where)
    return total


def check_sizes(files: list[InputFile], quotas: Quotas, where: str) -> None:
    """The byte limits, known from the listing alone, so checked before anything is read."""
    total_bytes = sum(f.size for f in files)
    if total_bytes > quotas.max_job_bytes:
        raise InputError(
            f"{where}: {total_bytes:,} bytes in all, over the {quotas.max_job_bytes:,} a job may hold"
        )
    for f in files:
        if f.size > quotas.max_file_bytes:
            raise InputError(
                f"{f.name}: {f.size:,} bytes, over the {quotas.max_file_bytes:,} a file may hold"
            )


def _check_file(name: str, records: int, quotas: Quotas) -> None:
    if records > quotas.max_records_per_file:
        raise InputError(
            f"{name}: {records:,} records, over the {quotas.max_records_per_file:,} a file may hold"
        )


def _check_total(total: int, quotas: Quotas, where: str) -> None:
    if total > quotas.max_records_per_job:
        raise InputError(
            f"{where}: {total:,} records, over the {quotas.max_records_per_job:,} a job may hold"
        )
    if total < quotas.min_records_per_job:
        raise InputError(f"{where}: {total:,} records, under the {quotas.min_records_per_job:,} a job needs")


def _first_problems(report: DryRunReport) -> str:
    shown = [_shortened(s) for s in report.samples[:MESSAGE_SAMPLES]]
    more = "; ..." if report.invalid > len(shown) else ""
    return "; ".join(shown) + more


def _shortened(text: str) -> str:
    return text if len(text) <= MAX_SAMPLE_CHARS else text[: MAX_SAMPLE_CHARS - 3] + "..."
