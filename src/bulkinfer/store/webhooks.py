"""The webhook outbox: rows written in the transaction of the job change they tell, sent later.

Writing the row with the change means a crash loses no webhook and a rolled-back change sends none. A
sender claims due rows by pushing their next attempt past its own time limit (PostgreSQL: under
``FOR UPDATE SKIP LOCKED``, so two replicas never claim one row), sends them with no lock held, and
then records the outcome; a replica that dies mid-send leaves rows that come due again.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, func, insert, select, update

from bulkinfer.logs import event
from bulkinfer.services import webhooks as hooks
from bulkinfer.store.schema import webhook_deliveries as table

if TYPE_CHECKING:
    from bulkinfer.store.batch_jobs import BatchJob

log = logging.getLogger("bulkinfer.webhooks")

MAX_PENDING_PER_JOB = 100
"""Most undelivered rows one job may have: past it, further changes are logged, not queued."""
MAX_RETRY_S = 24 * 3600.0
"""The longest wait between attempts; an event not delivered after `GIVE_UP_S` is given up."""
GIVE_UP_S = 3 * 24 * 3600.0
KEEP_S = 7 * 24 * 3600.0
"""How long a delivered or given-up row is kept (to see what was sent) before it is pruned."""
RETRY_FACTOR = 6


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed row, to send."""

    id: int
    webhook_id: str
    job_id: str
    url: str
    guarded: bool
    payload: bytes
    created_at: float
    attempts: int
    tenant: str | None = None
    """Whose own URL it goes to (signed with that tenant's key); None: one of the server's targets."""


def enqueue(conn: Connection, config: hooks.Webhooks | None, job: BatchJob, at: float) -> None:
    """Queue the webhooks telling that ``job`` (as it is after the change) changed at ``at``."""
    if config is None:
        return
    targets = hooks.targets_of(config, job.api, job.request, job.details)
    if not targets:
        return
    change = hooks.Change(
        job.job_id, job.name, job.model_id, job.api, job.status, at,
        job.message, job.total, job.processed, job.success, job.errors,
        region=(job.details or {}).get("region"),
    )  # fmt: skip
    rows = []
    for target in targets:
        webhook_id = hooks.new_webhook_id()
        body = hooks.payload(config, target.style, change, webhook_id)
        if body is not None:
            rows.append(_row(job, target, webhook_id, body, at))
    if rows and _pending(conn, job.job_id) + len(rows) > MAX_PENDING_PER_JOB:
        said = f"job {job.job_id} has {MAX_PENDING_PER_JOB} webhooks undelivered: this change is not sent"
        event(log, "webhook.dropped", said, level=logging.WARNING, job_id=job.job_id)
        return
    if rows:
        conn.execute(insert(table), rows)


def _row(job: BatchJob, target: hooks.Target, webhook_id: str, body: bytes, at: float) -> dict[str, Any]:
    return {
        "webhook_id": webhook_id,
        "job_id": job.job_id,
        "tenant": job.tenant if target.guarded else None,
        "url": target.url,
        "guarded": target.guarded,
        "payload": body.decode(),
        "created_at": at,
        "attempts": 0,
        "next_attempt_at": at,
        "delivered_at": None,
        "given_up": False,
        "last_error": None,
    }


def _pending(conn: Connection, job_id: str) -> int:
    c = table.c
    query = select(func.count()).where(c.job_id == job_id, c.next_attempt_at.is_not(None))
    return int(conn.execute(query).scalar_one())


def claim(conn: Connection, limit: int, hold_s: float) -> list[Delivery]:
    """Take up to ``limit`` due rows for this sender: none comes due again for ``hold_s``."""
    c = table.c
    now = time.time()
    query = select(table).where(c.next_attempt_at <= now).order_by(c.next_attempt_at, c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = conn.execute(query).mappings().all()
    if rows:
        ids = [r["id"] for r in rows]
        conn.execute(update(table).where(c.id.in_(ids)).values(next_attempt_at=now + hold_s))
    kept = ("id", "webhook_id", "job_id", "url", "guarded", "created_at", "attempts", "tenant")
    return [Delivery(payload=r["payload"].encode(), **{k: r[k] for k in kept}) for r in rows]


def delivered(conn: Connection, delivery: Delivery) -> None:
    c = table.c
    conn.execute(
        update(table)
        .where(c.id == delivery.id)
        .values(delivered_at=time.time(), next_attempt_at=None, attempts=delivery.attempts + 1)
    )


def failed(conn: Connection, delivery: Delivery, error: str, base_s: float) -> float | None:
    """Record a failed attempt; returns when the next one is, or None when the row is given up."""
    c = table.c
    now = time.time()
    attempts = delivery.attempts + 1
    retry_at: float | None = now + retry_delay_s(attempts, base_s)
    if retry_at is not None and retry_at - delivery.created_at > GIVE_UP_S:
        retry_at = None
    values = {"attempts": attempts, "last_error": error[:1000], "next_attempt_at": retry_at}
    conn.execute(update(table).where(c.id == delivery.id).values(given_up=retry_at is None, **values))
    return retry_at


def prune(conn: Connection, before: float) -> int:
    """Forget deliveries made (or given up) for events older than ``before``: the outbox is not a log."""
    c = table.c
    return int(conn.execute(delete(table).where(c.next_attempt_at.is_(None), c.created_at < before)).rowcount)


def retry_delay_s(attempts: int, base_s: float) -> float:
    """The wait after ``attempts`` failed attempts: 5 s, 30 s, 3 min, 18 min, ... (times 6, up to a
    day), with up to a fifth more at random so a receiver's outage is not followed by a stampede."""
    delay: float = min(MAX_RETRY_S, base_s * RETRY_FACTOR ** min(attempts - 1, 20))
    return delay * random.uniform(1.0, 1.2)
