"""On-demand calls (bedrock-runtime InvokeModel and Converse) to the same catalog models.

A call's images pass the same checks as a batch record's (the model's image policy: formats, bytes,
pixels, images per request, downscaling; ``s3://`` references only under the caller's grants), and a
call names no input folder, so relative and ``file://`` paths are refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from bulkinfer.dialects.base import Dialect
from bulkinfer.dialects.registry import detect, get_dialect
from bulkinfer.domain.request import ChatRequest, ImagePart, RecordError, Request, Unsent
from bulkinfer.domain.tenant import Tenant
from bulkinfer.engine.job import MediaSettings, media_policy
from bulkinfer.errors import BulkinferError
from bulkinfer.media.resolver import DEFAULT_DECODES
from bulkinfer.providers.base import Provider
from bulkinfer.providers.catalog import Catalog, ModelSpec
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
    def __init__(self, catalog: Catalog, pool: ModelPool, media: MediaSettings) -> None:
        self._catalog = catalog
        self._pool = pool
        self._media = media
        self._decode_slots = asyncio.Semaphore(DEFAULT_DECODES)
        """Images decoded at once across every call: each call has a resolver, they share these."""

    def models(self, tenant: Tenant) -> list[ModelSpec]:
        """The catalog models ``tenant`` may use, by name."""
        return [spec for spec in self._catalog if tenant.may_use(spec.name)]

    def model(self, tenant: Tenant, name: str) -> ModelSpec:
        """One model ``tenant`` may use; `UnknownModelError` or `NotGranted` otherwise."""
        return self._catalog.get(name, tenant.may_use)

    async def invoke(
        self, tenant: Tenant, model: str, body: dict[str, Any], dialect: str | None = None
    ) -> dict[str, Any]:
        """Answer one ``modelInput`` body in its own dialect (or the one named)."""
        spec = self._catalog.get(model, tenant.may_use)
        chosen: Dialect[Any] = get_dialect(dialect) if dialect else detect(body, spec.default_dialect)
        request = await self._with_images(tenant, spec, chosen.to_request(body))  # RecordInvalid: the field
        provider = await self._pool.get(model)
        refusal = provider.refusal(request)
        if refusal is not None:
            raise ModelFailed(refusal)
        (outcome,) = await provider.infer([request])
        if isinstance(outcome, RecordError):
            raise ModelFailed(outcome)
        assert not isinstance(outcome, Unsent), "the pool's providers are never stopped"
        return chosen.render(outcome, request)

    async def _with_images(self, tenant: Tenant, spec: ModelSpec, request: Request) -> Request:
        """The request with its images checked as a batch record's are; `ModelFailed` (400) if one fails."""
        if not isinstance(request, ChatRequest) or not any(
            isinstance(p, ImagePart) for m in request.messages for p in m.parts
        ):
            return request
        media = replace(self._media, grants=tenant.grants)
        resolver = media.resolver(media_policy(spec.images), self._decode_slots)
        try:
            resolved = await resolver.resolve(request, base_dir=None)
        finally:
            await resolver.aclose()
        if isinstance(resolved, RecordError):
            raise ModelFailed(resolved)
        return resolved
