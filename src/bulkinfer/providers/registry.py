"""Build a provider for a catalog entry; heavy libraries are imported only when that model is used."""

from __future__ import annotations

from bulkinfer.errors import ConfigError
from bulkinfer.providers.base import Provider
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.remote.limits import LimitRegistry


def load_provider(spec: ModelSpec, limits: LimitRegistry | None = None) -> Provider:
    """Load a model (may take seconds for a local one); run it in a thread from async code.

    ``limits`` holds the rate limits of remote models, shared by every job of the process that uses it.
    """
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
    raise ConfigError(f"model {spec.name}: unknown provider {spec.provider!r}")
