"""Input quotas, checked while a job is Validating. Pure, apart from reading the files it is given."""

from __future__ import annotations

from dataclasses import dataclass

from bulkinfer.errors import InputError
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.storage.files import InputFile, read_blocks


@dataclass(frozen=True, slots=True)
class Quotas:
    """Limits per job. The defaults are Bedrock's published ones, except its minimum of 100 records,
    which suits a managed service's billing, not a self-hosted one."""

    min_records_per_job: int = 1
    max_records_per_job: int = 50_000
    max_records_per_file: int = 50_000
    max_file_bytes: int = 200 * 2**20
    max_job_bytes: int = 2**30


def check_quotas(files: list[InputFile], quotas: Quotas, max_line_bytes: int, where: str) -> int:
    """The job's record count; an ``InputError`` naming the file and the limit when one is passed."""
    total_bytes = sum(f.size for f in files)
    if total_bytes > quotas.max_job_bytes:
        raise InputError(
            f"{where}: {total_bytes:,} bytes in all, over the {quotas.max_job_bytes:,} a job may hold"
        )
    total = 0
    for f in files:
        if f.size > quotas.max_file_bytes:
            raise InputError(
                f"{f.name}: {f.size:,} bytes, over the {quotas.max_file_bytes:,} a file may hold"
            )
        records = sum(1 for _ in split_lines(read_blocks(f.path), max_line_bytes))
        if records > quotas.max_records_per_file:
            raise InputError(
                f"{f.name}: {records:,} records, over the {quotas.max_records_per_file:,} a file may hold"
            )
        total += records
    if total > quotas.max_records_per_job:
        raise InputError(
            f"{where}: {total:,} records, over the {quotas.max_records_per_job:,} a job may hold"
        )
    if total < quotas.min_records_per_job:
        raise InputError(f"{where}: {total:,} records, under the {quotas.min_records_per_job:,} a job needs")
    return total
