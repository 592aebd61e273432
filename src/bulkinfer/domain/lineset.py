"""A set of line numbers kept as sorted ranges, so a million committed lines cost a few integers."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator


class LineSet:
    """Sorted, disjoint, inclusive ``(start, end)`` ranges of line numbers."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in sorted(ranges):
            if self._ends and start <= self._ends[-1] + 1:
                self._ends[-1] = max(self._ends[-1], end)
            else:
                self._starts.append(start)
                self._ends.append(end)

    @classmethod
    def of(cls, lines: Iterable[int]) -> LineSet:
        return cls((line, line) for line in lines)

    @classmethod
    def parse(cls, text: str) -> LineSet:
        """Read the ``"1-5,9,12-40"`` form written by ``str()``."""
        ranges = []
        for part in filter(None, text.split(",")):
            start, _, end = part.partition("-")
            ranges.append((int(start), int(end or start)))
        return cls(ranges)

    def union(self, other: LineSet) -> LineSet:
        return LineSet([*self.ranges(), *other.ranges()])

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def __contains__(self, line: object) -> bool:
        if not isinstance(line, int):
            return False
        i = bisect_right(self._starts, line) - 1
        return i >= 0 and line <= self._ends[i]

    @property
    def last(self) -> int:
        """The highest line in the set (-1 when empty)."""
        return self._ends[-1] if self._ends else -1

    def __iter__(self) -> Iterator[int]:
        for start, end in zip(self._starts, self._ends, strict=True):
            yield from range(start, end + 1)

    def __len__(self) -> int:
        return sum(e - s + 1 for s, e in zip(self._starts, self._ends, strict=True))

    def __str__(self) -> str:
        return ",".join(
            str(s) if s == e else f"{s}-{e}" for s, e in zip(self._starts, self._ends, strict=True)
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LineSet) and self.ranges() == other.ranges()

    def __hash__(self) -> int:
        return hash(tuple(self.ranges()))
