"""Micro-batch planning: sort by length, cap by size and by a padded-token budget. Pure."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Item:
    index: int
    tokens: int
    """Prompt tokens plus the most it may generate: what the item costs in a padded batch."""
    group: Hashable = None
    """Items of different groups (e.g. sampling settings) never share a batch."""


def plan_batches(items: Sequence[Item], max_size: int, token_budget: int) -> list[list[int]]:
    """Group item indexes into micro-batches.

    Items are sorted by length so a batch pads little; a batch closes when it has ``max_size`` items or
    when ``len(batch) * longest`` would pass ``token_budget`` (padding makes every row as long as the
    longest). An item over the budget on its own still gets a batch of one.
    """
    ordered = sorted(items, key=lambda item: (repr(item.group), item.tokens))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    group: Hashable = object()
    for item in ordered:
        grown = max(longest, item.tokens)
        full = len(current) >= max_size or (len(current) + 1) * grown > token_budget
        if current and (full or item.group != group):
            batches.append(current)
            current, grown = [], item.tokens
        current.append(item.index)
        longest, group = grown, item.group
    if current:
        batches.append(current)
    return batches
