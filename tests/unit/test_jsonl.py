"""Unit tests for ``formats.jsonl``: splitting byte blocks into numbered lines."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pytest

from bulkinfer.formats.jsonl import Line, OversizeLine, count_lines, split_lines


def reference(data: bytes, limit: int) -> list[tuple[int, Line]]:
    """The obvious whole-buffer implementation ``split_lines`` must agree with."""
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    out: list[tuple[int, Line]] = []
    for number, piece in enumerate(pieces, start=1):
        if len(piece) > limit:
            out.append((number, OversizeLine(len(piece))))
        elif piece.strip():
            out.append((number, piece.removesuffix(b"\r")))
    return out


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """Split at random points, empty blocks included."""
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def split(data: bytes, limit: int = 1000, block: int | None = None) -> list[tuple[int, Line]]:
    return list(split_lines(chunks(data, block) if block else [data], limit))


CORPUS = (
    b'{"recordId":"A1","modelInput":{"x":1}}\n'
    b"\n"
    b"   \t \n"
    b'{"recordId":"A2","modelInput":{"text":"caf\xc3\xa9 \xe2\x9c\x93"}}\r\n'
    b"\r\n" + b"y" * 90 + b"\n"
    b'{"recordId":"A3"}\n'
    b"\n\n"
    b'{"last":true}'
)


@pytest.mark.parametrize("limit", [10, 40, 64, 89, 90, 91, 1000])
def test_corpus_matches_reference_for_every_block_size(limit: int) -> None:
    expected = reference(CORPUS, limit)
    for size in range(1, len(CORPUS) + 2):
        assert list(split_lines(chunks(CORPUS, size), limit)) == expected, f"block size {size}"


def test_corpus_reference_sanity() -> None:
    got = split(CORPUS, 1000)
    assert [n for n, _ in got] == [1, 4, 6, 7, 10]
    assert got[1] == (4, b'{"recordId":"A2","modelInput":{"text":"caf\xc3\xa9 \xe2\x9c\x93"}}')
    assert got[-1] == (10, b'{"last":true}')


def test_random_inputs_and_random_block_boundaries_match_reference() -> None:
    rng = random.Random(20240601)
    alphabet = b'ab{}" \r\t'
    for _ in range(400):
        lines = []
        for _ in range(rng.randint(0, 8)):
            roll = rng.random()
            if roll < 0.15:
                lines.append(b"")
            elif roll < 0.25:
                lines.append(b" \t ")
            elif roll < 0.35:
                lines.append(b"z" * rng.randint(10, 40))
            else:
                lines.append(bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        limit = rng.randint(1, 16)
        expected = reference(data, limit)
        for _ in range(4):
            assert list(split_lines(random_chunks(data, rng), limit)) == expected, (data, limit)


def test_one_byte_blocks() -> None:
    data = b'{"a":1}\n{"b":2}\n'
    got = list(split_lines((bytes([c]) for c in data), 100))
    assert got == [(1, b'{"a":1}'), (2, b'{"b":2}')]


def test_crlf_is_trimmed_even_when_cr_and_lf_are_in_different_blocks() -> None:
    assert list(split_lines([b"abc\r", b"\ndef\r", b"\n"], 100)) == [(1, b"abc"), (2, b"def")]


def test_only_one_trailing_cr_is_removed_and_inner_cr_is_kept() -> None:
    assert split(b"a\rb\r\r\n") == [(1, b"a\rb\r")]


def test_blank_and_whitespace_lines_are_skipped_but_counted() -> None:
    data = b"\n  \n\t\n\r\nfirst\n \r\n\nsecond\n"
    assert split(data) == [(5, b"first"), (8, b"second")]


def test_leading_and_inner_whitespace_of_content_lines_is_kept() -> None:
    assert split(b'  {"a": 1}  \n') == [(1, b'  {"a": 1}  ')]


@pytest.mark.parametrize("block", [None, 1, 2, 3, 7])
def test_missing_final_newline(block: int | None) -> None:
    assert split(b"one\ntwo", block=block) == [(1, b"one"), (2, b"two")]


@pytest.mark.parametrize("block", [None, 1, 4])
def test_trailing_whitespace_without_newline_is_not_a_line(block: int | None) -> None:
    assert split(b"one\n   ", block=block) == [(1, b"one")]


@pytest.mark.parametrize(
    "blocks",
    [[], [b""], [b"", b"", b""], [b"\n"], [b"\n\n\n"], [b"  \n", b"\t"]],
)
def test_nothing_to_yield(blocks: list[bytes]) -> None:
    assert list(split_lines(blocks, 10)) == []


def test_empty_blocks_between_data_are_harmless() -> None:
    assert list(split_lines([b"ab", b"", b"c\n", b"", b"d"], 10)) == [(1, b"abc"), (2, b"d")]


def test_line_exactly_at_limit_is_kept_one_over_is_oversize() -> None:
    data = b"x" * 8 + b"\n" + b"y" * 9 + b"\n"
    for block in (None, 1, 3, 8, 9, 10):
        assert split(data, limit=8, block=block) == [(1, b"x" * 8), (2, OversizeLine(9))]


def test_limit_counts_the_carriage_return_of_a_crlf_line() -> None:
    # The size limit applies to the raw bytes between newlines, CR included.
    assert split(b"abcd\r\n", limit=4) == [(1, OversizeLine(5))]
    assert split(b"abcd\r\n", limit=5) == [(1, b"abcd")]


@pytest.mark.parametrize("block", [None, 1, 5, 16, 33, 100])
def test_oversize_line_in_the_middle(block: int | None) -> None:
    data = b"first\n" + b"X" * 50 + b"\nlast\n"
    assert split(data, limit=20, block=block) == [(1, b"first"), (2, OversizeLine(50)), (3, b"last")]


@pytest.mark.parametrize("block", [None, 1, 5, 16, 33])
def test_oversize_line_at_the_end_without_newline(block: int | None) -> None:
    data = b"first\n\n" + b"X" * 50
    assert split(data, limit=20, block=block) == [(1, b"first"), (3, OversizeLine(50))]


@pytest.mark.parametrize("block", [None, 1, 5, 16])
def test_oversize_line_at_the_start(block: int | None) -> None:
    data = b"X" * 30 + b"\r\nnext\n"
    assert split(data, limit=20, block=block) == [(1, OversizeLine(31)), (2, b"next")]


def test_oversize_line_spanning_many_blocks_keeps_neighbours_in_the_same_blocks() -> None:
    blocks = [b"a\nXXXX", b"XXXX", b"XXXX", b"XX\nb\n"]
    assert list(split_lines(blocks, 5)) == [(1, b"a"), (2, OversizeLine(14)), (3, b"b")]


def test_several_oversize_lines_in_a_row() -> None:
    data = b"A" * 12 + b"\n" + b"B" * 13 + b"\n" + b"ok\n" + b"C" * 14
    for block in (None, 1, 4, 11):
        assert split(data, limit=10, block=block) == [
            (1, OversizeLine(12)),
            (2, OversizeLine(13)),
            (3, b"ok"),
            (4, OversizeLine(14)),
        ]


def test_whitespace_only_oversize_line_is_still_reported() -> None:
    assert split(b" " * 30 + b"\nok\n", limit=10) == [(1, OversizeLine(30)), (2, b"ok")]


def test_huge_line_is_measured_without_being_kept() -> None:
    block = b"Z" * 65536

    def blocks() -> Iterator[bytes]:
        yield b"head\n"
        for _ in range(256):  # 16 MiB, one block object reused
            yield block
        yield b"\ntail"

    assert list(split_lines(blocks(), 1024)) == [
        (1, b"head"),
        (2, OversizeLine(256 * 65536)),
        (3, b"tail"),
    ]


def test_lines_are_bytes_not_views() -> None:
    for _, line in split(b"abc\ndef\n", block=2):
        assert type(line) is bytes


def test_accepts_a_generator() -> None:
    got = list(split_lines((part for part in (b"a\n", b"b")), 10))
    assert got == [(1, b"a"), (2, b"b")]


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [
        ([], 0),
        ([b""], 0),
        ([b"", b""], 0),
        ([b"a"], 1),
        ([b"a\n"], 1),
        ([b"a\n", b""], 1),
        ([b"a\nb"], 2),
        ([b"a\nb\n"], 2),
        ([b"a", b"\n", b"b"], 2),
        ([b"\n\n\n"], 3),
        ([b"a\r\nb\r\n"], 2),
        ([b"a\n", b"b", b""], 2),
    ],
)
def test_count_lines(blocks: list[bytes], expected: int) -> None:
    assert count_lines(blocks) == expected


def test_count_lines_is_an_upper_bound_of_split_lines() -> None:
    for size in (1, 3, 8, 1000):
        assert count_lines(chunks(CORPUS, size)) >= len(split(CORPUS, 1000))
        assert count_lines(chunks(CORPUS, size)) == CORPUS.count(b"\n") + 1
