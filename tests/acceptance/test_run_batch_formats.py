"""``bulkinfer run`` on OpenAI batch files (as ``vllm run-batch`` reads them) and Anthropic batch
requests, as users run it: in this process through the CLI, and as a subprocess killed mid-job."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkinfer.providers.echo import EMBEDDING_DIMENSIONS
from tests.acceptance.test_cli import BULKINFER, _env, bulkinfer, committed_records, wait_for
from tests.acceptance.test_cli_messages import invoke
from tests.conftest import read_jsonl, write_jsonl

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"


def openai_line(custom_id: str, text: str, url: str = CHAT, **override: Any) -> dict[str, Any]:
    if url == EMBEDDINGS:
        body: dict[str, Any] = {"model": "text-embedding-3-small", "input": text}
    else:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 50}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body, **override}


def anthropic_request(custom_id: str, text: str, **params: Any) -> dict[str, Any]:
    body = {"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "params": {**body, **params}}


GOOD = [
    openai_line("chat-1", "hello there"),
    openai_line("emb-1", "embed me", EMBEDDINGS),
    openai_line("chat-2", "second question"),
    openai_line("emb-2", "and me", EMBEDDINGS),
]
BAD = {  # custom_id -> its line and what its error message names (the file, its line, the field)
    "get": (openai_line("get", "x", method="GET"), "line 5: method: must be POST, not 'GET'"),
    "responses": (openai_line("responses", "x", url="/v1/responses"), "line 6: url: '/v1/responses' is not"),
    "empty": ({**openai_line("empty", "x"), "body": {"messages": []}}, "line 7: body.messages: "),
    "stream": (openai_line("stream", "x", body={"messages": [], "stream": True}), "line 8: body.stream: "),
}
OPENAI_LINES = [*GOOD, *(line for line, _ in BAD.values()), openai_line("chat-3", "last one")]
SUCCEEDED = ["chat-1", "emb-1", "chat-2", "emb-2", "chat-3"]


Lines = list[dict[str, Any]]


def split_results(folder: Path, name: str = "batch.jsonl") -> tuple[Lines, Lines]:
    """An OpenAI job's output file and error file, as lines."""
    return read_jsonl(folder / f"{name}.out"), read_jsonl(folder / f"{name}.errors.out")


def ids(lines: Lines) -> list[str]:
    return [line["custom_id"] for line in lines]


def manifest(folder: Path) -> dict[str, Any]:
    return dict(orjson.loads((folder / "manifest.json.out").read_bytes()))


