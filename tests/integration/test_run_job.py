"""A whole job in-process on the echo model: output layout, manifest, bad input, resume, duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkinfer.domain.job import JobStatus
from bulkinfer.engine.job import STATE_DIR, LocalJob, RunRequest
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.errors import InputError, JobConflictError, UnknownModelError, UserError
from tests.conftest import (
    CountingProgress,
    anthropic_record,
    read_jsonl,
    run_job,
    run_until_stopped,
    write_jsonl,
)


def test_output_layout_and_manifest_match_bedrock(tmp_path: Path) -> None:
    records = [anthropic_record(f"REC{i:08d}", f"hello number {i}") for i in range(250)]
    source = write_jsonl(tmp_path / "in" / "calls.jsonl", records)
    report = run_job(RunRequest(source, "echo", tmp_path / "out", job_id="job1"))

    job_dir = tmp_path / "out" / "job1"
    assert sorted(p.name for p in job_dir.iterdir()) == ["calls.jsonl.out", "manifest.json.out"]
    lines = read_jsonl(job_dir / "calls.jsonl.out")
    assert [line["recordId"] for line in lines] == [r["recordId"] for r in records]
    first = lines[0]
    assert set(first) == {"recordId", "modelInput", "modelOutput"}
    assert first["modelInput"] == records[0]["modelInput"]
    assert first["modelOutput"]["content"][0]["text"] == "hello number 0"
    assert first["modelOutput"]["stop_reason"] == "end_turn"

    manifest = orjson.loads((job_dir / "manifest.json.out").read_bytes())
    assert list(manifest)[:6] == [
        "totalRecordCount",
        "processedRecordCount",
        "successRecordCount",
        "errorRecordCount",
        "inputTokenCount",
        "outputTokenCount",
    ]
    assert manifest["totalRecordCount"] == manifest["processedRecordCount"] == 250
    assert manifest["successRecordCount"] == 250 and manifest["errorRecordCount"] == 0
    assert manifest["inputTokenCount"] == 250 * 3
    assert manifest["outputTokenCount"] == 250 * 3
    assert manifest["jobId"] == "job1" and manifest["modelId"] == "echo"
    assert report.job.status == JobStatus.COMPLETED


BAD_LINES: list[tuple[bytes, str]] = [
    (b'{"recordId": "BADJSON0001", "modelInput": {', "invalid JSON"),
    (b'{"recordId": "NOINPUT0001"}', "modelInput: field required"),
    (b'{"recordId": "WRONGTYPE01", "modelInput": "just text"}', "modelInput: expected a JSON object"),
    (b'{"recordId": 12, "modelInput": {}}', "recordId: must be a non-empty string"),
    (b"[1, 2, 3]", "expected a JSON object, got array"),
    (b'{"recordId": "LATIN10001", "modelInput": {"x": "caf\xe9"}}', "not valid UTF-8"),
    (
        orjson.dumps(
            {"recordId": "BADROLE0001", "modelInput": {"messages": [{"role": "bot", "content": "x"}]}}
        ),
        "modelInput.messages.0.role",
    ),
    (
        orjson.dumps({"recordId": "BADTOKENS01", "modelInput": {"max_tokens": 0, "messages": []}}),
        "modelInput.max_tokens",
    ),
]


def test_malformed_lines_become_error_lines_and_the_rest_completes(tmp_path: Path) -> None:
    good = [orjson.dumps(anthropic_record(f"GOOD{i:07d}", f"fine {i}")) for i in range(20)]
    huge = b'{"recordId": "HUGE0000001", "modelInput": {"inputText": "' + b"x" * 5000 + b'"}}'
    lines: list[bytes] = []
    for i, (bad, _) in enumerate(BAD_LINES):
        lines += [good[i], bad]
    lines += [huge, *good[len(BAD_LINES) :]]
    source = write_jsonl(tmp_path / "mixed.jsonl", lines)
    settings = EngineSettings(max_line_bytes=4096, block_records=7)
    report = run_job(RunRequest(source, "echo", tmp_path / "out", job_id="mixed", settings=settings))

    out = read_jsonl(tmp_path / "out" / "mixed" / "mixed.jsonl.out")
    assert len(out) == len(lines)
    errors = [line for line in out if "error" in line]
    assert len(errors) == len(BAD_LINES) + 1
    for line_number, (line, (_, expected)) in enumerate(zip(errors, BAD_LINES, strict=False)):
        message = line["error"]["errorMessage"]
        assert "mixed.jsonl line" in message and expected in message, (line_number, message)
        assert line["error"]["errorCode"] == 400
    assert "over the size limit" in errors[-1]["error"]["errorMessage"]
    assert all(len(line["recordId"]) >= 10 for line in errors)
    assert report.counts.success == 20 and report.counts.errors == len(BAD_LINES) + 1
    assert report.counts.error_codes == {"400": len(BAD_LINES) + 1}
    assert report.error_samples and "mixed.jsonl line 2" in report.error_samples[0]


def test_folder_input_nested_files_empty_file_and_generated_ids(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_jsonl(src / "a.jsonl", [anthropic_record(None, f"a{i}") for i in range(5)])
    write_jsonl(src / "sub" / "b.jsonl", [anthropic_record("B0000000001", "b")])
    (src / "empty.jsonl").write_bytes(b"")
    (src / "notes.txt").write_text("ignored")
    run_job(RunRequest(src, "echo", tmp_path / "out", job_id="folder"))

    job_dir = tmp_path / "out" / "folder"
    assert (job_dir / "sub" / "b.jsonl.out").is_file()
    assert (job_dir / "empty.jsonl.out").read_bytes() == b""
    generated = [line["recordId"] for line in read_jsonl(job_dir / "a.jsonl.out")]
    assert len(set(generated)) == 5
    assert all(len(i) == 11 and i.isalnum() and i.upper() == i for i in generated)
    manifest = orjson.loads((job_dir / "manifest.json.out").read_bytes())
    assert manifest["totalRecordCount"] == 6
    assert manifest["inputFiles"] == ["a.jsonl", "empty.jsonl", "sub/b.jsonl"]


def test_duplicate_record_ids_are_reported_as_error_lines(tmp_path: Path) -> None:
    records = [anthropic_record("SAME0000001", "first"), anthropic_record("OTHER000001", "x")]
    records.append(anthropic_record("SAME0000001", "second"))
    source = write_jsonl(tmp_path / "dups.jsonl", records)
    report = run_job(RunRequest(source, "echo", tmp_path / "out", job_id="dups"))

    out = read_jsonl(tmp_path / "out" / "dups" / "dups.jsonl.out")
    assert "modelOutput" in out[0] and "modelOutput" in out[1]
    assert "duplicate" in out[2]["error"]["errorMessage"]
    assert "first seen at line 1" in out[2]["error"]["errorMessage"]
    assert report.counts.error_codes == {"400": 1}


def test_every_dialect_runs_and_answers_in_its_own_shape(tmp_path: Path) -> None:
    text = "say this back"
    bodies: list[dict[str, Any]] = [
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 9,
            "messages": [{"role": "user", "content": text}],
        },
        {"messages": [{"role": "user", "content": [{"text": text}]}], "inferenceConfig": {"maxTokens": 9}},
        {
            "model": "x",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        },
        {"inputText": text},
        {"input": [text, "another"]},
    ]
    records = [{"recordId": f"DIALECT000{i}", "modelInput": b} for i, b in enumerate(bodies)]
    source = write_jsonl(tmp_path / "dialects.jsonl", records)
    run_job(RunRequest(source, "echo", tmp_path / "out", job_id="dialects"))
    out = [line["modelOutput"] for line in read_jsonl(tmp_path / "out" / "dialects" / "dialects.jsonl.out")]
    assert out[0]["content"][0]["text"] == text and out[0]["usage"]["output_tokens"] == 3
    assert out[1]["output"]["message"]["content"][0]["text"] == text and out[1]["stopReason"] == "end_turn"
    assert out[2]["choices"][0]["message"]["content"] == text and out[2]["object"] == "chat.completion"
    assert len(out[3]["embedding"]) == 8 and out[3]["inputTextTokenCount"] == 3
    assert [d["index"] for d in out[4]["data"]] == [0, 1]


def test_dialect_can_be_forced(tmp_path: Path) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    source = write_jsonl(tmp_path / "f.jsonl", [{"recordId": "FORCED00001", "modelInput": body}])
    run_job(RunRequest(source, "echo", tmp_path / "out", job_id="forced", dialect="openai-chat"))
    (line,) = read_jsonl(tmp_path / "out" / "forced" / "f.jsonl.out")
    assert line["modelOutput"]["object"] == "chat.completion"


def test_resume_after_stop_redoes_only_uncommitted_records(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    log = tmp_path / "invocations.log"
    catalog = echo_catalog(delay_s=0.05, invocation_log=str(log), batch_size=10, concurrency=1)
    records = [anthropic_record(f"R{i:010d}", f"record-{i}") for i in range(200)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    settings = EngineSettings(block_records=20, blocks_in_flight=2, chunk_records=10, commit_interval_s=0.05)
    request = RunRequest(source, "echo-test", tmp_path / "out", "resumable", catalog, settings=settings)

    first = run_until_stopped(request, 0.4)
    assert first.job.status == JobStatus.STOPPED
    done_first = first.counts.processed
    assert 0 < done_first < 200
    assert not (tmp_path / "out" / "resumable").exists()
    ran_first = log.read_text().splitlines()
    assert len(ran_first) == done_first  # a graceful stop finishes what it started

    second = run_job(request)
    assert second.job.status == JobStatus.COMPLETED
    ran = log.read_text().splitlines()
    assert sorted(ran) == sorted(f"record-{i}" for i in range(200))  # each record ran exactly once
    out = read_jsonl(tmp_path / "out" / "resumable" / "in.jsonl.out")
    assert [line["recordId"] for line in out] == [r["recordId"] for r in records]


def test_completed_job_rerun_is_a_no_op_and_conflicts_are_refused(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("ONLY0000001", "x")])
    run_job(RunRequest(source, "echo", tmp_path / "out", job_id="done"))
    before = (tmp_path / "out" / "done" / "in.jsonl.out").read_bytes()
    again = run_job(RunRequest(source, "echo", tmp_path / "out", job_id="done"))
    assert again.job.status == JobStatus.COMPLETED and again.counts.processed == 1
    assert (tmp_path / "out" / "done" / "in.jsonl.out").read_bytes() == before
    with pytest.raises(JobConflictError, match="model 'echo'"):
        LocalJob.open(RunRequest(source, "smollm2-135m-instruct", tmp_path / "out", job_id="done"))


def test_a_job_cannot_run_twice_at_once(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("ONLY0000001", "x")])
    request = RunRequest(source, "echo", tmp_path / "out", job_id="locked")
    first = LocalJob.open(request)
    try:
        with pytest.raises(JobConflictError, match="already running"):
            LocalJob.open(request)
    finally:
        first.close()
    assert (tmp_path / "out" / STATE_DIR / "state.db").is_file()


def test_missing_input_and_unknown_model_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input not found"):
        LocalJob.open(RunRequest(tmp_path / "nope.jsonl", "echo", tmp_path / "out"))
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("ONLY0000001", "x")])
    with pytest.raises(UnknownModelError, match=r"available models: .*echo"):
        LocalJob.open(RunRequest(source, "gpt-17", tmp_path / "out"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=r"no \.jsonl file"):
        LocalJob.open(RunRequest(tmp_path / "folder", "echo", tmp_path / "out"))


def test_duplicate_across_files_names_the_first_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in" / "a.jsonl", [anthropic_record("SHARED00001", "a")])
    write_jsonl(
        tmp_path / "in" / "b.jsonl",
        [anthropic_record("B0000000001", "b"), anthropic_record("SHARED00001", "c")],
    )
    run_job(RunRequest(tmp_path / "in", "echo", tmp_path / "out", job_id="cross"))
    a = read_jsonl(tmp_path / "out" / "cross" / "a.jsonl.out")
    b = read_jsonl(tmp_path / "out" / "cross" / "b.jsonl.out")
    assert "modelOutput" in a[0] and "modelOutput" in b[0]
    assert "b.jsonl line 2: recordId: duplicate" in b[1]["error"]["errorMessage"]
    assert "first seen at a.jsonl line 1" in b[1]["error"]["errorMessage"]


def test_duplicates_are_judged_the_same_after_a_resume(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(delay_s=0.05, batch_size=5, concurrency=1)
    records = [anthropic_record(f"U{i:010d}", f"r{i}") for i in range(120)]
    records[100] = anthropic_record("U0000000003", "repeat of line 4")  # a later line repeats an early id
    source = write_jsonl(tmp_path / "in.jsonl", records)
    settings = EngineSettings(block_records=10, blocks_in_flight=1, chunk_records=5, commit_interval_s=0.01)
    request = RunRequest(source, "echo-test", tmp_path / "out", "dupresume", catalog, settings=settings)

    run_until_stopped(request, 0.3)
    report = run_job(request)
    out = read_jsonl(tmp_path / "out" / "dupresume" / "in.jsonl.out")
    assert "modelOutput" in out[3]
    assert "first seen at line 4" in out[100]["error"]["errorMessage"]
    assert report.counts.errors == 1


def test_a_failing_model_batch_becomes_error_lines_and_the_job_completes(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(fail_text="EXPLODE", batch_size=4, concurrency=1)
    texts = [f"fine {i}" for i in range(12)]
    texts[5] = "please EXPLODE now"
    records = [anthropic_record(f"F{i:010d}", t) for i, t in enumerate(texts)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    report = run_job(RunRequest(source, "echo-test", tmp_path / "out", "failing", catalog))
    out = read_jsonl(tmp_path / "out" / "failing" / "in.jsonl.out")
    failed = [i for i, line in enumerate(out) if "error" in line]
    assert failed == [4, 5, 6, 7]  # the batch holding the bad record, and only that batch
    assert out[5]["error"]["errorCode"] == 500
    assert "model error: ProviderError" in out[5]["error"]["errorMessage"]
    assert report.job.status == JobStatus.COMPLETED and report.counts.error_codes == {"500": 4}


def test_nasty_records_become_error_lines_and_never_stop_the_job(tmp_path: Path) -> None:
    deep = b"[" * 300 + b"1" + b"]" * 300  # orjson reads this deep but cannot write it
    schema_body = {
        "model": "m",
        "messages": [{"role": "user", "content": "fill the form"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"properties": {"error": {"type": "string"}}},
        },
    }
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "é"}}
    records: list[dict[str, Any] | bytes] = [
        {"recordId": "SCHEMA00001", "modelInput": schema_body},  # holds the bytes '"error":{' in a success
        b'{"recordId": "DEEP0000001", "modelInput": {"messages": ' + deep + b"}}",
        {
            "recordId": "IMAGE000001",
            "modelInput": {"max_tokens": 5, "messages": [{"role": "user", "content": [image]}]},
        },
        {"recordId": "[/bold]0001", "modelInput": {"inputText": "markup-looking id"}},
    ]
    source = write_jsonl(tmp_path / "nasty.jsonl", records)
    source.write_bytes(b"\xef\xbb\xbf" + source.read_bytes())  # a byte-order mark, as some editors write
    report = run_job(RunRequest(source, "echo", tmp_path / "out", job_id="nasty"))
    assert report.job.status == JobStatus.COMPLETED
    out = read_jsonl(tmp_path / "out" / "nasty" / "nasty.jsonl.out")
    assert out[0]["recordId"] == "SCHEMA00001"
    assert "modelOutput" in out[0] and "modelOutput" in out[3]
    assert "nested deeper than 200 levels" in out[1]["error"]["errorMessage"]
    assert "modelInput.messages.0.content.0.source.data: not valid base64" in out[2]["error"]["errorMessage"]
    assert report.counts.success == 2 and report.counts.errors == 2


def test_resume_refuses_changed_input_or_dialect_even_after_a_failure(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record(f"I{i:010d}", "x") for i in range(3)])
    request = RunRequest(source, "echo", tmp_path / "out", job_id="changing", dialect="anthropic")
    job = LocalJob.open(request)
    job.job = job.store.update_job(job.job, status=JobStatus.FAILED)
    job.close()
    with pytest.raises(JobConflictError, match="--dialect anthropic"):
        LocalJob.open(RunRequest(source, "echo", tmp_path / "out", job_id="changing"))
    write_jsonl(source, [anthropic_record(f"I{i:010d}", "changed") for i in range(2)])
    with pytest.raises(JobConflictError, match="input files that have changed"):
        LocalJob.open(request)


@pytest.mark.parametrize("job_id", ["..", "a/b", "-x", "x" * 65, "white space"])
def test_job_ids_that_could_escape_the_output_folder_are_refused(tmp_path: Path, job_id: str) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("ONLY0000001", "x")])
    with pytest.raises(UserError, match="invalid job id"):
        LocalJob.open(RunRequest(source, "echo", tmp_path / "out", job_id=job_id))
    assert not (tmp_path / "out").exists()


def test_a_model_that_cannot_load_fails_the_job_visibly(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(invocation_log=str(tmp_path / "missing-folder" / "log.txt"))
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("ONLY0000001", "x")])
    request = RunRequest(source, "echo-test", tmp_path / "out", "noload", catalog)
    with pytest.raises(FileNotFoundError):
        run_job(request)
    job = LocalJob.open(request)
    try:
        assert job.job.status == JobStatus.FAILED and "FileNotFoundError" in (job.job.message or "")
    finally:
        job.close()


def test_a_service_stop_writes_the_finished_records_and_a_manifest(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(delay_s=0.05, batch_size=5, concurrency=1)
    records = [anthropic_record(f"P{i:010d}", f"r{i}") for i in range(200)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    settings = EngineSettings(block_records=10, blocks_in_flight=1, chunk_records=5, commit_interval_s=0.01)
    state = tmp_path / "service-state"
    request = RunRequest(
        source, "echo-test", tmp_path / "out", "partial", catalog, None, settings, state, keep_partial=True
    )
    report = run_until_stopped(request, 0.4)
    assert report.job.status == JobStatus.STOPPED
    out = read_jsonl(tmp_path / "out" / "partial" / "in.jsonl.out")
    assert 0 < len(out) < 200
    assert [line["recordId"] for line in out] == [r["recordId"] for r in records[: len(out)]]
    manifest = orjson.loads((tmp_path / "out" / "partial" / "manifest.json.out").read_bytes())
    assert manifest["status"] == "Stopped" and manifest["processedRecordCount"] == len(out)
    assert manifest["totalRecordCount"] == 200
    assert (state / "state.db").is_file() and not (tmp_path / "out" / ".bulkinfer").exists()


@pytest.mark.parametrize(("final", "why"), [(JobStatus.STOPPED, 0), (JobStatus.PARTIALLY_COMPLETED, 1)])
@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_a_service_stop_lists_the_requests_it_never_ran(
    tmp_path: Path, echo_catalog: Callable[..., Path], fmt: str, final: JobStatus, why: int
) -> None:
    """A cancelled (Stopped) or expired (PartiallyCompleted) batch answers every request once: a small
    file, read to its end before the stop, names the ones never run (batch_cancelled / batch_expired,
    canceled / expired)."""
    catalog = echo_catalog(delay_s=0.05, batch_size=5, concurrency=1)
    ids = [f"r{i}" for i in range(60)]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    if fmt == "openai":
        lines = [{"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": chat} for c in ids]
    else:
        lines = [{"custom_id": c, "params": {**chat, "model": "m"}} for c in ids]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    request = RunRequest(source, "echo-test", out, "svc", catalog, keep_partial=True, record_format=fmt)

    async def stop_when_some_ran() -> JobStatus:
        job = LocalJob.open(request)
        try:
            progress = CountingProgress()
            task = asyncio.create_task(job.execute(progress))
            while progress.records < 10 and not task.done():
                await asyncio.sleep(0.01)
            job.request_stop(final)
            return (await task).job.status
        finally:
            job.close()

    assert asyncio.run(stop_when_some_ran()) == final
    folder = tmp_path / "out" / "svc"
    manifest = orjson.loads((folder / "manifest.json.out").read_bytes())
    ran = manifest["processedRecordCount"]
    assert 10 <= ran < 60, "the job finished before it could be stopped"
    if fmt == "openai":
        done, unrun = read_jsonl(folder / "in.jsonl.out"), read_jsonl(folder / "in.jsonl.errors.out")
        assert all(line["response"]["status_code"] == 200 for line in done)
        code = ("batch_cancelled", "batch_expired")[why]
        assert all(line["response"] is None and line["error"]["code"] == code for line in unrun)
    else:
        results = read_jsonl(folder / "in.jsonl.out")
        done = [line for line in results if line["result"]["type"] == "succeeded"]
        unrun = [line for line in results if line["result"]["type"] == ("canceled", "expired")[why]]
        assert len(done) + len(unrun) == len(results)
    assert len(done) == ran
    assert sorted(line["custom_id"] for line in done + unrun) == sorted(ids)  # each exactly once
