"""Throughput over time of the jobs running in this process, for the dashboard's charts.

A supervised loop (`Throughput.step`) samples the scheduler's live counts of each running job every
`SAMPLE_S`: one ring of at most `MAX_POINTS` samples per job, for at most `MAX_JOBS` jobs (the ones
sampled longest ago are dropped first), so memory is bounded by jobs x points whatever runs.

What is lost: the samples live in memory only. After a restart a job's chart starts again from then;
a job running on another replica has no samples here (its page shows its counts, without a chart).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bulkinfer.scheduler.scheduler import LiveCounts

SAMPLE_S = 1.0
MAX_POINTS = 600
"""Ten minutes at one sample a second."""
MAX_JOBS = 200
RATE_WINDOW_S = 5.0
"""A rate is taken over this long, so one chunk committed at once does not make a spike."""


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    processed: int
    errors: int


@dataclass(frozen=True, slots=True)
class Point:
    """One point of a job's chart: records per second and the share of them that failed (0 to 1)."""

    at: float
    per_s: float
    error_rate: float


def rates(samples: list[Sample], window_s: float = RATE_WINDOW_S) -> list[Point]:
    """Each sample's rate over the samples of the ``window_s`` before it (the first has none)."""
    points: list[Point] = []
    start = 0
    for end in range(1, len(samples)):
        while start < end - 1 and samples[end].at - samples[start + 1].at >= window_s:
            start += 1
        points.append(_rate(samples[start], samples[end]))
    return points


def _rate(first: Sample, last: Sample) -> Point:
    span = last.at - first.at
    done = max(0, last.processed - first.processed)
    failed = max(0, last.errors - first.errors)
    per_s = done / span if span > 0 else 0.0
    return Point(last.at, per_s, failed / done if done else 0.0)


class Throughput:
    def __init__(self, max_jobs: int = MAX_JOBS, max_points: int = MAX_POINTS) -> None:
        self._rings: OrderedDict[str, deque[Sample]] = OrderedDict()
        self._max_jobs = max_jobs
        self._max_points = max_points

    def record(self, counts: Mapping[str, LiveCounts], now: float) -> None:
        for job_id, live in counts.items():
            ring = self._rings.pop(job_id, None) or deque(maxlen=self._max_points)
            ring.append(Sample(now, live.processed, live.errors))
            self._rings[job_id] = ring  # (moved to the end: sampled most recently)
        while len(self._rings) > self._max_jobs:
            self._rings.popitem(last=False)

    def points(self, job_id: str) -> list[Point]:
        return rates(list(self._rings.get(job_id, ())))

    def current(self, job_id: str, now: float) -> float | None:
        """Records per second lately; None when the job has not been sampled in the last window."""
        ring = self._rings.get(job_id)
        if not ring or now - ring[-1].at > RATE_WINDOW_S:
            return None
        recent = [s for s in ring if ring[-1].at - s.at <= RATE_WINDOW_S]
        return _rate(recent[0], recent[-1]).per_s if len(recent) > 1 else None

    def step_of(self, counts: Callable[[], Mapping[str, LiveCounts]]) -> Callable[[], Awaitable[None]]:
        """The supervised loop's step: wait `SAMPLE_S`, then sample what runs now."""

        async def step() -> None:
            await asyncio.sleep(SAMPLE_S)
            self.record(counts(), time.time())

        return step
