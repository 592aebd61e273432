"""Amazon Titan text-embeddings bodies: ``{"inputText", "dimensions", "normalize"}``."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from bulkinfer.dialects.base import MAX_DIMENSIONS, Dialect, StrictBody
from bulkinfer.domain.request import EmbeddingRequest, EmbeddingResult, Request, Result


class TitanEmbeddingBody(StrictBody):
    inputText: str = Field(min_length=1)
    dimensions: int | None = Field(default=None, ge=1, le=MAX_DIMENSIONS)
    normalize: bool = True
    embeddingTypes: list[str] | None = None


class TitanEmbeddingDialect(Dialect[TitanEmbeddingBody]):
    name: ClassVar[str] = "titan-embed"
    kind = "embedding"
    body_model = TitanEmbeddingBody

    def build_request(self, body: TitanEmbeddingBody) -> Request:
        return EmbeddingRequest(texts=(body.inputText,), dimensions=body.dimensions, normalize=body.normalize)

    def render(self, result: Result, request: Request) -> dict[str, Any]:
        assert isinstance(result, EmbeddingResult)
        return {
            "embedding": list(result.vectors[0]),
            "inputTextTokenCount": result.usage.input_tokens,
        }
