"""What the dashboard shows of a job or a model, as display strings: the pages render them and the JSON
endpoints send the same, so the script only puts text where it goes (``textContent``, never HTML)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson

from bulkinfer.api.bedrock.outputs import MANIFEST, OutputFiles
from bulkinfer.api.ui.history import Throughput
from bulkinfer.domain.job import SERVICE_ENDED, JobStatus
from bulkinfer.engine.finalize import error_message
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.providers.catalog import Catalog, RemoteSpec
from bulkinfer.providers.cost import Prices, cost_in, usd_text
from bulkinfer.providers.remote.limits import LimitRegistry, ModelLimits
from bulkinfer.store.batch_jobs import BatchJob
from bulkinfer.store.job_events import JobEvent
from bulkinfer.store.provider_jobs import ProviderJob

STOPPABLE = frozenset({JobStatus.SUBMITTED, JobStatus.VALIDATING, JobStatus.SCHEDULED, JobStatus.IN_PROGRESS})
"""Statuses a stop is accepted in (see `BatchService.stop`)."""
ERROR_SAMPLES = 5
SCAN_BYTES = 8 << 20
"""Most output bytes read looking for error lines: a page never reads a whole large output."""
MAX_LINE = 4 << 20


def when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) if at is not None else ""


def cost(catalog: Catalog, model: str, input_tokens: int, output_tokens: int) -> str:
    """Estimated cost in USD, or "unknown" where the model has no price (never $0 for unknown)."""
    return usd_text(cost_in(catalog, model, input_tokens, output_tokens).usd)


def rate(job: BatchJob, history: Throughput, now: float) -> str:
    """Records per second: lately for a job running here, on average for one that ended."""
    current = history.current(job.job_id, now)
    if current is None and job.status in SERVICE_ENDED and job.start_time and job.end_time:
        span = job.end_time - job.start_time
        current = (job.processed or 0) / span if span > 0 else None
    return "" if current is None else f"{current:,.1f}"


def job_row(job: BatchJob, catalog: Catalog, history: Throughput, now: float) -> dict[str, Any]:
    processed, total = job.processed or 0, job.total
    percent = min(100.0, 100.0 * processed / total) if total else 0.0
    return {
        "id": job.job_id,
        "name": job.name,
        "status": job.status.value,
        "model": job.model_id,
        "tenant": job.tenant,
        "api": job.api,
        "processed": f"{processed:,}",
        "total": f"{total:,}" if total is not None else "?",
        "percent": round(percent, 1),
        "rate": rate(job, history, now),
        "errors": f"{job.errors or 0:,}",
        "cost": cost(catalog, job.model_id, job.input_tokens or 0, job.output_tokens or 0),
        "submitted": when(job.submit_time),
        "url": f"/ui/jobs/{job.job_id}",
    }


def job_detail(job: BatchJob, catalog: Catalog, history: Throughput, now: float) -> dict[str, Any]:
    points = history.points(job.job_id)
    return {
        **job_row(job, catalog, history, now),
        "input_tokens": f"{job.input_tokens or 0:,}",
        "output_tokens": f"{job.output_tokens or 0:,}",
        "message": job.message or "",
        "prices": prices_text(cost_in(catalog, job.model_id, 0, 0).prices),
        "started": when(job.start_time),
        "ended": when(job.end_time),
        "stoppable": job.status in STOPPABLE,
        "ended_now": job.status in SERVICE_ENDED,
        "series": [[round(p.at, 3), round(p.per_s, 3), round(p.error_rate, 4)] for p in points],
    }


def prices_text(prices: Prices) -> str:
    """The rates a job's cost is worked out with, or where they are missing from."""
    if not prices.known:
        return prices.source
    discount = f", less the batch discount of {prices.batch_discount:.0%}" if prices.batch_discount else ""
    rates = f"${prices.input_per_million:,.4f} in, ${prices.output_per_million:,.4f} out per 1M tokens"
    return f"{rates}{discount} ({prices.source})"


