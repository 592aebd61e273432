"""Result lines of a message batch that ended before it ran, read from its input in blocks."""

from __future__ import annotations

import orjson

from bulkinfer.formats.anthropic_batch import render_unrun
from bulkinfer.formats.records import ANTHROPIC, results_of_unrun


def test_each_request_is_one_result_line_though_it_spans_blocks() -> None:
    data = b"".join(
        orjson.dumps({"custom_id": f"r-{i}", "params": {"x": "y" * 50}}) + b"\n" for i in range(40)
    )
    blocks = [data[i : i + 7] for i in range(0, len(data), 7)]
    lines = list(
        results_of_unrun(
            blocks,
            ANTHROPIC,
            lambda record: render_unrun(record, "cancelled"),
            source="in.jsonl",
            seed="job:in.jsonl",
            max_line_bytes=1 << 20,
        )
    )
    results = [orjson.loads(line) for line in lines]
    assert [r["custom_id"] for r in results] == [f"r-{i}" for i in range(40)]
    assert {r["result"]["type"] for r in results} == {"canceled"}
