"""Rate limits shared through the state store: the bucket arithmetic, and leases on a fake clock."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from bulkinfer.domain.request import ChatRequest, Message, TextPart
from bulkinfer.errors import JobFault
from bulkinfer.providers.catalog import RemoteSpec, _parse
from bulkinfer.providers.remote.call import Answer
from bulkinfer.providers.remote.limits import (
    BURST_SECONDS,
    HEADROOM,
    LEASE_S,
    LimitRegistry,
    ModelLimits,
    Reservation,
    SharedBucket,
)
from bulkinfer.providers.remote.provider import RemoteProvider, remote_capabilities
from bulkinfer.store.rate_buckets import Ask, Grant, MemoryRateBuckets, settle
from bulkinfer.store.state import StateStore


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_take_refills_by_elapsed_time_and_leases_only_from_what_is_there() -> None:
    ask = Ask(rate=10, capacity=7.5, need=1, extra=2.5)
    assert settle(7.5, 0, ask) == (4.0, Grant(3.5, 0.0))
    assert settle(0, 0.25, ask) == (0.0, Grant(2.5, 0.0))  # 2.5 there: need, and 1.5 of the extra
    level, grant = settle(0.2, 0.0, ask)
    assert level == 0.2 and grant.amount == 0
    assert grant.wait_s == pytest.approx((3.5 - 0.2) / 10)  # until need and extra are there
    assert settle(7.0, 3600, Ask(rate=10, capacity=7.5, need=1))[0] == 6.5  # never above capacity


def test_an_oversize_take_waits_for_a_full_bucket_then_leaves_debt_which_charges_adjust() -> None:
    big = Ask(rate=10, capacity=7.5, need=30)
    assert settle(7.0, 0, big)[1].amount == 0
    level, grant = settle(7.5, 0, big)
    assert grant == Grant(30, 0) and level == -22.5
    level, grant = settle(level, 0, Ask(rate=10, capacity=7.5, need=1, charge=-20))  # used 20 less
    assert level == pytest.approx(-2.5) and grant.wait_s == pytest.approx(0.35)
    assert settle(5, 0, Ask(rate=10, capacity=7.5, need=1, charge=-100))[0] == 6.5  # capped, less the take


async def test_two_processes_together_get_the_rate_not_twice_it() -> None:
    clock = FakeTime()
    store = MemoryRateBuckets(clock)
    one, two = (SharedBucket(store, "m", "requests", 600, clock, clock.sleep) for _ in range(2))
    taken = 0
    for _ in range(200):
        await one.take(1)
        await two.take(1)
        taken += 2
    rate = 600 * HEADROOM / 60
    elapsed = clock.now - 1000.0
    assert taken <= rate * (elapsed + BURST_SECONDS) + 1
    assert taken >= rate * elapsed * 0.9  # and nothing much is lost to leases dropped


class Counting(MemoryRateBuckets):
    calls = 0

    def lease(self, model: str, kind: str, ask: Ask) -> Grant:
        self.calls += 1
        return super().lease(model, kind, ask)


async def test_a_busy_process_takes_leases_and_an_idle_one_only_what_it_needs() -> None:
    clock = FakeTime()
    store = Counting(clock)
    bucket = SharedBucket(store, "m", "requests", 6000, clock, clock.sleep)  # ~98 a second
    await bucket.take(1)
    assert store.rows["m", "requests"][0] == pytest.approx(bucket.capacity - 1)  # no demand before: no lease
    clock.now += 10
    store.calls = 0
    for _ in range(50):
        await bucket.take(1)
    assert store.calls < 10  # the demand grew: leases
    clock.now += LEASE_S  # unspent, the lease is dropped: the next take asks again
    await bucket.take(1)
    assert store.calls < 11 and store.rows["m", "requests"][1] == clock.now


async def test_usage_above_the_estimate_is_charged_to_the_shared_bucket() -> None:
    clock = FakeTime()
    store = MemoryRateBuckets(clock)
    buckets = partial(SharedBucket, store, "m", clock=clock, sleep=clock.sleep)
    limits = ModelLimits(RemoteSpec(input_tokens_per_minute=60_000), buckets=buckets)  # 980/s, holds 735
    await limits.admit(Reservation(700, 0))
    limits.release()
    limits.settle(Reservation(700, 0), 1680, 0)  # 980 more than reserved: a second's worth
    assert store.rows["m", "input_tokens"][0] == pytest.approx(35)  # not sent yet: it goes with the next ask
    started = clock.now
    await limits.admit(Reservation(1, 0))
    assert clock.now - started > 1  # the next call waited for the debt (without it: about 0.2 s)


async def test_a_store_that_does_not_answer_holds_takes_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeTime()

    class Flaky(MemoryRateBuckets):
        failures = 5

        def lease(self, model: str, kind: str, ask: Ask) -> Grant:
            if self.failures:
                self.failures -= 1
                raise OperationalError("SELECT", {}, Exception("server closed the connection"))
            return super().lease(model, kind, ask)

    store = Flaky(clock)
    bucket = SharedBucket(store, "m", "requests", 600, clock, clock.sleep)
    with caplog.at_level(logging.INFO, logger="bulkinfer.providers.remote.limits"):
        await bucket.take(1)
    assert store.failures == 0 and clock.now > 1000.0
    assert [r.action for r in caplog.records] == ["limit_down", "limit_up"]  # type: ignore[attr-defined]


class Refusing(MemoryRateBuckets):
    """A store that refuses the limits' table, as PostgreSQL does once the role's grant is revoked."""

    def lease(self, model: str, kind: str, ask: Ask) -> Grant:
        raise ProgrammingError("SELECT", {}, Exception("permission denied for table rate_buckets"))


async def test_a_store_that_refuses_the_limit_ends_the_job_rather_than_failing_its_records() -> None:
    clock = FakeTime()
    bucket = SharedBucket(Refusing(clock), "m", "requests", 600, clock, clock.sleep)
    with pytest.raises(JobFault, match=r"limit of m could not be read.*permission denied"):
        await bucket.take(1)

    calls: list[object] = []

    class NeverCalled:
        async def __call__(self, request: object, timeout: float) -> Answer:
            calls.append(request)
            raise AssertionError("a call was made without the limit's leave")

        async def aclose(self) -> None:
            pass

    spec = _parse('[models.m]\nprovider = "openai"\nrequests_per_minute = 600', "test catalog")["m"]
    assert spec.remote is not None
    buckets = partial(SharedBucket, Refusing(clock), "m", clock=clock, sleep=clock.sleep)
    limits = ModelLimits(spec.remote, buckets=buckets)
    provider = RemoteProvider(spec, NeverCalled(), limits, remote_capabilities(spec))
    records = [ChatRequest(messages=(Message("user", (TextPart(f"q{i}"),)),)) for i in range(3)]
    with pytest.raises(JobFault):  # not three error lines: each record after them would fail too
        await provider.infer(records)
    assert calls == []


async def test_a_state_file_keeps_one_bucket_for_every_registry_on_it(tmp_path: Path) -> None:
    store = StateStore.at(tmp_path / "state.db")
    try:
        spec = RemoteSpec(requests_per_minute=60)  # a burst of one (less the lease) in all
        first, second = (LimitRegistry(store.rate_buckets()).for_model("m", spec) for _ in range(2))
        await asyncio.wait_for(first.admit(Reservation(0, 0)), 5)
        waiting = asyncio.create_task(second.admit(Reservation(0, 0)))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the other registry's take emptied the one bucket
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    finally:
        store.close()
