"""`bulkinfer serve` driven only through the unmodified boto3 `bedrock` client, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
import sqlalchemy
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from bulkinfer.cli import remote
from bulkinfer.cli.main import app
from bulkinfer.providers.cost import LOCAL_FREE
from tests.acceptance.test_cli_messages import ANTHROPIC_LINE, OPENAI_LINE, chat_record, image_record
from tests.conftest import SLOW_ECHO_CATALOG as CATALOG
from tests.conftest import anthropic_record, read_jsonl, write_jsonl
from tests.moto import S3_CREDENTIALS, moto_server, s3_client

ROLE = "arn:aws:iam::123456789012:role/BatchRole"


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen[str]
    database_url: str | None = None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.process.send_signal(sig)
        self.process.wait(timeout=20)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def bucket(self, name: str) -> Path:
        path = self.data_dir / "s3" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def start_server(data_dir: Path, catalog: Path, *extra: str) -> Server:
    command = [sys.executable, "-m", "bulkinfer", "serve", "--port", "0", "--data-dir", str(data_dir)]
    command += ["--models", str(catalog), "--jobs-per-model", "2", *(extra or ["--insecure-dev"])]
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", "BULKINFER_MAX_RECORDS_PER_FILE": "1000"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()  # the server prints one line with its URL when it is ready
    assert "serving on http://127.0.0.1:" in line, line
    database = extra[extra.index("--database-url") + 1] if "--database-url" in extra else None
    return Server(line.split()[-1], data_dir, process, database)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The server on its embedded SQLite store, then on PostgreSQL (a fresh database)."""
    root = tmp_path_factory.mktemp("serve")
    catalog = root / "models.toml"
    catalog.write_text(CATALOG)
    with database(request.param) as url:
        running = start_server(
            root / "data", catalog, "--insecure-dev", *(["--database-url", url] if url else [])
        )
        yield running
        running.stop()


@contextlib.contextmanager
def database(kind: str) -> Iterator[str | None]:
    if kind == "sqlite":
        yield None
        return
    admin = os.environ.get("BULKINFER_TEST_POSTGRES_URL")
    if not admin:
        pytest.skip("set BULKINFER_TEST_POSTGRES_URL (an admin URL) to run against PostgreSQL")
    name = f"bulkinfer_test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield str(sqlalchemy.make_url(admin).set(database=name).render_as_string(hide_password=False))
    finally:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
        engine.dispose()


def client(server: Server, key: str = "AKIDTENANTA", secret: str = "secret") -> Any:
    return boto3.client(
        "bedrock",
        endpoint_url=server.url,
        region_name="eu-west-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def create(
    bedrock: Any, name: str, input_uri: str, output_uri: str, model: str = "echo", **extra: Any
) -> str:
    response = bedrock.create_model_invocation_job(
        jobName=name,
        roleArn=ROLE,
        modelId=model,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri, "s3InputFormat": "JSONL"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}},
        **extra,
    )
    return str(response["jobArn"])


def wait_status(bedrock: Any, arn: str, wanted: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = bedrock.get_model_invocation_job(jobIdentifier=arn)
        if job["status"] in wanted:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}"
        time.sleep(0.1)


def records(count: int, prefix: str = "R") -> list[dict[str, Any]]:
    return [anthropic_record(f"{prefix}{i:010d}", f"text {i}") for i in range(count)]


def test_a_job_runs_to_completion_with_bedrock_outputs(server: Server) -> None:
    write_jsonl(server.bucket("input-bucket") / "calls" / "part-1.jsonl", records(30))
    write_jsonl(server.bucket("input-bucket") / "calls" / "part-2.jsonl", records(12, "S"))
    bedrock = client(server)
    arn = create(bedrock, "calls-nov", "s3://input-bucket/calls/", "s3://output-bucket/results/")
    assert arn.startswith("arn:aws:bedrock:eu-west-1:123456789012:model-invocation-job/")
    job_id = arn.rsplit("/", 1)[1]

    job = wait_status(bedrock, arn, {"Completed", "Failed"})
    assert job["status"] == "Completed", job.get("message")
    assert job["totalRecordCount"] == job["processedRecordCount"] == job["successRecordCount"] == 42
    assert job["errorRecordCount"] == 0 and job["jobName"] == "calls-nov" and job["modelId"] == "echo"
    assert job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"] == "s3://input-bucket/calls/"
    assert job["endTime"] >= job["submitTime"] and job["timeoutDurationInHours"] == 24

    out = server.data_dir / "s3" / "output-bucket" / "results" / job_id
    assert len(read_jsonl(out / "part-1.jsonl.out")) == 30 and len(read_jsonl(out / "part-2.jsonl.out")) == 12
    manifest = orjson.loads((out / "manifest.json.out").read_bytes())
    assert manifest["totalRecordCount"] == 42 and manifest["successRecordCount"] == 42
    assert bedrock.get_model_invocation_job(jobIdentifier=job_id)["jobArn"] == arn  # id or ARN
    assert manifest["prices"]["source"] == LOCAL_FREE and manifest["estimatedCostUSD"] == 0.0


