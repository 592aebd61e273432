"""``StopSignal``: a wait gives way to a stop, and never leaks what it acquired."""

from __future__ import annotations

import asyncio

from bulkinfer.stopping import STOPPED, StopSignal


def test_a_wait_that_ends_first_returns_its_result() -> None:
    async def scenario() -> object:
        return await StopSignal().unless_stopped(asyncio.sleep(0, result="done"))

    assert asyncio.run(scenario()) == "done"


def test_a_stop_abandons_a_waiting_semaphore_and_takes_nothing() -> None:
    async def scenario() -> tuple[object, bool]:
        slots = asyncio.Semaphore(1)
        await slots.acquire()  # held elsewhere: the wait below queues
        stop = StopSignal()
        waiting = asyncio.ensure_future(stop.unless_stopped(slots.acquire(), undo=lambda _: slots.release()))
        await asyncio.sleep(0.01)
        stop.set()
        outcome = await waiting
        slots.release()
        return outcome, slots.locked()

    assert asyncio.run(scenario()) == (STOPPED, False)


def test_a_wait_that_got_its_slot_as_the_stop_came_gives_it_back() -> None:
    async def scenario() -> tuple[object, bool]:
        slots = asyncio.Semaphore(1)
        stop = StopSignal()

        async def acquire_then_stop() -> None:
            await slots.acquire()
            stop.set()  # acquired and stopped in the same step: the stop wins, the slot goes back

        outcome = await stop.unless_stopped(acquire_then_stop(), undo=lambda _: slots.release())
        return outcome, slots.locked()

    assert asyncio.run(scenario()) == (STOPPED, False)


def test_after_a_stop_nothing_waits() -> None:
    async def scenario() -> object:
        stop = StopSignal()
        stop.set()
        return await stop.unless_stopped(asyncio.sleep(3600))

    assert asyncio.run(scenario()) is STOPPED


def test_cancelling_the_waiter_cancels_the_wait() -> None:
    async def scenario() -> bool:
        slots = asyncio.Semaphore(0)
        stop = StopSignal()
        waiting = asyncio.ensure_future(stop.unless_stopped(slots.acquire()))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.sleep(0)
        slots.release()
        return slots.locked()  # the abandoned acquire took nothing

    assert asyncio.run(scenario()) is False
