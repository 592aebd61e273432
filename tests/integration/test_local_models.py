"""Real small models on the CPU through the whole engine: SmolLM2 for chat, MiniLM for embeddings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bulkinfer.domain.request import ChatRequest, ChatResult, GenerationParams, Message, RecordError, TextPart
from bulkinfer.engine.job import RunRequest
from bulkinfer.providers.base import Provider
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.registry import load_provider
from tests.conftest import anthropic_record, read_jsonl, run_job, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2() -> Provider:
    return load_provider(Catalog.load().get("smollm2-135m-instruct"))


def ask(text: str, max_tokens: int = 24, stop: tuple[str, ...] = ()) -> ChatRequest:
    params = GenerationParams(max_tokens=max_tokens, stop=stop)
    return ChatRequest(messages=(Message("user", (TextPart(text),)),), params=params)


def test_smollm2_batch_answers_each_prompt(smollm2: Provider) -> None:
    prompts = ["What is the capital of France?", "Why is the sky blue? Explain at length.", "Say hi."]
    outcomes = asyncio.run(smollm2.infer([ask(p) for p in prompts]))
    assert all(isinstance(o, ChatResult) for o in outcomes)
    results = [o for o in outcomes if isinstance(o, ChatResult)]
    assert "Paris" in results[0].text
    assert results[1].stop_reason == "max_tokens" and results[1].usage.output_tokens == 24
    assert all(r.usage.input_tokens > 5 for r in results)
    # a batch answers each prompt as it would alone (greedy decoding, left padding)
    (alone,) = asyncio.run(smollm2.infer([ask(prompts[0])]))
    assert isinstance(alone, ChatResult) and alone.text == results[0].text


def test_smollm2_stop_sequences_and_context_limit(smollm2: Provider) -> None:
    long_prompt = "word " * 9000
    stop_at, too_long = asyncio.run(
        smollm2.infer([ask("What is the capital of France?", 30, (".",)), ask(long_prompt)])
    )
    assert (
        isinstance(stop_at, ChatResult)
        and stop_at.stop_reason == "stop_sequence"
        and stop_at.text.endswith("Paris")
    )
    assert isinstance(too_long, RecordError) and too_long.code == 400 and "context" in too_long.message


def test_smollm2_job_end_to_end(tmp_path: Path) -> None:
    texts = ["Name a color.", "What is 2 plus 2?", "Write one word about the sea.", "Say hello in French."]
    records = [anthropic_record(f"LLM{i:08d}", t, max_tokens=16) for i, t in enumerate(texts)]
    records.append({"recordId": "EMBEDONLLM1", "modelInput": {"inputText": "not for a chat model"}})
    source = write_jsonl(tmp_path / "prompts.jsonl", records)
    report = run_job(RunRequest(source, "smollm2-135m-instruct", tmp_path / "out", job_id="llm"))
    lines = read_jsonl(tmp_path / "out" / "llm" / "prompts.jsonl.out")
    assert [line["recordId"] for line in lines] == [r["recordId"] for r in records]
    for line in lines[:4]:
        output = line["modelOutput"]
        assert output["type"] == "message" and output["content"][0]["text"].strip()
        assert 0 < output["usage"]["output_tokens"] <= 16
    assert "does not produce embeddings" in lines[4]["error"]["errorMessage"]
    assert report.counts.success == 4 and report.counts.output_tokens > 4
    assert report.estimated_cost_usd is not None and report.estimated_cost_usd > 0


def test_minilm_embeddings_job_gives_meaningful_vectors(tmp_path: Path) -> None:
    texts = ["A man is eating food.", "Someone is having a meal.", "The stock market fell sharply today."]
    records: list[dict[str, object]] = [
        {"recordId": f"EMB{i:08d}", "modelInput": {"inputText": t}} for i, t in enumerate(texts)
    ]
    records.append({"recordId": "EMBOPENAI01", "modelInput": {"input": texts[:2]}})
    records.append({"recordId": "EMBSHORT001", "modelInput": {"inputText": texts[0], "dimensions": 128}})
    records.append({"recordId": "EMBTOOBIG01", "modelInput": {"inputText": texts[0], "dimensions": 1024}})
    source = write_jsonl(tmp_path / "docs.jsonl", records)
    run_job(RunRequest(source, "all-minilm-l6-v2", tmp_path / "out", job_id="emb"))
    lines = read_jsonl(tmp_path / "out" / "emb" / "docs.jsonl.out")
    vectors = [line["modelOutput"]["embedding"] for line in lines[:3]]
    assert all(len(v) == 384 for v in vectors)
    assert lines[0]["modelOutput"]["inputTextTokenCount"] > 3

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > 0.5 > 0.1 > cos(vectors[0], vectors[2])
    assert [d["index"] for d in lines[3]["modelOutput"]["data"]] == [0, 1]
    assert len(lines[4]["modelOutput"]["embedding"]) == 128
    assert "exceeds this model's 384" in lines[5]["error"]["errorMessage"]