def test_get_and_list_carry_the_cost_and_prices_that_boto3_leaves_out(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jsonl(server.bucket("cost-bucket") / "in.jsonl", records(5))
    bedrock = client(server)
    raw: list[dict[str, Any]] = []
    bedrock.meta.events.register(
        "after-call.bedrock.GetModelInvocationJob",
        lambda http_response, **_: raw.append(orjson.loads(http_response.content)),
    )
    arn = create(bedrock, "costed", "s3://cost-bucket/in.jsonl", "s3://cost-bucket/out/")
    job = wait_status(bedrock, arn, {"Completed", "Failed"})
    assert job["status"] == "Completed" and "estimatedCostUSD" not in job  # boto3 parses it, leaves it out
    sent = raw[-1]
    manifest = orjson.loads(
        (
            server.bucket("cost-bucket") / "out" / job["jobArn"].rsplit("/", 1)[1] / "manifest.json.out"
        ).read_bytes()
    )
    assert sent["estimatedCostUSD"] == manifest["estimatedCostUSD"] == 0.0  # echo: local, no charge
    assert sent["prices"] == manifest["prices"] and sent["prices"]["source"] == LOCAL_FREE
    assert (sent["inputTokenCount"], sent["outputTokenCount"]) == (
        manifest["inputTokenCount"],
        manifest["outputTokenCount"],
    )

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTENANTA")  # the CLI's client keeps our members
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    cli = remote.client(server.url)
    assert cli.get_model_invocation_job(jobIdentifier=arn)["prices"] == sent["prices"]
    listed = cli.list_model_invocation_jobs(nameContains="costed")["invocationJobSummaries"]
    assert [j["estimatedCostUSD"] for j in listed] == [0.0]
    assert remote.cost_of(listed[0]) == "$0.000000"


def test_list_filters_sorts_and_pages_with_the_boto3_paginator(server: Server) -> None:
    write_jsonl(server.bucket("list-bucket") / "one.jsonl", records(3))
    bedrock = client(server, "AKIDLISTER1")
    arns = [create(bedrock, f"listing-{i}", "s3://list-bucket/one.jsonl", "s3://list-out/") for i in range(5)]
    for arn in arns:
        wait_status(bedrock, arn, {"Completed"})
    pages = bedrock.get_paginator("list_model_invocation_jobs").paginate(PaginationConfig={"PageSize": 2})
    seen = [s["jobArn"] for page in pages for s in page["invocationJobSummaries"]]
    assert seen == list(reversed(arns))  # newest first by default, every job once
    ascending = bedrock.list_model_invocation_jobs(sortBy="CreationTime", sortOrder="Ascending", maxResults=2)
    assert [s["jobArn"] for s in ascending["invocationJobSummaries"]] == arns[:2] and "nextToken" in ascending
    named = bedrock.list_model_invocation_jobs(nameContains="listing-3")["invocationJobSummaries"]
    assert [s["jobName"] for s in named] == ["listing-3"]
    assert bedrock.list_model_invocation_jobs(statusEquals="Failed")["invocationJobSummaries"] == []
    other_tenant = client(server, "AKIDSOMEONEELSE").list_model_invocation_jobs()
    assert all(s["jobName"] != "listing-0" for s in other_tenant["invocationJobSummaries"])


def test_stop_keeps_the_finished_records_and_writes_a_manifest(server: Server) -> None:
    write_jsonl(server.bucket("stop-bucket") / "big.jsonl", records(400))
    bedrock = client(server)
    arn = create(bedrock, "to-stop", "s3://stop-bucket/big.jsonl", "s3://stop-out/", model="slow-echo")
    wait_status(bedrock, arn, {"InProgress"})
    time.sleep(0.5)
    bedrock.stop_model_invocation_job(jobIdentifier=arn)
    job = wait_status(bedrock, arn, {"Stopped"})
    assert 0 < job["processedRecordCount"] < 400
    out = server.data_dir / "s3" / "stop-out" / arn.rsplit("/", 1)[1]
    assert len(read_jsonl(out / "big.jsonl.out")) == job["processedRecordCount"]
    assert orjson.loads((out / "manifest.json.out").read_bytes())["status"] == "Stopped"
    with pytest.raises(bedrock.exceptions.ValidationException, match="State was: Stopped"):
        bedrock.stop_model_invocation_job(jobIdentifier=arn)


def test_the_same_client_token_creates_one_job(server: Server) -> None:
    write_jsonl(server.bucket("token-bucket") / "in.jsonl", records(2))
    bedrock = client(server)
    token = "7c1d2f3e-aaaa-bbbb-cccc-123456789abc"
    first = create(bedrock, "once", "s3://token-bucket/in.jsonl", "s3://token-out/", clientRequestToken=token)
    again = create(bedrock, "once", "s3://token-bucket/in.jsonl", "s3://token-out/", clientRequestToken=token)
    assert first == again


def test_a_file_over_the_quota_fails_validation_with_a_message(server: Server) -> None:
    write_jsonl(server.bucket("quota-bucket") / "huge.jsonl", records(1001))
    bedrock = client(server)
    arn = create(bedrock, "too-big", "s3://quota-bucket/huge.jsonl", "s3://quota-out/")
    job = wait_status(bedrock, arn, {"Failed"})
    assert job["message"] == "huge.jsonl: 1,001 records, over the 1,000 a file may hold"


def test_a_missing_input_fails_the_job_with_a_message(server: Server) -> None:
    server.bucket("empty-bucket")
    bedrock = client(server)
    arn = create(bedrock, "no-input", "s3://empty-bucket/nothing/", "s3://out-bucket/")
    job = wait_status(bedrock, arn, {"Failed"})
    assert "s3://empty-bucket/nothing/" in job["message"] and "no such key" in job["message"]


REFUSED: dict[str, tuple[str, list[dict[str, Any] | bytes]]] = {
    "empty.jsonl": ("echo", []),
    "array.jsonl": ("echo", [b'[{"recordId": "a", "modelInput": {"inputText": "hi"}}]']),
    "openai.jsonl": ("echo", [OPENAI_LINE]),
    "anthropic.jsonl": ("echo", [ANTHROPIC_LINE]),
    "chat.jsonl": ("all-minilm-l6-v2", [chat_record("a"), chat_record("b")]),
    "images.jsonl": ("smollm2-135m-instruct", [image_record("a")]),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_an_input_run_refuses_fails_validation_with_runs_message(
    server: Server, tmp_path: Path, name: str
) -> None:
    """What ``bulkinfer run --format bedrock`` refuses before a job exists, a Bedrock job (whose records
    are Bedrock's) refuses at Validating, saying the same: an empty input, a JSON array, another API's
    batch lines, records the model cannot take."""
    model, lines = REFUSED[name]
    source = write_jsonl(server.bucket("refused-bucket") / name, lines)
    bedrock = client(server)
    arn = create(bedrock, f"refused-{name[:-6]}", f"s3://refused-bucket/{name}", "s3://refused-out/", model)
    job = wait_status(bedrock, arn, {"Failed", "Completed"})

    catalog = tmp_path / "models.toml"
    catalog.write_text(CATALOG)  # the server's
    run = ["run", str(source), "--model", model, "--output", str(tmp_path / "out"), "--models", str(catalog)]
    run += ["--format", "bedrock"]
    said = CliRunner().invoke(app, run)
    assert said.exit_code == 2, said.output
    assert job["status"] == "Failed"
    assert f"error: {job['message']}\n" == said.stderr
    assert not (server.data_dir / "s3" / "refused-out" / arn.rsplit("/", 1)[1]).exists()  # it never ran


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"jobName": "bad_name!"}, "jobName"),
        ({"jobName": "x" * 64}, "jobName"),
        ({"roleArn": "not-an-arn"}, "roleArn"),
        ({"timeoutDurationInHours": 200}, "timeoutDurationInHours"),
        ({"modelId": "no-such-model"}, "unknown model 'no-such-model'"),
        ({"inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://UPPER/x"}}}, "s3Uri"),
        ({"modelInvocationType": "Foo"}, "modelInvocationType"),
        ({"tags": [{"key": "bad{key}", "value": "v"}]}, "tags.0.key"),
    ],
)
def test_invalid_requests_raise_validation_exception(
    server: Server, changes: dict[str, Any], message: str
) -> None:
    request: dict[str, Any] = {
        "jobName": "fine",
        "roleArn": ROLE,
        "modelId": "echo",
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://input-bucket/x.jsonl"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://output-bucket/"}},
        **changes,
    }
    bedrock = client(server)
    with pytest.raises(bedrock.exceptions.ValidationException, match=message):
        bedrock.create_model_invocation_job(**request)


