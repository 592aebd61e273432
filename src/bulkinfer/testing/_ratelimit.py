"""Per-minute request and token limits, enforced as token buckets, and the headers that report them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from bulkinfer.testing._config import SimulatorConfig

Provider = Literal["openai", "anthropic"]
Clock = Callable[[], float]


class TokenBucket:
    """Refills at ``per_minute / 60`` per second up to ``burst_s`` seconds' worth (at least one unit)."""

    def __init__(self, per_minute: int, burst_s: float, clock: Clock) -> None:
        self.per_minute = per_minute
        self.capacity = max(1.0, per_minute * burst_s / 60.0)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()

    def wait_s(self, cost: int) -> float:
        """Seconds until a call costing ``cost`` fits; 0 if it fits now.

        A call bigger than the whole bucket waits for a full bucket and then drives it negative, so it
        is slow but not refused forever.
        """
        need = min(float(cost), self.capacity) - self._refill()
        return max(0.0, need / self._rate)

    def take(self, cost: int) -> None:
        self._level = self._refill() - cost

    def remaining(self) -> int:
        return max(0, math.floor(self._refill()))

    def full_in_s(self) -> float:
        return max(0.0, (self.capacity - self._refill()) / self._rate)

    def _refill(self) -> float:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self._rate)
        self._stamp = now
        return self._level


@dataclass(frozen=True, slots=True)
class Admission:
    retry_after_s: float | None
    """None when the call is admitted; otherwise how long until it would be."""
    limit_name: str
    """Which limit refused it ("requests", "input tokens", "output tokens"); empty when admitted."""
    headers: dict[str, str]
    """Rate-limit headers for the response, in the provider's own names."""


class RateLimiter:
    """All configured limits together: a call is admitted only if every bucket has room for it."""

    def __init__(self, config: SimulatorConfig, clock: Clock = time.monotonic) -> None:
        limits = {
            "requests": config.requests_per_minute,
            "input tokens": config.input_tokens_per_minute,
            "output tokens": config.output_tokens_per_minute,
        }
        self._buckets = {
            name: TokenBucket(per_minute, config.burst_s, clock)
            for name, per_minute in limits.items()
            if per_minute is not None
        }

    def admit(self, input_tokens: int, output_tokens: int, provider: Provider) -> Admission:
        costs = {"requests": 1, "input tokens": input_tokens, "output tokens": output_tokens}
        waits = {name: bucket.wait_s(costs[name]) for name, bucket in self._buckets.items()}
        worst = max(waits, key=lambda name: waits[name], default="")
        if worst and waits[worst] > 0:
            return Admission(waits[worst], worst, self.headers(provider))
        for name, bucket in self._buckets.items():
            bucket.take(costs[name])
        return Admission(None, "", self.headers(provider))

    def limit(self, name: str) -> int:
        return self._buckets[name].per_minute

    def headers(self, provider: Provider) -> dict[str, str]:
        render = _openai_headers if provider == "openai" else _anthropic_headers
        headers: dict[str, str] = {}
        for name, bucket in self._buckets.items():
            headers.update(render(name, bucket))
        return headers


def retry_after_headers(wait_s: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds (what the RFC allows), and the precise ``retry-after-ms``."""
    return {
        "retry-after": str(max(1, math.ceil(wait_s))),
        "retry-after-ms": str(max(1, math.ceil(wait_s * 1000))),
    }


# OpenAI reports one token limit; the input-token bucket stands in for it.
_OPENAI_SUFFIX = {"requests": "requests", "input tokens": "tokens"}
_ANTHROPIC_PREFIX = {"requests": "requests", "input tokens": "input-tokens", "output tokens": "output-tokens"}


def _openai_headers(name: str, bucket: TokenBucket) -> dict[str, str]:
    suffix = _OPENAI_SUFFIX.get(name)
    if suffix is None:
        return {}
    return {
        f"x-ratelimit-limit-{suffix}": str(bucket.per_minute),
        f"x-ratelimit-remaining-{suffix}": str(bucket.remaining()),
        f"x-ratelimit-reset-{suffix}": _go_duration(bucket.full_in_s()),
    }


def _anthropic_headers(name: str, bucket: TokenBucket) -> dict[str, str]:
    prefix = f"anthropic-ratelimit-{_ANTHROPIC_PREFIX[name]}"
    full_at = datetime.now(UTC) + timedelta(seconds=bucket.full_in_s())
    return {
        f"{prefix}-limit": str(bucket.per_minute),
        f"{prefix}-remaining": str(bucket.remaining()),
        f"{prefix}-reset": full_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _go_duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.3g}s"
