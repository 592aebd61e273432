"""Build the provider of a ``*-batch`` catalog entry: its API's adapter behind `BatchProvider`."""

from __future__ import annotations

from bulkinfer.providers.base import JobContext
from bulkinfer.providers.batchapi.api import BatchApi
from bulkinfer.providers.batchapi.provider import BatchProvider
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.remote.limits import LimitRegistry


def batch_provider(spec: ModelSpec, limits: LimitRegistry, job: JobContext) -> BatchProvider:
    return BatchProvider(
        spec,
        batch_api(spec),
        job.provider_jobs,
        job.job_id,
        limits.bell(spec.name),
        deadline=job.deadline,
        on_demand=job.on_demand,
    )


def batch_api(spec: ModelSpec) -> BatchApi:
    if spec.provider == "openai-batch":
        from bulkinfer.providers.batchapi.openai_batch import OpenAIBatchApi

        return OpenAIBatchApi(spec)
    if spec.provider == "anthropic-batch":
        from bulkinfer.providers.batchapi.anthropic_batch import AnthropicBatchApi

        return AnthropicBatchApi(spec)
    from bulkinfer.providers.batchapi.bedrock_batch import BedrockBatchApi

    return BedrockBatchApi(spec)
