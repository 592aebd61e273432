"""`kill -9` of `bulkinfer serve` while a retry job carries its base's successes over, then a restart.

The base is a job stopped part-way (its partial output and manifest written); its retry is killed right
after the carry-over committed, before the job noted it; the restarted server completes the retry with
every record once, the base's records kept and only the remainder run.
"""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest
from botocore.credentials import Credentials

from bulkinfer.cli.remote import Signed
from tests.faults.conftest import (
    Launcher,
    client,
    create,
    ids_in,
    job_id,
    local_outputs,
    quietly,
    wait_died,
    wait_ended,
    wait_for,
    write_records,
)

pytestmark = pytest.mark.slow


def test_a_retry_killed_during_its_carry_over_completes_after_a_restart(
    launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = launcher.start(data, slow_catalog, failpoints="carried=kill")
    expected = write_records(first.bucket("in-bucket") / "calls.jsonl", 300)
    bedrock = client(first)
    arn = create(bedrock, "halted", "s3://in-bucket/calls.jsonl", "s3://out-bucket/results/")
    wait_for(bedrock, arn, lambda job: job.get("processedRecordCount", 0) >= 20, "20 records done")
    quietly(lambda: bedrock.stop_model_invocation_job(jobIdentifier=arn))
    base = wait_ended(bedrock, arn)
    assert base["status"] == "Stopped", base.get("message")
    kept = base["processedRecordCount"]
    assert 0 < kept < len(expected)

    signed = Signed(Credentials("AKIDFAULTS", "secret"), "us-east-1")
    answer = signed.send("POST", f"{first.url}/model-invocation-job/{job_id(arn)}/retry", b"{}")
    retry_arn = str(orjson.loads(answer.content)["jobArn"])
    assert wait_died(first, "halted-retry-1") == -signal.SIGKILL, first.log_tail()

    second = launcher.start(data, slow_catalog)
    job = wait_ended(client(second), retry_arn)
    assert job["status"] == "Completed", job.get("message")
    assert job["processedRecordCount"] == job["successRecordCount"] == len(expected)
    outputs = local_outputs(second.bucket("out-bucket") / "results" / job_id(retry_arn))
    assert ids_in(outputs["calls.jsonl.out"]) == expected  # every record once, in input order
    before = local_outputs(second.bucket("out-bucket") / "results" / job_id(arn))["calls.jsonl.out"]
    assert set(before.splitlines()) <= set(outputs["calls.jsonl.out"].splitlines())  # byte for byte
    manifest = orjson.loads(outputs["manifest.json.out"])
    assert manifest["retry"] == {
        "of": job_id(arn),
        "carriedRecordCount": kept,
        "retriedRecordCount": len(expected) - kept,
    }
