"""A Ray head on 127.0.0.1 for tests and benchmarks, stopped at the end: only this one, never every Ray
of the machine (as ``ray stop`` would).

Ray on a small machine has traps (see the project's notes on infrastructure): it binds to the machine's
own address unless told it is not a cluster of several hosts, and every process of a cluster must agree
on its authentication. `RAY_ENV` says both; every process that joins (a ``bulkinfer run`` driver too)
needs it in its environment.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
STARTED = b"Ray runtime started"


@dataclass(frozen=True, slots=True)
class RayHead:
    address: str
    pid: int
    """Of ``ray start --block``: every process of the cluster descends from it."""


@contextlib.contextmanager
def ray_head(cpus: int = 2, timeout_s: float = 120, port: int | None = None) -> Iterator[RayHead]:
    """Start a head of ``cpus`` CPUs and no GPU (on ``port``, else a free one); it drains and ends its
    own processes when left."""
    ray = str(Path(sys.executable).parent / "ray")
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
    env = {**os.environ, **RAY_ENV}
    with tempfile.TemporaryDirectory(prefix="ray") as folder:  # (short: Ray's socket paths are limited)
        log = Path(folder) / "head.log"
        start = [ray, "start", "--head", f"--port={port}", f"--num-cpus={cpus}", "--num-gpus=0", "--block"]
        start += ["--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        start += [f"--temp-dir={folder}/ray"]
        with log.open("wb") as sink, subprocess.Popen(start, stdout=sink, stderr=sink, env=env) as head:
            try:
                deadline = time.monotonic() + timeout_s
                while STARTED not in log.read_bytes():
                    if head.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
                    time.sleep(0.1)
                yield RayHead(f"127.0.0.1:{port}", head.pid)
            finally:
                head.terminate()
                try:
                    head.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    head.kill()
