"""What a process's calls to one remote model did: latency by outcome, 429s and retries.

Plain counts, kept beside the model's limits (one per model and process) and read when metrics are
scraped, so the provider path imports no metrics library and a local run pays nothing for them.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Upper bounds of the latency histogram's buckets, in seconds (+Inf is implied)."""

OUTCOMES = ("ok", "rate_limited", "refused", "failed", "unreachable")
"""How a call ended: answered; 429; a permanent 4xx; a retryable failure; no answer at all."""


@dataclass(slots=True)
class Latency:
    """One outcome's histogram: calls per bucket (not cumulative), their count and summed seconds."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    count: int = 0
    sum_s: float = 0.0

    def cumulative(self) -> list[tuple[str, int]]:
        """The buckets as Prometheus shows them: ``le`` bounds with cumulative counts, +Inf last."""
        bounds = [*(repr(b) for b in LATENCY_BUCKETS_S), "+Inf"]
        running, out = 0, []
        for bound, n in zip(bounds, self.buckets, strict=True):
            running += n
            out.append((bound, running))
        return out


class CallStats:
    """Counts for one model; safe to read from a scrape's thread while calls add to them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latency: dict[str, Latency] = {}
        self.throttled = 0
        """429s (and overloaded answers) the provider gave."""
        self.retries = 0
        """Calls made again after one that did not answer the record (any cause)."""

    def observe(self, outcome: str, seconds: float) -> None:
        with self._lock:
            latency = self._latency.setdefault(outcome, Latency())
            latency.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
            latency.count += 1
            latency.sum_s += seconds

    def latency(self) -> dict[str, Latency]:
        """A copy of each outcome's histogram."""
        with self._lock:
            return {k: Latency(list(v.buckets), v.count, v.sum_s) for k, v in self._latency.items()}
