"""Jobs whose data is on an S3-protocol server (moto_server) that goes away: during staging, in the middle
of the upload of a finished job's outputs, and across a server restart; and `kill -9` at each S3 step.

The server reaches moto through a `NetCut` proxy, so the test takes S3 "down" (connections reset, new ones
refused) and brings it back on the same address without losing moto's data; the test itself talks to
moto directly. A processed job is never Failed for an outage: it waits, says so in its message, and ends
Completed once S3 answers, with every record in its outputs exactly once.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.faults.conftest import (
    S3_CREDENTIALS,
    Launcher,
    Serve,
    assert_complete_outputs,
    client,
    create,
    job_id,
    quietly,
    record_ids,
    records_bytes,
    stored,
    wait_died,
    wait_ended,
    wait_for,
)
from tests.moto import moto_server
from tests.netcut import NetCut

pytestmark = pytest.mark.slow

KILLED = -signal.SIGKILL
OUTAGE = "S3 not answering"


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    """A real S3-protocol server on loopback, shared by this module's tests (each uses its own buckets)."""
    with moto_server() as port:
        yield port


@pytest.fixture
def net(moto_port: int) -> Iterator[NetCut]:
    with NetCut(moto_port) as proxy:
        yield proxy


@dataclass
class Buckets:
    """A test's own input and output buckets on moto, reached directly (never through the proxy)."""

    s3: Any
    input: str
    output: str

    def put_records(self, key: str, count: int) -> list[str]:
        self.s3.put_object(Bucket=self.input, Key=key, Body=records_bytes(count))
        return record_ids(count)

    def outputs(self, prefix: str) -> dict[str, bytes]:
        listed = self.s3.list_objects_v2(Bucket=self.output, Prefix=prefix).get("Contents", [])
        return {
            o["Key"][len(prefix) :]: self.s3.get_object(Bucket=self.output, Key=o["Key"])["Body"].read()
            for o in listed
        }


@pytest.fixture
def buckets(moto_port: int) -> Buckets:
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{moto_port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    tag = uuid.uuid4().hex[:10]
    made = Buckets(s3, f"in-{tag}", f"out-{tag}")
    s3.create_bucket(Bucket=made.input)
    s3.create_bucket(Bucket=made.output)
    return made


def start(
    launcher: Launcher, tmp_path: Path, net: NetCut, store: str | None, failpoints: str | None = None
) -> Serve:
    catalog = tmp_path / "models.toml"
    if not catalog.exists():
        catalog.write_text("")
    return launcher.start(
        tmp_path / "data",
        catalog,
        database_url=store,
        s3_endpoint=net.url,
        failpoints=failpoints,
        env=S3_CREDENTIALS,
    )


def outage_shown(job: dict[str, Any]) -> bool:
    return OUTAGE in (job.get("message") or "")


def test_s3_down_while_staging_keeps_the_job_validating_until_it_answers(
    store: str | None, launcher: Launcher, net: NetCut, buckets: Buckets, tmp_path: Path
) -> None:
    expected = buckets.put_records("calls/in.jsonl", 200)
    serve = start(launcher, tmp_path, net, store)
    bedrock = client(serve)
    net.cut()
    arn = create(
        bedrock, "staged-late", f"s3://{buckets.input}/calls/", f"s3://{buckets.output}/out/", "echo"
    )
    waiting = wait_for(bedrock, arn, outage_shown, f"'{OUTAGE}' in the message", timeout=30)
    assert waiting["status"] == "Validating", waiting
    net.restore()
    job = wait_ended(bedrock, arn)
    assert job["status"] == "Completed", job.get("message")
    assert_complete_outputs(buckets.outputs(f"out/{job_id(arn)}/"), {"in.jsonl": expected})


@pytest.mark.parametrize("restart", [False, True], ids=["same-server", "restarted-meanwhile"])
def test_s3_down_during_the_upload_holds_the_finished_job_until_it_answers(
    restart: bool, store: str | None, launcher: Launcher, net: NetCut, buckets: Buckets, tmp_path: Path
) -> None:
    expected = buckets.put_records("big.jsonl", 600)  # about 180 kB of output
    serve = start(launcher, tmp_path, net, store)
    bedrock = client(serve)
    net.cut_after(60_000)  # staging sends a few kB of requests; the upload crosses this mid-file
    arn = create(
        bedrock, "upload-cut", f"s3://{buckets.input}/big.jsonl", f"s3://{buckets.output}/out/", "echo"
    )
    waiting = wait_for(bedrock, arn, outage_shown, f"'{OUTAGE}' in the message", timeout=30)
    assert net.is_cut and waiting["status"] == "InProgress", waiting
    assert "publishing" in waiting["message"] and waiting["processedRecordCount"] == len(expected), waiting
    if restart:
        serve.kill()
        serve = start(launcher, tmp_path, net, store)
        bedrock = client(serve)
        before = waiting["message"]
        waiting = wait_for(
            bedrock, arn, lambda j: outage_shown(j) and j["message"] != before, "the restart's own outage"
        )
        assert waiting["status"] == "InProgress", waiting
    net.restore()
    job = wait_ended(bedrock, arn)
    assert job["status"] == "Completed", job.get("message")
    assert_complete_outputs(buckets.outputs(f"out/{job_id(arn)}/"), {"big.jsonl": expected})


# failpoint -> the job's status when the server died
S3_STEPS = {
    "validating": "Validating",
    "staged": "Validating",
    "publishing": "InProgress",
    "published": "InProgress",
}


@pytest.mark.parametrize("point", list(S3_STEPS))
def test_a_job_killed_at_an_s3_step_completes_with_its_outputs_in_the_bucket(
    point: str, store: str | None, launcher: Launcher, net: NetCut, buckets: Buckets, tmp_path: Path
) -> None:
    expected = buckets.put_records("calls/part-1.jsonl", 150)
    name = f"killed-{point}"
    first = start(launcher, tmp_path, net, store, failpoints=f"{point}=kill")
    output = f"s3://{buckets.output}/out/"
    quietly(lambda: create(client(first), name, f"s3://{buckets.input}/calls/", output, "echo"))
    assert wait_died(first, name) == KILLED, first.log_tail()
    died_in = stored(first, name)
    assert died_in[1] == S3_STEPS[point], f"killed in {died_in[1]}, not {S3_STEPS[point]}"

    second = start(launcher, tmp_path, net, store)
    job = wait_ended(client(second), died_in[0])
    assert job["status"] == "Completed", job.get("message")
    assert_complete_outputs(buckets.outputs(f"out/{died_in[0]}/"), {"part-1.jsonl": expected})
