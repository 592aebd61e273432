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
import subprocess
import sys
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

[models.sim-gpt-direct]
provider = "openai"
remote_model = "sim-gpt"
base_url = "{simulator}"
max_attempts = 8

[models.gpt-batch-min]
provider = "openai-batch"
remote_model = "sim-gpt"
base_url = "{provider}/v1"
max_provider_jobs = 2
max_records_per_job = 1000
min_records_per_job = 100
on_demand = "sim-gpt-direct"
poll_seconds = 2

[models.gpt-batch-slow]
provider = "openai-batch"
remote_model = "sim-gpt"
base_url = "{provider}/v1"
turnaround_hours = 48
on_demand = "sim-gpt-direct"
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
        BATCH_CATALOG.format(
            provider=provider.url,
            s3=world["s3"],
            staging=STAGING_BUCKET,
            role=ROLE,
            simulator=world["sim"].openai_base_url,
        )
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
        shown = show_status(second, arn)  # `bulkinfer status JOB --server` lists the provider jobs
    finally:
        second.stop()
    assert "Provider jobs" in shown

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
    assert all(j["job_id"] in shown for j in mine), shown


def show_status(server: Server, arn: str) -> str:
    command = [sys.executable, "-m", "bulkinfer", "status", arn, "--server", server.url]
    keys = {
        "AWS_ACCESS_KEY_ID": "AKIDTENANTA",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    shown = subprocess.run(
        command, env={**os.environ, **keys, "COLUMNS": "400"}, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


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


def test_a_stop_cancels_the_provider_jobs_and_keeps_what_they_finished(
    world: dict[str, Any], tmp_path: Path
) -> None:
    provider: Server = world["provider"]
    before = {j["job_id"] for j in provider_jobs(provider)}
    server = start_batch_server(world, tmp_path / "data")
    try:
        for f in range(FILES):
            rows = [openai_record(record_id(f, n), f"file {f} record {n}") for n in range(RECORDS_PER_FILE)]
            write_jsonl(server.bucket("calls") / f"part-{f}.jsonl", rows)
        bedrock = client(server)
        arn = create(bedrock, "stopped-midway", "s3://calls/", "s3://results/", model="gpt-batch")
        deadline = time.monotonic() + 120
        while True:  # the first provider jobs have ended and the next are running
            mine = [j for j in provider_jobs(provider) if j["job_id"] not in before]
            if len(mine) >= 3 and any(j["end_time"] is None for j in mine):
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
        job = wait_status(bedrock, arn, {"Stopped"}, timeout=120)
    finally:
        server.stop()
    mine = [j for j in provider_jobs(provider) if j["job_id"] not in before]
    assert all(j["end_time"] is not None for j in mine), mine  # none left running at the provider
    assert {j["status"] for j in mine} <= {"Completed", "Stopped"}, mine
    assert "Stopped" in {j["status"] for j in mine}, mine  # the running ones were cancelled
    job_id = arn.rsplit("/", 1)[1]
    kept = [
        line
        for f in range(FILES)
        for line in read_jsonl_if(tmp_path / "data" / "s3" / "results" / job_id / f"part-{f}.jsonl.out")
    ]
    assert len(kept) == job["processedRecordCount"]
    # the first two provider jobs' successes at least (the records they failed were not sent again)
    assert 1.5 * RECORDS_PER_FILE <= len(kept) < FILES * RECORDS_PER_FILE
    assert len({line["recordId"] for line in kept}) == len(kept)


def test_small_remainders_and_jobs_near_their_deadline_run_on_demand(
    world: dict[str, Any], tmp_path: Path
) -> None:
    provider: Server = world["provider"]
    sim: SimulatorThread = world["sim"]
    before = {j["job_id"] for j in provider_jobs(provider)}
    server = start_batch_server(world, tmp_path / "data")
    try:
        rows = [openai_record(record_id(0, n), f"remainder {n}") for n in range(1000)]
        write_jsonl(server.bucket("calls") / "part-0.jsonl", rows)
        extra = [openai_record(record_id(1, n), f"remainder tail {n}") for n in range(30)]
        write_jsonl(server.bucket("calls") / "part-1.jsonl", extra)
        write_jsonl(
            server.bucket("late") / "late.jsonl",
            [openai_record(record_id(2, n), f"late {n}") for n in range(40)],
        )
        bedrock = client(server)
        arn = create(bedrock, "remainder", "s3://calls/", "s3://results/", model="gpt-batch-min")
        late = create(bedrock, "late", "s3://late/", "s3://results/", model="gpt-batch-slow")
        # plain chat bodies through Anthropic's batch API, a job of 50 records
        chat = [openai_record(record_id(3, n), f"translated {n}") for n in range(50)]
        write_jsonl(server.bucket("translated") / "chat.jsonl", chat)
        translated = create(bedrock, "translated", "s3://translated/", "s3://results/", model="claude-batch")
        for name in (arn, late, translated):
            job = wait_status(bedrock, name, {"Completed", "Failed"}, timeout=120)
            assert job["status"] == "Completed", job.get("message")
    finally:
        server.stop()
    mine = [j for j in provider_jobs(provider) if j["job_id"] not in before]
    # the 1,000-record file went as one provider job; the 30-record file, and the few records the
    # provider failed, were fewer than min_records_per_job: they ran on demand, as did the late job
    assert len([j for j in mine if j["api"] == "openai"]) == 1, mine
    # the Anthropic batch was created under bulkinfer's token, as its Idempotency-Key
    assert {j["client_token"].split("-")[0] for j in mine if j["api"] == "anthropic"} == {"key:bulkinfer"}
    direct = {
        key for key in sim.stats().per_id if key.startswith((arn.rsplit("/", 1)[1], late.rsplit("/", 1)[1]))
    }
    late_id = late.rsplit("/", 1)[1]
    assert {key for key in direct if key.startswith(late_id)} == {
        f"{late_id}:{record_id(2, n)}" for n in range(40)
    }
    job_id = arn.rsplit("/", 1)[1]
    assert {f"{job_id}:{record_id(1, n)}" for n in range(30)} <= direct
    lines = read_jsonl(tmp_path / "data" / "s3" / "results" / translated.rsplit("/", 1)[1] / "chat.jsonl.out")
    assert [line["recordId"] for line in lines] == [record_id(3, n) for n in range(50)]
    assert all(f"translated {n}" in answer_text(line) for n, line in enumerate(lines))


def read_jsonl_if(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.exists() else []
