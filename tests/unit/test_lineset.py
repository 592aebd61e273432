"""Unit tests for ``domain.lineset.LineSet``."""

from __future__ import annotations

import itertools
import random

import pytest

from bulkinfer.domain.lineset import LineSet


@pytest.mark.parametrize(
    ("ranges", "merged"),
    [
        ([], []),
        ([(1, 1)], [(1, 1)]),
        ([(1, 3), (4, 6)], [(1, 6)]),  # adjacent
        ([(4, 6), (1, 3)], [(1, 6)]),  # adjacent, unsorted
        ([(1, 5), (3, 8)], [(1, 8)]),  # overlapping
        ([(1, 10), (2, 3)], [(1, 10)]),  # contained
        ([(2, 3), (1, 10)], [(1, 10)]),
        ([(1, 3), (5, 6)], [(1, 3), (5, 6)]),  # gap of one line
        ([(5, 5), (5, 5)], [(5, 5)]),  # duplicate
        ([(9, 9), (1, 1), (5, 5), (2, 2), (3, 4)], [(1, 5), (9, 9)]),
        ([(1, 2), (10, 12), (3, 9)], [(1, 12)]),  # a middle range bridges two others
    ],
)
def test_ranges_are_merged(ranges: list[tuple[int, int]], merged: list[tuple[int, int]]) -> None:
    assert LineSet(ranges).ranges() == merged


def test_of_lines() -> None:
    lines = LineSet.of([7, 1, 2, 3, 3, 10, 9, 8])
    assert lines.ranges() == [(1, 3), (7, 10)]
    assert LineSet.of([]) == LineSet()
    assert LineSet.of(iter(range(1, 1001))).ranges() == [(1, 1000)]


@pytest.mark.parametrize(
    ("lines", "text"),
    [
        (LineSet(), ""),
        (LineSet([(4, 4)]), "4"),
        (LineSet([(1, 5)]), "1-5"),
        (LineSet([(1, 5), (9, 9), (12, 40)]), "1-5,9,12-40"),
        (LineSet.of([0, 1]), "0-1"),
    ],
)
def test_str_and_parse_round_trip(lines: LineSet, text: str) -> None:
    assert str(lines) == text
    assert LineSet.parse(text) == lines
    assert LineSet.parse(str(lines)) == lines


def test_parse_tolerates_empty_parts_and_unmerged_input() -> None:
    assert LineSet.parse(",1-3,,4,") == LineSet([(1, 4)])
    assert LineSet.parse("9,1-2") == LineSet([(1, 2), (9, 9)])


@pytest.mark.parametrize("text", ["x", "1-y", "1-2-3"])
def test_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        LineSet.parse(text)


def test_contains() -> None:
    lines = LineSet([(3, 5), (10, 10), (20, 30)])
    inside = {3, 4, 5, 10, *range(20, 31)}
    for n in range(35):
        assert (n in lines) is (n in inside), n
    assert "3" not in lines
    assert None not in lines
    assert 3.0 not in lines
    assert 1 not in LineSet()


def test_len() -> None:
    assert len(LineSet()) == 0
    assert len(LineSet([(1, 1)])) == 1
    assert len(LineSet([(1, 5), (3, 8), (20, 29)])) == 18
    assert not LineSet()
    assert LineSet([(1, 1)])


def test_iteration_is_ascending() -> None:
    lines = LineSet([(20, 22), (1, 3), (7, 7)])
    assert list(lines) == [1, 2, 3, 7, 20, 21, 22]


def test_union() -> None:
    a = LineSet([(1, 3), (10, 12)])
    b = LineSet([(4, 5), (11, 20), (30, 30)])
    assert a.union(b).ranges() == [(1, 5), (10, 20), (30, 30)]
    assert a.union(b) == b.union(a)
    assert a.union(LineSet()) == a
    assert LineSet().union(a) == a
    # operands are not changed
    assert a.ranges() == [(1, 3), (10, 12)]
    assert b.ranges() == [(4, 5), (11, 20), (30, 30)]


def test_equality_and_hash() -> None:
    a = LineSet([(1, 3), (4, 4)])
    b = LineSet.of([1, 2, 3, 4])
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != LineSet.of([1, 2, 3])
    assert a != "1-4"


def test_a_million_lines_cost_one_range() -> None:
    lines = LineSet([(1, 500_000)]).union(LineSet([(500_001, 1_000_000)]))
    assert lines.ranges() == [(1, 1_000_000)]
    assert len(lines) == 1_000_000
    assert 765_432 in lines
    assert str(lines) == "1-1000000"


def _check_against_set(ranges: list[tuple[int, int]], probe: set[int]) -> None:
    lines = LineSet(ranges)
    expected = sorted({n for s, e in ranges for n in range(s, e + 1)})
    assert list(lines) == expected
    assert len(lines) == len(expected)
    for n in probe:
        assert (n in lines) is (n in expected)
    spans = lines.ranges()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start > end + 1  # disjoint and not adjacent: fully merged
    assert all(s <= e for s, e in spans)
    assert LineSet.parse(str(lines)) == lines
    assert LineSet.of(expected) == lines


def test_matches_a_plain_set_on_random_inputs() -> None:
    rng = random.Random(7)
    for _ in range(300):
        ranges = []
        for _ in range(rng.randint(0, 8)):
            start = rng.randint(0, 60)
            ranges.append((start, start + rng.randint(0, 6)))
        _check_against_set(ranges, set(range(-1, 70)))
        half = len(ranges) // 2
        union = LineSet(ranges[:half]).union(LineSet(ranges[half:]))
        assert union == LineSet(ranges)


def test_hypothesis_properties() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    span = st.tuples(st.integers(0, 200), st.integers(0, 20)).map(lambda p: (p[0], p[0] + p[1]))

    @hypothesis.settings(max_examples=200, deadline=None)  # type: ignore[untyped-decorator]
    @hypothesis.given(st.lists(span, max_size=12), st.lists(span, max_size=12))  # type: ignore[untyped-decorator]
    def check(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
        _check_against_set(a, set(range(-1, 230)))
        assert LineSet(a).union(LineSet(b)) == LineSet(a + b)

    check()
