"""When to poll a provider job again, and the bell that wakes parts waiting for a provider slot."""

from __future__ import annotations

import asyncio
import contextlib

MIN_POLL_S = 0.5
"""The shortest wait between polls: while a provider job moves, or is nearly done."""


def next_poll(previous_s: float, changed: bool, near_done: bool, longest_s: float) -> float:
    """The wait before the next poll: the shortest while the job moves or is nearly done (so a slot it
    frees is seen at once), doubling while nothing changes, up to ``longest_s`` (``poll_seconds``)."""
    shortest = min(MIN_POLL_S, longest_s)
    if changed or near_done:
        return shortest
    return min(longest_s, max(shortest, previous_s * 2))


class Bell:
    """Rung when a provider slot of a model frees in this process, waking every part waiting for one
    (slots freed elsewhere, by other replicas, are found by looking again now and then)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def ring(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout_s: float) -> None:
        """Until the bell rings, or ``timeout_s`` passes."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await waiter
        finally:
            self._waiters.discard(waiter)
