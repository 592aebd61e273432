"""Outage handling: when a provider stops answering, hold dispatch and probe it, rather than spending
every remaining record's attempts on a provider that is not there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DOWN_AFTER_FAILURES = 20
"""Consecutive failed calls (of any retryable kind) after which the provider counts as down, even if it
still accepts connections: a gateway answering 503 to everything is as down as a refused connection."""
PROBE_FIRST_S = 0.5
PROBE_MAX_S = 5.0


class Breaker:
    """Open while the provider is down: one probe call at a time goes through, everything else waits.

    ``ready`` returns at once while the provider is up. While it is down, one caller at a time is let
    through as the probe, after a growing delay; its success (any answer from the provider, even an
    error about the request) closes the breaker and releases every waiter.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._up = asyncio.Event()
        self._up.set()
        self._probe = asyncio.Lock()
        self._failures = 0
        self._delay = PROBE_FIRST_S
        self.down_since: float | None = None
        self.reason = ""

    @property
    def is_down(self) -> bool:
        return not self._up.is_set()

    async def ready(self) -> bool:
        """Wait until a call may go; True when this caller is the probe and must report back."""
        if self._up.is_set():
            return False
        await self._probe.acquire()
        if self._up.is_set():  # the provider came back while we queued for the probe
            self._probe.release()
            return False
        try:
            await asyncio.sleep(self._delay)
        except BaseException:  # cancelled while waiting to probe: let the next caller probe
            self._probe.release()
            raise
        self._delay = min(PROBE_MAX_S, self._delay * 2)
        return True

    def abandoned(self, probe: bool) -> None:
        """The call was cancelled before it could tell anything: hand the probe on."""
        if probe:
            self._probe.release()

    def answered(self, probe: bool) -> None:
        """The provider answered (successfully or with an error about the request)."""
        self._failures = 0
        if self.is_down:
            self.down_since, self.reason, self._delay = None, "", PROBE_FIRST_S
            self._up.set()
        if probe:
            self._probe.release()

    def failed(self, reason: str, probe: bool, unreachable: bool) -> None:
        """A call got no usable answer; ``unreachable`` when it could not connect at all."""
        self._failures += 1
        if not self.is_down and (unreachable or self._failures >= DOWN_AFTER_FAILURES):
            self.down_since, self.reason = self._clock(), reason
            self._up.clear()
        if probe:
            self._probe.release()

    async def wait_up(self) -> None:
        await self._up.wait()
