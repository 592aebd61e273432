"""Unit tests for ``engine.history``: each model's last measured throughput, kept small."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bulkinfer.engine import history


def manifest(model: str, job: str, records: int = 10, status: str = "Completed") -> dict[str, Any]:
    return {
        "modelId": model,
        "jobId": job,
        "status": status,
        "processedRecordCount": records,
        "recordsPerSecond": 2.5,
        "tokensPerSecond": 100.0,
    }


def test_the_last_completed_job_of_a_model_is_its_throughput(tmp_path: Path) -> None:
    path = tmp_path / "throughput.json"
    assert history.measured("m", path) is None
    history.remember(manifest("m", "first"), path)
    history.remember(manifest("m", "second"), path)
    history.remember(manifest("m", "stopped", status="Stopped"), path)
    history.remember(manifest("m", "tiny", records=1), path)
    seen = history.measured("m", path)
    assert seen is not None and seen.job_id == "second" and seen.records_per_second == 2.5
    assert history.measured("other", path) is None


def test_the_file_keeps_one_entry_a_model_and_the_newest_models(tmp_path: Path) -> None:
    path = tmp_path / "throughput.json"
    for i in range(history.MAX_MODELS + 5):
        history.remember(manifest(f"m{i}", "j"), path)
    assert history.measured("m0", path) is None
    assert history.measured(f"m{history.MAX_MODELS + 4}", path) is not None


def test_a_damaged_or_unwritable_history_is_no_error(tmp_path: Path) -> None:
    path = tmp_path / "throughput.json"
    path.write_text("{not json")
    assert history.measured("m", path) is None
    history.remember(manifest("m", "j"), path)
    assert history.measured("m", path) is not None
    blocked = tmp_path / "file" / "throughput.json"
    (tmp_path / "file").write_text("")
    history.remember(manifest("m", "j"), blocked)  # its folder is a file: skipped
