"""``bulkinfer estimate`` as a user runs it, against the jobs that then run: tokens counted with the
model's own tokenizer, records it would refuse listed with their lines, cost, and duration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.acceptance.test_cli_messages import invoke
from tests.acceptance.test_run_batch_formats import EMBEDDINGS, openai_line
from tests.conftest import read_jsonl, write_jsonl

CALL_CENTER = Path(__file__).parents[2] / "examples" / "call-center" / "transcripts.jsonl"
DEMO_MODEL = "smollm2-135m-instruct"
CALLS = 8
"""Records of the demo's input a test runs: all 60 take 90 s on 2 cores, and a record's tokens do not
depend on the others."""


@pytest.fixture(autouse=True)
def _own_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's jobs measure throughput into its own history file, not the user's."""
    monkeypatch.setenv("BULKINFER_THROUGHPUT_FILE", str(tmp_path / "throughput.json"))


def calls() -> list[dict[str, Any]]:
    """The first records of the README's call-center demo input, as written."""
    return [orjson.loads(line) for line in CALL_CENTER.read_bytes().splitlines()[:CALLS]]


def estimated(*args: str | Path) -> dict[str, Any]:
    result = invoke("estimate", *args, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = orjson.loads(result.stdout)
    return data


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any], Path]]:
    """The demo's records estimated, then run with the demo's model (max_tokens cut to 2: the prompt's
    tokens are what is compared, and generating 160 tokens a record would take minutes); the input,
    the manifest and the throughput history the run wrote. Shared: the model loads once."""
    folder = tmp_path_factory.mktemp("demo")
    records = calls()
    for record in records:
        record["modelInput"]["max_tokens"] = 2
    source = write_jsonl(folder / "transcripts.jsonl", records)
    with pytest.MonkeyPatch.context() as env:
        history = folder / "throughput.json"
        env.setenv("BULKINFER_THROUGHPUT_FILE", str(history))
        result = invoke("run", source, "--model", DEMO_MODEL, "--output", folder / "out", "--job-id", "demo")
        assert result.exit_code == 0, result.output
    yield source, orjson.loads((folder / "out" / "demo" / "manifest.json.out").read_bytes()), history


@pytest.mark.slow
def test_the_estimate_of_the_demo_input_is_within_5_percent_of_the_tokens_its_job_counts(
    demo_job: tuple[Path, dict[str, Any], Path],
) -> None:
    source, manifest, _ = demo_job
    estimate = estimated(source, "--model", DEMO_MODEL)
    assert estimate["tokenizer"] == "model"
    assert estimate["records"] == estimate["runnable"] == manifest["totalRecordCount"] == CALLS
    counted = manifest["inputTokenCount"]
    assert abs(estimate["inputTokens"] - counted) <= 0.05 * counted, (estimate["inputTokens"], counted)
    assert estimate["outputTokensAtMost"] == 2 * CALLS >= manifest["outputTokenCount"]
    on_demand, batch = estimate["costUSD"]["onDemand"], estimate["costUSD"]["batch"]
    assert on_demand == pytest.approx(2 * batch)  # the catalog's batch discount is 50%
    assert on_demand == pytest.approx((counted * 0.02 + 2 * CALLS * 0.04) / 1e6, rel=0.05)