def test_unknown_jobs_and_bad_identifiers(server: Server) -> None:
    bedrock = client(server)
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.get_model_invocation_job(jobIdentifier="abcdefabcdef")
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.stop_model_invocation_job(jobIdentifier="abcdefabcdef")
    with pytest.raises(bedrock.exceptions.ValidationException, match="jobIdentifier"):
        bedrock.get_model_invocation_job(jobIdentifier="NOT-A-JOB")
    with pytest.raises(bedrock.exceptions.ValidationException, match="nextToken"):
        bedrock.list_model_invocation_jobs(nextToken="garbage")
    with pytest.raises(bedrock.exceptions.ValidationException, match="maxResults"):
        bedrock.list_model_invocation_jobs(maxResults=5000)


def test_never_more_jobs_of_a_model_run_than_its_slots(server: Server) -> None:
    write_jsonl(server.bucket("queue-bucket") / "in.jsonl", records(20))
    bedrock = client(server, "AKIDQUEUE01")
    arns = [
        create(bedrock, f"queued-{i}", "s3://queue-bucket/in.jsonl", "s3://queue-out/", model="slow-echo")
        for i in range(10)
    ]
    most = 0
    deadline = time.monotonic() + 60
    while True:
        running = bedrock.list_model_invocation_jobs(statusEquals="InProgress")  # one consistent read
        most = max(most, len(running["invocationJobSummaries"]))
        done = bedrock.list_model_invocation_jobs(statusEquals="Completed")["invocationJobSummaries"]
        if len(done) == len(arns):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert most == 2  # --jobs-per-model 2: the others waited Scheduled
    gaps = slot_gaps(server, [a.rsplit("/", 1)[1] for a in arns])
    print(
        f"slot gaps: median {statistics.median(gaps) * 1000:.1f} ms of {[round(g * 1000, 1) for g in gaps]}"
    )
    assert statistics.median(gaps) < 1.0, gaps  # a freed slot is taken at once, not at the next scan


