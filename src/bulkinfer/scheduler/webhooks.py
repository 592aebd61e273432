"""The webhook sender: a supervised loop that posts the outbox's due rows and records each attempt.

Each request is signed at send time (Standard Webhooks' timestamp is the sending time, so a receiver's
five-minute tolerance holds for a retry a day later) and carries the same ``webhook-id`` on every retry
of one event, which is what receivers dedupe on. Redirects are not followed and the answer's body is not
read: a 2xx status is all that counts. A tenant's URL goes through the SSRF guard at every connect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from bulkinfer.logs import event
from bulkinfer.media.guard import AddressGuard, GuardedBackend
from bulkinfer.services import webhooks as hooks
from bulkinfer.store.batch_jobs import BatchJobStore
from bulkinfer.store.webhooks import KEEP_S, Delivery

log = logging.getLogger("bulkinfer.webhooks")

TIMEOUT_S = 10.0
"""The most one attempt may take, whole: a receiver that trickles its answer is cut off then."""
BATCH = 20
"""Most rows sent in one pass (at once)."""
HOLD_S = 60.0
"""How long a claimed row is this sender's: longer than a pass can take (one attempt's TIMEOUT_S)."""
IDLE_S = 1.0
"""Longest wait between passes that found nothing to send."""
PRUNE_EVERY_S = 3600.0


class WebhookSender:
    def __init__(self, store: BatchJobStore, config: hooks.Webhooks) -> None:
        self._store = store
        self._config = config
        self._next_prune = 0.0
        self._open = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False, trust_env=False)
        self._guarded = httpx.AsyncClient(
            timeout=TIMEOUT_S,
            follow_redirects=False,
            trust_env=False,
            transport=_guarded_transport(AddressGuard(config.fetch_allow)),
        )

    async def step(self) -> None:
        """One pass: send what is due, then wait a little if there was nothing (and, once an hour,
        prune the rows done with)."""
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
            await asyncio.to_thread(self._store.prune_webhooks, time.time() - KEEP_S)
        due = await asyncio.to_thread(self._store.claim_webhooks, BATCH, HOLD_S)
        # every send ends before the pass does (none is left running); a failure to record one is
        # raised then, for the supervisor to log and back off (the row comes due again after HOLD_S)
        outcomes = await asyncio.gather(*(self._send(d) for d in due), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        if len(due) < BATCH:
            await asyncio.sleep(min(IDLE_S, self._config.retry_base_s))

    async def _send(self, delivery: Delivery) -> None:
        error = await self.post(delivery)
        retry_at = await asyncio.to_thread(
            self._store.webhook_sent, delivery, error, self._config.retry_base_s
        )
        _log(delivery, error, retry_at)

    async def post(self, delivery: Delivery) -> str | None:
        """Send one row; None when it was delivered (a 2xx), else why not."""
        client = self._guarded if delivery.guarded else self._open
        stamp = int(time.time())
        key = self._config.secret
        if delivery.tenant is not None:
            key = hooks.tenant_key(key, delivery.tenant)
        sent = hooks.headers(key, delivery.webhook_id, stamp, delivery.payload)
        try:
            async with asyncio.timeout(TIMEOUT_S):  # (httpx's timeouts are per read, not per request)
                request = client.build_request("POST", delivery.url, content=delivery.payload, headers=sent)
                response = await client.send(request, stream=True)
                await response.aclose()  # (its body is never read)
        except Exception as exc:  # a connection refused, a timeout, the guard's refusal, a bad URL
            return f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= response.status_code < 300:
            return None
        return f"status {response.status_code}"

    async def close(self) -> None:
        await self._open.aclose()
        await self._guarded.aclose()


def _guarded_transport(guard: AddressGuard) -> httpx.AsyncHTTPTransport:
    """httpx's transport whose every connection goes to an address the guard has just checked (the same
    swap of the connection pool as `bulkinfer.media.fetch`, whose tests catch httpx changing it)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(network_backend=GuardedBackend(guard))
    return transport


def _log(delivery: Delivery, error: str | None, retry_at: float | None) -> None:
    """One line per attempt: ``webhook.delivered``, ``webhook.failed`` (to be retried) or
    ``webhook.given_up``, with the job, the URL's host (not its path: it may hold a token) and why."""
    tries = delivery.attempts + 1
    fields: dict[str, Any] = {
        "job_id": delivery.job_id,
        "host": urlsplit(delivery.url).hostname,
        "tries": tries,
    }
    said = f"webhook {delivery.webhook_id} of job {delivery.job_id}"
    if error is None:
        event(log, "webhook.delivered", f"{said} delivered", **fields)
    elif retry_at is not None:
        wait = f"{retry_at - time.time():.0f}"
        event(
            log,
            "webhook.failed",
            f"{said} failed ({error}); retried in {wait} s",
            level=logging.WARNING,
            error=error,
            **fields,
        )
    else:
        said = f"{said} given up after {tries} attempts ({error})"
        event(log, "webhook.given_up", said, level=logging.ERROR, error=error, **fields)
