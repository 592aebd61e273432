"""Requests first: background work (validating, starting and ending jobs) gives way while the API is
busy answering, so a burst of calls is answered at once and the jobs it made are processed right after.

The API counts the requests it is answering; the scheduler's loops call `calm` before each piece of
work. Giving way is bounded (`max_wait_s`), so a server under constant load still moves its jobs.
"""

from __future__ import annotations

import asyncio
import time

BUSY_REQUESTS = 4
"""Requests being answered at once above which background work waits."""
MAX_WAIT_S = 2.0
"""The longest a piece of background work gives way before it goes ahead anyway."""
CHECK_S = 0.02


class Pressure:
    def __init__(self, busy: int = BUSY_REQUESTS, max_wait_s: float = MAX_WAIT_S) -> None:
        self.in_flight = 0
        self._busy = busy
        self._max_wait_s = max_wait_s

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    async def calm(self) -> None:
        """Wait (a bounded while) until the API is no longer busy."""
        if self.in_flight <= self._busy:
            return
        until = time.monotonic() + self._max_wait_s
        while self.in_flight > self._busy and time.monotonic() < until:
            await asyncio.sleep(CHECK_S)
