"""A validation backlog next to a running job: 25 jobs of 45,000 records each arrive while one job runs
under a short lease. Validating them takes many lease periods; the running job must keep its lease (never
requeued, never Failed as "already running in another process") and its model's one slot must never hold
two jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.faults.conftest import (
    ENDED,
    LEASE_S,
    Launcher,
    RunningSampler,
    assert_partial_exactly_once,
    client,
    create,
    ids_in,
    job_id,
    local_outputs,
    wait_ended,
    wait_for,
    write_records,
)

pytestmark = pytest.mark.slow

BACKLOG = 25
BACKLOG_RECORDS = 45_000


def test_a_validation_backlog_never_fails_or_doubles_the_running_job(
    store: str | None, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    serve = launcher.start(tmp_path / "data", slow_catalog, database_url=store, jobs_per_model=1)
    expected = write_records(serve.bucket("in-bucket") / "running.jsonl", 6000)  # 2 minutes at 50/s
    write_records(serve.bucket("in-bucket") / "backlog.jsonl", BACKLOG_RECORDS, "B")
    bedrock = client(serve)
    with RunningSampler(serve.url) as sampler:
        running = create(bedrock, "running", "s3://in-bucket/running.jsonl", "s3://out-bucket/")
        wait_for(bedrock, running, lambda job: job["status"] == "InProgress", "InProgress")
        backlog = [
            create(bedrock, f"backlog-{i}", "s3://in-bucket/backlog.jsonl", "s3://out-bucket/")
            for i in range(BACKLOG)
        ]
        started = time.monotonic()
        _until_validated(bedrock, running, backlog, timeout=150)
        validated_s = time.monotonic() - started
        time.sleep(2 * LEASE_S)  # the queue stays full behind the running job a while longer
        assert bedrock.get_model_invocation_job(jobIdentifier=running)["status"] == "InProgress"
        for arn in backlog:  # Scheduled: each ends Stopped at once
            bedrock.stop_model_invocation_job(jobIdentifier=arn)
        bedrock.stop_model_invocation_job(jobIdentifier=running)
        ended = {arn: wait_ended(bedrock, arn) for arn in [running, *backlog]}

    assert {arn: job["status"] for arn, job in ended.items()} == dict.fromkeys(ended, "Stopped"), [
        f"{job['jobName']}: {job['status']} {job.get('message')}" for job in ended.values()
    ]
    outputs = local_outputs(serve.bucket("out-bucket") / job_id(running))
    written = ids_in(outputs["running.jsonl.out"])
    assert_partial_exactly_once(written, expected)
    manifest = orjson.loads(outputs["manifest.json.out"])
    assert 0 < len(written) == manifest["processedRecordCount"] == ended[running]["processedRecordCount"]
    assert sampler.samples > 0 and sampler.most["slow-echo"] == 1, sampler.most  # --jobs-per-model 1
    print(f"{BACKLOG} x {BACKLOG_RECORDS:,} records validated in {validated_s:.1f} s beside the running job")


def _until_validated(bedrock: Any, running: str, backlog: list[str], timeout: float) -> None:
    """Wait until no backlog job is Submitted or Validating; fails at once if the running job ends."""
    deadline = time.monotonic() + timeout
    while True:
        listed = bedrock.list_model_invocation_jobs(maxResults=100)["invocationJobSummaries"]
        status = {s["jobArn"]: s for s in listed}
        job = status[running]
        assert job["status"] not in ENDED, f"the running job ended {job['status']}: {job.get('message')}"
        waiting = [arn for arn in backlog if status[arn]["status"] in ("Submitted", "Validating")]
        if not waiting:
            failed = [status[arn].get("message") for arn in backlog if status[arn]["status"] == "Failed"]
            assert not failed, failed
            return
        assert time.monotonic() < deadline, f"{len(waiting)} backlog jobs still not validated"
        time.sleep(0.2)
