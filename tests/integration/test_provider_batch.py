"""Provider batch APIs as backends: a bulkinfer server runs its jobs through another bulkinfer server on
loopback acting as the provider (it speaks the Bedrock, OpenAI and Anthropic batch APIs), whose models
call the provider simulator with injected 500s. Bedrock's staging is on moto_server.

Each backend runs 5,000 records with a quota of 2 provider jobs of 1,000 records; the first server is
killed with SIGKILL once provider jobs are under way and restarted. The provider's own records then show
that no provider job was made twice (its successes add up to exactly the records), that never more than
2 ran at once, and that records the provider failed were sent again and succeeded.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from bulkinfer.testing import Outcome, SimulatorConfig, SimulatorThread
from tests.conftest import anthropic_record, read_jsonl, write_jsonl
from tests.integration.test_bedrock_api import ROLE, Server, client, create, start_server, wait_status
from tests.moto import S3_CREDENTIALS, moto_server, s3_client

RECORDS_PER_FILE = 1000
FILES = 5
STAGING_BUCKET = "batch-staging"

PROVIDER_CATALOG = """
[models.sim-gpt]
provider = "openai"
base_url = "{openai}"
max_concurrency = 16
max_attempts = 1

[models.sim-claude]
provider = "anthropic"
base_url = "{anthropic}"
max_concurrency = 16
max_attempts = 1
"""

BATCH_CATALOG = """
[models.gpt-batch]
provider = "openai-batch"
remote_model = "sim-gpt"
base_url = "{provider}/v1"
max_provider_jobs = 2
max_records_per_job = 1000
poll_seconds = 2
max_attempts = 6
[models.gpt-batch.price]
input_per_million = 2.0
output_per_million = 8.0
batch_discount = 0.5

[models.claude-batch]
provider = "anthropic-batch"
remote_model = "sim-claude"
base_url = "{provider}"
max_provider_jobs = 2
max_records_per_job = 1000
poll_seconds = 2
max_attempts = 6

[models.bedrock-claude-batch]
provider = "bedrock-batch"
remote_model = "sim-claude"
base_url = "{provider}"
region = "us-east-1"
s3_endpoint_url = "{s3}"
staging = "s3://{staging}/bulkinfer/"
role_arn = "{role}"
max_provider_jobs = 2
max_records_per_job = 1000
poll_seconds = 2
max_attempts = 6
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """moto_server, the simulator (2% of calls answered 500) and the provider server."""
    root = tmp_path_factory.mktemp("provider")
    config = SimulatorConfig(latency_median_s=0.03, error_500=0.02, seed=7)
    with moto_server() as port, SimulatorThread(config) as sim:
        s3_url = f"http://127.0.0.1:{port}"
        s3 = s3_client(s3_url)
        for bucket in (STAGING_BUCKET, "bulkinfer-files"):
            s3.create_bucket(Bucket=bucket)
        catalog = root / "provider.toml"
        catalog.write_text(
            PROVIDER_CATALOG.format(openai=sim.openai_base_url, anthropic=sim.anthropic_base_url)
        )
        os.environ.update(S3_CREDENTIALS)
        try:
            provider = start_server(
                root / "provider-data", catalog, "--s3-endpoint-url", s3_url, "--insecure-dev"
            )
        finally:
            for key in S3_CREDENTIALS:
                del os.environ[key]
        try:
            yield {"root": root, "s3": s3_url, "sim": sim, "provider": provider}
        finally:
            provider.stop()


def start_batch_server(world: dict[str, Any], data_dir: Path) -> Server:
    catalog = world["root"] / "batch.toml"
    provider: Server = world["provider"]
    catalog.write_text(
        BATCH_CATALOG.format(provider=provider.url, s3=world["s3"], staging=STAGING_BUCKET, role=ROLE)
    )
    os.environ.update(S3_CREDENTIALS)
    try:
        return start_server(data_dir, catalog, "--insecure-dev")
    finally:
        for key in S3_CREDENTIALS:
            del os.environ[key]


