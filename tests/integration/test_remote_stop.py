"""A stop sends no call that has not started (issue 11, item 2).

The job and the simulator share this test's event loop, so at the moment of the stop nothing else
runs: the calls the simulator has seen or is handling are known exactly, and every call it sees after
that must be one the client had already sent (at most ``max_concurrency``). Before stops released
waiting records, a job at 600 requests a minute sent hundreds more.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bulkinfer.domain.job import JobStatus
from bulkinfer.engine.job import JobReport, LocalJob, RunRequest
from bulkinfer.engine.progress import NoProgress
from bulkinfer.testing import Simulator, SimulatorConfig
from tests.conftest import anthropic_record, read_jsonl, write_jsonl

pytestmark = pytest.mark.slow

MAX_CONCURRENCY = 4
RECORDS = 100


def catalog(path: Path, sim: Simulator, **limits: Any) -> Path:
    lines = [
        "[models.remote]",
        'provider = "anthropic"',
        f'base_url = "{sim.anthropic_base_url}"',
        'remote_model = "sim-model"',
        f"max_concurrency = {MAX_CONCURRENCY}",
        "max_attempts = 50",
    ]
    lines += [f"{key} = {value}" for key, value in limits.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class StopWhenSome:
    """Asks the job to stop once some records have finished, noting what the provider had seen."""

    def __init__(self, sim: Simulator, after: int) -> None:
        self.job: LocalJob | None = None
        self.sim = sim
        self.after = after
        self.records = 0
        self.calls_at_stop: int | None = None

    def advance(self, records: int, errors: int, input_tokens: int, output_tokens: int) -> None:
        self.records += records
        if self.calls_at_stop is None and self.records >= self.after:
            stats = self.sim.stats()
            self.calls_at_stop = stats.calls + stats.in_flight  # answered, and being answered
            assert self.job is not None
            self.job.request_stop()


async def run_and_stop(request: RunRequest, sim: Simulator) -> tuple[JobReport, StopWhenSome]:
    progress = StopWhenSome(sim, after=10)
    job = progress.job = LocalJob.open(request)
    try:
        return await job.execute(progress), progress
    finally:
        job.close()


async def resume(request: RunRequest) -> JobReport:
    job = LocalJob.open(request)
    try:
        return await job.execute(NoProgress())
    finally:
        job.close()


@pytest.mark.parametrize(
    ("sim_config", "limits"),
    [
        # records wait for the client's rate limiter's tokens
        (SimulatorConfig(latency_median_s=0.05, seed=1), {"requests_per_minute": 600}),
        # records wait for a concurrency slot behind slow calls
        (SimulatorConfig(latency_median_s=0.3, seed=2), {}),
        # records wait in a retry's backoff: the provider answers 429 beyond 300 a minute
        (SimulatorConfig(latency_median_s=0.02, requests_per_minute=300, seed=3), {}),
    ],
    ids=["rate-limiter", "concurrency", "backoff"],
)
def test_a_stop_sends_nothing_that_had_not_started_and_resume_finishes_each_once(
    tmp_path: Path, sim_config: SimulatorConfig, limits: dict[str, Any]
) -> None:
    source = write_jsonl(
        tmp_path / "in" / "a.jsonl",
        [anthropic_record(f"r{i}", f"record {i}", max_tokens=8) for i in range(RECORDS)],
    )

    async def scenario() -> None:
        async with Simulator(sim_config) as sim:
            models = catalog(tmp_path / "m.toml", sim, **limits)
            request = RunRequest(source.parent, "remote", tmp_path / "out", "s", models)
            report, stop = await run_and_stop(request, sim)

            assert report.job.status == JobStatus.STOPPED
            assert stop.calls_at_stop is not None
            after_stop = (await sim.idle_stats()).calls - stop.calls_at_stop
            assert after_stop <= MAX_CONCURRENCY, (after_stop, stop.calls_at_stop)
            assert report.counts.processed < RECORDS  # the records still waiting were left to run

            finished = await resume(request)
            assert finished.job.status == JobStatus.COMPLETED
            assert (finished.counts.success, finished.counts.errors) == (RECORDS, 0)
            lines = read_jsonl(finished.output_dir / "a.jsonl.out")
            assert [line["recordId"] for line in lines] == [f"r{i}" for i in range(RECORDS)]
            stats = await sim.idle_stats()
            # each record answered once: what was in flight at the stop was committed, not sent again
            assert [stats.for_id(f"s:r{i}").successes for i in range(RECORDS)] == [1] * RECORDS

    asyncio.run(scenario())
