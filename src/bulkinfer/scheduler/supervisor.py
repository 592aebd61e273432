"""Supervised loops: a long-running loop that logs and survives any exception, backing off while it
keeps failing (a database that is down), and resumes by itself when the fault passes.

A loop is never a fire-and-forget task: `Loops` owns its tasks, and a loop that ends on its own (a bug)
is logged and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 10.0


def backoff_s(failures: int) -> float:
    """Full-jitter exponential backoff after ``failures`` failures in a row."""
    return random.uniform(0, min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** min(failures, 16)))


async def supervise(name: str, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` over and over (it does its own waiting) until cancelled; an exception is logged and
    the next try waits a backoff that grows while the failures go on."""
    failures = 0
    while True:
        _stop_if_cancelled()
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            failures += 1
            delay = backoff_s(failures)
            if failures == 1 or failures % 10 == 0:
                log.exception("%s loop failed (%d in a row); trying again in %.1f s", name, failures, delay)
            else:
                log.warning("%s loop failed again (%d in a row)", name, failures)
            await asyncio.sleep(delay)
        else:
            if failures:
                log.warning("%s loop recovered after %d failures", name, failures)
            failures = 0


def _stop_if_cancelled() -> None:
    """End the loop if it was asked to stop, even where a step swallowed the `CancelledError` (a
    library's race, such as Python 3.11's ``wait_for``): a loop that outlives its cancel hangs shutdown."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Loops:
    """The supervised loops of a component, started together and cancelled together."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.create_task(supervise(name, step), name=name)
        task.add_done_callback(lambda t: self._ended(name, step, t))
        self._tasks[name] = task

    def _ended(self, name: str, step: Callable[[], Awaitable[None]], task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._tasks.get(name) is not task:
            return
        log.error("%s loop ended by itself (%r); starting it again", name, task.exception())
        self.start(name, step)

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
