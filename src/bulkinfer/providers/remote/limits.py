"""Rate limits shared by every job on one model: token buckets for requests and tokens per minute, and a
concurrency limit that adapts to how the provider copes (AIMD: grow while healthy, halve on 429).

The buckets are local to the process (`TokenBucket`) or shared by every process on one state store
(`SharedBucket`: replicas, workers), so that together they stay under the configured limit; adaptive
concurrency and a provider's holds stay each process's own, as each sees its own 429s.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from bulkinfer.errors import JobFault
from bulkinfer.providers.batchapi.polling import Bell
from bulkinfer.providers.catalog import RemoteSpec
from bulkinfer.providers.remote.breaker import Breaker
from bulkinfer.providers.remote.call import RateHints
from bulkinfer.providers.remote.stats import CallStats
from bulkinfer.store.rate_buckets import Ask, Grant
from bulkinfer.transient import MAX_BACKOFF_S, is_transient_db

log = logging.getLogger(__name__)

HEADROOM = 0.98
"""Fraction of a configured per-minute limit we aim for. A provider counting over a rolling minute
also sees our one-second burst; 2% below the limit leaves room for it, so we never trip a 429."""
BURST_SECONDS = 1.0
INITIAL_CONCURRENCY = 8
DECREASE = 0.5
MAX_HOLD_S = 300.0
COOLDOWN_S = 1.0
"""After a decrease, further 429s within this time are from calls already in flight: ignore them."""
LEASE_S = 0.25
"""A process takes at most this long's worth of a shared limit ahead of its need, and spends it within
as long or drops it; the shared bucket holds ``BURST_SECONDS - LEASE_S``, so all processes together
burst no more than one process with a local bucket."""

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Bucket(Protocol):
    """One per-minute limit: what `ModelLimits` takes from before each call."""

    async def take(self, amount: float) -> None:
        """Wait until ``amount`` may be spent, and spend it."""

    def charge(self, amount: float) -> None:
        """Take (or, negative, give back) ``amount`` after the fact, when the real usage is known."""


BucketFactory = Callable[[str, float], Bucket]
"""Makes a model's bucket of one kind ("requests", "input_tokens", "output_tokens") and per-minute limit."""


class Leases(Protocol):
    """Where shared buckets live (``bulkinfer.store.rate_buckets``)."""

    def lease(self, model: str, kind: str, ask: Ask) -> Grant: ...


class TokenBucket:
    """Refills continuously at ``per_minute / 60`` a second, holding at most ``BURST_SECONDS`` of it.

    Takers queue in arrival order. A take larger than the bucket waits for a full bucket and leaves it
    in debt, so one huge request is slowed, never refused. ``charge`` corrects an estimate afterwards.
    """

    def __init__(self, per_minute: float, clock: Clock = time.monotonic) -> None:
        self.rate = per_minute * HEADROOM / 60.0
        self.capacity = max(1.0, self.rate * BURST_SECONDS)
        self._level = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> float:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._level

    async def take(self, amount: float) -> None:
        need = min(amount, self.capacity)
        async with self._lock:
            while (level := self._refill()) < need:
                await asyncio.sleep((need - level) / self.rate)
            self._level -= amount

    def charge(self, amount: float) -> None:
        """Take (or, negative, give back) tokens after the fact, when the real usage is known."""
        self._refill()
        self._level = min(self.capacity, self._level - amount)


