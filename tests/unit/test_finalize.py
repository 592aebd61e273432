"""Merging committed chunks into one output file in input order."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bulkinfer.domain.job import Counts
from bulkinfer.domain.lineset import LineSet
from bulkinfer.engine.finalize import IncompleteOutput, write_output
from bulkinfer.store.state import ChunkRecord


def chunk(folder: Path, name: str, lines: list[int]) -> ChunkRecord:
    data = b"".join(orjson.dumps({"line": n}) + b"\n" for n in sorted(lines))
    (folder / name).write_bytes(data)
    return ChunkRecord(0, name, LineSet.of(lines), min(lines), Counts(processed=len(lines)))


def out_lines(path: Path) -> list[int]:
    return [orjson.loads(line)["line"] for line in path.read_bytes().splitlines()]


def test_disjoint_and_overlapping_chunks_come_out_in_line_order(tmp_path: Path) -> None:
    chunks = [
        chunk(tmp_path, "c.jsonl", [20, 21, 22]),
        chunk(tmp_path, "a.jsonl", [1, 2, 3]),
        chunk(tmp_path, "b1.jsonl", [4, 6, 9, 12]),  # b1 and b2 interleave, as a resumed run's do
        chunk(tmp_path, "b2.jsonl", [5, 7, 8, 10, 11]),
    ]
    errors: list[str] = []
    write_output(chunks, tmp_path, tmp_path / "out.jsonl.out", 15, errors)
    assert out_lines(tmp_path / "out.jsonl.out") == [1, 2, 3, *range(4, 13), 20, 21, 22]
    assert errors == []


def test_a_line_committed_twice_or_a_missing_record_fails(tmp_path: Path) -> None:
    twice = [chunk(tmp_path, "a.jsonl", [1, 2, 3]), chunk(tmp_path, "b.jsonl", [3, 4])]
    with pytest.raises(IncompleteOutput, match="line 3 committed twice"):
        write_output(twice, tmp_path, tmp_path / "x.out", 5, [])
    missing = [chunk(tmp_path, "c.jsonl", [1, 2])]
    with pytest.raises(IncompleteOutput, match="2 records committed, 3 expected"):
        write_output(missing, tmp_path, tmp_path / "y.out", 3, [])


def test_error_messages_are_sampled(tmp_path: Path) -> None:
    line = orjson.dumps({"recordId": "X", "error": {"errorCode": 400, "errorMessage": "bad one"}}) + b"\n"
    (tmp_path / "e.jsonl").write_bytes(line)
    record = ChunkRecord(0, "e.jsonl", LineSet.of([1]), 1, Counts(processed=1, errors=1))
    errors: list[str] = []
    write_output([record], tmp_path, tmp_path / "z.out", 1, errors)
    assert errors == ["bad one"]
