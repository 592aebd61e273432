"""Local batching: SmolLM2-135M through the engine against one-record-at-a-time `model.generate`.

Both sides use the same converted weights, dtype, greedy decoding, repetition penalty and max_tokens.
The baseline is the plain transformers loop a user would write: one prompt, one `generate` call.
The engine sorts each block by prompt length and runs padded micro-batches.

    python benchmarks/local_batching.py [--records 64] [--max-tokens 48]

Prints generated tokens/s of each and last the ratio (target >= 3).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bulkinfer.engine.job import LocalJob, RunRequest
from bulkinfer.engine.progress import NoProgress
from bulkinfer.providers.catalog import Catalog, ModelSpec
from bulkinfer.providers.local import pick_device_and_dtype
from bulkinfer.providers.transformers_llm import converted_weights

MODEL = "smollm2-135m-instruct"
TOPICS = [
    "the water cycle",
    "how a bicycle gear works",
    "why bread rises",
    "the history of the printing press",
    "how vaccines train the immune system",
    "what a database index is",
    "how tides happen",
    "why leaves change color in autumn",
]
CONTEXT = (
    "Our support team received several messages this week about late deliveries, a billing error on "
    "annual plans, and a confusing password reset email. Customers were mostly polite but wanted faster "
    "answers. "
)


def prompts(count: int) -> list[str]:
    """Prompts of varied length, as real batches have: short questions and longer summaries."""
    out = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        if i % 3 == 0:
            out.append(f"Explain {topic} in two sentences.")
        elif i % 3 == 1:
            out.append(f"Summarize this for a manager: {CONTEXT * (1 + i % 4)}")
        else:
            out.append(f"Write a short note to a friend about {topic}.")
    return out


def baseline(spec: ModelSpec, texts: list[str], max_tokens: int) -> tuple[int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = pick_device_and_dtype(torch, str(spec.options.get("dtype", "auto")))
    folder = converted_weights(spec, dtype)
    tok = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model = model.to(device).eval()
    penalty = spec.options.get("repetition_penalty")

    def generate(text: str) -> int:
        chat = tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        encoded = tok(chat, return_tensors="pt", add_special_tokens=False).to(device)
        with torch.inference_mode():
            out = model.generate(
                **encoded,
                max_new_tokens=max_tokens,
                do_sample=False,
                repetition_penalty=penalty,
                pad_token_id=tok.pad_token_id,
            )
        new = out[0, encoded.input_ids.shape[1] :].tolist()
        return new.index(tok.eos_token_id) if tok.eos_token_id in new else len(new)

    generate("Hello")  # warm-up
    started = time.perf_counter()
    tokens = sum(generate(t) for t in texts)
    return tokens, time.perf_counter() - started


def engine(texts: list[str], max_tokens: int, folder: Path) -> tuple[int, float]:
    source = folder / "prompts.jsonl"
    with source.open("wb") as f:
        for i, text in enumerate(texts):
            body = {"max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}
            f.write(orjson.dumps({"recordId": f"B{i:010d}", "modelInput": body}) + b"\n")
    job = LocalJob.open(RunRequest(source, MODEL, folder / "out", job_id="bench"))
    try:
        report = asyncio.run(job.execute(NoProgress()))
    finally:
        job.close()
    assert report.manifest is not None and report.counts.errors == 0
    return report.counts.output_tokens, float(report.manifest["durationSeconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    spec = Catalog.load().get(MODEL)
    texts = prompts(args.records)
    with tempfile.TemporaryDirectory(prefix="bulkinfer-bench-") as tmp:
        ours, ours_s = engine(texts, args.max_tokens, Path(tmp))
    base, base_s = baseline(spec, texts, args.max_tokens)
    print(
        f"{args.records} records, max_tokens {args.max_tokens}, model {MODEL}, batch_size {spec.batch_size}"
    )
    print(f"  one at a time : {base:>6} tokens in {base_s:7.1f} s = {base / base_s:7.1f} generated tokens/s")
    print(f"  bulkinfer     : {ours:>6} tokens in {ours_s:7.1f} s = {ours / ours_s:7.1f} generated tokens/s")
    print(f"ratio (bulkinfer tokens/s / one-at-a-time tokens/s): {(ours / ours_s) / (base / base_s):.2f}")


if __name__ == "__main__":
    main()