class SharedBucket:
    """A `TokenBucket` kept in a state store, so the processes sharing the store share the limit.

    Takes come from a local lease; when it is short, one transaction asks the store for what is missing
    plus up to `LEASE_S` of this process's recent demand (never more than `LEASE_S` of the rate), so the
    database sees a few transactions a second per process whatever the rate. A lease not spent within
    `LEASE_S` is dropped (only what one waiting take has gathered toward its own amount is kept), so
    any window of T seconds sees at most ``rate * (T + BURST_SECONDS)`` from all processes together,
    as from one local bucket, plus less than one take per process. Charges go with the next ask. While
    the store does not answer, takes wait: a limit that cannot be read is not skipped, as N processes
    would then send N times it.
    """

    def __init__(
        self,
        leases: Leases,
        model: str,
        kind: str,
        per_minute: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rate = per_minute * HEADROOM / 60.0
        self.capacity = max(1.0, self.rate * (BURST_SECONDS - LEASE_S))
        self._leases = leases
        self._model = model
        self._kind = kind
        self._clock = clock
        self._sleep = sleep
        self._held = 0.0
        self._held_until = 0.0
        self._owed = 0.0
        self._demand = 0.0
        """What was asked for lately: decays by e every `LEASE_S`, so about `LEASE_S` of demand."""
        self._demand_at = clock()
        self._down = False
        self._lock = asyncio.Lock()

    async def take(self, amount: float) -> None:
        recent = self._asked(amount)
        async with self._lock:
            if self._clock() >= self._held_until:
                self._held = 0.0  # (what a take gathers toward its amount is kept while it waits)
            while self._held < amount:
                extra = min(self.rate * LEASE_S, recent)
                ask = Ask(self.rate, self.capacity, amount - self._held, extra, self._owed)
                asked_at = self._clock()
                grant = await self._ask(ask)
                self._owed -= ask.charge
                if grant.amount:
                    self._held, self._held_until = self._held + grant.amount, asked_at + LEASE_S
                else:
                    await self._sleep(grant.wait_s)
            self._held -= amount

    def charge(self, amount: float) -> None:
        if amount > 0:  # first from the lease in hand: it counts at once, with no transaction
            spent = min(amount, self._held)
            self._held -= spent
            amount -= spent
        self._owed += amount

    def _asked(self, amount: float) -> float:
        """Note a take of ``amount``; the demand before it."""
        now = self._clock()
        before = self._demand * math.exp(-(now - self._demand_at) / LEASE_S)
        self._demand, self._demand_at = before + amount, now
        return before

    async def _ask(self, ask: Ask) -> Grant:
        pause = 0.1
        while True:
            try:
                grant = await asyncio.to_thread(self._leases.lease, self._model, self._kind, ask)
            except Exception as exc:
                if not is_transient_db(exc):  # (a revoked grant, a dropped table: waiting will not pass)
                    what = f"the shared {self._kind} limit of {self._model}"
                    raise JobFault(f"{what} could not be read from the state store: {exc}") from exc
                self._say_down(exc)
                await self._sleep(pause)
                pause = min(pause * 2, MAX_BACKOFF_S)
                continue
            self._say_down(None)
            return grant

    def _say_down(self, error: Exception | None) -> None:
        """Log an outage of the store once as it starts, and once as it ends."""
        if (error is not None) == self._down:
            return
        self._down = error is not None
        what = f"the shared {self._kind} limit of {self._model}"
        if error is not None:
            log.warning(
                "%s is not answering (%s); its calls wait", what, error, extra={"action": "limit_down"}
            )
        else:
            log.info("%s answers again", what, extra={"action": "limit_up"})


class AdaptiveConcurrency:
    """A concurrency limit that finds what the provider sustains.

    Additive increase (one more slot per ``limit`` successes) while calls succeed; multiplicative
    decrease when the provider throttles or is overloaded; never above ``ceiling``.
    """

    def __init__(self, ceiling: int, clock: Clock = time.monotonic) -> None:
        self.ceiling = ceiling
        self.limit = float(min(ceiling, INITIAL_CONCURRENCY))
        self.in_flight = 0
        self._clock = clock
        self._last_decrease = -COOLDOWN_S
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        while self.in_flight >= int(self.limit):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # woken, then cancelled before it ran (a stopped job's record): pass the wake-up on,
                # or another job's call would wait for a slot that is free
                if waiter.done() and not waiter.cancelled():
                    self._wake()
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += 1

    def release(self) -> None:
        """Synchronous, so a cancellation can never skip it and leak a slot."""
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        free = int(self.limit) - self.in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def succeeded(self) -> None:
        if self.limit < self.ceiling:
            self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)
            self._wake()

    def throttled(self) -> None:
        now = self._clock()
        if now - self._last_decrease >= COOLDOWN_S:
            self.limit = max(1.0, self.limit * DECREASE)
            self._last_decrease = now


@dataclass(slots=True)
class Reservation:
    """Tokens reserved for one call, settled against its real usage."""

    input_tokens: int
    output_tokens: int


