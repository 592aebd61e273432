"""Unit tests for ``engine.shards``: byte ranges of whole lines, and repeated ids found before any shard
runs; and reading a file's byte range (``storage.files.read_blocks``)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bulkinfer.engine.seen import position
from bulkinfer.engine.shards import plan_shards
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.formats.records import get_format
from bulkinfer.storage.files import UTF8_BOM, InputFile, read_blocks

BEDROCK = get_format("bedrock")


def input_file(path: Path, index: int = 0) -> InputFile:
    return InputFile(index, path, path.name, path.stat().st_size)


def line(record_id: str | None) -> bytes:
    record = {"modelInput": {"inputText": "hi"}} | ({"recordId": record_id} if record_id else {})
    return orjson.dumps(record)


def lines_of(f: InputFile, start: int, end: int, first_line: int) -> list[tuple[int, bytes]]:
    blocks = read_blocks(f.path, block_bytes=7, start=start, end=end)
    return [(first_line - 1 + n, raw) for n, raw in split_lines(blocks, 10_000)]  # type: ignore[misc]


@pytest.mark.parametrize("bom", [b"", UTF8_BOM])
@pytest.mark.parametrize("every", [1, 2, 3, 10])
def test_shards_hold_every_line_once_in_order_under_its_own_number(
    tmp_path: Path, every: int, bom: bytes
) -> None:
    path = tmp_path / "in.jsonl"
    raw = [line(f"r{i}") for i in range(7)]
    path.write_bytes(bom + raw[0] + b"\n" + raw[1] + b"\n\n" + b"\n".join(raw[2:]))  # a blank line, no end
    f = input_file(path)
    plan = plan_shards([f], BEDROCK, "job", every, 10_000)
    read = [pair for s in plan.shards for pair in lines_of(f, s.start, s.end, s.first_line)]
    whole = list(split_lines(read_blocks(path), 10_000))
    assert read == whole
    assert [n for n, _ in read] == [1, 2, 4, 5, 6, 7, 8]
    assert plan.record_counts == {0: 7}
    assert all(s.start < s.end for s in plan.shards)
    assert len(plan.shards) == -(-8 // every)  # eight physical lines


def test_repeated_ids_point_to_their_first_sighting_across_files(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_bytes(b"\n".join([line("x"), line("y"), line("x"), b"{not json"]) + b"\n")
    b.write_bytes(b"\n".join([line("y"), line(None), line("z")]) + b"\n")
    plan = plan_shards([input_file(a, 0), input_file(b, 1)], BEDROCK, "job", 2, 10_000)
    assert plan.firsts == {position(0, 3): position(0, 1), position(1, 1): position(0, 2)}
    assert plan.record_counts == {0: 4, 1: 3}


def test_a_byte_range_reads_only_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(UTF8_BOM + b"0123456789")
    assert b"".join(read_blocks(path, block_bytes=4)) == b"0123456789"
    assert b"".join(read_blocks(path, block_bytes=4, start=0, end=7)) == b"0123"
    assert b"".join(read_blocks(path, block_bytes=4, start=5, end=9)) == b"2345"
    assert b"".join(read_blocks(path, block_bytes=4, start=9, end=9)) == b""
