"""`kill -9` of `bulkinfer serve` at each transition of a job's life, then a restart with no one's help.

A failpoint (``BULKINFER_FAILPOINTS=name=kill``) makes the server SIGKILL itself at exactly that place; the
test checks that the kill happened there (the status the store holds), restarts the server on the same
data dir and database without the failpoint, and asserts that the job ends as it should with every record
in its outputs exactly once. On PostgreSQL the restarted server is a replica that takes the job up when
the dead one's lease lapses; on SQLite it takes up everything at start.
"""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from tests.faults.conftest import (
    Launcher,
    assert_complete_outputs,
    assert_partial_exactly_once,
    client,
    create,
    get,
    ids_in,
    job_id,
    local_outputs,
    quietly,
    stored,
    wait_died,
    wait_ended,
    wait_for,
    write_records,
)

pytestmark = pytest.mark.slow

KILLED = -signal.SIGKILL

# failpoint (kill@N where one hit is not the interesting one) -> the job's status when the server died,
# and its model: the slow one where the kill must come mid-run, the instant one elsewhere
TRANSITIONS = {
    "submitted": ("Submitted", "echo"),
    "validating": ("Validating", "echo"),
    "scheduled": ("Scheduled", "echo"),
    "in-progress": ("InProgress", "echo"),
    "chunk-committed=kill@2": ("InProgress", "slow-echo"),
    "writing-outputs": ("InProgress", "echo"),
    "output-written": ("InProgress", "echo"),
}


def _failpoint(spec: str) -> str:
    return spec if "=" in spec else f"{spec}=kill"


@pytest.mark.parametrize("point", list(TRANSITIONS))
def test_a_job_killed_at_a_transition_completes_exactly_after_a_restart(
    point: str, store: str | None, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = launcher.start(data, slow_catalog, database_url=store, failpoints=_failpoint(point))
    expected = write_records(first.bucket("in-bucket") / "calls.jsonl", 120)
    name = f"killed-{point.split('=')[0]}"
    status, model = TRANSITIONS[point]
    input_uri, output_uri = "s3://in-bucket/calls.jsonl", "s3://out-bucket/results/"
    arns: list[str] = []  # none when the kill cut the create short: it is repeated after the restart
    quietly(lambda: arns.append(create(client(first), name, input_uri, output_uri, model)))
    assert wait_died(first, name) == KILLED, first.log_tail()
    died_in = stored(first, name)
    assert died_in[1] == status, f"killed in {died_in[1]}, not {status}"

    second = launcher.start(data, slow_catalog, database_url=store)
    bedrock = client(second)
    again = create(bedrock, name, input_uri, output_uri, model)  # the same client token
    assert arns in ([], [again]) and job_id(again) == died_in[0]
    job = wait_ended(bedrock, again)
    assert job["status"] == "Completed", job.get("message")
    assert job["processedRecordCount"] == job["successRecordCount"] == len(expected)
    outputs = local_outputs(second.bucket("out-bucket") / "results" / died_in[0])
    assert_complete_outputs(outputs, {"calls.jsonl": expected})
    assert len(bedrock.list_model_invocation_jobs(nameContains=name)["invocationJobSummaries"]) == 1


def test_a_job_killed_while_stopping_ends_stopped_with_its_partial_output(
    store: str | None, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = launcher.start(data, slow_catalog, database_url=store, failpoints="stopping=kill")
    expected = write_records(first.bucket("in-bucket") / "long.jsonl", 500)
    bedrock = client(first)
    arn = create(bedrock, "killed-stopping", "s3://in-bucket/long.jsonl", "s3://out-bucket/")
    chunks = data / "engine" / job_id(arn) / "chunks"
    wait_for(bedrock, arn, lambda _: len(list(chunks.glob("*.jsonl"))) >= 2, "two committed chunks")
    quietly(lambda: bedrock.stop_model_invocation_job(jobIdentifier=arn))
    assert wait_died(first, "killed-stopping") == KILLED, first.log_tail()
    assert stored(first, "killed-stopping")[1] == "Stopping"

    second = launcher.start(data, slow_catalog, database_url=store)
    job = wait_ended(client(second), arn)
    assert job["status"] == "Stopped", job.get("message")
    outputs = local_outputs(second.bucket("out-bucket") / job_id(arn))
    assert sorted(outputs) == ["long.jsonl.out", "manifest.json.out"], sorted(outputs)
    written = ids_in(outputs["long.jsonl.out"])
    assert_partial_exactly_once(written, expected)
    assert 0 < len(written) < len(expected)  # what was committed before the kill, and nothing run after
    manifest = orjson.loads(outputs["manifest.json.out"])
    assert manifest["processedRecordCount"] == len(written) == job["processedRecordCount"], manifest
    assert manifest["status"] == "Stopped"


def test_a_job_killed_while_validating_is_validated_again_and_fails_its_quota(
    store: str | None, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    quota = {"BULKINFER_MAX_RECORDS_PER_JOB": "1000"}
    first = launcher.start(data, slow_catalog, database_url=store, failpoints="validating=kill", env=quota)
    write_records(first.bucket("in-bucket") / "huge.jsonl", 45_000)
    quietly(lambda: create(client(first), "too-big", "s3://in-bucket/huge.jsonl", "s3://out-bucket/", "echo"))
    assert wait_died(first, "too-big") == KILLED, first.log_tail()
    died_in = stored(first, "too-big")
    assert died_in[1] == "Validating"

    second = launcher.start(data, slow_catalog, database_url=store, env=quota)
    job = wait_ended(client(second), died_in[0])
    assert job["status"] == "Failed", f"{job['status']}: validation was skipped"
    assert "45,000 records, over the 1,000 a job may hold" in job["message"], job["message"]
    assert not (data / "s3" / "out-bucket" / died_in[0]).exists()  # nothing ran


def test_a_lost_chunk_file_is_run_again_and_the_job_completes_exactly(
    store: str | None, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = launcher.start(data, slow_catalog, database_url=store)
    expected = write_records(first.bucket("in-bucket") / "calls.jsonl", 300)
    bedrock = client(first)
    arn = create(bedrock, "lost-chunk", "s3://in-bucket/calls.jsonl", "s3://out-bucket/")
    chunks = data / "engine" / job_id(arn) / "chunks"
    wait_for(bedrock, arn, lambda _: len(list(chunks.glob("*.jsonl"))) >= 3, "three committed chunks")
    first.kill()
    oldest = min(chunks.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)  # committed: newer ones follow it
    lost = len(oldest.read_bytes().splitlines())
    oldest.unlink()

    second = launcher.start(data, slow_catalog, database_url=store)
    job = wait_ended(client(second), arn)
    assert job["status"] == "Completed", job.get("message")
    outputs = local_outputs(second.bucket("out-bucket") / job_id(arn))
    assert_complete_outputs(outputs, {"calls.jsonl": expected})
    assert lost > 0 and get(client(second), arn)["processedRecordCount"] == len(expected)
