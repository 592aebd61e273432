"""Local sentence embeddings through sentence-transformers, from a model shipped in a Python package."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from bulkinfer.domain.request import EmbeddingRequest, EmbeddingResult, Outcome, RecordError, Request, Usage
from bulkinfer.providers.base import Capabilities, Provider
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.local import package_dir, pick_device_and_dtype, require


class SentenceEmbeddingProvider(Provider):
    capabilities = Capabilities(embeddings=True, padded_batches=True)

    def __init__(self, spec: ModelSpec, model: Any) -> None:
        self._spec = spec
        self._model = model
        self._dimensions = int(model.get_embedding_dimension())
        self._lock = asyncio.Lock()

    @classmethod
    def load(cls, spec: ModelSpec) -> SentenceEmbeddingProvider:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch = require("torch")
        st = require("sentence_transformers")
        require("transformers").logging.disable_progress_bar()
        package = str(spec.options["package"])
        folder = package_dir(package, f"pip install {package.replace('_', '-')}") / "model"
        device, _ = pick_device_and_dtype(torch, "float32")
        return cls(spec, st.SentenceTransformer(str(folder), device=device))

    async def infer(self, requests: Sequence[Request]) -> list[Outcome]:
        async with self._lock:
            return await asyncio.to_thread(self._run, requests)

    def count_tokens(self, request: Request) -> int:
        if not isinstance(request, EmbeddingRequest):
            return super().count_tokens(request)
        return sum(self._token_counts(list(request.texts)))

    def _token_counts(self, texts: list[str]) -> list[int]:
        limit = self._model.max_seq_length
        ids = self._model.tokenizer(texts, add_special_tokens=True).input_ids
        return [min(len(i), limit) for i in ids]

    def _run(self, requests: Sequence[Request]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [self.refusal(r) for r in requests]
        texts: list[str] = []
        owners: list[int] = []
        for i, request in enumerate(requests):
            if outcomes[i] is None and isinstance(request, EmbeddingRequest):
                if request.dimensions and request.dimensions > self._dimensions:
                    message = f"dimensions {request.dimensions} exceeds this model's {self._dimensions}"
                    outcomes[i] = RecordError(400, message)
                    continue
                texts.extend(request.texts)
                owners.extend([i] * len(request.texts))
        if texts:
            self._embed(requests, texts, owners, outcomes)
        return [o if o is not None else RecordError(500, "no result") for o in outcomes]

    def _embed(
        self, requests: Sequence[Request], texts: list[str], owners: list[int], outcomes: list[Outcome | None]
    ) -> None:
        started = time.perf_counter()
        vectors = self._model.encode(texts, batch_size=len(texts), normalize_embeddings=False)
        latency = int((time.perf_counter() - started) * 1000)
        tokens = self._token_counts(texts)
        grouped: dict[int, list[tuple[list[float], int]]] = {}
        for owner, vector, n in zip(owners, vectors.tolist(), tokens, strict=True):
            grouped.setdefault(owner, []).append((vector, n))
        for i, items in grouped.items():
            request = requests[i]
            assert isinstance(request, EmbeddingRequest)
            shaped = tuple(_shape(v, request) for v, _ in items)
            usage = Usage(sum(n for _, n in items), 0)
            outcomes[i] = EmbeddingResult(shaped, usage, self._spec.name, latency)


def _shape(vector: list[float], request: EmbeddingRequest) -> tuple[float, ...]:
    """Cut to the requested dimensions, then unit-normalise if asked."""
    if request.dimensions:
        vector = vector[: request.dimensions]
    if request.normalize:
        norm = sum(x * x for x in vector) ** 0.5 or 1.0
        vector = [x / norm for x in vector]
    return tuple(vector)
