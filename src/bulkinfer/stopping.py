"""A job's stop as something waits can give way to: a stop sends no call that has not started.

Records of a stopping job may be waiting for many things before their call: a concurrency slot, a rate
limiter's token, a provider's reset time, a retry's backoff. Each such wait goes through
``StopSignal.unless_stopped``, which abandons it the moment the job is asked to stop; a call already
sent is never abandoned (it is answered, or times out, and is committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

T = TypeVar("T")


class Stopped:
    """What an abandoned wait returns: nothing was started."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "STOPPED"


STOPPED: Final = Stopped()


class StopSignal:
    """Set once, from the event loop's thread (a signal handler, the scheduler)."""

    def __init__(self) -> None:
        self._set = False
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def unless_stopped(
        self, wait: Coroutine[Any, Any, T], undo: Callable[[T], None] | None = None
    ) -> T | Stopped:
        """Await ``wait``, or give it up when the stop comes first and return ``STOPPED``.

        A wait given up is cancelled; one that got what it waited for just as the stop came is handed
        to ``undo`` (to give back a slot it took), so a stop never leaks what a wait acquires.
        """
        if self._set:
            wait.close()
            return STOPPED
        task = asyncio.ensure_future(wait)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # we are cancelled ourselves: so is the wait
            task.cancel()
            raise
        finally:
            self._waiters.discard(waiter)
            waiter.cancel()
        if not self._set:
            return task.result()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
        if not task.cancelled() and task.exception() is None and undo is not None:
            undo(task.result())
        return STOPPED
