"""``bulkinfer retry JOB --server``: a server job's retry keeps its successes and reruns the rest.

The server runs on local buckets and on a real S3-protocol server (moto_server); two tenants, so the
other one is shown not to find the job. The model fails the records holding BAD until its catalog
entry says otherwise (the catalog file is read again for each job it runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import anthropic_record
from tests.integration.test_bedrock_api import create, start_server, wait_status
from tests.integration.test_tenants import SECRETS, TEAM_A, TEAM_B, TENANTS, Deployment, _s3
from tests.moto import S3_CREDENTIALS, s3_client

CATALOG = """
[models.flaky]
provider = "echo"
batch_size = 1
concurrency = 2
[models.flaky.options]
invocation_log = "{log}"
"""
BAD = 'fail_text = "BAD"\n'


@pytest.fixture(scope="module", params=["local-buckets", "s3-endpoint"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("retry")
    catalog = root / "models.toml"
    catalog.write_text(CATALOG.format(log=root / "ran.log") + BAD)
    tenants = root / "tenants.toml"
    tenants.write_text(TENANTS.replace('models = ["echo", "slow-*"]', 'models = ["flaky"]'))
    with pytest.MonkeyPatch.context() as env, _s3(request.param) as endpoint:
        for name, value in {**SECRETS, **S3_CREDENTIALS}.items():
            env.setenv(name, value)
        extra = ["--s3-endpoint-url", endpoint] if endpoint else []
        server = start_server(root / "data", catalog, "--tenants", str(tenants), *extra)
        s3 = None
        if endpoint:
            s3 = s3_client(endpoint)
            for bucket in ("team-a", "team-b"):
                s3.create_bucket(Bucket=bucket)
        try:
            yield Deployment(server, s3)
        finally:
            server.stop()


def retry_cli(deployment: Deployment, key: tuple[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": key[0],
        "AWS_SECRET_ACCESS_KEY": key[1],
        "AWS_REGION": "eu-west-1",
        "COLUMNS": "200",
    }
    command = [sys.executable, "-m", "bulkinfer", "retry", *args, "--server", deployment.server.url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def read_output(deployment: Deployment, arn: str, name: str) -> list[bytes]:
    outputs = deployment.outputs(arn, TEAM_A)
    return b"".join(outputs.blocks(name)).splitlines()


def test_a_server_jobs_retry_merges_the_rerun_failures_into_its_output(deployment: Deployment) -> None:
    catalog = deployment.server.data_dir.parent / "models.toml"
    log = deployment.server.data_dir.parent / "ran.log"
    bad = {1, 3}
    records = [
        anthropic_record(None if i == 2 else f"R{i}", f"{'BAD' if i in bad else 'ok'} {i}") for i in range(6)
    ]
    deployment.put("s3://team-a/in/in.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in records))
    team_a = deployment.bedrock(TEAM_A)
    arn = create(team_a, "flaky-run", "s3://team-a/in/in.jsonl", "s3://team-a/out/", model="flaky")
    job = wait_status(team_a, arn, {"Completed", "Failed", "PartiallyCompleted"})
    assert job["status"] == "Completed" and job["errorRecordCount"] == 2, job
    base_lines = read_output(deployment, arn, "in.jsonl.out")

    other = retry_cli(deployment, TEAM_B, arn)  # not team B's job: not found, nothing created
    assert other.returncode == 2 and "ResourceNotFoundException" in other.stderr, other.stderr

    catalog.write_text(CATALOG.format(log=log))  # the model is healthy again
    ran_before = len(log.read_text().splitlines())
    retried = retry_cli(deployment, TEAM_A, arn, "--wait")
    assert retried.returncode == 0, retried.stderr
    new_arn = retried.stdout.splitlines()[0]
    assert new_arn != arn and "Completed" in retried.stdout
    assert sorted(log.read_text().splitlines()[ran_before:]) == ["BAD 1", "BAD 3"]

    lines = read_output(deployment, new_arn, "in.jsonl.out")
    assert [orjson.loads(x)["recordId"] for x in lines] == [orjson.loads(x)["recordId"] for x in base_lines]
    for i, (before, after) in enumerate(zip(base_lines, lines, strict=True)):
        assert after == before if i not in bad else "modelOutput" in orjson.loads(after)
    manifest: dict[str, Any] = orjson.loads(b"".join(read_output(deployment, new_arn, "manifest.json.out")))
    assert manifest["successRecordCount"] == manifest["totalRecordCount"] == 6
    assert manifest["retry"] == {
        "of": arn.rsplit("/", 1)[1],
        "carriedRecordCount": 4,
        "retriedRecordCount": 2,
    }
    new_job = team_a.get_model_invocation_job(jobIdentifier=new_arn)
    assert new_job["successRecordCount"] == 6 and new_job["modelId"] == "flaky"
    assert new_job["jobName"] == "flaky-run-retry-1"

    again = retry_cli(deployment, TEAM_A, new_arn)
    assert again.returncode == 2 and "nothing to retry: all 6 records" in again.stderr, again.stderr
    same = retry_cli(deployment, TEAM_A, arn)  # the base asked again: its retry job, not a second one
    assert same.returncode == 0 and same.stdout.splitlines()[0] == new_arn, same.stderr
    assert sorted(log.read_text().splitlines()[ran_before:]) == ["BAD 1", "BAD 3"]  # nothing ran again


def test_a_retry_of_a_base_whose_manifest_was_changed_fails_saying_so(deployment: Deployment) -> None:
    catalog = deployment.server.data_dir.parent / "models.toml"
    catalog.write_text(CATALOG.format(log=deployment.server.data_dir.parent / "ran.log") + BAD)
    records = [anthropic_record(f"T{i}", f"{'BAD' if i == 0 else 'ok'} {i}") for i in range(3)]
    deployment.put("s3://team-a/in2/in.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in records))
    team_a = deployment.bedrock(TEAM_A)
    arn = create(team_a, "tampered", "s3://team-a/in2/in.jsonl", "s3://team-a/out2/", model="flaky")
    assert wait_status(team_a, arn, {"Completed", "Failed"})["status"] == "Completed"
    manifest_uri = f"s3://team-a/out2/{arn.rsplit('/', 1)[1]}/manifest.json.out"
    manifest = orjson.loads(b"".join(read_output(deployment, arn, "manifest.json.out")))
    deployment.put(manifest_uri, orjson.dumps({**manifest, "inputTokenCount": "lots"}))

    retried = retry_cli(deployment, TEAM_A, arn, "--wait")
    assert retried.returncode == 1, retried.stdout + retried.stderr
    job = team_a.get_model_invocation_job(jobIdentifier=retried.stdout.splitlines()[0])
    assert job["status"] == "Failed"
    assert "does not hold the token counts and cost a job writes" in job["message"], job["message"]


def test_a_retry_given_a_token_another_job_holds_is_a_conflict(deployment: Deployment) -> None:
    from botocore.credentials import Credentials

    from bulkinfer.cli.remote import Signed

    deployment.put("s3://team-a/in3/in.jsonl", orjson.dumps(anthropic_record("U1", "BAD 1")) + b"\n")
    team_a = deployment.bedrock(TEAM_A)
    arn = create(team_a, "tokened", "s3://team-a/in3/in.jsonl", "s3://team-a/out3/", model="flaky")
    assert wait_status(team_a, arn, {"Completed", "Failed"})["status"] == "Completed"
    holder = team_a.create_model_invocation_job(
        jobName="holder",
        roleArn="arn:aws:iam::123456789012:role/bulkinfer",
        modelId="flaky",
        clientRequestToken="taken1",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://team-a/in3/in.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://team-a/out3/"}},
    )["jobArn"]
    signed = Signed(Credentials(*TEAM_A), "eu-west-1")
    url = f"{deployment.server.url}/model-invocation-job/{arn.rsplit('/', 1)[1]}/retry"
    with pytest.raises(Exception, match="clientRequestToken taken1 was given for job") as refused:
        signed.send("POST", url, orjson.dumps({"clientRequestToken": "taken1"}))
    assert holder.rsplit("/", 1)[1] in str(refused.value)