@pytest.mark.slow
def test_the_duration_comes_from_the_models_last_run(
    demo_job: tuple[Path, dict[str, Any], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, manifest, history = demo_job
    monkeypatch.setenv("BULKINFER_THROUGHPUT_FILE", str(history))
    estimate = estimated(source, "--model", DEMO_MODEL)
    assert "measured in job demo" in estimate["durationBasis"]
    assert estimate["durationSeconds"] == pytest.approx(CALLS / manifest["recordsPerSecond"])
    said = invoke("estimate", source, "--model", DEMO_MODEL).stdout
    assert "measured in job demo" in said and "about " in said


@pytest.mark.slow
def test_a_chat_record_sent_to_the_embedding_model_is_listed_with_its_line(tmp_path: Path) -> None:
    docs = [
        {"recordId": f"DOC{i:08d}", "modelInput": {"inputText": f"Refund policy number {i}."}}
        for i in range(2)
    ]
    source = write_jsonl(tmp_path / "mixed.jsonl", [*docs, calls()[0], docs[0] | {"recordId": "DOC00000009"}])
    result = invoke("estimate", source, "--model", "all-minilm-l6-v2")
    assert result.exit_code == 0, result.output
    assert "records of the wrong kind for the model: 1" in result.stdout
    assert (
        "mixed.jsonl line 3: modelInput is a chat body, but this model only produces embeddings"
        in result.stdout
    )
    estimate = estimated(source, "--model", "all-minilm-l6-v2")
    assert estimate["wrongKind"]["count"] == 1 and estimate["runnable"] == 3
    assert estimate["invalid"]["count"] == 0 and estimate["tokenizer"] == "model"
    # what the job then counts, for the records the model takes
    assert (
        invoke("run", source, "-m", "all-minilm-l6-v2", "-o", tmp_path / "out", "--job-id", "e").exit_code
        == 0
    )
    manifest = orjson.loads((tmp_path / "out" / "e" / "manifest.json.out").read_bytes())
    assert manifest["errorRecordCount"] == 1 and manifest["inputTokenCount"] == estimate["inputTokens"]


@pytest.mark.slow
def test_a_record_over_the_models_context_is_listed_with_its_line(tmp_path: Path) -> None:
    long = calls()[1]
    long["modelInput"]["max_tokens"] = 8100  # the transcript's prompt plus this exceeds 8,192
    source = write_jsonl(tmp_path / "calls.jsonl", [calls()[0], long])
    estimate = estimated(source, "--model", DEMO_MODEL)
    (message,) = estimate["overContext"]["first"]
    assert message.startswith("calls.jsonl line 2: prompt of ") and "exceeds the context of 8,192" in message
    assert estimate["runnable"] == 1 and estimate["outputTokensAtMost"] == 160


def test_an_openai_batch_file_is_estimated_as_echo_counts_it(tmp_path: Path) -> None:
    lines = [
        openai_line("chat-1", "hello there you"),
        openai_line("emb-1", "embed me", EMBEDDINGS),
        openai_line("get", "x", method="GET"),
    ]
    source = write_jsonl(tmp_path / "batch.jsonl", lines)
    estimate = estimated(source, "--model", "echo")
    assert estimate["format"] == "openai" and estimate["records"] == 3 and estimate["runnable"] == 2
    assert estimate["invalid"]["count"] == 1 and "line 3: method" in estimate["invalid"]["first"][0]
    assert estimate["inputTokens"] == 5 and estimate["outputTokensAtMost"] == 50
    assert invoke("run", source, "-m", "echo", "-o", tmp_path / "out", "--job-id", "b").exit_code == 0
    assert (
        sum(
            r["response"]["body"]["usage"]["prompt_tokens"]
            for r in read_jsonl(tmp_path / "out" / "b" / "batch.jsonl.out")
        )
        == 5
    )


def test_a_model_with_no_price_costs_unknown_and_its_rate_limit_gives_the_duration(tmp_path: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        '[models.hosted]\nprovider = "openai"\napi_key_env = "NO_SUCH_KEY"\nrequests_per_minute = 60\n'
    )
    source = write_jsonl(tmp_path / "calls.jsonl", calls()[:3])
    result = invoke("estimate", source, "--model", "hosted", "--models", catalog)
    assert result.exit_code == 0, result.output
    assert "approximate (no tokenizer for hosted)" in result.stdout
    assert "cost on-demand │ unknown" in result.stdout and "$0" not in result.stdout
    estimate = estimated(source, "--model", "hosted", "--models", catalog)
    assert estimate["costUSD"] == {"onDemand": None, "batch": None}
    assert estimate["durationSeconds"] == pytest.approx(3.0) and "requests" in estimate["durationBasis"]


def test_usage_errors_exit_2_before_reading_records(tmp_path: Path) -> None:
    missing = invoke("estimate", tmp_path / "none.jsonl", "--model", "echo")
    assert missing.exit_code == 2 and "input not found" in missing.output
    source = write_jsonl(tmp_path / "calls.jsonl", calls()[:1])
    unknown = invoke("estimate", source, "--model", "no-such-model")
    assert unknown.exit_code == 2 and "unknown model 'no-such-model'" in unknown.output
    assert invoke("estimate", source, "--model", "echo").exit_code == 0
    remote = invoke(
        "submit",
        "s3://bucket/in/",
        "-m",
        "echo",
        "-o",
        "s3://bucket/out/",
        "--server",
        "http://x",
        "--dry-run",
    )
    assert remote.exit_code == 2 and "bulkinfer estimate DIR --model echo" in remote.output
    local = invoke(
        "submit", source, "-m", "echo", "-o", "s3://bucket/out/", "--server", "http://x", "--dry-run"
    )
    assert local.exit_code == 0 and "Estimate for echo" in local.stdout


def test_a_local_model_whose_tokenizer_is_not_installed_is_estimated_approximately(tmp_path: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        '[models.absent]\nprovider = "transformers"\n'
        'options = { gguf_package = "no_such_model_package", gguf_file = "x.gguf" }\n'
    )
    source = write_jsonl(tmp_path / "calls.jsonl", calls()[:2])
    estimate = estimated(source, "--model", "absent", "--models", catalog)
    assert estimate["tokenizer"] == "approximate" and estimate["runnable"] == 2
    assert estimate["inputTokens"] > 0 and estimate["durationBasis"] == "unknown (no run of absent yet)"
