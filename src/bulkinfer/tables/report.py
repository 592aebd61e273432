"""The validation report of a ``prepare`` run: each row left out, and why, by table, row and column.

Memory stays bounded however many rows fail: the log keeps counts and the first ``keep`` problems for the
screen, and spills every problem to a temporary file, from which the JSON report is streamed.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from bulkinfer.tables.images import ProblemKind as ImageProblemKind

ProblemKind = (
    ImageProblemKind
    | Literal["unreadable-row", "template", "id-missing", "id-invalid", "duplicate-id", "image-list"]
)


@dataclass(frozen=True, slots=True)
class Problem:
    table: str
    row: int
    """1-based data row."""
    line: int | None
    """The file line the row starts on; None for Parquet."""
    kind: ProblemKind
    message: str
    column: str | None = None

    @property
    def where(self) -> str:
        return f"{self.table} line {self.line}" if self.line is not None else f"{self.table} row {self.row}"

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "row": self.row,
            "line": self.line,
            "column": self.column,
            "kind": self.kind,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Summary:
    table: str
    output: str
    rows: int
    written: int

    @property
    def skipped(self) -> int:
        return self.rows - self.written


class ProblemLog:
    """Every problem found, with rows counted once however many problems they have."""

    def __init__(self, keep: int = 50) -> None:
        self.first: list[Problem] = []
        """The first ``keep`` problems, for the screen."""
        self.counts: Counter[str] = Counter()
        self.total = 0
        self._keep = keep
        self._spill = tempfile.TemporaryFile()  # noqa: SIM115  (closed by close())

    def add(self, problems: list[Problem]) -> None:
        for problem in problems:
            self.total += 1
            self.counts[problem.kind] += 1
            if len(self.first) < self._keep:
                self.first.append(problem)
            self._spill.write(orjson.dumps(problem.to_json()) + b"\n")

    def report(self, summary: Summary) -> Iterator[bytes]:
        """The JSON report, in parts: counts first, then every problem."""
        head = {
            "table": summary.table,
            "output": summary.output,
            "rowCount": summary.rows,
            "writtenCount": summary.written,
            "skippedCount": summary.skipped,
            "problemCounts": dict(sorted(self.counts.items())),
        }
        yield orjson.dumps(head)[:-1] + b',"problems":['
        self._spill.seek(0)
        for i, line in enumerate(self._spill):
            yield (b"," if i else b"") + line.rstrip(b"\n")
        yield b"]}\n"

    def close(self) -> None:
        self._spill.close()

    def __enter__(self) -> ProblemLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
