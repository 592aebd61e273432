"""The budget for request bodies in memory: in all, per access key id, and free for small bodies."""

from __future__ import annotations

import pytest

from bulkinfer.api.auth import FREE_BODY_BYTES, AuthFailed, BodyBudget, _Held

MiB = 2**20


def held(budget: BodyBudget, key: str, size: int) -> _Held:
    request = _Held(budget)
    request.key = key
    request.take(size)
    return request


def test_one_key_holds_at_most_its_share() -> None:
    budget = BodyBudget(total=64 * MiB, per_key=32 * MiB)
    held(budget, "AKIDA", 30 * MiB)
    with pytest.raises(AuthFailed) as refused:
        held(budget, "AKIDA", 4 * MiB)
    assert refused.value.status == 503
    held(budget, "AKIDB", 30 * MiB)  # another key still has its own


def test_all_keys_together_hold_at_most_the_total() -> None:
    budget = BodyBudget(total=40 * MiB, per_key=32 * MiB)
    held(budget, "AKIDA", 30 * MiB)
    with pytest.raises(AuthFailed):
        held(budget, "AKIDB", 20 * MiB)


def test_small_bodies_never_wait_on_the_budget() -> None:
    budget = BodyBudget(total=64 * MiB, per_key=32 * MiB)
    held(budget, "AKIDA", 32 * MiB + FREE_BODY_BYTES)
    held(budget, "AKIDB", 32 * MiB + FREE_BODY_BYTES)  # the budget is spent
    for _ in range(100):
        held(budget, "AKIDA", FREE_BODY_BYTES)  # a create, a get: still answered


def test_what_a_request_held_is_given_back_when_it_ends() -> None:
    budget = BodyBudget(total=64 * MiB, per_key=32 * MiB)
    first = held(budget, "AKIDA", 32 * MiB)
    first.release()
    first.release()  # (twice is harmless)
    held(budget, "AKIDA", 32 * MiB)
    held(budget, "AKIDB", 32 * MiB)
