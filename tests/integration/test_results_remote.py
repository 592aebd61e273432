"""`bulkinfer results JOB --server URL`: a server job's records, read through the server's output routes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from typer.testing import CliRunner, Result

from bulkinfer.cli.main import app
from bulkinfer.cli.remote import ServerOutputs
from tests.conftest import SLOW_ECHO_CATALOG as CATALOG
from tests.conftest import write_jsonl
from tests.integration.test_bedrock_api import (
    Server,
    client,
    create,
    moto_s3,  # noqa: F401  (a fixture)
    records,
    start_server,
    tenants_file,
    wait_status,
)

ALICE = ("AKIDALICE", "alice-secret")
BOB = ("AKIDBOB", "bob-secret")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    catalog = root / "models.toml"
    catalog.write_text(CATALOG)
    tenants = tenants_file(root / "tenants.toml", dict([ALICE, BOB]))
    running = start_server(root / "data", catalog, "--tenants", str(tenants))
    yield running
    running.stop()


def cli(*args: str, server: str | None = None, key: tuple[str, str] = ALICE) -> Result:
    env = {
        "BULKINFER_SERVER": server,
        "AWS_ACCESS_KEY_ID": key[0],
        "AWS_SECRET_ACCESS_KEY": key[1],
        "AWS_REGION": "eu-west-1",
    }
    return CliRunner().invoke(app, list(args), env=env)


def outputs(server: Server, arn: str, key: tuple[str, str] = ALICE) -> ServerOutputs:
    return ServerOutputs(server.url, arn.rsplit("/", 1)[1], Credentials(*key), "eu-west-1")


def finished_job(server: Server, name: str, lines: list[dict[str, Any]], **extra: Any) -> str:
    write_jsonl(server.bucket("results-in") / f"{name}.jsonl", lines)
    bedrock = client(server, *ALICE)
    arn = create(bedrock, name, f"s3://results-in/{name}.jsonl", "s3://results-out/", **extra)
    wait_status(bedrock, arn, {"Completed"})
    return arn


def test_results_of_a_server_job_read_as_those_of_a_local_folder(server: Server) -> None:
    lines = records(6)
    lines[2] = {"recordId": "BROKEN00001", "modelInput": {"anthropic_version": "bedrock-2023-05-31"}}
    arn = finished_job(server, "mixed", lines)
    job = client(server, *ALICE).get_model_invocation_job(jobIdentifier=arn)
    assert job["message"].startswith("1 of 6 records are invalid and will be written as error lines: ")

    remote = cli("results", arn, "--server", server.url, "-n", "0")
    assert remote.exit_code == 0, remote.stderr
    local = cli("results", str(server.data_dir / "s3" / "results-out" / arn.rsplit("/", 1)[1]), "-n", "0")
    assert local.exit_code == 0, local.stderr
    assert remote.stdout == local.stdout and len(remote.stdout.splitlines()) == 6
    assert remote.stdout.splitlines()[2].startswith("BROKEN00001 mixed.jsonl line 3: modelInput.messages")
    assert "tokens in/out: " in remote.stderr and "; cost: $0.000000" in remote.stderr  # echo: local
    assert remote.stderr.split("tokens in/out: ")[1] == local.stderr.split("tokens in/out: ")[1]
    status = cli("status", arn, "--server", server.url)  # the server's own members, which boto3 drops
    assert status.exit_code == 0, status.stderr
    assert "$0.000000" in status.stdout and "tokens in/out" in status.stdout

    by_id = cli("results", arn.rsplit("/", 1)[1], "-n", "2", server=server.url)  # BULKINFER_SERVER
    assert by_id.stdout.splitlines() == ["R0000000000 text 0", "R0000000001 text 1"]


def test_the_output_routes_list_and_stream_an_ended_jobs_files(server: Server) -> None:
    arn = finished_job(server, "listed", records(4))
    files = outputs(server, arn)
    assert files.names() == ["listed.jsonl.out", "manifest.json.out"]
    manifest = orjson.loads(b"".join(files.blocks("manifest.json.out")))
    assert manifest["totalRecordCount"] == manifest["successRecordCount"] == 4


def test_another_tenants_job_and_unlisted_names_are_not_found(server: Server) -> None:
    arn = finished_job(server, "private", records(2))
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        outputs(server, arn, BOB).names()
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        list(outputs(server, arn, BOB).blocks("private.jsonl.out"))
    refused = cli("results", arn, "--server", server.url, key=BOB)
    assert refused.exit_code == 2 and "ResourceNotFoundException" in refused.stderr

    mine = outputs(server, arn)
    for name in ("nope.jsonl.out", "../../../bulkinfer.db", "/etc/passwd", ".private.jsonl.out.tmp"):
        with pytest.raises(ClientError, match=r"ResourceNotFoundException.*has no output file"):
            list(mine.blocks(name))
    forged = outputs(server, arn, ("AKIDALICE", "not-alices-secret"))
    with pytest.raises(ClientError, match="AccessDeniedException"):
        forged.names()


def test_outputs_are_refused_until_the_job_ends(server: Server) -> None:
    write_jsonl(server.bucket("results-in") / "long.jsonl", records(400))
    bedrock = client(server, *ALICE)
    arn = create(bedrock, "long", "s3://results-in/long.jsonl", "s3://results-out/", model="slow-echo")
    wait_status(bedrock, arn, {"InProgress"})
    with pytest.raises(ClientError, match=r"ConflictException.*has not ended"):
        outputs(server, arn).names()
    early = cli("results", arn, "--server", server.url)
    assert early.exit_code == 2 and "State is: InProgress" in early.stderr

    bedrock.stop_model_invocation_job(jobIdentifier=arn)
    job = wait_status(bedrock, arn, {"Stopped"})
    shown = cli("results", arn, "--server", server.url, "-n", "0")
    assert shown.exit_code == 0, shown.stderr
    assert len(shown.stdout.splitlines()) == job["processedRecordCount"] > 0


def test_results_through_a_server_on_an_s3_endpoint(tmp_path: Path, moto_s3: str) -> None:  # noqa: F811
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    s3.create_bucket(Bucket="s3-in")
    s3.create_bucket(Bucket="s3-out")
    s3.put_object(Bucket="s3-in", Key="in.jsonl", Body=b"".join(orjson.dumps(r) + b"\n" for r in records(3)))
    catalog = tmp_path / "models.toml"
    catalog.write_text(CATALOG)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "k")
        env.setenv("AWS_SECRET_ACCESS_KEY", "s")
        served = start_server(tmp_path / "data", catalog, "--s3-endpoint-url", moto_s3, "--insecure-dev")
    try:
        bedrock = client(served)
        arn = create(bedrock, "on-s3", "s3://s3-in/in.jsonl", "s3://s3-out/results/")
        wait_status(bedrock, arn, {"Completed"})
        staged = tmp_path / "data" / "staging" / arn.rsplit("/", 1)[1]
        deadline = time.monotonic() + 30  # removed just after the job's end is recorded
        while staged.exists():
            assert time.monotonic() < deadline, "the staged copies were not removed"
            time.sleep(0.05)
        # so the results below are read back from S3
        shown = cli("results", arn, "--server", served.url, key=("AKIDTENANTA", "secret"))  # the job's tenant
    finally:
        served.stop()
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.splitlines() == [f"R{i:010d} text {i}" for i in range(3)]
