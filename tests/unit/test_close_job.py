"""A service job's close survives the cancellations that come while it waits for a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from bulkinfer.engine.job import LocalJob
from bulkinfer.scheduler.scheduler import close_job


class FakeJob:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


def test_a_close_cancelled_while_every_thread_is_busy_still_runs() -> None:
    """As when the database is down: every thread retries it, a fence cancels the job's task while its
    close waits for one. The close must still run, or the job's file lock stays held for good."""

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        busy = threading.Event()
        blocker = loop.run_in_executor(None, busy.wait)  # the only thread, taken
        job = FakeJob()
        closing = asyncio.ensure_future(close_job(cast(LocalJob, job)))
        await asyncio.sleep(0.05)
        closing.cancel()  # a fence, while the close waits for the thread
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        busy.set()
        await blocker
        for _ in range(1000):
            if job.closed.is_set():
                break
            await asyncio.sleep(0.01)
        return job.closed.is_set()

    assert asyncio.run(scenario())
