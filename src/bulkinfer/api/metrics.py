"""``GET /metrics``: Prometheus figures of every job and of this process's calls.

Two kinds, read at scrape time:

- **from the job store**, the same on every replica: jobs by status, model and API; queue depth and slots
  in use per model; records, tokens and cost per model. They sum committed counts only (an ended job's
  stored totals, a running one's committed chunks), so a job killed and resumed is never counted twice;
  scrape one replica, or take ``max`` over replicas. They are gauges: deleting an ended job removes its
  counts. One aggregate query per scrape, in a thread, kept for `STORE_CACHE_S` so a scrape storm costs
  the database one query each time that passes.
- **of this process** (counters since it started): provider call latency by model and outcome, 429s and
  retries per model, images fetched and media cache hits.

The figures cover every tenant, so the endpoint is not a tenant's: it needs the bearer token in the
variable ``--metrics-token-env`` names, is open under ``--insecure-dev`` without one, and is refused
otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bulkinfer.domain.job import SERVICE_ENDED, JobStatus
from bulkinfer.errors import ConfigError
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.cost import cost_in
from bulkinfer.scheduler.scheduler import Scheduler
from bulkinfer.settings import ServerSettings
from bulkinfer.store.batch_jobs import RUNNING, BatchJobStore
from bulkinfer.store.state import StateStore

log = logging.getLogger(__name__)
router = APIRouter()

PATH = "/metrics"
STORE_CACHE_S = 1.5
"""How long one read of the job store answers scrapes."""
_ENDED = frozenset(s.value for s in SERVICE_ENDED)
_RUNNING = frozenset(s.value for s in RUNNING)


@dataclass(slots=True)
class StoreFigures:
    """What the job store says, summed for export."""

    jobs: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """Jobs by (status, model, api)."""
    records: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Committed records by (model, succeeded|failed)."""
    tokens: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Committed tokens by (model, input|output)."""


class StoreReader:
    """Reads `StoreFigures` at most once per `STORE_CACHE_S`, one reader at a time (others wait and
    share its answer)."""

    def __init__(self, jobs: BatchJobStore, state: StateStore, cache_s: float = STORE_CACHE_S) -> None:
        self._jobs = jobs
        self._state = state
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._read: tuple[float, StoreFigures] | None = None

    def figures(self) -> StoreFigures:
        with self._lock:
            if self._read is not None and time.monotonic() - self._read[0] < self._cache_s:
                return self._read[1]
            figures = self._figures()
            self._read = (time.monotonic(), figures)
            return figures

    def _figures(self) -> StoreFigures:
        tally = self._jobs.tally()
        committed = self._state.committed_sums([job_id for job_id, _ in tally.started])
        figures = StoreFigures()
        for status, model, api, jobs, success, errors, tokens_in, tokens_out in tally.groups:
            figures.jobs[(status, model, api)] += jobs
            if status not in _ENDED:
                continue  # a started job is counted below, by what it committed
            _add(figures, model, (success, errors, tokens_in, tokens_out))
        for job_id, model in tally.started:
            _add(figures, model, committed.get(job_id, (0, 0, 0, 0)))
        return figures


def _add(figures: StoreFigures, model: str, counts: tuple[int, int, int, int]) -> None:
    success, errors, tokens_in, tokens_out = counts
    figures.records[(model, "succeeded")] += success
    figures.records[(model, "failed")] += errors
    figures.tokens[(model, "input")] += tokens_in
    figures.tokens[(model, "output")] += tokens_out


class StoreCollector(Collector):
    """Every replica's jobs, from the store (see the module's docstring)."""

    def __init__(self, reader: StoreReader, catalog: Catalog, slots: int) -> None:
        self._reader = reader
        self._catalog = catalog
        self._slots = slots

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("bulkinfer_store_up", "Whether the job store answered this scrape.")
        try:
            figures = self._reader.figures()
        except Exception as exc:  # the database is away: the process's own figures still come
            log.warning("metrics: the job store did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._jobs(figures)
        records = GaugeMetricFamily(
            "bulkinfer_records", "Committed records of all jobs.", labels=["model", "outcome"]
        )
        for (model, outcome), n in sorted(figures.records.items()):
            records.add_metric([model, outcome], n)
        tokens = GaugeMetricFamily(
            "bulkinfer_tokens", "Committed tokens of all jobs.", labels=["model", "direction"]
        )
        for (model, direction), n in sorted(figures.tokens.items()):
            tokens.add_metric([model, direction], n)
        yield records
        yield tokens
        yield self._cost(figures)

    def _jobs(self, figures: StoreFigures) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("bulkinfer_jobs", "Jobs by status.", labels=["status", "model", "api"])
        queued: Counter[str] = Counter()
        in_use: Counter[str] = Counter()
        for (status, model, api), n in sorted(figures.jobs.items()):
            jobs.add_metric([status, model, api], n)
            if status == JobStatus.SCHEDULED.value:
                queued[model] += n
            elif status in _RUNNING:
                in_use[model] += n
        yield jobs
        models = sorted({model for _, model, _ in figures.jobs})
        depth = GaugeMetricFamily(
            "bulkinfer_queue_depth", "Scheduled jobs waiting for a slot.", labels=["model"]
        )
        used = GaugeMetricFamily(
            "bulkinfer_slots_in_use", "Job slots taken (all replicas).", labels=["model"]
        )
        slots = GaugeMetricFamily(
            "bulkinfer_slots", "Job slots of a model (--jobs-per-model).", labels=["model"]
        )
        for model in models:
            depth.add_metric([model], queued[model])
            used.add_metric([model], in_use[model])
            slots.add_metric([model], self._slots)
        yield from (depth, used, slots)

    def _cost(self, figures: StoreFigures) -> Metric:
        cost = GaugeMetricFamily(
            "bulkinfer_cost_usd",
            "Estimated cost of committed tokens (models with a price).",
            labels=["model"],
        )
        for model in sorted({model for model, _ in figures.tokens}):
            tokens = figures.tokens[(model, "input")], figures.tokens[(model, "output")]
            usd = cost_in(self._catalog, model, *tokens).usd
            if usd is not None:  # unknown (no price, or no longer in the catalog): no figure, never 0
                cost.add_metric([model], usd)
        return cost


class ProcessCollector(Collector):
    """This process's provider calls and media, read from the scheduler's shared limits and tally."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        stats = self._scheduler.limits.stats()
        latency = HistogramMetricFamily(
            "bulkinfer_provider_call_seconds",
            "Remote model calls by outcome (this process).",
            labels=["model", "outcome"],
        )
        throttled = CounterMetricFamily(
            "bulkinfer_provider_throttled", "429s from remote models (this process).", labels=["model"]
        )
        retries = CounterMetricFamily(
            "bulkinfer_provider_retries", "Calls retried (this process).", labels=["model"]
        )
        for model, calls in sorted(stats.items()):
            for outcome, hist in sorted(calls.latency().items()):
                latency.add_metric([model, outcome], hist.cumulative(), hist.sum_s)
            throttled.add_metric([model], calls.throttled)
            retries.add_metric([model], calls.retries)
        yield from (latency, throttled, retries)
        tally = self._scheduler.media_tally
        yield CounterMetricFamily(
            "bulkinfer_images_fetched", "Images read from their source (this process).", tally.fetches
        )
        yield CounterMetricFamily(
            "bulkinfer_media_cache_hits", "Image fetches and decodes saved (this process).", tally.cache_hits
        )


