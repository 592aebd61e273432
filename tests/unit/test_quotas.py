"""Input quotas checked while a service job validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkinfer.errors import InputError
from bulkinfer.scheduler.quotas import Quotas, check_quotas
from bulkinfer.storage.files import list_inputs


def inputs(tmp_path: Path, sizes: dict[str, int]) -> Path:
    for name, records in sizes.items():
        lines = "".join(f'{{"recordId": "R{i}", "modelInput": {{}}}}\n\n' for i in range(records))
        (tmp_path / name).write_text(lines)
    return tmp_path


def test_counts_records_not_blank_lines(tmp_path: Path) -> None:
    files = list_inputs(inputs(tmp_path, {"a.jsonl": 3, "b.jsonl": 4}))
    assert check_quotas(files, Quotas(), 1000, "s3://b/in/") == 7


@pytest.mark.parametrize(
    ("quotas", "message"),
    [
        (Quotas(max_records_per_file=3), "b.jsonl: 4 records, over the 3 a file may hold"),
        (Quotas(max_records_per_job=6), "s3://b/in/: 7 records, over the 6 a job may hold"),
        (Quotas(min_records_per_job=8), "s3://b/in/: 7 records, under the 8 a job needs"),
        (Quotas(max_file_bytes=100), "a.jsonl: .* bytes, over the 100 a file may hold"),
        (Quotas(max_job_bytes=100), "s3://b/in/: .* bytes in all, over the 100 a job may hold"),
    ],
)
def test_each_limit_names_what_passed_it(tmp_path: Path, quotas: Quotas, message: str) -> None:
    files = list_inputs(inputs(tmp_path, {"a.jsonl": 3, "b.jsonl": 4}))
    with pytest.raises(InputError, match=message):
        check_quotas(files, quotas, 1000, "s3://b/in/")
