"""The adapter seam: one call for one request, and the few ways a call can fail.

Adapters convert their SDK's exceptions into this hierarchy at the boundary, so retries, limits and
outage handling are written once::

    CallFailed
    ├── Permanent      the request itself is wrong (4xx): the record's error line, never retried
    └── Retryable      try again later, after ``retry_after`` seconds when the provider said so
        ├── RateLimited    429 / overloaded: also slows every job on the model down
        └── ProviderDown   no answer at all (refused, unreachable): pauses dispatch until it answers
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from bulkinfer.domain.request import Request, Result
from bulkinfer.errors import ProviderError


class CallFailed(ProviderError):
    """One call to a remote model failed."""

    code = 500
    kind = "ModelError"


class Permanent(CallFailed):
    """The provider refused the request for a reason retrying cannot fix."""

    def __init__(self, message: str, code: int = 400, kind: str = "ValidationError") -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


class Retryable(CallFailed):
    """A failure that may pass: a 5xx, a timeout, a dropped connection, a garbled answer."""

    def __init__(self, message: str, retry_after: float | None = None, code: int = 500) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class RateLimited(Retryable):
    """The provider asked us to slow down."""

    kind = "ThrottlingException"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after, code=429)


class ProviderDown(Retryable):
    """The provider could not be reached at all."""

    kind = "ServiceUnavailableException"

    def __init__(self, message: str) -> None:
        super().__init__(message, None, code=503)


@dataclass(frozen=True, slots=True)
class RateHints:
    """What a response's rate-limit headers say, where the provider sends them."""

    remaining_requests: int | None = None
    requests_reset_s: float | None = None
    """Until the allowance is full again (OpenAI's and Anthropic's meaning), not until the next call."""
    limit_requests: int | None = None
    """Requests per minute the provider allows."""


@dataclass(slots=True)
class Answer:
    result: Result
    hints: RateHints


class Call(Protocol):
    """One provider's SDK, reduced to a single call."""

    async def __call__(self, request: Request, timeout: float) -> Answer:
        """Send one request; raise a ``CallFailed`` for any failure."""

    async def aclose(self) -> None:
        """Close the SDK client."""


def parse_duration(value: str | None) -> float | None:
    """A Retry-After or reset header: seconds (``"1.5"``) or OpenAI's ``"1m2.5s"`` / ``"250ms"``."""
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        return _units(value)
    except ValueError:  # "1.2.3s": a header we cannot read is a header we ignore
        return None


def _units(value: str) -> float | None:
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    i = 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if value.startswith("ms", i) else ch
        if unit not in units or not number:
            return None
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    return total if not number else None
