"""What a job would take before it runs: records, tokens as the model counts them, the records it would
refuse, cost at on-demand and batch prices, and how long it would run.

One pass over the input: the dry run's (``engine.validate``), given the model's own token counter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulkinfer.dialects.base import Dialect
from bulkinfer.engine import history
from bulkinfer.engine.validate import DryRunReport, Problems, dry_run
from bulkinfer.formats.records import BEDROCK, RecordFormat
from bulkinfer.providers.catalog import ModelSpec, Price
from bulkinfer.providers.tokens import token_counter
from bulkinfer.storage.files import InputFile


@dataclass(frozen=True, slots=True)
class Duration:
    seconds: float | None
    basis: str
    """Where the figure comes from, or why there is none."""


@dataclass(frozen=True, slots=True)
class Estimate:
    model: str
    record_format: str
    report: DryRunReport
    own_tokenizer: bool
    """Input tokens were counted with the model's own tokenizer; else 4 characters a token."""
    on_demand_usd: float | None
    batch_usd: float | None
    """None where the catalog has no price for the model: unknown, never $0."""
    duration: Duration

    @property
    def runnable(self) -> int:
        """Records the model would run (the others become error lines)."""
        return self.report.records - self.report.invalid

    @property
    def other_invalid(self) -> Problems:
        """Invalid records other than those of the wrong kind or over the context (listed apart)."""
        r = self.report
        apart = {*r.refused.samples, *r.over_context.samples}
        first = [m for m in r.samples if m not in apart]
        return Problems(r.invalid - r.refused.count - r.over_context.count, first)

    def as_json(self) -> dict[str, Any]:
        r, other = self.report, self.other_invalid
        return {
            "model": self.model,
            "format": self.record_format,
            "records": r.records,
            "runnable": self.runnable,
            "files": [dataclasses.asdict(f) for f in r.files],
            "errorLines": r.invalid,
            "invalid": {"count": other.count, "first": other.samples},
            "wrongKind": {"count": r.refused.count, "first": r.refused.samples},
            "overContext": {"count": r.over_context.count, "first": r.over_context.samples},
            "inputTokens": r.input_tokens,
            "tokenizer": "model" if self.own_tokenizer else "approximate",
            "outputTokensAtMost": r.output_tokens,
            "costUSD": {"onDemand": self.on_demand_usd, "batch": self.batch_usd},
            "durationSeconds": self.duration.seconds,
            "durationBasis": self.duration.basis,
        }


def estimate(
    files: list[InputFile],
    spec: ModelSpec,
    forced: Dialect[Any] | None,
    max_line_bytes: int,
    fmt: RecordFormat = BEDROCK,
    history_path: Path | None = None,
) -> Estimate:
    """Read every record of ``files`` once and say what a job of them on ``spec``'s model would take."""
    count = token_counter(spec)
    report = dry_run(files, spec, forced, max_line_bytes, fmt=fmt, count=count)
    on_demand = batch = None
    if spec.price_known:
        p = spec.price
        full = Price(p.input_per_million, p.output_per_million)
        on_demand = full.cost(report.input_tokens, report.output_tokens)
        batch = p.cost(report.input_tokens, report.output_tokens)
    result = Estimate(spec.name, fmt.name, report, count is not None, on_demand, batch, Duration(None, ""))
    return dataclasses.replace(result, duration=expected_duration(result, spec, history_path))


def expected_duration(e: Estimate, spec: ModelSpec, history_path: Path | None = None) -> Duration:
    """From the model's throughput in its last completed job; else from a remote model's rate limits
    (the slowest of requests, input and output tokens a minute); else unknown."""
    seen = history.measured(spec.name, history_path)
    if seen is not None and seen.records_per_second > 0:
        basis = f"at {seen.records_per_second:,.2f} records/s, measured in job {seen.job_id}"
        return Duration(e.runnable / seen.records_per_second, basis)
    limits = spec.remote
    if limits is not None:
        minutes = [
            (e.runnable / limits.requests_per_minute, "requests") if limits.requests_per_minute else None,
            (e.report.input_tokens / limits.input_tokens_per_minute, "input tokens")
            if limits.input_tokens_per_minute
            else None,
            (e.report.output_tokens / limits.output_tokens_per_minute, "output tokens")
            if limits.output_tokens_per_minute
            else None,
        ]
        bounds = [m for m in minutes if m is not None]
        if bounds:
            slowest, what = max(bounds)
            return Duration(slowest * 60, f"at least, from the model's rate limit on {what} a minute")
    return Duration(None, f"unknown (no run of {spec.name} yet)")
