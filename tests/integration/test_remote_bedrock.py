"""The bedrock provider, driven against a real Bedrock-runtime server: bulkinfer's own `serve`.

Records in a dialect the model speaks (Claude-shaped bodies, Titan embeddings) go through InvokeModel
as written; other chat records go through Converse.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkinfer.engine.job import RunRequest
from tests.conftest import SLOW_ECHO_CATALOG, anthropic_record, read_jsonl, run_job, write_jsonl
from tests.integration.test_bedrock_api import Server, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("runtime")
    catalog = root / "models.toml"
    catalog.write_text(SLOW_ECHO_CATALOG.replace("delay_s = 0.1", "delay_s = 0.0"))
    server = start_server(root / "data", catalog, "--insecure-dev")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


def catalog(tmp_path: Path, server: Server, kind: str = "chat") -> Path:
    path = tmp_path / "remote.toml"
    dialects = '["anthropic"]' if kind == "chat" else '["titan-embed"]'
    path.write_text(
        f'[models.br]\nprovider = "bedrock"\nbase_url = "{server.url}"\nremote_model = "slow-echo"\n'
        f'region = "us-east-1"\nkind = "{kind}"\ndialects = {dialects}\nmax_attempts = 2\n'
    )
    return path


def test_native_records_pass_through_and_others_go_through_converse(
    tmp_path: Path, runtime_server: Server
) -> None:
    records: list[dict[str, Any]] = [anthropic_record(f"a{i}", f"claude shaped {i}") for i in range(5)]
    records.append(
        {
            "recordId": "c1",
            "modelInput": {
                "messages": [{"role": "user", "content": [{"text": "converse shaped"}]}],
                "inferenceConfig": {"maxTokens": 1},
            },
        }
    )
    records.append(
        {
            "recordId": "o1",
            "modelInput": {
                "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "openai shaped"}]
            },
        }
    )
    source = write_jsonl(tmp_path / "in" / "mixed.jsonl", records)
    models = catalog(tmp_path, runtime_server)
    report = run_job(RunRequest(source.parent, "br", tmp_path / "out", "j1", models))
    lines = {line["recordId"]: line for line in read_jsonl(report.output_dir / "mixed.jsonl.out")}

    native = lines["a3"]["modelOutput"]
    assert native["type"] == "message" and native["content"][0]["text"] == "claude shaped 3"
    assert lines["a3"]["attempts"] == 1
    assert lines["c1"]["modelOutput"]["output"]["message"]["content"][0]["text"] == "converse"
    assert lines["c1"]["modelOutput"]["stopReason"] == "max_tokens"
    assert lines["o1"]["modelOutput"]["choices"][0]["message"]["content"] == "openai shaped"
    assert report.counts.success == 7 and report.counts.errors == 0


def test_a_refusal_is_the_records_error_line_after_one_attempt(
    tmp_path: Path, runtime_server: Server
) -> None:
    source = write_jsonl(tmp_path / "in" / "a.jsonl", [anthropic_record(f"r{i}", "hi") for i in range(3)])
    models = catalog(tmp_path, runtime_server)
    models.write_text(models.read_text().replace('"slow-echo"', '"no-such-model"'))
    report = run_job(RunRequest(source.parent, "br", tmp_path / "out", "j3", models))
    lines = read_jsonl(report.output_dir / "a.jsonl.out")
    assert report.counts.errors == 3
    for line in lines:
        assert line["error"]["errorCode"] == 404
        assert "ResourceNotFoundException" in line["error"]["errorMessage"]
        assert line["attempts"] == 1


def test_titan_embeddings_through_invoke_model(tmp_path: Path, runtime_server: Server) -> None:
    records = [{"recordId": f"e{i}", "modelInput": {"inputText": f"text number {i}"}} for i in range(4)]
    source = write_jsonl(tmp_path / "in" / "emb.jsonl", records)
    models = catalog(tmp_path, runtime_server, kind="embedding")
    report = run_job(RunRequest(source.parent, "br", tmp_path / "out", "j2", models))
    lines = read_jsonl(report.output_dir / "emb.jsonl.out")
    assert [len(line["modelOutput"]["embedding"]) for line in lines] == [8] * 4
    assert lines[0]["modelOutput"]["inputTextTokenCount"] == 3
