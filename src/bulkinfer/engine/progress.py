"""How the engine reports progress; the CLI draws a bar, the service will update counts."""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    def advance(self, records: int, errors: int, input_tokens: int, output_tokens: int) -> None:
        """Some records finished (successes and errors together)."""


class NoProgress:
    def advance(self, records: int, errors: int, input_tokens: int, output_tokens: int) -> None:
        return None