@pytest.mark.parametrize("named", [True, False], ids=["--format openai", "found from the first line"])
def test_an_openai_batch_file_gives_an_output_file_of_successes_and_an_error_file_of_failures(
    tmp_path: Path, named: bool
) -> None:
    source = write_jsonl(tmp_path / "batch.jsonl", OPENAI_LINES)
    out = tmp_path / "out"
    fmt = ["--format", "openai"] if named else []
    result = invoke("run", source, "--model", "echo", "--output", out, "--job-id", "j", *fmt)
    assert result.exit_code == 0, result.output

    succeeded, failed = split_results(out / "j")
    assert ids(succeeded) == SUCCEEDED  # in input order
    assert ids(failed) == list(BAD)
    assert sorted(ids(succeeded) + ids(failed)) == sorted(line["custom_id"] for line in OPENAI_LINES)
    for line in succeeded:
        assert line["response"]["status_code"] == 200 and line["error"] is None
    for line in failed:
        assert line["error"] is None  # an HTTP-level failure: the error is in response.body
        assert line["response"]["status_code"] == 400
        error = line["response"]["body"]["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith("batch.jsonl ")
        assert BAD[line["custom_id"]][1] in error["message"], error["message"]

    embedding = next(line for line in succeeded if line["custom_id"] == "emb-1")["response"]["body"]
    assert embedding["object"] == "list"
    assert embedding["data"][0]["object"] == "embedding"
    assert len(embedding["data"][0]["embedding"]) == EMBEDDING_DIMENSIONS

    counts = manifest(out / "j")
    assert counts["status"] == "Completed"
    assert (counts["totalRecordCount"], counts["processedRecordCount"]) == (9, 9)
    assert (counts["successRecordCount"], counts["errorRecordCount"]) == (5, 4)
    assert counts["errorCodeCounts"] == {"400": 4}
    messages = [line["response"]["body"]["error"]["message"] for line in failed]
    assert counts["errorSamples"] == messages
    assert "First errors" in result.stdout


def test_a_success_line_holds_a_whole_chat_completion_as_vllm_run_batch_writes_it(tmp_path: Path) -> None:
    """The lines ``vllm run-batch`` and OpenAI's output file hold: ``{id, custom_id, response: {status_code,
    request_id, body}, error}``, the body the endpoint's own answer (ids and times aside)."""
    source = write_jsonl(tmp_path / "batch.jsonl", [openai_line("only", "what vllm says")])
    out = tmp_path / "out"
    result = invoke("run", source, "--model", "echo", "--output", out, "--job-id", "v")
    assert result.exit_code == 0, result.output
    [line], failed = split_results(out / "v")
    assert failed == []
    assert list(line) == ["id", "custom_id", "response", "error"]
    assert line["custom_id"] == "only" and line["error"] is None
    assert isinstance(line["id"], str) and line["id"]
    response = line["response"]
    assert list(response) == ["status_code", "request_id", "body"]
    assert response["status_code"] == 200 and isinstance(response["request_id"], str)
    body = response["body"]
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "chat.completion"
    assert isinstance(body["id"], str) and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": "what vllm says"}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == 3


def test_a_file_every_record_of_which_fails_leaves_the_output_file_empty(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(fail_text="BOOM")
    lines = [openai_line(f"r{i}", f"BOOM {i}") for i in range(3)]
    source = write_jsonl(tmp_path / "batch.jsonl", lines)
    out = tmp_path / "out"
    result = invoke("run", source, "-m", "echo-test", "--models", catalog, "-o", out, "--job-id", "f")
    assert result.exit_code == 0, result.output
    assert (out / "f" / "batch.jsonl.out").read_bytes() == b""
    _, failed = split_results(out / "f")
    assert ids(failed) == ["r0", "r1", "r2"]
    assert {line["response"]["status_code"] for line in failed} == {500}
    assert {line["response"]["body"]["error"]["type"] for line in failed} == {"server_error"}
    counts = manifest(out / "f")
    assert (counts["successRecordCount"], counts["errorRecordCount"]) == (0, 3)
    assert counts["errorSamples"] and "echo was told to fail on 'BOOM'" in counts["errorSamples"][0]


def test_an_anthropic_batch_gives_one_result_per_request(tmp_path: Path) -> None:
    requests = [
        anthropic_request("a-1", "hello anthropic"),
        anthropic_request("a-2", "with a system prompt", system="be brief"),
        {
            "custom_id": "no-model",
            "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        },
        anthropic_request("streamed", "x", stream=True),
        anthropic_request("a-3", "last"),
    ]
    source = write_jsonl(tmp_path / "batch.jsonl", requests)
    out = tmp_path / "out"
    result = invoke("run", source, "--model", "echo", "--output", out, "--job-id", "a")
    assert result.exit_code == 0, result.output
    assert not (out / "a" / "batch.jsonl.errors.out").exists()  # Anthropic's results are one list
    results = {line["custom_id"]: line["result"] for line in read_jsonl(out / "a" / "batch.jsonl.out")}
    assert list(results) == ["a-1", "a-2", "no-model", "streamed", "a-3"]
    assert [r["type"] for r in results.values()] == [
        "succeeded",
        "succeeded",
        "errored",
        "errored",
        "succeeded",
    ]
    message = results["a-1"]["message"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": "hello anthropic"}]
    assert message["stop_reason"] == "end_turn"
    assert set(message["usage"]) == {"input_tokens", "output_tokens"}
    error = results["no-model"]["error"]
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"] == "batch.jsonl line 3: params.model: field required"
    assert "params.stream" in results["streamed"]["error"]["error"]["message"]
    counts = manifest(out / "a")
    assert (counts["successRecordCount"], counts["errorRecordCount"]) == (3, 2)
    assert len(counts["errorSamples"]) == 2


def test_a_folder_mixing_formats_is_refused_before_a_job_exists(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_jsonl(folder / "a.jsonl", GOOD)
    write_jsonl(folder / "b.jsonl", [anthropic_request("x", "y")])
    write_jsonl(folder / "c.jsonl", [{"recordId": "r", "modelInput": {"inputText": "hi"}}])
    out = tmp_path / "out"
    result = invoke("run", folder, "--model", "echo", "--output", out)
    assert result.exit_code == 2, result.output
    said = "error: the input files hold records of different formats: a.jsonl (openai), b.jsonl (anthropic), "
    assert result.stderr.startswith(said + "c.jsonl (bedrock); give one format a job"), result.stderr
    assert not out.exists()


def test_format_bedrock_on_openai_lines_says_what_they_are(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "batch.jsonl", GOOD)
    out = tmp_path / "out"
    result = invoke("run", source, "--model", "echo", "--output", out, "--format", "bedrock")
    assert result.exit_code == 2, result.output
    said = "error: batch.jsonl line 1: this is an OpenAI Batch API input line; bulkinfer reads Bedrock batch"
    assert result.stderr.startswith(said), result.stderr
    assert not out.exists()


def test_dry_run_reports_an_openai_files_records(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "batch.jsonl", OPENAI_LINES)
    out = tmp_path / "out"
    result = invoke("run", source, "--model", "echo", "--output", out, "--dry-run")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())
    assert "│ batch.jsonl │ 9 │ 4 │" in said, result.stdout
    assert "dialects: openai-chat: 3, openai-embeddings: 2" in said
    assert "batch.jsonl line 5: method: must be POST, not 'GET'" in said
    assert "batch.jsonl line 7: body.messages: " in said  # its field as the line names it
    assert "modelInput" not in said
    assert not out.exists()


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ({**openai_line("e", "x"), "body": {"messages": []}}, "in.jsonl line 1: body.messages: "),
        (anthropic_request("e", "x", max_tokens=0), "in.jsonl line 1: params.max_tokens: "),
    ],
)
def test_a_file_of_no_valid_record_is_refused_naming_the_fields_as_its_lines_do(
    tmp_path: Path, line: dict[str, Any], said: str
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [line])
    out = tmp_path / "out"
    result = invoke("run", source, "--model", "echo", "--output", out)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {said}"), result.stderr
    assert "modelInput" not in result.stderr
    assert not out.exists()


def test_a_job_killed_mid_way_resumes_and_lists_every_custom_id_once(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    total = 300
    catalog = echo_catalog(delay_s=0.05, batch_size=5, concurrency=1)
    bad = [i for i in range(total) if i % 50 == 7]  # each an error line at once
    urls = [EMBEDDINGS if i % 3 == 0 else CHAT for i in range(total)]
    methods = ["GET" if i in bad else "POST" for i in range(total)]
    lines = [openai_line(f"r{i}", f"text {i}", urls[i], method=methods[i]) for i in range(total)]
    source = write_jsonl(tmp_path / "batch.jsonl", lines)
    out = tmp_path / "out"
    args = ["run", str(source), "-m", "echo-test", "-o", str(out), "--job-id", "k", "--models", str(catalog)]

    quiet = subprocess.DEVNULL
    proc = subprocess.Popen([*BULKINFER, *args], stdout=quiet, stderr=quiet, env=_env())
    try:
        wait_for(lambda: committed_records(out, "k") >= 40, timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    at_kill = committed_records(out, "k")
    assert at_kill < total, "the job finished before it could be killed"
    assert not (out / "k" / "batch.jsonl.out").exists()

    rerun = bulkinfer(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{at_kill:,} records already done" in rerun.stderr

    succeeded, failed = split_results(out / "k")
    everyone = [line["custom_id"] for line in lines]
    assert sorted(ids(succeeded) + ids(failed)) == sorted(everyone)  # each exactly once
    assert ids(failed) == [f"r{i}" for i in bad]
    assert ids(succeeded) == [c for c in everyone if c not in set(ids(failed))]
    assert all(line["response"]["status_code"] == 200 for line in succeeded)
    counts = manifest(out / "k")
    assert (counts["successRecordCount"], counts["errorRecordCount"]) == (total - len(bad), len(bad))
    assert counts["status"] == "Completed"


def test_results_shows_an_openai_or_anthropic_jobs_records(tmp_path: Path) -> None:
    openai_file = write_jsonl(tmp_path / "o" / "batch.jsonl", OPENAI_LINES)
    anthropic_file = write_jsonl(tmp_path / "a" / "batch.jsonl", [anthropic_request("a-1", "hi there"), {}])
    out = tmp_path / "out"
    for source, job in ((openai_file, "o"), (anthropic_file, "a")):
        ran = invoke("run", source, "--model", "echo", "--output", out, "--job-id", job)
        assert ran.exit_code == 0, ran.output

    shown = invoke("results", out / "o", "--limit", "0")
    assert shown.exit_code == 0, shown.output
    rows = [" ".join(row.split()) for row in shown.stdout.splitlines()]
    assert rows[:2] == ["chat-1 hello there", "emb-1 1 embedding(s)"]
    assert "get batch.jsonl line 5: method: must be POST, not 'GET'" in rows  # the error file's lines too
    assert len(rows) == len(OPENAI_LINES)

    shown = invoke("results", out / "a")
    assert shown.exit_code == 0, shown.output
    rows = [" ".join(row.split()) for row in shown.stdout.splitlines()]
    assert rows[0] == "a-1 hi there"
    assert rows[1].endswith("batch.jsonl line 2: custom_id: field required")


def test_retrying_an_openai_jobs_failures_is_refused_as_not_supported_yet(tmp_path: Path) -> None:
    """Retrying reads a base's Bedrock lines: on an OpenAI job it would run its successes again."""
    source = write_jsonl(tmp_path / "batch.jsonl", [*GOOD, openai_line("bad", "x", method="GET")])
    out = tmp_path / "out"
    assert invoke("run", source, "--model", "echo", "--output", out).exit_code == 0
    jobs_before = sorted(p.name for p in out.iterdir())
    result = invoke("run", source, "--model", "echo", "--output", out, "--retry-errors")
    assert result.exit_code == 2, result.output
    assert "retrying the failed records of openai batch lines is not supported yet" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == jobs_before