class ModelLimits:
    """Every limit of one model; ``slot`` is entered around each call. ``breaker`` holds calls back
    while the provider is down."""

    def __init__(
        self, spec: RemoteSpec, clock: Clock = time.monotonic, buckets: BucketFactory | None = None
    ) -> None:
        self.breaker = Breaker()
        self.stats = CallStats()
        """What the calls did (for metrics)."""
        self.concurrency = AdaptiveConcurrency(spec.max_concurrency or 1024, clock)
        make = buckets or (lambda _kind, per_minute: TokenBucket(per_minute, clock))
        self._requests = _bucket(make, "requests", spec.requests_per_minute)
        self._input = _bucket(make, "input_tokens", spec.input_tokens_per_minute)
        self._output = _bucket(make, "output_tokens", spec.output_tokens_per_minute)
        self._clock = clock
        self._hold_until = 0.0
        self._requests_per_minute = spec.requests_per_minute

    @asynccontextmanager
    async def slot(self, reservation: Reservation) -> AsyncIterator[None]:
        await self.admit(reservation)
        try:
            yield
        finally:
            self.release()

    async def admit(self, reservation: Reservation) -> None:
        """Wait until one more call may go; the caller must ``release`` once it is answered. A wait
        that is cancelled takes nothing (tokens it took stay spent: they pace, they are not a slot)."""
        await self.concurrency.acquire()
        try:
            await self._wait_for_reset()
            for bucket, amount in (
                (self._requests, 1),
                (self._input, reservation.input_tokens),
                (self._output, reservation.output_tokens),
            ):
                if bucket is not None:
                    await bucket.take(amount)
        except BaseException:
            self.concurrency.release()
            raise

    def release(self) -> None:
        self.concurrency.release()

    def settle(self, reservation: Reservation, input_tokens: int, output_tokens: int) -> None:
        if self._input is not None:
            self._input.charge(input_tokens - reservation.input_tokens)
        if self._output is not None:
            self._output.charge(output_tokens - reservation.output_tokens)

    def observe(self, hints: RateHints) -> None:
        """Headers saying the provider's request allowance is spent: hold new calls until one more is
        allowed. The reset header says when the allowance is *full* again, which at a steady pace near
        the limit is always about a second away: holding that long made bursts and pauses (measured:
        0.90 of the limit instead of 0.98), so hold one request's share of a minute at most."""
        if hints.remaining_requests != 0 or not hints.requests_reset_s:
            return
        per_minute = hints.limit_requests or self._requests_per_minute
        hold = hints.requests_reset_s if not per_minute else min(hints.requests_reset_s, 60.0 / per_minute)
        self._hold(hold)

    def throttled(self, retry_after: float | None) -> None:
        self.concurrency.throttled()
        if retry_after:
            self._hold(retry_after)

    def _hold(self, seconds: float) -> None:
        """Hold new calls; a provider's word is capped, so a bogus header cannot freeze the model."""
        if math.isfinite(seconds):
            self._hold_until = max(self._hold_until, self._clock() + min(seconds, MAX_HOLD_S))

    async def _wait_for_reset(self) -> None:
        while (wait := self._hold_until - self._clock()) > 0:
            await asyncio.sleep(wait)


def _bucket(make: BucketFactory, kind: str, per_minute: float | None) -> Bucket | None:
    return make(kind, per_minute) if per_minute else None


class LimitRegistry:
    """One ``ModelLimits`` per model name, so every job on a model shares its limits.

    Built once per process (the server, or one ``bulkinfer run``) and passed down to providers. Given
    ``shared`` (a state store's ``rate_buckets()``), its per-minute limits hold across every process on
    that store; without, within this process only.
    """

    def __init__(self, shared: Leases | None = None) -> None:
        self._shared = shared
        self._limits: dict[str, ModelLimits] = {}
        self._bells: dict[str, Bell] = {}
        self._lock = threading.Lock()  # providers load in threads: two jobs may ask at once

    def for_model(self, name: str, spec: RemoteSpec) -> ModelLimits:
        with self._lock:
            limits = self._limits.get(name)
            if limits is None:
                buckets = None if self._shared is None else partial(SharedBucket, self._shared, name)
                limits = self._limits[name] = ModelLimits(spec, buckets=buckets)
            return limits

    def bell(self, name: str) -> Bell:
        """What a model's provider batch jobs ring when one ends here, freeing a slot."""
        with self._lock:
            bell = self._bells.get(name)
            if bell is None:
                bell = self._bells[name] = Bell()
            return bell

    def get(self, name: str) -> ModelLimits | None:
        """A model's limits, once a job on it has called it in this process (read-only use: the
        dashboard shows its adaptive concurrency and breaker)."""
        with self._lock:
            return self._limits.get(name)

    def stats(self) -> dict[str, CallStats]:
        """Each model's call counts so far in this process."""
        with self._lock:
            return {name: limits.stats for name, limits in self._limits.items()}
