"""The dashboard's throughput history: rates over a window, and rings bounded in jobs and points."""

from __future__ import annotations

import pytest

from bulkinfer.api.ui.history import Sample, Throughput, rates
from bulkinfer.scheduler.scheduler import LiveCounts


def test_a_rate_is_records_per_second_over_the_window_before_each_sample() -> None:
    samples = [Sample(float(t), 10 * t, t) for t in range(10)]  # 10 records/s, one failing in ten
    points = rates(samples, window_s=5.0)
    assert len(points) == 9
    assert all(p.per_s == pytest.approx(10.0) for p in points)
    assert all(p.error_rate == pytest.approx(0.1) for p in points)
    assert points[-1].at == 9.0


def test_a_burst_is_spread_over_the_window_and_a_pause_shows_as_zero() -> None:
    samples = [Sample(t, n, 0) for t, n in ((0.0, 0), (1.0, 0), (2.0, 50), (8.0, 50), (9.0, 50))]
    points = rates(samples, window_s=5.0)
    assert points[1].per_s == pytest.approx(25.0)  # 50 records over the 2 s since the first sample
    assert points[-1].per_s == 0.0
    assert points[-1].error_rate == 0.0  # nothing done: no error rate, not a division by zero


def test_counts_going_back_never_make_a_negative_rate() -> None:
    (point,) = rates([Sample(0.0, 100, 5), Sample(1.0, 40, 1)])  # a job taken up again from its chunks
    assert point.per_s == 0.0 and point.error_rate == 0.0


def test_rings_are_bounded_in_points_and_jobs() -> None:
    history = Throughput(max_jobs=3, max_points=4)
    for t in range(10):
        history.record({f"job{n}": LiveCounts(processed=t) for n in range(5)}, float(t))
    assert len(history.points("job4")) == 3  # four samples, three rates
    assert history.points("job0") == []  # the oldest jobs were dropped
    history.record({"job0": LiveCounts(processed=1)}, 10.0)
    assert history.points("job1") == []  # job0 came back and pushed out the longest unsampled


def test_the_current_rate_is_none_for_a_job_not_sampled_lately() -> None:
    history = Throughput()
    for t in range(4):
        history.record({"running": LiveCounts(processed=5 * t)}, 100.0 + t)
    assert history.current("running", 103.5) == pytest.approx(5.0)
    assert history.current("running", 120.0) is None
    assert history.current("never", 103.0) is None
