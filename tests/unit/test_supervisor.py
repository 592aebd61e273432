"""Supervised loops survive what their steps raise, and background work gives way to requests."""

from __future__ import annotations

import asyncio

import pytest

from bulkinfer.scheduler import supervisor
from bulkinfer.scheduler.pressure import Pressure
from bulkinfer.scheduler.supervisor import Loops, backoff_s


async def test_a_loop_goes_on_after_its_step_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "FIRST_BACKOFF_S", 0.001)
    calls = 0
    done = asyncio.Event()

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ConnectionError("the database is restarting")
        if calls == 5:
            done.set()
        await asyncio.sleep(0)

    loops = Loops()
    loops.start("test", step)
    await asyncio.wait_for(done.wait(), timeout=30)
    await loops.stop()
    assert calls >= 5


def test_backoff_grows_and_is_capped() -> None:
    assert all(0 <= backoff_s(1) <= 2 * supervisor.FIRST_BACKOFF_S for _ in range(100))
    assert all(backoff_s(50) <= supervisor.MAX_BACKOFF_S for _ in range(100))


async def test_background_work_waits_while_requests_are_answered_and_not_forever() -> None:
    pressure = Pressure(busy=1, max_wait_s=3600)
    first = pressure.enter()
    pressure.enter()
    waited = asyncio.create_task(pressure.calm())
    await asyncio.sleep(0.05)
    assert not waited.done()  # two requests in flight: background work waits
    pressure.leave(first)
    await asyncio.wait_for(waited, timeout=30)  # one left: it goes on
    bounded = Pressure(busy=0, max_wait_s=0.01)
    bounded.enter()
    await asyncio.wait_for(bounded.calm(), timeout=30)  # busy for good, but the wait is bounded


def test_a_request_that_never_ends_stops_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    from bulkinfer.scheduler import pressure as module

    pressure = Pressure(busy=0)
    pressure.enter()  # a client that sent headers and nothing more
    assert pressure.in_flight == 1
    monkeypatch.setattr(module, "STALE_S", -1.0)
    assert pressure.in_flight == 0


async def test_a_loop_whose_step_swallows_its_cancel_still_stops() -> None:
    """Python 3.11's wait_for can swallow a cancel that comes as its wait ends: the loop must still end,
    or whatever stops it (a server's shutdown) waits for good."""
    swallowed = asyncio.Event()

    async def step() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.set()  # (and returns as if its wait had ended)

    loops = Loops()
    loops.start("swallower", step)
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(loops.stop())
    done, _ = await asyncio.wait({stopping}, timeout=30)
    assert swallowed.is_set() and stopping in done
