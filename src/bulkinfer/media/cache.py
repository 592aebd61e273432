"""The media cache: each distinct image is fetched and decoded once, however many records use it.

Single flight: the first caller of a key starts the load as a task of its own, and every caller of that
key until it ends awaits the same task, so 100 records naming one URL at once make one fetch. A caller
that is cancelled leaves the load running for the others. Results are kept in an LRU bounded by total
bytes; failures (``MediaError``) are kept too, for ``failure_ttl_s``, so 100 records naming one broken URL
do not make 100 fetches, yet a server that was briefly down is tried again later in a long job.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bulkinfer.media.errors import MediaError

V = TypeVar("V")

FAILURE_BYTES = 256
"""What a kept failure counts against the byte bound: about its message and entry."""


@dataclass(frozen=True, slots=True)
class _Entry(Generic[V]):
    outcome: V | MediaError
    size: int
    expires: float


class MediaCache(Generic[V]):
    def __init__(
        self,
        *,
        max_bytes: int,
        failure_ttl_s: float,
        size: Callable[[V], int],
        on_hit: Callable[[], None] = lambda: None,
    ) -> None:
        self.max_bytes = max_bytes
        self._on_hit = on_hit
        self.failure_ttl_s = failure_ttl_s
        self.hits = 0
        """Answers that needed no load of their own: kept entries and joins of a load in flight."""
        self.loads = 0
        self._size = size
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        self._loading: dict[Hashable, asyncio.Task[V]] = {}
        self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    async def get(self, key: Hashable, load: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """The value for ``key``, loading it with ``load`` unless it is kept or already loading."""
        entry = self._fresh(key)
        if entry is not None:
            self.hits += 1
            self._on_hit()
            if isinstance(entry.outcome, MediaError):
                # A fresh traceback each time: re-raising one instance would grow its traceback forever.
                raise entry.outcome.with_traceback(None)
            return entry.outcome
        task = self._loading.get(key)
        if task is None:
            self.loads += 1
            task = asyncio.create_task(load())
            self._loading[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        else:
            self.hits += 1
            self._on_hit()
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        """Cancel the loads in flight and forget everything."""
        tasks = list(self._loading.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
        self._bytes = 0

    def _fresh(self, key: Hashable) -> _Entry[V] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def _settle(self, key: Hashable, task: asyncio.Task[V]) -> None:
        self._loading.pop(key, None)
        if task.cancelled():
            return
        error = task.exception()  # also marks it retrieved when no caller is left to await it
        if error is None:
            value = task.result()
            self._keep(key, _Entry(value, self._size(value), float("inf")))
        elif isinstance(error, MediaError):
            self._keep(key, _Entry(error, FAILURE_BYTES, time.monotonic() + self.failure_ttl_s))
        # Anything else is a bug, not a property of the image: it reaches the callers and is not kept.

    def _keep(self, key: Hashable, entry: _Entry[V]) -> None:
        if entry.size > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = entry
        self._bytes += entry.size
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size