def slot_gaps(server: Server, job_ids: list[str]) -> list[float]:
    """For each job that waited for a slot: seconds from the latest end before its start to its start."""
    engine = sqlalchemy.create_engine(server.database_url or f"sqlite:///{server.data_dir / 'bulkinfer.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text("SELECT job_id, start_time, end_time FROM batch_jobs"),
        ).all()
    engine.dispose()
    times = {job_id: (start, end) for job_id, start, end in rows if job_id in job_ids}
    starts = sorted(start for start, _ in times.values())
    ends = sorted(end for _, end in times.values())
    return [start - max(e for e in ends if e <= start) for start in starts[2:]]


def test_a_killed_server_resumes_its_job_on_restart(tmp_path: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(CATALOG)
    first = start_server(tmp_path / "data", catalog)
    write_jsonl(first.bucket("resume-bucket") / "in.jsonl", records(300))
    bedrock = client(first)
    arn = create(bedrock, "survivor", "s3://resume-bucket/in.jsonl", "s3://resume-out/", model="slow-echo")
    job = wait_status(bedrock, arn, {"InProgress"})
    while job.get("processedRecordCount", 0) < 40:
        time.sleep(0.1)
        job = bedrock.get_model_invocation_job(jobIdentifier=arn)
    first.stop(signal.SIGKILL)

    second = start_server(tmp_path / "data", catalog)
    try:
        job = wait_status(client(second), arn, {"Completed", "Failed"}, timeout=90)
        assert job["status"] == "Completed", job.get("message")
        lines = read_jsonl(tmp_path / "data" / "s3" / "resume-out" / arn.rsplit("/", 1)[1] / "in.jsonl.out")
        assert [line["recordId"] for line in lines] == [r["recordId"] for r in records(300)]
    finally:
        second.stop()


def runtime(server: Server) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="AKIDTENANTA",
        aws_secret_access_key="secret",
    )


