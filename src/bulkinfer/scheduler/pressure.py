"""Requests first: background work (validating, starting and ending jobs) gives way while the API is
busy answering, so a burst of calls is answered at once and the jobs it made are processed right after.

The API tells `Pressure` when each request starts and ends; the scheduler's loops call `calm` before each
piece of work. Giving way is bounded twice: a piece of work waits at most `MAX_WAIT_S`, and a request
counts for at most `STALE_S` (a client that sends headers and then nothing must not hold the jobs back).
"""

from __future__ import annotations

import asyncio
import itertools
import time

BUSY_REQUESTS = 4
"""Requests being answered at once above which background work waits."""
MAX_WAIT_S = 2.0
"""The longest a piece of background work gives way before it goes ahead anyway."""
STALE_S = 5.0
"""A request older than this no longer counts as the API being busy."""
CHECK_S = 0.02


class Pressure:
    def __init__(self, busy: int = BUSY_REQUESTS, max_wait_s: float = MAX_WAIT_S) -> None:
        self._started: dict[int, float] = {}
        self._tickets = itertools.count()
        self._busy = busy
        self._max_wait_s = max_wait_s

    def enter(self) -> int:
        """A request starts; returns its ticket for `leave`."""
        ticket = next(self._tickets)
        self._started[ticket] = time.monotonic()
        return ticket

    def leave(self, ticket: int) -> None:
        self._started.pop(ticket, None)

    @property
    def in_flight(self) -> int:
        """Requests being answered that started within `STALE_S`."""
        if len(self._started) <= self._busy:
            return len(self._started)
        recent = time.monotonic() - STALE_S
        return sum(1 for started in list(self._started.values()) if started >= recent)

    async def calm(self) -> None:
        """Wait (a bounded while) until the API is no longer busy."""
        if self.in_flight <= self._busy:
            return
        until = time.monotonic() + self._max_wait_s
        while self.in_flight > self._busy and time.monotonic() < until:
            await asyncio.sleep(CHECK_S)
