"""Rate buckets shared by every process on one state store: a model's per-minute limits hold across them.

One row per model and limit kind ("requests", "input_tokens", "output_tokens") holds a token bucket:
its level and when it was last refilled. A process takes from it in leases (`Ask.need` now, plus up to
`Ask.extra` to spend soon), one short transaction each, serialized per row (PostgreSQL: ``SELECT ...
FOR UPDATE``; SQLite: its write lock, ``BEGIN IMMEDIATE``). The row refills by wall time: the
database's clock on PostgreSQL (replicas on several hosts), the file's one host's on SQLite.

The rate and capacity travel with each ask, not in the row, so every process refills with what it
was configured with; `settle` is the arithmetic, pure, and `MemoryRateBuckets` the in-process fake.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Insert, func, insert, select, update

from bulkinfer.store.schema import rate_buckets as table


@dataclass(frozen=True, slots=True)
class Ask:
    """What one process asks of a shared bucket in one transaction."""

    rate: float
    """Refill, per second."""
    capacity: float
    """The most the bucket holds."""
    need: float
    """What the caller must have now. More than ``capacity`` waits for a full bucket and leaves the
    bucket in debt, so a huge request is slowed, never refused."""
    extra: float = 0.0
    """What it would take besides, if the bucket has it (a lease to spend without asking again)."""
    charge: float = 0.0
    """Corrections owed since the last ask (usage above its estimate; negative: below, given back)."""


@dataclass(frozen=True, slots=True)
class Grant:
    amount: float
    """Nothing, or ``need`` and up to ``extra`` more."""
    wait_s: float
    """When nothing was given: how long, at the rate, until ``need`` and ``extra`` are there."""


def settle(level: float, elapsed: float, ask: Ask) -> tuple[float, Grant]:
    """The bucket's new level and what ``ask`` gets, ``elapsed`` seconds after the bucket was at ``level``."""
    level = min(ask.capacity, level + max(0.0, elapsed) * ask.rate)
    level = min(ask.capacity, level - ask.charge)
    if level >= min(ask.need, ask.capacity):
        amount = ask.need + min(ask.extra, max(0.0, level - ask.need))
        return level - amount, Grant(amount, 0.0)
    target = min(ask.need + ask.extra, ask.capacity)
    return level, Grant(0.0, (target - level) / ask.rate)


class RateBuckets:
    """The shared rate buckets of one state store's database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def lease(self, model: str, kind: str, ask: Ask) -> Grant:
        """One transaction: refill the row, apply the charge, take what fits. Database errors are
        raised (the caller waits them out: a limit it cannot read is no limit to skip)."""
        with self._engine.begin() as conn:
            postgres = conn.dialect.name == "postgresql"
            if not postgres:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            key = (table.c.model == model) & (table.c.kind == kind)
            row = conn.execute(select(table.c.level, table.c.stamp).where(key).with_for_update()).first()
            now = _now(conn) if postgres else time.time()
            if row is None:
                conn.execute(_insert_absent(conn, model, kind, ask.capacity, now))
                row = conn.execute(select(table.c.level, table.c.stamp).where(key).with_for_update()).one()
            level, grant = settle(row.level, now - row.stamp, ask)
            conn.execute(update(table).where(key).values(level=level, stamp=max(now, row.stamp)))
        return grant


def _now(conn: Connection) -> float:
    return float(conn.execute(select(func.extract("epoch", func.clock_timestamp()))).scalar_one())


def _insert_absent(conn: Connection, model: str, kind: str, level: float, now: float) -> Insert:
    """A full bucket, unless another process made the row first."""
    values = {"model": model, "kind": kind, "level": level, "stamp": now}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).values(**values).on_conflict_do_nothing()
    return insert(table).values(**values)  # SQLite: under its write lock, no one else can


class MemoryRateBuckets:
    """`RateBuckets` in memory, on an injected clock: for tests, and for processes that share nothing."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.rows: dict[tuple[str, str], tuple[float, float]] = {}
        """(model, kind) -> (level, stamp)."""

    def lease(self, model: str, kind: str, ask: Ask) -> Grant:
        now = self._clock()
        level, stamp = self.rows.get((model, kind), (ask.capacity, now))
        level, grant = settle(level, now - stamp, ask)
        self.rows[model, kind] = (level, max(now, stamp))
        return grant
