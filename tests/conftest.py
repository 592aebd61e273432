"""Shared fixtures: record factories and catalogs. Tests only ever touch loopback and tmp paths."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest


def anthropic_record(record_id: str | None, text: str, max_tokens: int = 64) -> dict[str, Any]:
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }
    record: dict[str, Any] = {"modelInput": body}
    if record_id is not None:
        record["recordId"] = record_id
    return record


def write_jsonl(path: Path, records: Iterable[dict[str, Any] | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for record in records:
            f.write(record if isinstance(record, bytes) else orjson.dumps(record))
            f.write(b"\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture
def echo_catalog(tmp_path: Path) -> Callable[..., Path]:
    """Write a catalog with an ``echo-test`` model whose echo options are the keyword arguments."""

    def make(name: str = "echo-test", **options: Any) -> Path:
        lines = [
            f'[models."{name}"]',
            'provider = "echo"',
            'dialects = ["anthropic", "converse", "openai-chat", "titan-embed", "openai-embeddings"]',
            f"batch_size = {options.pop('batch_size', 16)}",
            f"concurrency = {options.pop('concurrency', 2)}",
            "token_budget = 100000",
            f'[models."{name}".options]',
        ]
        lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in options.items()]
        path = tmp_path / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    return make
