"""One tenant, every API: a team's access keys (boto3) and API keys (openai, anthropic) are one tenant,
with the same grants and models; its jobs, whichever API made them, show in boto3's list and
`bulkinfer jobs`, each API lists only its own in its own shape, and another team sees none of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import boto3
import openai
import pytest

from tests.conftest import SLOW_ECHO_CATALOG as CATALOG
from tests.conftest import anthropic_record, write_jsonl
from tests.integration.test_bedrock_api import ROLE, Server, start_server

pytestmark = pytest.mark.sdk_compat

API_KEY_A = "every-api-key-of-team-a"
API_KEY_B = "every-api-key-of-team-b"
TENANTS = """
[tenants.team-a]
access_keys = { AKIDEVERYA = "EVERY_API_SECRET_A" }
api_keys_env = "EVERY_API_KEYS_A"
grants = ["s3://team-a/"]
models = ["echo"]

[tenants.team-b]
api_keys_env = "EVERY_API_KEYS_B"
grants = ["s3://team-b/"]
models = ["slow-echo"]
"""
SECRET_A = "secret-of-team-a"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("every-api")
    catalog, tenants = root / "models.toml", root / "tenants.toml"
    catalog.write_text(CATALOG)
    tenants.write_text(TENANTS)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EVERY_API_KEYS_A", API_KEY_A)
        env.setenv("EVERY_API_KEYS_B", API_KEY_B)
        env.setenv("EVERY_API_SECRET_A", SECRET_A)
        running = start_server(root / "data", catalog, "--tenants", str(tenants))
    yield running
    running.stop()


def bedrock(server: Server) -> Any:
    return boto3.client(
        "bedrock",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEVERYA",
        aws_secret_access_key=SECRET_A,
    )


def chat_line(custom_id: str) -> dict[str, Any]:
    body = {"model": "echo", "messages": [{"role": "user", "content": f"hello {custom_id}"}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def make_one_job_of_each_api(server: Server) -> dict[str, str]:
    """A Bedrock job, an OpenAI batch and an Anthropic message batch of team-a, each run to its end."""
    write_jsonl(server.bucket("team-a") / "in" / "records.jsonl", [anthropic_record("R1", "hi")])
    arn = bedrock(server).create_model_invocation_job(
        jobName="every-api",
        roleArn=ROLE,
        modelId="echo",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://team-a/in/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://team-a/out/"}},
    )["jobArn"]
    oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY_A)
    data = "".join(json.dumps(chat_line(f"c{i}")) + "\n" for i in range(2)).encode()
    upload = oa.files.create(file=("in.jsonl", data), purpose="batch")
    batch = oa.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    an = anthropic.Anthropic(base_url=server.url, api_key=API_KEY_A)
    params: Any = {"model": "echo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    message_batch = an.messages.batches.create(requests=[{"custom_id": "m1", "params": params}])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = [
            bedrock(server).get_model_invocation_job(jobIdentifier=arn)["status"] == "Completed",
            oa.batches.retrieve(batch.id).status == "completed",
            an.messages.batches.retrieve(message_batch.id).processing_status == "ended",
        ]
        if all(done):
            break
        time.sleep(0.2)
    return {"bedrock": arn.rsplit("/", 1)[-1], "openai": batch.id, "anthropic": message_batch.id}


def test_a_tenants_jobs_of_every_api_show_together_and_each_api_keeps_its_own(server: Server) -> None:
    made = make_one_job_of_each_api(server)
    job_ids = {
        made["bedrock"],
        made["openai"].removeprefix("batch_"),
        made["anthropic"].removeprefix("msgbatch_"),
    }
    listed = bedrock(server).list_model_invocation_jobs()["invocationJobSummaries"]
    assert {job["jobArn"].rsplit("/", 1)[-1] for job in listed} == job_ids
    assert all(job["status"] == "Completed" for job in listed)
    batch_job = bedrock(server).get_model_invocation_job(jobIdentifier=made["openai"].removeprefix("batch_"))
    assert batch_job["modelId"] == "echo" and batch_job["successRecordCount"] == 2

    oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY_A)
    assert [b.id for b in oa.batches.list()] == [made["openai"]]
    an = anthropic.Anthropic(base_url=server.url, api_key=API_KEY_A)
    assert [b.id for b in an.messages.batches.list()] == [made["anthropic"]]

    # `bulkinfer jobs` and `bulkinfer status` show them all, through the tenant's access key
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "AKIDEVERYA",
        "AWS_SECRET_ACCESS_KEY": SECRET_A,
        "COLUMNS": "250",
    }
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    shown = subprocess.run(
        [sys.executable, "-m", "bulkinfer", "jobs", "--server", server.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert all(job_id in shown.stdout for job_id in job_ids), shown.stdout
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "bulkinfer",
            "status",
            made["openai"].removeprefix("batch_"),
            "--server",
            server.url,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert status.returncode == 0 and "Completed" in status.stdout, status.stdout + status.stderr

    # another team sees none of them, through any API
    other_oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY_B)
    assert list(other_oa.batches.list()) == []
    with pytest.raises(openai.NotFoundError):
        other_oa.batches.retrieve(made["openai"])
    other_an = anthropic.Anthropic(base_url=server.url, api_key=API_KEY_B)
    assert list(other_an.messages.batches.list()) == []
    with pytest.raises(anthropic.NotFoundError):
        other_an.messages.batches.retrieve(made["anthropic"])


def test_a_tenants_api_keys_have_its_grants_and_models(server: Server) -> None:
    """team-b may not use echo (not among its models): its batch of echo lines fails validation saying
    so, line by line; a wrong key is refused by each SDK."""
    oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY_B)
    data = (json.dumps(chat_line("x")) + "\n").encode()
    upload = oa.files.create(file=("in.jsonl", data), purpose="batch")
    batch = oa.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 30
    while (batch := oa.batches.retrieve(batch.id)).status == "validating" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert batch.status == "failed"
    errors = batch.errors.data if batch.errors is not None else None
    assert errors and errors[0].code == "model_not_found" and errors[0].line == 1
    an = anthropic.Anthropic(base_url=server.url, api_key=API_KEY_B)
    params: Any = {"model": "echo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.BadRequestError, match="echo"):
        an.messages.batches.create(requests=[{"custom_id": "m1", "params": params}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="nobody-has-this-key-1234").batches.list()
