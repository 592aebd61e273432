"""The CLI on a server job as it runs: `submit --wait` ends with one line on how the job ended, and
`results` of a job still running says how far it got."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import SLOW_ECHO_CATALOG as CATALOG
from tests.conftest import write_jsonl
from tests.integration.test_bedrock_api import Server, client, create, records, start_server, wait_status


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    catalog = root / "models.toml"
    catalog.write_text(CATALOG)
    running = start_server(root / "data", catalog, "--insecure-dev")
    yield running
    running.stop()


def bulkinfer(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "AKIDWAITER",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "eu-west-1",
        "COLUMNS": "200",
        "BULKINFER_SERVER": server.url,
    }
    command = [sys.executable, "-m", "bulkinfer", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def submit_and_wait(server: Server, input_uri: str, model: str = "echo") -> subprocess.CompletedProcess[str]:
    return bulkinfer(server, "submit", input_uri, "-m", model, "-o", "s3://wait-out/", "--wait")


def test_a_completed_job_ends_with_its_status_counts_rate_and_output(server: Server) -> None:
    write_jsonl(server.bucket("wait-in") / "good.jsonl", records(40))
    done = submit_and_wait(server, "s3://wait-in/good.jsonl", model="slow-echo")
    assert done.returncode == 0, done.stderr
    arn, ending = done.stdout.splitlines()
    job_id = arn.rsplit("/", 1)[1]
    said = re.fullmatch(
        rf"job {job_id} Completed: 40 of 40 records, 0 errors; ([\d.]+) rec/s; output s3://wait-out/{job_id}/",
        ending,
    )
    assert said is not None, ending
    assert float(said[1]) > 0
    assert "40/40 records" in done.stderr and "tok/s" not in done.stderr  # a server reports no tokens
    assert (server.data_dir / "s3" / "wait-out" / job_id / "good.jsonl.out").is_file()


def test_a_job_failing_validation_ends_with_the_servers_reason(server: Server) -> None:
    broken = [
        {"recordId": f"B{i:010d}", "modelInput": {"anthropic_version": "bedrock-2023-05-31"}}
        for i in range(3)
    ]
    write_jsonl(server.bucket("wait-in") / "broken.jsonl", broken)
    failed = submit_and_wait(server, "s3://wait-in/broken.jsonl")
    assert failed.returncode == 1, failed.stderr
    arn, ending = failed.stdout.splitlines()
    assert ending.startswith(f"job {arn.rsplit('/', 1)[1]} Failed: all 3 records are invalid; first: ")
    assert "modelInput.messages" in ending and "output" not in ending
    assert "progress" not in failed.stderr  # it never ran: no 0/0 bar


def test_results_of_a_running_job_say_how_far_it_got(server: Server) -> None:
    write_jsonl(server.bucket("wait-in") / "long.jsonl", records(400))
    bedrock = client(server, "AKIDWAITER")
    arn = create(bedrock, "long", "s3://wait-in/long.jsonl", "s3://wait-out/", model="slow-echo")
    wait_status(bedrock, arn, {"InProgress"})
    early = bulkinfer(server, "results", arn)
    bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert early.returncode == 2 and early.stdout == ""
    said = re.search(
        r"is still running \(State is: InProgress\): (\d+) of 400 records processed so far", early.stderr
    )
    assert said is not None, early.stderr
    assert "error:" not in early.stderr and f"bulkinfer status {arn} --server {server.url}" in early.stderr