def timeline(events: list[JobEvent]) -> list[dict[str, str]]:
    """The job's stored changes of state, oldest first, each with its reason."""
    return [{"at": when(e.at), "event": e.name, "status": e.status, "reason": e.reason or ""} for e in events]


def provider_jobs(jobs: list[ProviderJob]) -> list[dict[str, str]]:
    """The provider batch jobs the job ran as (a ``*-batch`` model's), oldest first."""
    return [
        {
            "id": j.provider_id or j.token,
            "attempt": str(j.attempt),
            "status": j.provider_status or j.state,
            "progress": f"{j.done:,} done, {j.failed:,} failed of {j.total:,}",
            "created": when(j.created_at),
            "ended": when(j.ended_at) if j.ended_at else "",
        }
        for j in jobs
    ]


def output_links(job: BatchJob, files: OutputFiles) -> list[dict[str, str]]:
    """Each output file (the manifest first), linked through the dashboard's own route."""
    sizes = files.sizes()
    names = sorted(sizes, key=lambda name: (name != MANIFEST, name))
    return [
        {"name": name, "size": f"{sizes[name]:,} bytes", "url": f"/ui/jobs/{job.job_id}/outputs/{name}"}
        for name in names
    ]


def error_samples(files: OutputFiles, limit: int = ERROR_SAMPLES) -> list[dict[str, str]]:
    """The first few error lines of the job's outputs (record id and error), reading at most
    `SCAN_BYTES` of them."""
    found: list[dict[str, str]] = []
    for line in _lines(files, [name for name in files.sizes() if name != MANIFEST]):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        said = error_message(record)
        if said is not None:
            found.append({"record": str(record.get("recordId", record.get("custom_id", "?"))), "error": said})
            if len(found) >= limit:
                break
    return found


def _lines(files: OutputFiles, names: list[str]) -> Iterator[bytes]:
    budget = SCAN_BYTES
    for name in names:
        for _, line in split_lines(files.read(name), MAX_LINE):
            if not isinstance(line, bytes):
                continue
            budget -= len(line)
            if budget < 0:
                return
            yield line


def model_rows(
    catalog: Catalog, visible: list[str], load: dict[str, tuple[int, int]], slots: int, limits: LimitRegistry
) -> list[dict[str, Any]]:
    """Each model's slots, queue, limits and provider state; ``load`` is (running, scheduled) per model."""
    rows = []
    for name in visible:
        spec = catalog.get(name)
        running, queued = load.get(name, (0, 0))
        row: dict[str, Any] = {"name": name, "provider": spec.provider, "slots": f"{running} / {slots}"}
        row["queue"] = str(queued)
        row |= _limits(spec.remote, limits.get(name), spec.concurrency)
        rows.append(row)
    return rows


def _limits(remote: RemoteSpec | None, live: ModelLimits | None, local_concurrency: int) -> dict[str, str]:
    if remote is None:
        return {
            "limits": f"micro-batches in flight: {local_concurrency}",
            "concurrency": "",
            "state": "local",
        }
    said = [
        f"{remote.requests_per_minute:g} rpm" if remote.requests_per_minute else "",
        f"{remote.input_tokens_per_minute:g} input tpm" if remote.input_tokens_per_minute else "",
        f"{remote.output_tokens_per_minute:g} output tpm" if remote.output_tokens_per_minute else "",
        f"at most {remote.max_concurrency} calls" if remote.max_concurrency else "",
    ]
    limits = ", ".join(s for s in said if s) or "none set"
    if live is None:
        return {"limits": limits, "concurrency": "", "state": "not called yet"}
    concurrency = f"{live.concurrency.in_flight} in flight / {int(live.concurrency.limit)}"
    breaker = live.breaker
    state = "answering"
    if breaker.down_since is not None:
        state = f"paused since {when(breaker.down_since)} UTC: {breaker.reason}"
    return {"limits": limits, "concurrency": concurrency, "state": state}
