"""Failpoints: named places where a test (or an operator rehearsing a bad day) makes bulkinfer fail.

``BULKINFER_FAILPOINTS="name=action,..."`` is read once at import. Actions:

- ``kill``: the process sends itself SIGKILL there, as ``kill -9`` would at exactly that moment;
- ``kill@N``: the same, at the N-th time that place is reached;
- ``raise``: a `FailpointError` is raised there (an unexpected exception in that code).

Unset (the normal case) every failpoint is one dictionary lookup. The names are listed in `POINTS`, so a
misspelt one is refused at start-up rather than silently never firing.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

POINTS = frozenset(
    {
        "submitted",  # a job was recorded as Submitted
        "validating",  # a replica took a job into Validating, before reading its input
        "staged",  # a job's input objects were copied from the S3 endpoint
        "scheduled",  # validation passed: the job is Scheduled
        "in-progress",  # a replica claimed a job for a slot, before the engine opened it
        "chunk-committed",  # the engine committed a chunk of finished records
        "carried",  # a retry job committed its base's successes, before it noted the carry-over done
        "stopping",  # a stop was recorded (the job is Stopping)
        "writing-outputs",  # the engine is about to merge chunks into the output files
        "output-written",  # outputs and manifest are written, before the chunks are cleaned up
        "publishing",  # outputs are about to be uploaded to the S3 endpoint
        "published",  # outputs were uploaded, before the job's row says it ended
    }
)


class FailpointError(RuntimeError):
    """Raised at a failpoint set to ``raise``."""


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    points: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        kind, _, nth = action.partition("@")
        if name not in POINTS or kind not in ("kill", "raise") or (nth and not nth.isdigit()):
            raise ValueError(f"BULKINFER_FAILPOINTS: {item!r} is not NAME=kill|kill@N|raise")
        points[name] = (kind, int(nth or 1))
    return points


_armed = _parse(os.environ.get("BULKINFER_FAILPOINTS", ""))
_hits: Counter[str] = Counter()
_lock = threading.Lock()


def failpoint(name: str) -> None:
    """Fail here if the failpoint ``name`` is armed (see the module's doc)."""
    if not _armed:
        return
    armed = _armed.get(name)
    if armed is None:
        return
    kind, nth = armed
    with _lock:
        _hits[name] += 1
        if _hits[name] != nth:
            return
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FailpointError(f"failpoint {name}")
