"""Unit tests for ``engine.batching.plan_batches``."""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable, Sequence

import pytest

from bulkinfer.engine.batching import Item, plan_batches


def check_plan(items: Sequence[Item], max_size: int, budget: int) -> list[list[int]]:
    """Plan, then assert every invariant a plan must hold; return the plan."""
    batches = plan_batches(items, max_size, budget)
    by_index = {item.index: item for item in items}

    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == sorted(by_index), "every index exactly once"
    assert len(flat) == len(set(flat))

    for batch in batches:
        assert 1 <= len(batch) <= max(max_size, 1)
        groups = {by_index[i].group for i in batch}
        assert len(groups) == 1, f"groups mixed in {batch}"
        tokens = [by_index[i].tokens for i in batch]
        assert tokens == sorted(tokens), "items sorted by length within a batch"
        if len(batch) > 1:
            assert len(batch) * max(tokens) <= budget, "padded cost over budget"

    # Greedy: a batch closed only because the next item of its group would not fit.
    for batch, following in itertools.pairwise(batches):
        nxt = by_index[following[0]]
        if by_index[batch[0]].group != nxt.group:
            continue
        longest = max(by_index[i].tokens for i in batch)
        grown = len(batch) + 1
        assert grown > max_size or grown * max(longest, nxt.tokens) > budget, "closed too early"
    return batches


def test_empty() -> None:
    assert plan_batches([], 8, 1000) == []


def test_single_item() -> None:
    assert plan_batches([Item(0, 10)], 8, 1000) == [[0]]


def test_sorted_by_length() -> None:
    items = [Item(0, 30), Item(1, 10), Item(2, 20)]
    assert check_plan(items, 8, 1000) == [[1, 2, 0]]


def test_max_size_caps_batches() -> None:
    items = [Item(i, 1) for i in range(10)]
    assert check_plan(items, 4, 10**6) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_budget_caps_by_padded_cost() -> None:
    # Sorted: 10, 10, 40, 50. Budget 100: [10, 10] costs 20; adding 40 would cost 3 * 40 = 120.
    items = [Item(0, 50), Item(1, 10), Item(2, 40), Item(3, 10)]
    assert check_plan(items, 8, 100) == [[1, 3], [2, 0]]


def test_cost_exactly_at_budget_fits() -> None:
    items = [Item(i, 25) for i in range(4)]
    assert check_plan(items, 8, 100) == [[0, 1, 2, 3]]
    assert check_plan(items, 8, 99) == [[0, 1, 2], [3]]


def test_item_over_budget_gets_a_batch_of_its_own() -> None:
    items = [Item(0, 5), Item(1, 500), Item(2, 5), Item(3, 900)]
    assert check_plan(items, 8, 100) == [[0, 2], [1], [3]]


def test_every_item_over_budget() -> None:
    items = [Item(i, 1000 + i) for i in range(5)]
    assert check_plan(items, 8, 10) == [[0], [1], [2], [3], [4]]


def test_batch_size_one() -> None:
    items = [Item(i, 3) for i in range(3)]
    assert check_plan(items, 1, 1000) == [[0], [1], [2]]


def test_groups_are_never_mixed() -> None:
    items = [
        Item(0, 5, "greedy"),
        Item(1, 5, ("sample", 0.7)),
        Item(2, 6, "greedy"),
        Item(3, 4, ("sample", 0.7)),
    ]
    batches = check_plan(items, 8, 1000)
    assert sorted(sorted(b) for b in batches) == [[0, 2], [1, 3]]


def test_groups_with_an_unsortable_mix_of_types() -> None:
    groups: list[Hashable] = [None, 1, "a", (0.5, None), frozenset({"x"})]
    items = [Item(i, i % 7 + 1, groups[i % len(groups)]) for i in range(40)]
    batches = check_plan(items, 16, 10**6)
    assert len(batches) == len(groups)


def test_indexes_need_not_be_positions() -> None:
    items = [Item(100, 3), Item(7, 1), Item(42, 2)]
    assert check_plan(items, 8, 1000) == [[7, 42, 100]]


def test_does_not_change_its_input() -> None:
    items = [Item(2, 9), Item(0, 1), Item(1, 5)]
    before = list(items)
    check_plan(items, 2, 1000)
    assert items == before


@pytest.mark.parametrize("seed", range(12))
def test_random_plans_hold_every_invariant(seed: int) -> None:
    rng = random.Random(seed)
    groups: list[Hashable] = [None, "a", ("t", 0.5), 3]
    for _ in range(60):
        n = rng.randint(0, 40)
        items = [
            Item(i, rng.choice([1, rng.randint(1, 50), rng.randint(1, 400)]), rng.choice(groups))
            for i in range(n)
        ]
        rng.shuffle(items)
        check_plan(items, rng.randint(1, 10), rng.randint(1, 900))


def test_large_plan_is_fast_and_valid() -> None:
    rng = random.Random(99)
    items = [Item(i, rng.randint(10, 2000), i % 3) for i in range(20_000)]
    batches = check_plan(items, 64, 16_384)
    assert len(batches) < 20_000
