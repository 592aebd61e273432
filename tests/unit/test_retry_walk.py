"""The carry-over walk of a retry job (engine.retry): which of the base's output lines are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bulkinfer.engine.retry import RetryBase, base_lines, carried_lines
from bulkinfer.formats.bedrock import generated_record_id
from bulkinfer.storage.files import list_inputs
from tests.conftest import anthropic_record, write_jsonl

MAX_LINE = 1 << 20


def _out(record: dict[str, Any], record_id: str, ok: bool = True) -> bytes:
    answer = (
        {"modelOutput": {"content": [{"type": "text", "text": "hi"}]}}
        if ok
        else {"error": {"errorCode": 500}}
    )
    return orjson.dumps({"recordId": record_id, "modelInput": record["modelInput"], **answer})


def test_the_walk_keeps_successes_of_the_same_input_and_runs_everything_else(tmp_path: Path) -> None:
    records = [anthropic_record(f"R{i}", f"text {i}") for i in range(6)]
    records[4] = anthropic_record(None, "no id")
    source = write_jsonl(tmp_path / "in" / "in.jsonl", records)
    f = list_inputs(source)[0]
    generated = generated_record_id("root:in.jsonl", 5)
    changed = anthropic_record("R3", "edited since")
    base = [
        _out(records[0], "R0"),
        _out(records[1], "R1", ok=False),  # an error line: runs again
        # line 3 (R2) never ran: the base stopped before it
        _out(changed, "R3"),  # answered for another modelInput: runs again
        _out(records[4], generated),  # no recordId: matched by the root's generated id
        _out(records[5], "R5"),
    ]
    kept = dict(carried_lines(f, base, "root", MAX_LINE))
    assert kept == {1: base[0], 5: base[3], 6: base[4]}
    assert dict(carried_lines(f, base, "another-root", MAX_LINE)).keys() == {1}  # ids no longer agree


def test_a_link_in_the_base_folder_is_never_read(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("R0", "x")])
    f = list_inputs(source)[0]
    secret = tmp_path / "elsewhere.out"
    secret.write_bytes(_out(anthropic_record("R0", "x"), "R0") + b"\n")
    outputs = tmp_path / "base"
    outputs.mkdir()
    (outputs / "in.jsonl.out").symlink_to(secret)
    base = RetryBase(job_id="b", seed="b", outputs=str(outputs))
    assert list(base_lines(base, f, [], MAX_LINE)) == []
    (outputs / "in.jsonl.out").unlink()
    (outputs / "in.jsonl.out").write_bytes(secret.read_bytes())
    assert len(list(base_lines(base, f, [], MAX_LINE))) == 1
