"""The carry-over walk of a retry job (engine.retry): which of the base's output lines are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bulkinfer.domain.job import Counts
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


def test_a_file_the_base_manifest_does_not_name_is_not_read(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("R0", "x")])
    f = list_inputs(source)[0]
    outputs = tmp_path / "base"
    outputs.mkdir()
    (outputs / "in.jsonl.out").write_bytes(_out(anthropic_record("R0", "x"), "R0") + b"\n")
    (outputs / "manifest.json.out").write_bytes(orjson.dumps({"inputFiles": ["other.jsonl"]}))
    base = RetryBase(job_id="b", seed="b", outputs=str(outputs))
    assert list(base_lines(base, f, [], MAX_LINE)) == []


def test_a_retry_counts_both_jobs_tokens_and_an_unknown_price_stays_unknown() -> None:
    base = RetryBase(
        job_id="b", seed="b", outputs="", input_tokens=10, output_tokens=4, estimated_cost_usd=0.5
    )
    counts, cost = base.combined(Counts(processed=3, success=3, input_tokens=1, output_tokens=2), 0.25)
    assert (counts.processed, counts.input_tokens, counts.output_tokens, cost) == (3, 11, 6, 0.75)
    assert base.combined(Counts(), None)[1] is None
    unknown = RetryBase(job_id="b", seed="b", outputs="", estimated_cost_usd=None)
    assert unknown.combined(Counts(), 0.25)[1] is None
