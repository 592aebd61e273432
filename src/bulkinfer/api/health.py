"""``/health`` and ``/ready``: what a load balancer or an orchestrator asks, without credentials.

``GET /health`` answers 200 while the process serves. ``GET /ready`` answers 200 when the job store
answers a trivial query within `READY_TIMEOUT_S` and its schema is at the revision this code needs, else
503 naming the check that failed with a short reason: never the database's URL or its error's text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bulkinfer import logs
from bulkinfer.store.migrate import HEAD

log = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/health", "/ready"})
"""Paths the `Gate` lets through without credentials."""
READY_TIMEOUT_S = 1.5
"""Longest ``/ready`` waits for the store: a database that is down is reported fast, not waited out."""

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True, slots=True)
class NotReady:
    check: str
    """``database`` or ``migrations``."""
    reason: str


class Readiness:
    """Asks the store for its schema revision in a thread of its own, one question at a time: checks that
    come while one is still out (a database that hangs) wait on that one, so a probe every second
    against a dead database never ties up more than one thread."""

    def __init__(self, revision: Callable[[], str | None], timeout_s: float = READY_TIMEOUT_S) -> None:
        self._revision = revision
        self._timeout_s = timeout_s
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ready")
        self._asked: Future[str | None] | None = None

    async def check(self) -> NotReady | None:
        if self._asked is None or self._asked.done():
            self._asked = self._thread.submit(self._revision)
        try:
            async with asyncio.timeout(self._timeout_s):
                revision = await asyncio.shield(asyncio.wrap_future(self._asked))
        except TimeoutError:
            return self._failed("database", f"the job store did not answer within {self._timeout_s:g} s")
        except Exception as exc:  # the driver's error may hold the URL: only its class is logged
            return self._failed("database", "the job store is unreachable", type(exc).__name__)
        if revision != HEAD:
            at = revision or "no revision"
            return self._failed("migrations", f"the job store's schema is at {at}, not at {HEAD}")
        return None

    def _failed(self, check: str, reason: str, error: str | None = None) -> NotReady:
        logs.event(log, "health.not_ready", reason, level=logging.WARNING, check=check, error=error)
        return NotReady(check, reason)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    readiness: Readiness = request.app.state.readiness
    failed = await readiness.check()
    if failed is None:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready", "check": failed.check, "reason": failed.reason}, 503)
