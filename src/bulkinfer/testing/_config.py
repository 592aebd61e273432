"""What the simulated provider does: latency, rate limits, faults and the permanent-error marker."""

from __future__ import annotations

from dataclasses import dataclass, fields

FAULT_FIELDS = ("error_500", "error_503", "reset", "timeout", "malformed")
"""The fault rates, in the order a call's random draw is compared against them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorConfig:
    latency_median_s: float = 0.0
    """Median time a call takes before it is answered (0: answer at once)."""
    latency_sigma: float = 0.3
    """Spread of the lognormal latency distribution around the median."""

    requests_per_minute: int | None = None
    """Request limit; None for unlimited. Over it a call is answered 429 with Retry-After."""
    input_tokens_per_minute: int | None = None
    """Input-token limit (estimated as the provider would: ceil(chars / 4), images a flat amount)."""
    output_tokens_per_minute: int | None = None
    """Output-token limit, charged with the reply's tokens when the call is admitted."""
    burst_s: float = 1.0
    """How many seconds of each limit may be spent at once. Providers quantize their per-minute limits
    (OpenAI: "60,000 RPM may be enforced as 1,000 requests per second"), and a short burst keeps a
    benchmark honest: a client cannot bank a whole minute of calls and spend it in the first second."""

    error_500: float = 0.0
    """Share of admitted calls answered 500."""
    error_503: float = 0.0
    """Share of admitted calls answered 503 (overloaded)."""
    reset: float = 0.0
    """Share of admitted calls whose connection is reset without any response."""
    timeout: float = 0.0
    """Share of admitted calls that hang for ``hang_s`` without answering, so the client's timeout fires."""
    malformed: float = 0.0
    """Share of admitted calls answered 200 with a truncated, invalid JSON body."""
    hang_s: float = 3600.0
    """How long a ``timeout`` fault hangs before the simulator resets the connection itself."""

    permanent_error_marker: str | None = None
    """A call whose last user text contains this string always gets a 400 (once admitted)."""
    seed: int | None = None
    """Seed for the latency and fault draws; None draws from the OS."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name != "seed" and isinstance(value, int | float) and value < 0:
                raise ValueError(f"{field.name} must not be negative, got {value}")
        for name in ("requests_per_minute", "input_tokens_per_minute", "output_tokens_per_minute"):
            if getattr(self, name) == 0:
                raise ValueError(f"{name} must be positive or None")
        if self.burst_s <= 0:
            raise ValueError("burst_s must be positive")
        if self.fault_rate > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {self.fault_rate:.3f}, more than 1")
        if self.permanent_error_marker == "":
            raise ValueError("permanent_error_marker must not be empty (it would match every call)")

    @property
    def fault_rate(self) -> float:
        """The share of admitted calls that get a transient fault of any kind."""
        return float(sum(getattr(self, name) for name in FAULT_FIELDS))