def test_runtime_invoke_model_and_converse_answer_on_demand(server: Server) -> None:
    client_ = runtime(server)
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi there"}],
    }
    answer = orjson.loads(client_.invoke_model(modelId="echo", body=orjson.dumps(body))["body"].read())
    assert answer["type"] == "message" and answer["content"][0]["text"] == "hi there"
    embedded = orjson.loads(
        client_.invoke_model(modelId="echo", body=b'{"inputText": "a b c"}')["body"].read()
    )
    assert len(embedded["embedding"]) == 8 and embedded["inputTextTokenCount"] == 3

    reply = client_.converse(
        modelId="echo",
        messages=[{"role": "user", "content": [{"text": "converse with me"}]}],
        inferenceConfig={"maxTokens": 2},
    )
    assert reply["output"]["message"]["content"][0]["text"] == "converse with"
    assert reply["stopReason"] == "max_tokens" and reply["usage"]["outputTokens"] == 2

    with pytest.raises(client_.exceptions.ResourceNotFoundException):
        client_.invoke_model(modelId="no-such-model", body=b"{}")
    with pytest.raises(client_.exceptions.ValidationException, match=r"modelInput\.messages\.0\.role"):
        client_.invoke_model(modelId="echo", body=b'{"messages": [{"role": "bot", "content": "x"}]}')


