"""Test doubles that ship with the package: a simulated OpenAI- and Anthropic-compatible provider.

``Simulator`` runs on the caller's event loop, ``SimulatorThread`` in a background thread for sync
tests, and ``python -m bulkinfer.testing`` in a process of its own. Needs the ``sim`` extra (aiohttp).
"""

from __future__ import annotations

from bulkinfer.testing._config import SimulatorConfig
from bulkinfer.testing._stats import IdStats, Outcome, SimulatorStats
from bulkinfer.testing._thread import SimulatorThread
from bulkinfer.testing.simulator import ID_HEADERS, Simulator, request_id

__all__ = [
    "ID_HEADERS",
    "IdStats",
    "Outcome",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "SimulatorThread",
    "request_id",
]
