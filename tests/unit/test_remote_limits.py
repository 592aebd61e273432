"""Unit tests for the pieces every remote provider shares: limits, backoff, the breaker, headers."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from bulkinfer.providers.catalog import RemoteSpec
from bulkinfer.providers.remote.breaker import DOWN_AFTER_FAILURES, Breaker
from bulkinfer.providers.remote.call import RateHints, parse_duration
from bulkinfer.providers.remote.limits import (
    HEADROOM,
    INITIAL_CONCURRENCY,
    AdaptiveConcurrency,
    LimitRegistry,
    ModelLimits,
    Reservation,
    TokenBucket,
)
from bulkinfer.providers.remote.provider import BACKOFF_MAX_S, backoff
from bulkinfer.providers.remote.sdk import anthropic_hints, openai_hints, retry_after
from bulkinfer.stopping import StopSignal


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2", 2.0), ("0.5", 0.5), ("1m2.5s", 62.5), ("250ms", 0.25), ("6m0s", 360.0), ("1h", 3600.0)],
)
def test_durations_in_every_form_providers_send(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "5x", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_unreadable_durations_are_none(text: str | None) -> None:
    assert parse_duration(text) is None


def test_retry_after_prefers_milliseconds() -> None:
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({}) is None


def test_rate_limit_headers() -> None:
    hints = openai_hints(
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1.5s",
            "x-ratelimit-limit-requests": "600",
        }
    )
    assert hints == RateHints(0, 1.5, 600)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30))
    hints = anthropic_hints(
        {"anthropic-ratelimit-requests-remaining": "7", "anthropic-ratelimit-requests-reset": stamp}
    )
    assert hints.remaining_requests == 7
    assert hints.requests_reset_s is not None and 25 < hints.requests_reset_s <= 31


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(1)
    firsts = [backoff(1, None, rng) for _ in range(200)]
    lates = [backoff(12, None, rng) for _ in range(200)]
    assert max(firsts) <= 0.25 and max(lates) <= BACKOFF_MAX_S
    assert sum(lates) / len(lates) > 10 * sum(firsts) / len(firsts)
    assert len(set(firsts)) > 100  # jittered: retries of many records do not arrive together
    assert all(backoff(1, 3.0, rng) >= 3.0 for _ in range(20))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_holds_one_second_below_the_limit() -> None:
    bucket = TokenBucket(600, FakeClock())
    assert bucket.rate == pytest.approx(10 * HEADROOM)
    assert bucket.capacity == pytest.approx(10 * HEADROOM)


async def test_token_bucket_paces_takes_to_its_rate() -> None:
    bucket = TokenBucket(60 * 50 / HEADROOM)  # 50 a second, a burst of 50
    started = time.monotonic()
    for _ in range(75):
        await bucket.take(1)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.5  # 50 from the burst, 25 more at 50/s


async def test_token_bucket_lets_an_oversize_take_through_into_debt() -> None:
    bucket = TokenBucket(6000)  # ~100 a second, a burst of ~100
    await asyncio.wait_for(bucket.take(1000), 0.1)  # bigger than the bucket: goes through, into debt
    slow = asyncio.create_task(bucket.take(1))
    await asyncio.sleep(0.1)
    assert not slow.done()  # ~9 s of debt to pay off
    slow.cancel()
    bucket.charge(-900)  # the estimate was 900 too high: the debt is mostly forgiven
    await asyncio.wait_for(bucket.take(1), 0.5)


def test_adaptive_concurrency_grows_while_healthy_and_halves_on_throttling() -> None:
    clock = FakeClock()
    limit = AdaptiveConcurrency(64, clock)
    assert limit.limit == INITIAL_CONCURRENCY
    for _ in range(200):
        limit.succeeded()
    grown = limit.limit
    assert grown > 20
    limit.throttled()
    assert limit.limit == pytest.approx(grown / 2)
    limit.throttled()  # the same burst of 429s: counted once
    assert limit.limit == pytest.approx(grown / 2)
    clock.now += 2
    limit.throttled()
    assert limit.limit == pytest.approx(grown / 4)
    for _ in range(100_000):
        limit.succeeded()
    assert limit.limit == 64


async def test_adaptive_concurrency_bounds_calls_in_flight() -> None:
    limit = AdaptiveConcurrency(3)
    peak = 0

    async def call() -> None:
        nonlocal peak
        await limit.acquire()
        peak = max(peak, limit.in_flight)
        await asyncio.sleep(0.01)
        limit.release()

    await asyncio.gather(*(call() for _ in range(30)))
    assert peak == 3 and limit.in_flight == 0


async def test_model_limits_hold_calls_until_the_provider_resets() -> None:
    limits = ModelLimits(RemoteSpec(max_concurrency=4))
    limits.observe(RateHints(remaining_requests=0, requests_reset_s=0.3))
    started = time.monotonic()
    async with limits.slot(Reservation(10, 10)):
        pass
    assert time.monotonic() - started >= 0.25


async def test_a_spent_allowance_holds_calls_one_requests_share_not_until_it_is_full() -> None:
    clock = FakeClock()
    limits = ModelLimits(RemoteSpec(), clock)
    limits.observe(RateHints(remaining_requests=0, requests_reset_s=1.0, limit_requests=600))
    assert limits._hold_until == pytest.approx(clock.now + 0.1)  # one of 600 a minute, not the full second
    configured = ModelLimits(RemoteSpec(requests_per_minute=120), clock)
    configured.observe(RateHints(remaining_requests=0, requests_reset_s=5.0))
    assert configured._hold_until == pytest.approx(clock.now + 0.5)


def test_every_job_on_a_model_shares_its_limits() -> None:
    registry = LimitRegistry()
    spec = RemoteSpec(requests_per_minute=60)
    assert registry.for_model("a", spec) is registry.for_model("a", spec)
    assert registry.for_model("a", spec) is not registry.for_model("b", spec)


async def test_breaker_opens_on_unreachable_and_lets_one_probe_through() -> None:
    breaker = Breaker()
    assert await breaker.ready() is False
    breaker.failed("refused", probe=False, unreachable=True)
    assert breaker.is_down and breaker.down_since is not None
    probes = await asyncio.gather(*(asyncio.wait_for(breaker.ready(), 0.7) for _ in range(1)))
    assert probes == [True]
    waiter = asyncio.create_task(breaker.ready())
    await asyncio.sleep(0.05)
    assert not waiter.done()  # only one probe at a time
    breaker.answered(probe=True)
    assert await asyncio.wait_for(waiter, 1) is False
    assert not breaker.is_down and breaker.down_since is None


def test_breaker_opens_after_a_run_of_failures_even_when_connections_succeed() -> None:
    breaker = Breaker()
    for _ in range(DOWN_AFTER_FAILURES - 1):
        breaker.failed("503", probe=False, unreachable=False)
    assert not breaker.is_down
    breaker.answered(probe=False)
    for _ in range(DOWN_AFTER_FAILURES):
        breaker.failed("503", probe=False, unreachable=False)
    assert breaker.is_down


async def test_a_cancelled_waiter_neither_takes_nor_leaks_a_slot() -> None:
    limit = AdaptiveConcurrency(1)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    limit.release()
    await asyncio.gather(waiter, return_exceptions=True)
    assert limit.in_flight == 0
    await asyncio.wait_for(limit.acquire(), 0.1)


async def test_a_probe_cancelled_while_waiting_hands_the_probe_on() -> None:
    breaker = Breaker()
    breaker.failed("refused", probe=False, unreachable=True)
    first = asyncio.create_task(breaker.ready())
    await asyncio.sleep(0.05)
    first.cancel()  # cancelled during its probe delay
    await asyncio.gather(first, return_exceptions=True)
    assert await asyncio.wait_for(breaker.ready(), 2) is True  # the next caller may probe


def test_a_bogus_retry_after_cannot_freeze_a_model() -> None:
    clock = FakeClock()
    limits = ModelLimits(RemoteSpec(), clock)
    limits.throttled(float("inf"))
    limits.throttled(1e9)
    assert limits._hold_until <= clock.now + 300
    assert parse_duration("inf") is None and parse_duration("1.2.3s") is None


@pytest.mark.parametrize("hops", range(6))
def test_a_woken_waiter_cancelled_before_it_runs_passes_its_slot_on(hops: int) -> None:
    """A stopped job's record, woken for a slot and cancelled in the same instant, must not keep another
    job's record waiting for a slot that is free (whatever the order the two land in)."""

    async def scenario() -> tuple[bool, int]:
        concurrency = AdaptiveConcurrency(1)
        await concurrency.acquire()
        stop = StopSignal()
        stopped = asyncio.ensure_future(
            stop.unless_stopped(concurrency.acquire(), undo=lambda _: concurrency.release())
        )
        await asyncio.sleep(0)
        other = asyncio.ensure_future(concurrency.acquire())
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        loop.call_soon(stop.set)

        def release_after(n: int) -> None:
            if n:
                loop.call_soon(release_after, n - 1)
            else:
                concurrency.release()

        release_after(hops)
        await stopped
        done, _ = await asyncio.wait({other}, timeout=5)
        return other in done, concurrency.in_flight

    assert asyncio.run(scenario()) == (True, 1)
