"""What the CLI says when something is wrong: a user's path, a file's content, a server's message or an
exception's text is printed as it is, never read as markup, and a usage problem exits 2 saying what to do.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from typer.testing import CliRunner, Result

from bulkinfer.cli.main import app
from bulkinfer.engine.job import LocalJob
from bulkinfer.providers.local import INSTALL_HINT, require
from tests.acceptance.test_cli import bulkinfer


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name", ["batch[v2].jsonl", "x[/y].jsonl", "[bold]b.jsonl"])
def test_a_missing_input_is_named_as_typed(tmp_path: Path, name: str) -> None:
    result = bulkinfer("run", tmp_path / name, "--model", "echo", "--output", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr == f"error: input not found: {tmp_path / name}\n"


class _Refusing(BaseHTTPRequestHandler):
    """A server that refuses every call as ours refuses an unknown job, quoting the id it was given."""

    def do_GET(self) -> None:
        job = unquote(self.path).removeprefix("/model-invocation-job/")
        body = json.dumps({"message": f"no job {job} [red]"}).encode()
        self.send_response(404)
        self.send_header("x-amzn-ErrorType", "ResourceNotFoundException")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_servers_refusal_is_printed_as_it_is(refusing_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    result = invoke("status", "[/x]", "--server", refusing_server)
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: ResourceNotFoundException: no job [/x] [red]\n"


def test_an_install_hint_keeps_its_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def missing_extra(self: LocalJob, *args: object, **kwargs: object) -> None:
        require("bulkinfer_no_such_module")

    monkeypatch.setattr(LocalJob, "execute", missing_extra)
    source = tmp_path / "in.jsonl"
    source.write_text('{"recordId": "a", "modelInput": {"inputText": "hi"}}\n')
    result = invoke("run", source, "--model", "echo", "--output", tmp_path / "out")
    assert result.exit_code == 1
    said = f"job failed: bulkinfer_no_such_module is not installed: {INSTALL_HINT}\n"
    assert said in result.stderr
    assert "pip install 'bulkinfer[local]' torch" in INSTALL_HINT


def test_tables_show_file_names_as_they_are(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a[red].jsonl").write_text('{"recordId": "a", "modelInput": {"inputText": "hi"}}\n')
    result = invoke("run", folder, "--model", "echo", "--output", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "a[red].jsonl" in result.stdout


def test_an_output_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"recordId": "a", "modelInput": {"inputText": "hi"}}\n')
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    result = bulkinfer("run", source, "--model", "echo", "--output", afile)
    assert result.returncode == 2
    said = f"error: --output {afile} is a file: give a folder (a job's outputs land in OUTPUT/<job-id>/)\n"
    assert result.stderr == said
    assert afile.read_text() == "mine\n"


@pytest.mark.parametrize("command", [["status", "job1"], ["jobs"], ["results", "job1"], ["stop", "job1"]])
def test_a_server_url_without_a_scheme_is_a_usage_error(command: list[str]) -> None:
    result = bulkinfer(*command, "--server", "127.0.0.1:18301")
    assert result.returncode == 2
    assert result.stderr == (
        "error: --server 127.0.0.1:18301: give the server's URL with its scheme: http://127.0.0.1:18301\n"
    )


OPENAI_LINE = {
    "custom_id": "r1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
}
ANTHROPIC_PARAMS = {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_LINE = {"custom_id": "r1", "params": {"model": "claude", **ANTHROPIC_PARAMS}}
UNRUNNABLE = {
    "empty": (b"", "error: in.jsonl is empty: give JSON Lines of Bedrock batch records, one "),
    "blank lines": (b"\n  \n", "error: in.jsonl is empty: "),
    "array": (
        b'[{"recordId": "a", "modelInput": {"inputText": "hi"}}]\n',
        "error: in.jsonl holds a JSON array, not JSON Lines: put each record on a line of its own, "
        "e.g. jq -c '.[]' in.jsonl > records.jsonl",
    ),
    "indented array": (b'[\n  {"recordId": "a"}\n]\n', "error: in.jsonl holds a JSON array, not JSON Lines"),
    "openai": (
        json.dumps(OPENAI_LINE).encode() + b"\n",
        "error: in.jsonl line 1: this is an OpenAI Batch API input line; bulkinfer reads Bedrock batch "
        "records {recordId, modelInput}: put body as modelInput and custom_id as recordId, "
        "e.g. jq -c '{recordId: .custom_id, modelInput: .body}' IN.jsonl > records.jsonl",
    ),
    "anthropic": (
        json.dumps(ANTHROPIC_LINE).encode() + b"\n",
        "error: in.jsonl line 1: this is an Anthropic Message Batches input line; bulkinfer reads Bedrock "
        "batch records {recordId, modelInput}: put params, without model and with anthropic_version, as "
        "modelInput and custom_id as recordId, e.g. jq -c '{recordId: .custom_id, modelInput: (.params | "
        'del(.model) + {anthropic_version: "bedrock-2023-05-31"})}\' IN.jsonl > records.jsonl',
    ),
}


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("case", list(UNRUNNABLE))
def test_an_input_no_record_of_which_could_run_is_refused_before_a_job_exists(
    tmp_path: Path, case: str, dry: bool
) -> None:
    content, said = UNRUNNABLE[case]
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    out = tmp_path / "out"
    result = invoke("run", source, "--model", "echo", "--output", out, *(["--dry-run"] if dry else []))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(said), result.stderr
    assert not out.exists()


def test_the_suggested_conversions_run(tmp_path: Path) -> None:
    """The lines the messages' jq commands make are read in the dialect their request was written in."""
    bedrock_anthropic = {**ANTHROPIC_PARAMS, "anthropic_version": "bedrock-2023-05-31"}
    lines = [
        {"recordId": "openai", "modelInput": OPENAI_LINE["body"]},
        {"recordId": "anthropic", "modelInput": bedrock_anthropic},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = invoke("run", source, "--model", "echo", "--output", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dialects: anthropic: 1, openai-chat: 1" in result.stdout


def test_a_folder_with_an_empty_file_among_others_runs(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"recordId": "a", "modelInput": {"inputText": "hi"}}\n')
    (folder / "empty.jsonl").write_bytes(b"")
    result = invoke("run", folder, "--model", "echo", "--output", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output


def test_a_foreign_line_among_bedrock_records_is_named_for_what_it_is(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    bedrock = {"recordId": "a", "modelInput": {"inputText": "hi"}}
    source.write_text(json.dumps(bedrock) + "\n" + json.dumps(OPENAI_LINE) + "\n")
    result = invoke("run", source, "--model", "echo", "--output", tmp_path / "out", "--dry-run")
    said = "in.jsonl line 2: this is an OpenAI Batch API input line; bulkinfer reads Bedrock batch records"
    assert said in " ".join(result.stdout.split())


def test_runs_help_names_only_its_own_options() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0, result.output
    assert "--s3-endpoint-url" in result.stdout
    assert "--data-dir" not in result.stdout
