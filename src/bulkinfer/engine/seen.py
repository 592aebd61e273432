"""Where each record id of a job was first seen, to report duplicates.

Kept in memory at 16 bytes an id (a sorted array of id hashes and one of positions, plus a small buffer
of recent ids), so a check costs a fraction of a microsecond. A disk table cost 5-10 us an id once it
held a million (random B-tree inserts). After a restart the reader feeds the committed lines back in,
so the first sighting of an id is the same whichever run saw it.
"""

from __future__ import annotations

import hashlib

import numpy as np

_LINE_BITS = 40  # a position packs (file index, line number) into one int64


def id_hash(record_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "big", signed=True)


def position(file_index: int, line: int) -> int:
    return (file_index << _LINE_BITS) | line


def unpack(where: int) -> tuple[int, int]:
    return where >> _LINE_BITS, where & ((1 << _LINE_BITS) - 1)


class SeenIds:
    """First sightings of record ids: ``first(hashes, positions)`` answers and records in one step."""

    def __init__(self, buffer_size: int = 65536) -> None:
        self._keys = np.empty(0, dtype=np.int64)
        self._where = np.empty(0, dtype=np.int64)
        self._recent: dict[int, int] = {}
        self._buffer_size = buffer_size

    def __len__(self) -> int:
        return len(self._keys) + len(self._recent)

    def first(self, hashes: list[int], positions: list[int]) -> list[int]:
        """For each id, the position where it was first seen (its own when it is new)."""
        known = self._lookup(hashes)
        recent = self._recent
        result = []
        for h, where, old in zip(hashes, positions, known, strict=True):
            if old >= 0:
                result.append(old)
            else:
                result.append(recent.setdefault(h, where))
        if len(recent) >= max(self._buffer_size, len(self._keys) // 8):
            self._merge()
        return result

    def _lookup(self, hashes: list[int]) -> list[int]:
        if not len(self._keys):
            return [-1] * len(hashes)
        keys = np.array(hashes, dtype=np.int64)
        index = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = self._keys[index] == keys
        return np.where(found, self._where[index], -1).tolist()  # type: ignore[no-any-return]

    def _merge(self) -> None:
        keys = np.concatenate([self._keys, np.fromiter(self._recent.keys(), np.int64, len(self._recent))])
        where = np.concatenate([self._where, np.fromiter(self._recent.values(), np.int64, len(self._recent))])
        order = np.argsort(keys, kind="stable")
        self._keys, self._where = keys[order], where[order]
        self._recent = {}
