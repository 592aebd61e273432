"""Provider batch jobs: the jobs a bulkinfer job runs as on a provider's batch API.

A row is written before its provider job is created, under a token that is the create's idempotency
key, and the provider's id is added once it answers: a process killed anywhere in between finds the row
on restart and follows (or re-creates, with the same token) that provider job instead of making another.

A row that is not ended holds one of its model's provider slots. Taking a slot and writing the row are
one transaction, serialized per model (PostgreSQL: an advisory lock; SQLite: its write lock), so the
replicas sharing a database never run more provider jobs of a model than its quota. A row whose follower
stopped beating (its process died and nobody resumed the job) stops holding a slot after a while.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, Engine, func, insert, select, update

from bulkinfer.store.schema import provider_jobs as table

T = TypeVar("T")

CREATING = "creating"
"""Recorded; the provider job may or may not exist yet (its create is sent with the row's token)."""
RUNNING = "running"
"""The provider has the job (``provider_id`` set) and it has not ended."""
ENDED = "ended"
"""The provider job ended (completed, failed, expired or cancelled): its slot is free."""


@dataclass(frozen=True, slots=True)
class ProviderJob:
    token: str
    job_id: str
    model: str
    seq: int
    """Its place among its job's provider jobs, from 1."""
    attempt: int
    """1 for records sent for the first time; n for records the provider failed n - 1 times before."""
    keys: tuple[str, ...]
    """The request keys of its records, in the order sent (a record's custom id is its index here)."""
    state: str
    created_at: float
    heartbeat_at: float
    provider_id: str | None = None
    provider_file: str | None = None
    """What the create needs besides the records, kept so a re-create is the same request (an
    uploaded input file's id, a staged input's URI)."""
    provider_status: str | None = None
    total: int = 0
    done: int = 0
    failed: int = 0
    ended_at: float | None = None
    message: str | None = None
    cancelled: bool = False
    """Cancelled by bulkinfer (a stop): what it left unanswered is no attempt of the records'."""

    @property
    def ended(self) -> bool:
        return self.state == ENDED


def new_token() -> str:
    """A provider job's token, random: unique across jobs, runs and stores (two runs given the same
    job id must not find each other's provider jobs). Kept in its row, so a restart reuses it."""
    return f"bulkinfer-{secrets.token_hex(12)}"


class ProviderJobs:
    """The provider jobs of one state store's database."""

    def __init__(self, engine: Engine, call: Callable[[Callable[[], Any]], Any]) -> None:
        self._engine = engine
        self._call = call

    def of_job(self, job_id: str) -> list[ProviderJob]:
        query = select(table).where(table.c.job_id == job_id).order_by(table.c.seq)

        def read() -> list[ProviderJob]:
            with self._engine.connect() as conn:
                return [_from_row(r) for r in conn.execute(query).mappings().all()]

        result: list[ProviderJob] = self._call(read)
        return result

    def claim(self, job: ProviderJob, slots: int, stale_after_s: float) -> bool:
        """Record ``job`` if its model has a free slot (fewer than ``slots`` live rows): True when it
        was recorded (or already was: a retried commit), False when every slot is held."""

        def write() -> bool:
            with self._engine.begin() as conn:
                _lock_model(conn, job.model)
                if conn.execute(select(table.c.token).where(table.c.token == job.token)).first():
                    return True
                if _live(conn, job.model, time.time() - stale_after_s) >= slots:
                    return False
                conn.execute(insert(table).values(**_row(job)))
                return True

        claimed: bool = self._call(write)
        return claimed

    def live(self, model: str, stale_after_s: float) -> int:
        """How many of the model's slots are held."""

        def read() -> int:
            with self._engine.connect() as conn:
                return _live(conn, model, time.time() - stale_after_s)

        count: int = self._call(read)
        return count

    def beat(self, job_id: str) -> None:
        """Say that the job's live provider jobs are followed still, so they keep their slots."""

        def write() -> None:
            with self._engine.begin() as conn:
                live = (table.c.job_id == job_id) & (table.c.state != ENDED)
                conn.execute(update(table).where(live).values(heartbeat_at=time.time()))

        self._call(write)

    def save(self, job: ProviderJob, **changes: Any) -> ProviderJob:
        """Write ``changes`` (with a heartbeat) and return the job with them."""
        new = replace(job, heartbeat_at=time.time(), **changes)
        values = {k: v for k, v in _row(new).items() if k in changes or k == "heartbeat_at"}

        def write() -> None:
            with self._engine.begin() as conn:
                conn.execute(update(table).where(table.c.token == job.token).values(**values))

        self._call(write)
        return new


def _live(conn: Connection, model: str, beating_since: float) -> int:
    query = select(func.count()).where(
        table.c.model == model, table.c.state != ENDED, table.c.heartbeat_at >= beating_since
    )
    return int(conn.execute(query).scalar_one())


def _lock_model(conn: Connection, model: str) -> None:
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(
            hashlib.sha256(f"provider-slots:{model}".encode()).digest()[:8], "big", signed=True
        )
        conn.execute(select(func.pg_advisory_xact_lock(key)))
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


_FIELDS = tuple(f.name for f in fields(ProviderJob))


def _row(job: ProviderJob) -> dict[str, Any]:
    row = {name: getattr(job, name) for name in _FIELDS}
    row["keys"] = orjson.dumps(list(job.keys)).decode()
    return row


def _from_row(row: Any) -> ProviderJob:
    values = {name: row[name] for name in _FIELDS}
    values["keys"] = tuple(orjson.loads(row["keys"]))
    return ProviderJob(**values)
