"""The simulator on its own event loop in a background thread, for sync tests and subprocess jobs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from bulkinfer.testing._config import SimulatorConfig
from bulkinfer.testing._stats import SimulatorStats
from bulkinfer.testing.simulator import Simulator

T = TypeVar("T")
CONTROL_TIMEOUT_S = 30.0


class SimulatorThread:
    """``with SimulatorThread(config) as sim:``; every method is safe to call from any thread."""

    def __init__(
        self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = Simulator(config, host=host, port=port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="provider-simulator", daemon=True)

    @property
    def url(self) -> str:
        return self.simulator.url

    @property
    def openai_base_url(self) -> str:
        return self.simulator.openai_base_url

    @property
    def anthropic_base_url(self) -> str:
        return self.simulator.anthropic_base_url

    @property
    def port(self) -> int:
        return self.simulator.port

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        try:
            self._call(self.simulator.start())
        except BaseException:
            self._close_loop()
            raise

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self.simulator.stop())
        finally:
            self._close_loop()

    def stats(self) -> SimulatorStats:
        return self._call(self._snapshot())

    def idle_stats(self, timeout_s: float = 30.0) -> SimulatorStats:
        """The stats once no call is in flight (see ``Simulator.idle_stats``)."""
        return self._call(self.simulator.idle_stats(timeout_s), timeout_s + CONTROL_TIMEOUT_S)

    def reset_stats(self) -> None:
        self._call(self._reset_stats())

    def go_down(self) -> None:
        self._call(self.simulator.go_down())

    def go_up(self) -> None:
        self._call(self.simulator.go_up())

    def down_for(self, seconds: float) -> None:
        """Go down now and come back up after ``seconds``; returns once down."""
        self._call(self.simulator.down_for(seconds))

    async def _snapshot(self) -> SimulatorStats:
        # Taken on the simulator's loop, so the counters are never read mid-update.
        return self.simulator.stats()

    async def _reset_stats(self) -> None:
        self.simulator.reset_stats()

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float = CONTROL_TIMEOUT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT_S)
        self._loop.close()
