"""Call accounting: every call the simulator receives, by request id, so tests can prove exactly-once.

The simulator writes into a mutable ``Ledger``; readers only ever see a frozen ``SimulatorStats``
snapshot, in process (``Simulator.stats()``) or as JSON from another process (``GET /_sim/stats``).

What the counts guarantee, and what they cannot, about the client on the other side of the socket:

- A call is counted once its body has been read. A request its client gave up on before then (a
  timeout on a starved machine, a connection broken mid-send) is counted nowhere, so a client's
  attempts are at least the calls counted here: compare them with ``>=``, never ``==``.
- Every counted call ends in exactly one ``Outcome``. Once none is in flight (``idle_stats``),
  ``calls`` is the sum of ``by_outcome``, and each id's ``calls`` is its successes plus ``failed``.
- A success is counted once the whole answer is in the kernel's hands. A client that gives up after
  that and calls again is billed twice: its doing, and what an exactly-once test is there to catch.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Outcome(StrEnum):
    """How one call ended. Every call ends in exactly one outcome."""

    SUCCESS = "success"
    """A 200 with a complete, valid body written to the connection."""
    RATE_LIMITED = "rate_limited"
    INVALID = "invalid_request"
    """A 400 for a body the simulator cannot read (not JSON, missing fields)."""
    PERMANENT = "permanent_error"
    """A 400 because the last user text holds the permanent-error marker."""
    ERROR_500 = "error_500"
    ERROR_503 = "error_503"
    RESET = "reset"
    TIMEOUT = "timeout"
    MALFORMED = "malformed"
    DISCONNECTED = "disconnected"
    """The client went away (or the simulator went down) before the answer was written."""


@dataclass(frozen=True, slots=True)
class IdStats:
    """What one request id received."""

    calls: int = 0
    successes: int = 0
    failures: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Failed calls by ``Outcome`` value."""

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


@dataclass(frozen=True, slots=True)
class SimulatorStats:
    """An immutable snapshot of the simulator's counters."""

    calls: int
    successes: int
    by_outcome: Mapping[str, int]
    """Calls by ``Outcome`` value."""
    by_status: Mapping[int, int]
    """Responses by HTTP status; malformed 200s are counted under 200, resets and hangs nowhere."""
    per_id: Mapping[str, IdStats]
    success_times: tuple[float, ...]
    """``time.monotonic()`` of each successful answer, in order (comparable across processes on Linux)."""
    started_at: float
    """``time.monotonic()`` when the counters started."""
    in_flight: int = 0
    """Inference calls being handled right now (hung ones included, until their client gives up)."""
    peak_in_flight: int = 0

    @property
    def rate_limited(self) -> int:
        return self.by_outcome.get(Outcome.RATE_LIMITED, 0)

    @property
    def resets(self) -> int:
        return self.by_outcome.get(Outcome.RESET, 0)

    @property
    def timeouts(self) -> int:
        return self.by_outcome.get(Outcome.TIMEOUT, 0)

    @property
    def malformed(self) -> int:
        return self.by_outcome.get(Outcome.MALFORMED, 0)

    def for_id(self, request_id: str) -> IdStats:
        return self.per_id.get(request_id, IdStats())

    def achieved_rpm(self, start: float | None = None, end: float | None = None) -> float:
        """Successful calls per minute between two monotonic times (default: first to last success)."""
        if not self.success_times:
            return 0.0
        start = self.success_times[0] if start is None else start
        end = self.success_times[-1] if end is None else end
        if end <= start:
            return 0.0
        count = sum(1 for t in self.success_times if start <= t <= end)
        return count * 60.0 / (end - start)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "successes": self.successes,
            "by_outcome": dict(self.by_outcome),
            "by_status": {str(status): n for status, n in self.by_status.items()},
            "per_id": {
                rid: {"calls": s.calls, "successes": s.successes, "failures": dict(s.failures)}
                for rid, s in self.per_id.items()
            },
            "success_times": list(self.success_times),
            "started_at": self.started_at,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SimulatorStats:
        per_id = {
            rid: IdStats(s["calls"], s["successes"], MappingProxyType(dict(s["failures"])))
            for rid, s in data["per_id"].items()
        }
        return cls(
            calls=data["calls"],
            successes=data["successes"],
            by_outcome=MappingProxyType(dict(data["by_outcome"])),
            by_status=MappingProxyType({int(k): v for k, v in data["by_status"].items()}),
            per_id=MappingProxyType(per_id),
            success_times=tuple(data["success_times"]),
            started_at=data["started_at"],
            in_flight=data["in_flight"],
            peak_in_flight=data["peak_in_flight"],
        )


@dataclass(slots=True)
class _IdCounter:
    calls: int = 0
    successes: int = 0
    failures: Counter[str] = field(default_factory=Counter)


class Ledger:
    """The simulator's mutable counters. Single-threaded: only the simulator's event loop writes."""

    def __init__(self) -> None:
        self._calls = 0
        self._by_outcome: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._per_id: dict[str, _IdCounter] = {}
        self._success_times: list[float] = []
        self._started_at = time.monotonic()
        self._in_flight = 0
        self._peak_in_flight = 0

    def enter(self) -> None:
        self._in_flight += 1
        self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def leave(self) -> None:
        self._in_flight -= 1

    def received(self, request_id: str | None) -> None:
        self._calls += 1
        if request_id is not None:
            self._per_id.setdefault(request_id, _IdCounter()).calls += 1

    def finished(self, request_id: str | None, outcome: Outcome, status: int | None = None) -> None:
        self._by_outcome[outcome.value] += 1
        if status is not None:
            self._by_status[status] += 1
        if outcome is Outcome.SUCCESS:
            self._success_times.append(time.monotonic())
        if request_id is None:
            return
        counter = self._per_id.setdefault(request_id, _IdCounter())
        if outcome is Outcome.SUCCESS:
            counter.successes += 1
        else:
            counter.failures[outcome.value] += 1

    def snapshot(self) -> SimulatorStats:
        per_id = {
            rid: IdStats(c.calls, c.successes, MappingProxyType(dict(c.failures)))
            for rid, c in self._per_id.items()
        }
        return SimulatorStats(
            calls=self._calls,
            successes=self._by_outcome[Outcome.SUCCESS.value],
            by_outcome=MappingProxyType(dict(self._by_outcome)),
            by_status=MappingProxyType(dict(self._by_status)),
            per_id=MappingProxyType(per_id),
            success_times=tuple(self._success_times),
            started_at=self._started_at,
            in_flight=self._in_flight,
            peak_in_flight=self._peak_in_flight,
        )