def record_id(file: int, line: int) -> str:
    return f"F{file}L{line:04d}"


@pytest.mark.parametrize("model", ["gpt-batch", "claude-batch", "bedrock-claude-batch"])
def test_a_job_keeps_two_provider_jobs_running_survives_a_kill_and_resubmits_failures(
    world: dict[str, Any], tmp_path: Path, model: str
) -> None:
    provider: Server = world["provider"]
    before = {j["job_id"] for j in provider_jobs(provider)}
    data_dir = tmp_path / "data"
    first = start_batch_server(world, data_dir)
    bucket = first.bucket("calls")
    for f in range(FILES):
        rows = [anthropic_record(record_id(f, n), f"file {f} record {n}") for n in range(RECORDS_PER_FILE)]
        if model == "gpt-batch":
            rows = [openai_record(r["recordId"], f"file {f} record {n}") for n, r in enumerate(rows)]
        write_jsonl(bucket / f"part-{f}.jsonl", rows)
    bedrock = client(first)
    arn = create(bedrock, f"through-{model}", "s3://calls/", "s3://results/", model=model)
    job_id = arn.rsplit("/", 1)[1]

    # Kill the server once the provider has run a job of ours to its end and started more.
    deadline = time.monotonic() + 120
    while True:
        mine = [j for j in provider_jobs(provider) if j["job_id"] not in before]
        if sum(1 for j in mine if j["end_time"] is not None) >= 1 and len(mine) >= 3:
            break
        assert time.monotonic() < deadline, mine
        time.sleep(0.05)
    first.stop(signal.SIGKILL)

    second = start_batch_server(world, data_dir)
    try:
        job = wait_status(client(second), arn, {"Completed", "Failed", "PartiallyCompleted"}, timeout=240)
        assert job["status"] == "Completed", job.get("message")
    finally:
        second.stop()

    total = FILES * RECORDS_PER_FILE
    for f in range(FILES):
        lines = read_jsonl(data_dir / "s3" / "results" / job_id / f"part-{f}.jsonl.out")
        assert [line["recordId"] for line in lines] == [record_id(f, n) for n in range(RECORDS_PER_FILE)]
        failed = [line for line in lines if "error" in line]
        assert not failed, failed[:3]
        assert all(f"file {f} record" in answer_text(line) for line in lines)

    mine = [j for j in provider_jobs(provider) if j["job_id"] not in before]
    # no provider job was made twice: each record succeeded at the provider exactly once
    assert sum(j["success"] or 0 for j in mine) == total
    # the provider failed some records (the simulator's 500s): they were sent again, in jobs of their own
    assert sum(j["errors"] or 0 for j in mine) > 0
    assert len(mine) > FILES
    assert max_overlap(mine) == 2
    assert world["sim"].stats().by_outcome.get(Outcome.ERROR_500, 0) > 0


def openai_record(rid: str, text: str) -> dict[str, Any]:
    return {
        "recordId": rid,
        "modelInput": {"messages": [{"role": "user", "content": text}], "max_tokens": 32},
    }


def answer_text(line: dict[str, Any]) -> str:
    output = line["modelOutput"]
    if "choices" in output:
        return str(output["choices"][0]["message"]["content"])
    return "".join(block.get("text", "") for block in output["content"])


def provider_jobs(provider: Server) -> list[dict[str, Any]]:
    """Every job the provider server holds, as its database has them."""
    engine = sqlalchemy.create_engine(f"sqlite:///{provider.data_dir / 'bulkinfer.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sqlalchemy.text(
                    "SELECT job_id, api, client_token, status, submit_time, end_time, success, errors"
                    " FROM batch_jobs ORDER BY submit_time"
                )
            ).mappings()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def max_overlap(jobs: list[dict[str, Any]]) -> int:
    """The most provider jobs that had been created and not ended at any one time."""
    events = []
    for job in jobs:
        events.append((job["submit_time"], 1))
        events.append((job["end_time"] or float("inf"), -1))
    most = running = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        most = max(most, running)
    return most