def test_a_file_dropped_in_the_watch_folder_is_processed_without_an_api_call(tmp_path: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(CATALOG)
    server = start_server(
        tmp_path / "data",
        catalog,
        "--watch",
        "s3://watch-bucket/inbox",
        "--watch-model",
        "echo",
        "--insecure-dev",
    )
    try:
        inbox = server.bucket("watch-bucket") / "inbox" / "to-process"
        write_jsonl(inbox / "calls.jsonl", records(7))
        processed = server.data_dir / "s3" / "watch-bucket" / "inbox" / "processed"
        deadline = time.monotonic() + 30
        while not list(processed.glob("*/manifest.json.out")):
            assert time.monotonic() < deadline, "the watch folder did not pick the file up"
            time.sleep(0.1)
        (job_dir,) = [p.parent for p in processed.glob("*/manifest.json.out")]
        assert len(read_jsonl(job_dir / "calls.jsonl.out")) == 7
        time.sleep(1.5)  # later scans find the job they already made
        assert len(list(processed.iterdir())) == 1
        jobs = client(server, "watch-folder").list_model_invocation_jobs()["invocationJobSummaries"]
        assert [(j["jobName"], j["status"]) for j in jobs] == [("calls", "Completed")]
    finally:
        server.stop()


def tenants_file(path: Path, keys: dict[str, str]) -> Path:
    """A ``--tenants`` file where each key is a tenant of its own granted every bucket; the secrets go
    into this process's environment (a server started after inherits them)."""
    entries = []
    for key, secret in keys.items():
        variable = f"BI_TEST_SECRET_{key}"
        os.environ[variable] = secret
        entries.append(
            f'[tenants.{key.lower()}]\naccess_keys = {{ {key} = "{variable}" }}\ngrants = ["s3://"]\n'
        )
    path.write_text("\n".join(entries))
    return path


def test_signatures_are_verified_and_each_tenant_sees_its_own_jobs(tmp_path: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(CATALOG)
    tenants = tenants_file(tmp_path / "tenants.toml", {"AKIDALICE": "alice-secret", "AKIDBOB": "bob-secret"})
    server = start_server(tmp_path / "data", catalog, "--tenants", str(tenants))
    try:
        write_jsonl(server.bucket("auth-bucket") / "in.jsonl", records(3))
        alice = client(server, "AKIDALICE", "alice-secret")
        arn = create(alice, "alices-job", "s3://auth-bucket/in.jsonl", "s3://auth-out/")
        assert wait_status(alice, arn, {"Completed"})["jobName"] == "alices-job"  # an ARN path, %2F and all
        assert len(alice.list_model_invocation_jobs(nameContains="alices")["invocationJobSummaries"]) == 1

        bob = client(server, "AKIDBOB", "bob-secret")
        with pytest.raises(bob.exceptions.ResourceNotFoundException):
            bob.get_model_invocation_job(jobIdentifier=arn)
        assert bob.list_model_invocation_jobs()["invocationJobSummaries"] == []

        forged = client(server, "AKIDALICE", "not-alices-secret")
        with pytest.raises(forged.exceptions.AccessDeniedException, match="signature"):
            forged.list_model_invocation_jobs()
        stranger = client(server, "AKIDNOBODY", "whatever")
        with pytest.raises(ClientError, match="UnrecognizedClientException"):
            stranger.get_model_invocation_job(jobIdentifier=arn)
    finally:
        server.stop()


def test_serve_refuses_to_start_without_keys_or_insecure_dev(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bulkinfer", "serve", "--port", "0", "--data-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--access-keys" in result.stderr and "--tenants" in result.stderr


def test_two_replicas_share_one_postgresql_and_survive_losing_one(tmp_path: Path) -> None:
    log = tmp_path / "invocations.log"
    catalog = tmp_path / "models.toml"
    catalog.write_text(CATALOG.replace("delay_s = 0.1", f'delay_s = 0.1\ninvocation_log = "{log}"'))
    with database("postgres") as url:
        assert url is not None
        flags = ["--database-url", url, "--insecure-dev"]
        os.environ["BULKINFER_LEASE_SECONDS"] = "2"
        try:
            first, second = (start_server(tmp_path / "data", catalog, *flags) for _ in range(2))
        finally:
            del os.environ["BULKINFER_LEASE_SECONDS"]
        try:
            jobs = 12
            for j in range(jobs):
                write_jsonl(
                    first.bucket("shared-in") / f"job{j}.jsonl",
                    [anthropic_record(f"J{j:02d}R{i:07d}", f"job{j}-r{i}") for i in range(30)],
                )
            bedrock = client(first)
            arns = [
                create(
                    bedrock,
                    f"shared-{j}",
                    f"s3://shared-in/job{j}.jsonl",
                    "s3://shared-out/",
                    model="slow-echo",
                )
                for j in range(jobs)
            ]
            most = 0
            while (
                len(bedrock.list_model_invocation_jobs(statusEquals="Completed")["invocationJobSummaries"])
                < 3
            ):
                running = bedrock.list_model_invocation_jobs(statusEquals="InProgress")[
                    "invocationJobSummaries"
                ]
                most = max(most, len(running))
                time.sleep(0.05)
            in_flight = bedrock.list_model_invocation_jobs(statusEquals="InProgress")[
                "invocationJobSummaries"
            ]
            first.stop(signal.SIGKILL)  # lose a replica mid-flight; the other takes its jobs over
            survivor = client(second)
            deadline = time.monotonic() + 120
            while True:
                listed = survivor.list_model_invocation_jobs(maxResults=100)["invocationJobSummaries"]
                running = [s for s in listed if s["status"] == "InProgress"]
                most = max(most, len(running))
                if all(s["status"] == "Completed" for s in listed) and len(listed) == jobs:
                    break
                assert time.monotonic() < deadline, [s["status"] for s in listed]
                time.sleep(0.05)
        finally:
            if first.process.poll() is None:
                first.stop()
            second.stop()
    assert in_flight and most <= 2  # --jobs-per-model 2 holds across both replicas
    for j, arn in enumerate(arns):
        out = tmp_path / "data" / "s3" / "shared-out" / arn.rsplit("/", 1)[1] / f"job{j}.jsonl.out"
        assert [line["recordId"] for line in read_jsonl(out)] == [f"J{j:02d}R{i:07d}" for i in range(30)]
    ran = log.read_text().splitlines()
    assert set(ran) == {f"job{j}-r{i}" for j in range(jobs) for i in range(30)}
    assert len(ran) - len(set(ran)) <= 2 * 30  # only what was in flight on the lost replica ran twice


@pytest.fixture
def moto_s3() -> Iterator[str]:
    """A real S3-protocol server (moto_server) on loopback."""
    with moto_server() as port:
        yield f"http://127.0.0.1:{port}"


def test_inputs_and_outputs_on_an_s3_protocol_server(tmp_path: Path, moto_s3: str) -> None:
    creds = S3_CREDENTIALS
    s3 = s3_client(moto_s3)
    s3.create_bucket(Bucket="batch-input")
    s3.create_bucket(Bucket="batch-output")
    for part in range(2):
        body = b"".join(orjson.dumps(r) + b"\n" for r in records(10, f"P{part}"))
        s3.put_object(Bucket="batch-input", Key=f"calls/part-{part}.jsonl", Body=body)
    catalog = tmp_path / "models.toml"
    catalog.write_text(CATALOG)
    os.environ.update(creds)
    try:
        server = start_server(tmp_path / "data", catalog, "--s3-endpoint-url", moto_s3, "--insecure-dev")
    finally:
        for key in creds:
            del os.environ[key]
    try:
        bedrock = client(server)
        arn = create(bedrock, "on-s3", "s3://batch-input/calls/", "s3://batch-output/results/")
        job = wait_status(bedrock, arn, {"Completed", "Failed"})
        assert job["status"] == "Completed", job.get("message")
        missing = create(bedrock, "not-there", "s3://batch-input/nothing/", "s3://batch-output/results/")
        assert "no .jsonl object" in wait_status(bedrock, missing, {"Failed"})["message"]
    finally:
        server.stop()
    job_id = arn.rsplit("/", 1)[1]
    listed = s3.list_objects_v2(Bucket="batch-output", Prefix=f"results/{job_id}/")
    keys = sorted(o["Key"] for o in listed["Contents"])
    prefix = f"results/{job_id}/"
    assert keys == [prefix + "manifest.json.out", prefix + "part-0.jsonl.out", prefix + "part-1.jsonl.out"]
    out = s3.get_object(Bucket="batch-output", Key=prefix + "part-1.jsonl.out")["Body"].read()
    assert [orjson.loads(line)["recordId"] for line in out.splitlines()] == [
        r["recordId"] for r in records(10, "P1")
    ]
    manifest = orjson.loads(
        s3.get_object(Bucket="batch-output", Key=prefix + "manifest.json.out")["Body"].read()
    )
    assert manifest["totalRecordCount"] == manifest["successRecordCount"] == 20


def test_the_cli_client_submits_follows_lists_and_stops(server: Server) -> None:
    write_jsonl(server.bucket("cli-bucket") / "in.jsonl", records(25))
    write_jsonl(server.bucket("cli-bucket") / "long.jsonl", records(400))
    env = {
        **os.environ,
        "BULKINFER_SERVER": server.url,
        "AWS_ACCESS_KEY_ID": "AKIDCLIUSER",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "COLUMNS": "200",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bulkinfer", *args], capture_output=True, text=True, env=env
        )

    done = cli(
        "submit",
        "s3://cli-bucket/in.jsonl",
        "-m",
        "echo",
        "-o",
        "s3://cli-out/",
        "--name",
        "from-cli",
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    arn = done.stdout.splitlines()[0]
    assert "model-invocation-job/" in arn and "25/25" in done.stderr
    shown = cli("status", arn, "--server", server.url)
    assert "Completed" in shown.stdout and "25 of 25" in shown.stdout

    started = cli(
        "submit", "s3://cli-bucket/long.jsonl", "-m", "slow-echo", "-o", "s3://cli-out/", "--name", "long"
    )
    long_arn = started.stdout.strip()
    wait_status(client(server, "AKIDCLIUSER"), long_arn, {"InProgress"})
    assert cli("stop", long_arn).returncode == 0
    wait_status(client(server, "AKIDCLIUSER"), long_arn, {"Stopped"})
    listed = cli("jobs")
    assert "from-cli" in listed.stdout and "long" in listed.stdout and "Stopped" in listed.stdout
    refused = cli("stop", long_arn)
    assert refused.returncode == 2 and "State was: Stopped" in refused.stderr
