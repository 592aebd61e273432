"""Shared fixtures: record factories and catalogs. Tests only ever touch loopback and tmp paths."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkinfer.engine.job import JobReport, LocalJob, RunRequest
from bulkinfer.engine.progress import NoProgress


@pytest.fixture(autouse=True, scope="session")
def _older_sdks_when_asked() -> None:
    """Under ``BULKINFER_OLDER_SDKS=1`` (tests/integration/test_older_sdks.py) the SDKs imported must be
    the older lines, so that rerun can never test the newer ones without saying so."""
    if os.environ.get("BULKINFER_OLDER_SDKS") != "1":
        return
    import anthropic
    import openai

    assert openai.__version__.startswith("1."), f"openai {openai.__version__} imported, not the 1.x line"
    assert anthropic.__version__.startswith("0."), f"anthropic {anthropic.__version__} imported, not 0.x"


@pytest.fixture(autouse=True, scope="session")
def _throughput_history(tmp_path_factory: pytest.TempPathFactory) -> Iterable[None]:
    """Jobs the tests run keep their models' throughput (``engine.history``) in a file of the session,
    never in the user's cache."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BULKINFER_THROUGHPUT_FILE", str(tmp_path_factory.mktemp("history") / "throughput.json"))
        yield


# A model that takes 0.1 s per batch of 5, so a test can watch a job run, stop it or kill it mid-way.
SLOW_ECHO_CATALOG = """
[models.slow-echo]
provider = "echo"
batch_size = 5
concurrency = 1
[models.slow-echo.options]
delay_s = 0.1
"""


def anthropic_record(record_id: str | None, text: str, max_tokens: int = 64) -> dict[str, Any]:
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }
    record: dict[str, Any] = {"modelInput": body}
    if record_id is not None:
        record["recordId"] = record_id
    return record


def write_jsonl(path: Path, records: Iterable[dict[str, Any] | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for record in records:
            f.write(record if isinstance(record, bytes) else orjson.dumps(record))
            f.write(b"\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def run_job(request: RunRequest) -> JobReport:
    """Run a job in this process to its end."""
    job = LocalJob.open(request)
    try:
        return asyncio.run(job.execute(NoProgress()))
    finally:
        job.close()


class CountingProgress:
    """Records finished so far, as the engine reports them."""

    def __init__(self) -> None:
        self.records = 0

    def advance(self, records: int, errors: int, input_tokens: int, output_tokens: int) -> None:
        self.records += records


def run_until_stopped(request: RunRequest, after_s: float, at_least: int = 1) -> JobReport:
    """Start a job and ask it to stop gracefully, as Ctrl-C does, after a while and once at least
    ``at_least`` records have finished (however slowly a busy machine gets there)."""

    async def go() -> JobReport:
        job = LocalJob.open(request)
        try:
            progress = CountingProgress()
            task = asyncio.create_task(job.execute(progress))
            await asyncio.sleep(after_s)
            while progress.records < at_least and not task.done():
                await asyncio.sleep(0.01)
            job.request_stop()
            return await task
        finally:
            job.close()

    return asyncio.run(go())


@pytest.fixture
def echo_catalog(tmp_path: Path) -> Callable[..., Path]:
    """Write a catalog with an ``echo-test`` model whose echo options are the keyword arguments."""

    def make(name: str = "echo-test", **options: Any) -> Path:
        lines = [
            f'[models."{name}"]',
            'provider = "echo"',
            'dialects = ["anthropic", "converse", "openai-chat", "titan-embed", "openai-embeddings"]',
            f"batch_size = {options.pop('batch_size', 16)}",
            f"concurrency = {options.pop('concurrency', 2)}",
            "token_budget = 100000",
            f'[models."{name}".options]',
        ]
        lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in options.items()]
        path = tmp_path / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    return make
