"""Faults that pass: a database restarting, an S3 server away for a while, a connection reset.

What is transient is retried with backoff (tenacity) for as long as the caller's patience lasts, and the
wait is reported as an `Outage` ("S3 not answering since ...") so a person can see why a job waits.
What is not transient (a constraint violated, a missing object, a refused credential) is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


def is_transient_db(exc: BaseException) -> bool:
    """A database error that may pass by itself: a lost connection, a server restarting, a lock."""
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.IntegrityError | sa.ProgrammingError | sa.DataError):
        return False
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.DisconnectionError | sa.TimeoutError)


@dataclass(frozen=True, slots=True)
class Outage:
    """What has not been answering, since when, and the last error it gave."""

    what: str
    since: float
    error: str

    def __str__(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"{self.what} not answering since {stamp} ({self.error})"


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class _Watch:
    """Turns tenacity's attempts into an Outage for ``on_wait`` and a log line per failed attempt."""

    def __init__(self, what: str, on_wait: Callable[[Outage], None] | None) -> None:
        self.what = what
        self.on_wait = on_wait
        self.since: float | None = None

    def __call__(self, state: RetryCallState) -> None:
        self.since = self.since or time.time()
        error = state.outcome.exception() if state.outcome else None
        outage = Outage(self.what, self.since, _describe(error))
        log.warning("%s; retrying (attempt %d)", outage, state.attempt_number)
        if self.on_wait is not None:
            self.on_wait(outage)


def retrying_call(
    fn: Callable[[], T],
    *,
    what: str,
    transient: Callable[[BaseException], bool],
    patience_s: float,
    on_wait: Callable[[Outage], None] | None = None,
) -> T:
    """Call ``fn`` (in this thread) until it succeeds, retrying transient errors with backoff for up to
    ``patience_s``; then the last error is raised."""
    for attempt in Retrying(
        retry=retry_if_exception(transient),
        wait=wait_exponential_jitter(initial=0.1, max=MAX_BACKOFF_S),
        stop=stop_after_delay(patience_s),
        before_sleep=_Watch(what, on_wait),
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover (Retrying either returns or raises)


async def retrying_await(
    fn: Callable[[], Awaitable[T]],
    *,
    what: str,
    transient: Callable[[BaseException], bool],
    patience_s: float,
    on_wait: Callable[[Outage], None] | None = None,
) -> T:
    """`retrying_call` for a coroutine: waits without blocking the event loop."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(transient),
        wait=wait_exponential_jitter(initial=0.1, max=MAX_BACKOFF_S),
        stop=stop_after_delay(patience_s),
        before_sleep=_Watch(what, on_wait),
        sleep=asyncio.sleep,
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover
