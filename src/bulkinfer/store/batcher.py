"""Many callers, one database round trip: calls from request threads and coroutines gathered and served
together by one thread.

A burst of a thousand creates or reads would otherwise cost a thousand transactions (and, for creates,
a thousand disk flushes) and a thread-pool hop each. Callers get a future: a thread waits on it, a
coroutine awaits it without blocking the event loop. The serving thread ends after a while with nothing
to do; the next call starts another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K")
R = TypeVar("R")

IDLE_S = 5.0


class Batcher(Generic[K, R]):
    def __init__(
        self, name: str, serve: Callable[[Sequence[K]], Sequence[R | BaseException]], max_group: int
    ) -> None:
        """``serve`` answers a group of items with one result (or exception) per item, in order."""
        self._name = name
        self._serve = serve
        self._max_group = max_group
        self._waiting: list[tuple[K, Future[R]]] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, item: K) -> Future[R]:
        future: Future[R] = Future()
        with self._changed:
            self._waiting.append((item, future))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._changed.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._waiting:
                    self._changed.wait(timeout=IDLE_S)
                if not self._waiting:  # (checked again: a call may have come as the wait timed out)
                    self._thread = None
                    return
                group, self._waiting = self._waiting[: self._max_group], self._waiting[self._max_group :]
            # a caller that gave up (its coroutine was cancelled) is left out, not answered
            live = [(item, future) for item, future in group if future.set_running_or_notify_cancel()]
            if live:
                self._answer(live)

    def _answer(self, group: list[tuple[K, Future[R]]]) -> None:
        try:
            results = self._serve([item for item, _ in group])
        except Exception as exc:  # the whole group failed: each caller gets the error
            results = [exc] * len(group)
        except BaseException:
            for _, future in group:
                future.set_exception(RuntimeError(f"{self._name} stopped"))
            raise
        for (_, future), result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
