"""Run Bespoke Curator over the rate-limit benchmark's prompts, against an OpenAI-compatible server.

Run by ``benchmarks/rate_limit.py`` with the Python of a separate virtualenv that has
``bespokelabs-curator`` (its dependencies clash with bulkinfer's), never imported by it:

    .bench/curator-venv/bin/python benchmarks/curator_driver.py --base-url URL --model M \
        --rpm 600 --records 2000 --input records.jsonl

Curator is configured from its own source (0.1.x): ``backend="openai"`` in online mode (``batch=False``)
with ``backend_params`` base_url, max_requests_per_minute, max_tokens_per_minute (set far above anything
used, so only the request limit binds, as in bulkinfer's catalog entry), max_retries, request_timeout and
require_all_responses=False (count failures instead of raising). Its cache is off
(``CURATOR_DISABLE_CACHE``) and in a throw-away ``CURATOR_CACHE_DIR``, so every run calls the server;
telemetry, the hosted viewer and litellm's remote cost-map fetch are off. The tokenizer is tiktoken's
cl100k_base from the copy litellm ships, so nothing is downloaded.

Prints one JSON line last: ``{"elapsed_s", "completed", "failed", "version"}``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from typing import Any

QUIET_ENV = {
    "CURATOR_DISABLE_CACHE": "1",
    "CURATOR_DISABLE_RICH_DISPLAY": "1",
    "CURATOR_VIEWER": "0",
    "TELEMETRY_ENABLED": "false",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
TOKENS_PER_MINUTE = 1_000_000_000
"""Curator always applies a token limit (its default is 100k TPM, and it estimates 4,096 output tokens for
a model litellm does not know); this one never binds."""


def read_prompts(path: str, count: int) -> list[dict[str, Any]]:
    """The last user text of each of the first ``count`` Bedrock records, with its record id."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            content = record["modelInput"]["messages"][-1]["content"]
            text = content if isinstance(content, str) else content[0]["text"]
            rows.append({"record_id": record["recordId"], "text": text})
            if len(rows) == count:
                break
    return rows


def prompt(self: Any, row: dict[str, Any]) -> str:
    return str(row["text"])


def parse(self: Any, row: dict[str, Any], response: Any) -> dict[str, Any]:
    return {"record_id": row["record_id"], "answer": response}


def run(args: argparse.Namespace, work_dir: str) -> dict[str, Any]:
    os.environ.update(QUIET_ENV)
    os.environ["CURATOR_CACHE_DIR"] = work_dir
    os.environ["HF_HOME"] = os.path.join(work_dir, "hf")
    os.environ.setdefault("OPENAI_API_KEY", "unused")
    # Imported by name: they exist only in Curator's virtualenv, which type checkers of this repo never see.
    # litellm points TIKTOKEN_CACHE_DIR at the encodings it ships before tiktoken is first used.
    importlib.import_module("litellm.litellm_core_utils.default_encoding")
    curator: Any = importlib.import_module("bespokelabs.curator")
    datasets: Any = importlib.import_module("datasets")
    answer = type("Answer", (curator.LLM,), {"prompt": prompt, "parse": parse})
    llm = answer(
        model_name=args.model,
        backend="openai",
        batch=False,
        generation_params={"max_tokens": args.max_tokens},
        backend_params={
            "base_url": args.base_url,
            "api_key": "unused",
            "max_requests_per_minute": args.rpm,
            "max_tokens_per_minute": TOKENS_PER_MINUTE,
            "max_retries": args.max_retries,
            "request_timeout": args.timeout,
            "require_all_responses": False,
        },
    )
    dataset = datasets.Dataset.from_list(read_prompts(args.input, args.records))
    started = time.monotonic()
    response = llm(dataset)
    elapsed = time.monotonic() - started
    completed = sum(1 for row in response.dataset if row.get("answer") is not None)
    return {
        "elapsed_s": elapsed,
        "completed": completed,
        "failed": args.records - completed,
        "version": getattr(curator, "__version__", "unknown"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", required=True, help="OpenAI base URL, ending in /v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rpm", type=int, required=True, help="max_requests_per_minute")
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--input", required=True, help="Bedrock JSONL records to take the prompts from")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-retries", type=int, default=8)
    parser.add_argument("--timeout", type=int, default=30, help="request_timeout in seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="curator-bench-") as work_dir:
        result = run(args, work_dir)
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