class Metrics:
    """The server's metrics: a registry of its own (several apps may run in one process) and who may
    read it."""

    def __init__(
        self, registry: CollectorRegistry, token: str | None, open_: bool, state: StateStore
    ) -> None:
        self.registry = registry
        self._token = token
        self._open = open_
        self._state = state

    @classmethod
    def of_server(
        cls,
        settings: ServerSettings,
        token: str | None,
        store: BatchJobStore,
        scheduler: Scheduler,
        catalog: Catalog,
    ) -> Metrics:
        """``token``: see `metrics_token` (read when the app is made, so a missing one stops the start)."""
        state = (
            StateStore(settings.database_url)
            if settings.database_url
            else StateStore.at(settings.engine_state_dir / "state.db")
        )
        registry = CollectorRegistry()
        registry.register(StoreCollector(StoreReader(store, state), catalog, settings.jobs_per_model))
        registry.register(ProcessCollector(scheduler))
        return cls(registry, token, settings.insecure_dev, state)

    def refusal(self, authorization: str | None) -> Response | None:
        """Why this scrape may not read the metrics, as the answer to give; None when it may."""
        if self._token is None:
            if self._open:
                return None
            return JSONResponse(
                {
                    "message": "metrics are off: start the server with --metrics-token-env VAR, VAR holding "
                    "the token scrapers send as 'Authorization: Bearer TOKEN'"
                },
                403,
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token.encode()):
            return None
        return JSONResponse(
            {"message": "metrics need 'Authorization: Bearer TOKEN' with the server's metrics token"},
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @property
    def state(self) -> StateStore:
        """The engine's state store, which the server reads (jobs' committed counts, provider jobs)."""
        return self._state

    def close(self) -> None:
        self._state.close()


def metrics_token(settings: ServerSettings) -> str | None:
    """The token scrapers must send, from the variable ``--metrics-token-env`` names."""
    if settings.metrics_token_env is None:
        return None
    token = os.environ.get(settings.metrics_token_env, "").strip()
    if not token:
        raise ConfigError(f"--metrics-token-env: ${settings.metrics_token_env} is not set (or empty)")
    return token


@router.get(PATH, include_in_schema=False)
async def scrape(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    refusal = metrics.refusal(request.headers.get("authorization"))
    if refusal is not None:
        return refusal
    body = await asyncio.to_thread(generate_latest, metrics.registry)  # the store is read in a thread
    return Response(body, media_type=CONTENT_TYPE_LATEST)
