"""Build a provider for a catalog entry; heavy libraries are imported only when that model is used."""

from __future__ import annotations

import dataclasses

from bulkinfer.errors import ConfigError
from bulkinfer.providers.base import Capabilities, JobContext, Provider
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.remote.limits import LimitRegistry


def load_provider(
    spec: ModelSpec, limits: LimitRegistry | None = None, job: JobContext | None = None
) -> Provider:
    """Load a model (may take seconds for a local one); run it in a thread from async code.

    ``limits`` holds the rate limits of remote models, shared by every job of the process that uses it.
    ``job`` is the job the model is loaded for: a provider batch API needs it (it runs the whole job).
    A model with ``image_text = "ocr"`` comes wrapped so that it is given the text of images.
    """
    if spec.image_text == "ocr":
        from bulkinfer.providers.image_text import ImageTextProvider
        from bulkinfer.providers.ocr import OcrEngine

        ocr = OcrEngine.load()  # first, so a missing rapidocr is said before a model loads for nothing
        return ImageTextProvider(_load(spec, limits, job), ocr)
    return _load(spec, limits, job)


def _load(spec: ModelSpec, limits: LimitRegistry | None, job: JobContext | None) -> Provider:
    if spec.remote is not None and spec.remote.batch is not None:
        from bulkinfer.providers.batchapi.load import batch_provider

        if job is None:
            raise ConfigError(f"model {spec.name}: a provider batch API runs whole jobs, not single requests")
        return batch_provider(spec, limits or LimitRegistry(), job)
    if spec.remote is not None:
        from bulkinfer.providers.remote.provider import remote_provider

        return remote_provider(spec, limits or LimitRegistry())
    if spec.provider == "echo":
        from bulkinfer.providers.echo import EchoProvider

        return EchoProvider(spec.name, spec.options)
    if spec.provider == "transformers":
        from bulkinfer.providers.transformers_llm import TransformersChatProvider

        return TransformersChatProvider.load(spec)
    if spec.provider == "sentence-transformers":
        from bulkinfer.providers.embeddings import SentenceEmbeddingProvider

        return SentenceEmbeddingProvider.load(spec)
    if spec.provider == "ocr":
        from bulkinfer.providers.ocr import OcrProvider

        return OcrProvider.load(spec)
    raise ConfigError(f"model {spec.name}: unknown provider {spec.provider!r}")


def capabilities_of(spec: ModelSpec) -> Capabilities:
    """What a model takes (chat, embeddings, images), told from its catalog entry without loading it:
    the capabilities its provider declares, as `load_provider` would build it."""
    if spec.remote is not None:
        from bulkinfer.providers.remote.provider import remote_capabilities

        native = frozenset(spec.dialects) if spec.remote.batch is not None else frozenset()
        capabilities = remote_capabilities(spec, native)
    else:
        capabilities = _local_class(spec).capabilities
    if spec.image_text == "ocr":  # as ImageTextProvider: images reach the model as their text
        capabilities = dataclasses.replace(capabilities, images=True, native_dialects=frozenset())
    return capabilities


def _local_class(spec: ModelSpec) -> type[Provider]:
    if spec.provider == "echo":
        from bulkinfer.providers.echo import EchoProvider

        return EchoProvider
    if spec.provider == "transformers":
        from bulkinfer.providers.transformers_llm import TransformersChatProvider

        return TransformersChatProvider
    if spec.provider == "sentence-transformers":
        from bulkinfer.providers.embeddings import SentenceEmbeddingProvider

        return SentenceEmbeddingProvider
    if spec.provider == "ocr":
        from bulkinfer.providers.ocr import OcrProvider

        return OcrProvider
    raise ConfigError(f"model {spec.name}: unknown provider {spec.provider!r}")
