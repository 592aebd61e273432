"""Remote providers against the provider simulator over real HTTP: faults, refusals, outages, kills.

The simulator counts every call per ``Idempotency-Key`` (job id and record id), so these tests can
prove that each record's successful call happened exactly once. Counts on the two sides of the socket
are compared with ``>=`` only: a request given up before the simulator read it is counted by the
client alone (see ``bulkinfer.testing._stats``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.credentials import Credentials

from bulkinfer.cli.remote import Signed
from bulkinfer.engine.job import JobReport, LocalJob, RunRequest
from bulkinfer.engine.progress import NoProgress
from bulkinfer.providers.remote.limits import LimitRegistry
from bulkinfer.testing import Outcome, SimulatorConfig, SimulatorStats, SimulatorThread
from tests.conftest import anthropic_record, read_jsonl, run_job, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[SimulatorThread]:
    config = getattr(request, "param", None) or SimulatorConfig()
    with SimulatorThread(config) as sim:
        yield sim


def catalog(path: Path, sim: SimulatorThread, provider: str = "openai", **limits: Any) -> Path:
    base = sim.openai_base_url if provider == "openai" else sim.anthropic_base_url
    lines = [
        "[models.remote]",
        f'provider = "{provider}"',
        f'base_url = "{base}"',
        'remote_model = "sim-model"',
        'dialects = ["anthropic"]',
    ]
    lines += [f"{key} = {value}" for key, value in limits.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def records(count: int, text: str = "record") -> list[dict[str, Any]]:
    return [anthropic_record(f"r{i}", f"{text} {i}", max_tokens=16) for i in range(count)]


def successes(stats: SimulatorStats, job_id: str, count: int) -> list[int]:
    return [stats.for_id(f"{job_id}:r{i}").successes for i in range(count)]


@pytest.mark.parametrize(
    "simulator",
    [
        SimulatorConfig(
            latency_median_s=0.002,
            error_500=0.1,
            error_503=0.08,
            reset=0.065,
            malformed=0.05,
            timeout=0.005,
            hang_s=30,
            seed=7,
        )
    ],
    indirect=True,
)
def test_ten_thousand_records_through_thirty_percent_faults_each_billed_once(
    tmp_path: Path, simulator: SimulatorThread
) -> None:
    """A hang (a call answered never) outlasts the client's timeout by far, and the timeout outlasts any
    stall of a loaded machine: a client that gave up on an answer already sent would call again and be
    billed twice, failing the test for the machine's load, not for bulkinfer. Few hangs, as each holds
    a slot for the whole timeout."""
    count = 10_000
    source = write_jsonl(tmp_path / "in" / "big.jsonl", records(count))
    models = catalog(tmp_path / "m.toml", simulator, max_concurrency=64, max_attempts=20, timeout_seconds=10)
    report = run_job(RunRequest(source.parent, "remote", tmp_path / "out", "big", models))

    assert (report.counts.success, report.counts.errors) == (count, 0)
    stats = simulator.idle_stats(timeout_s=60)
    assert successes(stats, "big", count) == [1] * count
    assert stats.calls - stats.successes > 0.25 * stats.calls  # the faults really happened
    lines = read_jsonl(report.output_dir / "big.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"r{i}" for i in range(count)]
    for i, line in enumerate(lines):
        seen = stats.for_id(f"big:r{i}")
        assert seen.calls == seen.successes + seen.failed, seen  # every call it saw ended once
        # Every call the provider saw was one of the record's attempts (429s are not attempts); an
        # attempt given up before the provider read it (a starved machine) is counted by us alone.
        assert line["attempts"] >= seen.calls - seen.failures.get(Outcome.RATE_LIMITED, 0), (line, seen)
    assert max(line["attempts"] for line in lines) > 1
    assert lines[0]["modelOutput"]["content"][0]["text"].startswith("sim: ")


@pytest.mark.parametrize(
    "simulator", [SimulatorConfig(permanent_error_marker="FORBIDDEN", error_500=0.2, seed=3)], indirect=True
)
def test_permanent_refusals_are_error_lines_with_the_providers_message(
    tmp_path: Path, simulator: SimulatorThread
) -> None:
    batch = records(40)
    for i in (3, 17, 30):
        batch[i] = anthropic_record(f"r{i}", f"FORBIDDEN content {i}")
    source = write_jsonl(tmp_path / "in" / "a.jsonl", batch)
    models = catalog(tmp_path / "m.toml", simulator, max_attempts=10)
    report = run_job(RunRequest(source.parent, "remote", tmp_path / "out", "p", models))

    assert (report.counts.success, report.counts.errors) == (37, 3)
    lines = {line["recordId"]: line for line in read_jsonl(report.output_dir / "a.jsonl.out")}
    for i in (3, 17, 30):
        error = lines[f"r{i}"]["error"]
        assert error["errorCode"] == 400
        assert "provider refused the request: 400" in error["errorMessage"]
        assert "FORBIDDEN" in error["errorMessage"]  # the provider's own words
    stats = simulator.idle_stats()
    assert [stats.for_id(f"p:r{i}").successes for i in range(40) if i not in (3, 17, 30)] == [1] * 37


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_both_sdks_and_native_bodies(tmp_path: Path, simulator: SimulatorThread, provider: str) -> None:
    openai_body = {
        "recordId": "o1",
        "modelInput": {"messages": [{"role": "user", "content": "openai shaped"}], "seed": 4},
    }
    source = write_jsonl(tmp_path / "in" / "a.jsonl", [anthropic_record("a1", "claude shaped"), openai_body])
    models = catalog(tmp_path / "m.toml", simulator, provider)
    report = run_job(RunRequest(source.parent, "remote", tmp_path / "out", "n", models))
    a1, o1 = read_jsonl(report.output_dir / "a.jsonl.out")
    assert a1["modelOutput"]["content"][0]["text"] == "sim: claude shaped"
    assert o1["modelOutput"]["choices"][0]["message"]["content"] == "sim: openai shaped"
    # A record in the provider's own dialect gets the provider's answer exactly as it sent it; the
    # other is rendered by bulkinfer (its own message id, no provider-only keys).
    if provider == "anthropic":
        assert not a1["modelOutput"]["id"].startswith("msg_bulk_")
        assert "system_fingerprint" not in o1["modelOutput"]
    else:
        assert "system_fingerprint" in o1["modelOutput"]
        assert a1["modelOutput"]["id"].startswith("msg_bulk_")
    assert a1["modelOutput"]["model"] == o1["modelOutput"]["model"] == "sim-model"
    assert report.counts.input_tokens > 0 and report.counts.output_tokens > 0


@pytest.mark.parametrize("simulator", [SimulatorConfig(latency_median_s=0.05, seed=1)], indirect=True)
def test_an_outage_pauses_the_job_which_completes_when_the_provider_returns(
    tmp_path: Path, simulator: SimulatorThread
) -> None:
    count = 1500
    source = write_jsonl(tmp_path / "in" / "a.jsonl", records(count))
    models = catalog(tmp_path / "m.toml", simulator, max_concurrency=8, max_attempts=3)
    said: list[str] = []

    async def run() -> JobReport:
        job = LocalJob.open(RunRequest(source.parent, "remote", tmp_path / "out", "down", models))
        try:
            task = asyncio.create_task(job.execute(NoProgress(), status=said.append))
            await asyncio.sleep(2)
            simulator.down_for(20)
            await asyncio.sleep(5)
            assert job.paused is not None and "not answering" in job.paused
            stored = job.store.get_job("down")
            assert stored is not None and stored.message == job.paused  # what `bulkinfer status` shows
            return await task
        finally:
            job.close()

    started = time.monotonic()
    report = asyncio.run(run())
    assert time.monotonic() - started > 20
    assert (report.counts.success, report.counts.errors) == (count, 0)
    assert any(s.startswith("paused: remote not answering") for s in said)
    assert said[-2:] != said[-1:] and said.count("running remote") >= 2  # resumed afterwards
    assert successes(simulator.idle_stats(), "down", count) == [1] * count


def test_jobs_on_one_model_share_its_rate_limit(tmp_path: Path, simulator: SimulatorThread) -> None:
    count = 150
    models = catalog(tmp_path / "m.toml", simulator, requests_per_minute=1200)
    shared = LimitRegistry()

    async def run_two() -> list[JobReport]:
        jobs = []
        for name in ("one", "two"):
            source = write_jsonl(tmp_path / name / "a.jsonl", records(count, name))
            request = RunRequest(source.parent, "remote", tmp_path / "out", name, models, limits=shared)
            jobs.append(LocalJob.open(request))
        try:
            return list(await asyncio.gather(*(job.execute(NoProgress()) for job in jobs)))
        finally:
            for job in jobs:
                job.close()

    started = time.monotonic()
    reports = asyncio.run(run_two())
    elapsed = time.monotonic() - started
    assert [r.counts.success for r in reports] == [count, count]
    # 300 calls at 20 a second with a one-second burst: ~14.5 s if the jobs share the limit, ~7 s if not.
    assert elapsed > 13
    assert simulator.stats().rate_limited == 0


@pytest.mark.parametrize("simulator", [SimulatorConfig(latency_median_s=0.05, seed=5)], indirect=True)
def test_a_killed_run_resumes_without_paying_twice_beyond_its_calls_in_flight(
    tmp_path: Path, simulator: SimulatorThread
) -> None:
    count, concurrency = 1500, 8
    source = write_jsonl(tmp_path / "in" / "a.jsonl", records(count))
    models = catalog(tmp_path / "m.toml", simulator, max_concurrency=concurrency)
    command = [sys.executable, "-m", "bulkinfer", "run", str(source.parent), "--model", "remote"]
    command += ["--models", str(models), "--output", str(tmp_path / "out"), "--job-id", "k"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while simulator.stats().successes < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = simulator.stats()
    assert 300 <= at_kill.successes < count

    subprocess.run(command, check=True, capture_output=True, timeout=120)
    lines = read_jsonl(tmp_path / "out" / "k" / "a.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"r{i}" for i in range(count)]
    assert all("modelOutput" in line for line in lines)
    paid = successes(simulator.idle_stats(), "k", count)
    assert 0 not in paid
    twice = sum(1 for n in paid if n > 1)
    # Paid twice: only calls in flight at the kill (at most `concurrency`), or answered within the
    # last commit interval (0.05 s, about 8 calls at this latency).
    assert twice <= 2 * concurrency, twice


@pytest.mark.parametrize("simulator", [SimulatorConfig(latency_median_s=0.05, seed=2)], indirect=True)
def test_the_service_shows_a_paused_job_and_finishes_it(tmp_path: Path, simulator: SimulatorThread) -> None:
    from tests.integration.test_bedrock_api import client, create, start_server, wait_status

    models = catalog(tmp_path / "m.toml", simulator, max_concurrency=4)
    server = start_server(tmp_path / "data", models, "--insecure-dev")
    try:
        write_jsonl(server.bucket("in-bucket") / "a.jsonl", records(400))
        bedrock = client(server)
        arn = create(bedrock, "remote-job", "s3://in-bucket/a.jsonl", "s3://out-bucket/", model="remote")
        wait_status(bedrock, arn, {"InProgress"})
        simulator.go_down()
        deadline = time.monotonic() + 20
        while "paused" not in (
            message := bedrock.get_model_invocation_job(jobIdentifier=arn).get("message", "")
        ):
            assert time.monotonic() < deadline, message
            time.sleep(0.2)
        assert "remote not answering since" in message
        simulator.go_up()
        job = wait_status(bedrock, arn, {"Completed", "Failed"}, timeout=90)
        job_id = arn.rsplit("/", 1)[1]
        signed = Signed(Credentials("AKIDTENANTA", "secret"), "eu-west-1")  # (the tenant client() signs as)
        timeline = orjson.loads(
            signed.send("GET", f"{server.url}/model-invocation-job/{job_id}/events").content
        )
    finally:
        server.stop()
    assert job["status"] == "Completed" and job.get("message") in (None, "")
    assert job.get("errorRecordCount", 0) == 0
    names = [e["event"] for e in timeline["events"]]  # the pause and its end are on the job's timeline
    assert names.index("job.started") < names.index("job.paused") < names.index("job.answering")
    paused = next(e for e in timeline["events"] if e["event"] == "job.paused")
    assert "remote not answering since" in paused["reason"] and paused["status"] == "InProgress"
    assert names[-1] == "job.ended"
