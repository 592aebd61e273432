"""The job manifest, ``manifest.json.out``: Bedrock's counts first, then bulkinfer's own keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bulkinfer.domain.job import Counts


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    job_id: str
    model: str
    status: str
    total_records: int
    counts: Counts
    started_at: float
    ended_at: float
    inputs: list[str]
    estimated_cost_usd: float | None
    """``None`` when the model has no price (a remote model whose catalog entry sets none): unknown,
    written as ``null``, never as a cost of 0."""
    active_seconds: float
    """Time spent running, summed over runs: a resumed job's rates leave out the time between runs."""
    prices: dict[str, Any] | None = None
    """The prices the cost was worked out with (``providers.cost.Prices.as_json``): this job's, also
    for a retry job whose cost adds its base's."""


def build_manifest(info: ManifestInfo) -> dict[str, Any]:
    c = info.counts
    duration = max(info.active_seconds, 1e-3)
    return {
        "totalRecordCount": info.total_records,
        "processedRecordCount": c.processed,
        "successRecordCount": c.success,
        "errorRecordCount": c.errors,
        "inputTokenCount": c.input_tokens,
        "outputTokenCount": c.output_tokens,
        "jobId": info.job_id,
        "modelId": info.model,
        "status": info.status,
        "inputFiles": info.inputs,
        "startTime": iso(info.started_at),
        "endTime": iso(info.ended_at),
        "durationSeconds": round(duration, 3),
        "recordsPerSecond": round(c.processed / duration, 3),
        "tokensPerSecond": round((c.input_tokens + c.output_tokens) / duration, 3),
        "outputTokensPerSecond": round(c.output_tokens / duration, 3),
        "errorCodeCounts": dict(sorted(c.error_codes.items())),
        "estimatedCostUSD": None if info.estimated_cost_usd is None else round(info.estimated_cost_usd, 6),
        "prices": info.prices,
    }


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
