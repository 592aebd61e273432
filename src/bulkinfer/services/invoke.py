"""On-demand calls (bedrock-runtime InvokeModel and Converse) to the same catalog models."""

from __future__ import annotations

import asyncio
from typing import Any

from bulkinfer.dialects.base import Dialect
from bulkinfer.dialects.registry import detect, get_dialect
from bulkinfer.domain.request import RecordError
from bulkinfer.errors import BulkinferError
from bulkinfer.providers.base import Provider
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.registry import load_provider


class ModelFailed(BulkinferError):
    """The model could not answer this request."""

    def __init__(self, error: RecordError) -> None:
        self.error = error
        super().__init__(error.message)


class ModelPool:
    """Models loaded once, on first use, and kept for later calls."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._providers: dict[str, Provider] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> Provider:
        spec = self._catalog.get(name)
        async with self._lock:
            if name not in self._providers:
                self._providers[name] = await asyncio.to_thread(load_provider, spec)
            return self._providers[name]

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()


class InvokeService:
    def __init__(self, catalog: Catalog, pool: ModelPool) -> None:
        self._catalog = catalog
        self._pool = pool

    async def invoke(self, model: str, body: dict[str, Any], dialect: str | None = None) -> dict[str, Any]:
        """Answer one ``modelInput`` body in its own dialect (or the one named)."""
        spec = self._catalog.get(model)
        chosen: Dialect[Any] = get_dialect(dialect) if dialect else detect(body, spec.default_dialect)
        request = chosen.to_request(body)  # RecordInvalid names the field
        provider = await self._pool.get(model)
        refusal = provider.refusal(request)
        if refusal is not None:
            raise ModelFailed(refusal)
        (outcome,) = await provider.infer([request])
        if isinstance(outcome, RecordError):
            raise ModelFailed(outcome)
        return chosen.render(outcome, request)
