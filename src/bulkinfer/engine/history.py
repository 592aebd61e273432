"""Each model's measured throughput, kept from the last job that completed on it, so an estimate can
say how long a job will take: one small JSON file of one entry a model, written by ``bulkinfer run``."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bulkinfer.errors import BulkinferError
from bulkinfer.providers.local import cache_root
from bulkinfer.storage.files import write_durably

MAX_MODELS = 200
"""Models kept; the ones measured longest ago go first."""
MIN_RECORDS = 2
"""A job of fewer records measures its start-up, not its throughput."""


@dataclass(frozen=True, slots=True)
class Throughput:
    model: str
    job_id: str
    records: int
    records_per_second: float
    tokens_per_second: float
    measured_at: float


def history_file() -> Path:
    """$BULKINFER_THROUGHPUT_FILE, else ``throughput.json`` in bulkinfer's cache folder."""
    env = os.environ.get("BULKINFER_THROUGHPUT_FILE")
    return Path(env) if env else cache_root() / "throughput.json"


def measured(model: str, path: Path | None = None) -> Throughput | None:
    """The model's throughput in the last job that completed on it, if one did."""
    entry = _read(path or history_file()).get(model)
    if not isinstance(entry, dict):
        return None
    try:
        return Throughput(**entry)
    except TypeError:  # written by another version
        return None


def remember(manifest: dict[str, Any], path: Path | None = None) -> None:
    """Keep a completed job's throughput (from its manifest) as its model's; a job too small to tell,
    or one that failed, is left out. Never fails the job: a history that cannot be written is skipped."""
    records = int(manifest.get("processedRecordCount") or 0)
    if manifest.get("status") != "Completed" or records < MIN_RECORDS or not manifest.get("recordsPerSecond"):
        return
    path = path or history_file()
    entry = Throughput(
        model=str(manifest["modelId"]),
        job_id=str(manifest["jobId"]),
        records=records,
        records_per_second=float(manifest["recordsPerSecond"]),
        tokens_per_second=float(manifest.get("tokensPerSecond") or 0.0),
        measured_at=time.time(),
    )
    kept = _read(path)
    kept.pop(entry.model, None)
    kept[entry.model] = asdict(entry)
    newest = dict(list(kept.items())[-MAX_MODELS:])
    with contextlib.suppress(OSError, BulkinferError):
        write_durably(path, [orjson.dumps(newest, option=orjson.OPT_INDENT_2)])


def _read(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
