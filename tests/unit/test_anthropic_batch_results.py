"""Result lines of a message batch that failed before it ran, read from its input in blocks."""

from __future__ import annotations

import orjson

from bulkinfer.api.anthropic.batches import errored_lines


def test_each_request_is_one_errored_line_though_it_spans_blocks() -> None:
    data = b"".join(
        orjson.dumps({"custom_id": f"r-{i}", "params": {"x": "y" * 50}}) + b"\n" for i in range(40)
    )
    blocks = [data[i : i + 7] for i in range(0, len(data), 7)]
    lines = list(errored_lines(blocks, "the input was removed"))
    results = [orjson.loads(line) for line in lines]
    assert [r["custom_id"] for r in results] == [f"r-{i}" for i in range(40)]
    assert {r["result"]["error"]["error"]["message"] for r in results} == {"the input was removed"}
