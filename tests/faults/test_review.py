"""Regressions from a hostile review of the service's fault handling (the fixes of c5ac2b6), each the
reviewer's reproduction made repeatable:

- a replica cut off from PostgreSQL for longer than its lease while another replica is healthy;
- an input file changed while the server was down (the job fails, naming it, instead of retrying forever);
- a job that had run reaching its deadline while it waits after a crash (it keeps what it finished);
- S3 staging over the job's quota (refused, nothing left staged);
- a Stopping job adopted while the stopped replica's run still holds its files (SIGSTOP / SIGCONT);
- an internal error's 500 (an incident id, never SQL), and one refused create among others committed
  with it in one transaction.

Every server writes its stdout and stderr to its log file, which the tests read.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
import sqlalchemy
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.faults.conftest import (
    S3_CREDENTIALS,
    Launcher,
    RunningSampler,
    Serve,
    assert_complete_outputs,
    assert_partial_exactly_once,
    client,
    create,
    get,
    ids_in,
    job_id,
    local_outputs,
    records_bytes,
    wait_ended,
    wait_for,
    write_records,
)
from tests.integration.test_bedrock_api import database
from tests.moto import moto_server
from tests.netcut import NetCut

pytestmark = pytest.mark.slow

MODEL = "slow-echo"  # 50 records a second per job (SLOW_CATALOG)


def _execute(url: str, sql: str, **params: Any) -> None:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(sql), params)
    finally:
        engine.dispose()


@pytest.fixture
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL database's URL (the test skips without BULKINFER_TEST_POSTGRES_URL)."""
    with database("postgres") as url:
        assert url is not None
        yield url


# 1. A network partition between one replica and PostgreSQL


def test_a_replica_cut_off_from_postgresql_longer_than_its_lease_loses_nothing_and_runs_nothing_twice(
    postgres: str, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    slots, count, records = 2, 3, 500  # one job waits for a slot: the limit is a real one
    port = sqlalchemy.make_url(postgres).port or 5432
    data = tmp_path / "data"
    with NetCut(port) as net:
        through_cut = sqlalchemy.make_url(postgres).set(port=net.port).render_as_string(hide_password=False)
        cut_off = launcher.start(data, slow_catalog, database_url=through_cut, jobs_per_model=slots)
        bedrock = client(cut_off)
        inputs = cut_off.bucket("in-bucket")
        expected = {i: write_records(inputs / f"c{i}.jsonl", records, f"J{i}-") for i in range(count)}
        arns = [
            create(bedrock, f"partition-{i}", f"s3://in-bucket/c{i}.jsonl", "s3://out-bucket/r/")
            for i in range(count)
        ]
        for arn in arns[:slots]:  # the first two run on the replica about to be cut off
            wait_for(bedrock, arn, lambda j: j.get("processedRecordCount", 0) >= 50, "50 records done")
        healthy = launcher.start(data, slow_catalog, database_url=postgres, jobs_per_model=slots)
        survivor = client(healthy)
        with RunningSampler(healthy.url) as sampler:
            net.cut()
            time.sleep(8.0)  # four leases (BULKINFER_LEASE_SECONDS=2): its jobs are taken over meanwhile
            net.restore()
            jobs = [wait_ended(survivor, arn, timeout=120) for arn in arns]

    assert [job["status"] for job in jobs] == ["Completed"] * count, [job.get("message") for job in jobs]
    for i, arn in enumerate(arns):
        outputs = local_outputs(data / "s3" / "out-bucket" / "r" / job_id(arn))
        assert_complete_outputs(outputs, {f"c{i}.jsonl": expected[i]})
    assert sampler.samples > 0 and sampler.most[MODEL] <= slots, sampler.most  # --jobs-per-model 2
    assert cut_off.process.poll() is None, cut_off.log_tail()  # it lived through the partition
    assert healthy.process.poll() is None, healthy.log_tail()
    assert "IllegalTransition" not in cut_off.log.read_text() + healthy.log.read_text()


# 2. An input changed while the server was down


def test_an_input_changed_while_the_server_was_down_fails_the_job_naming_it(
    launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = launcher.start(data, slow_catalog)
    source = first.bucket("in-bucket") / "calls.jsonl"
    write_records(source, 300)
    bedrock = client(first)
    arn = create(bedrock, "input-changed", "s3://in-bucket/calls.jsonl", "s3://out-bucket/r/")
    wait_for(bedrock, arn, lambda j: j.get("processedRecordCount", 0) >= 50, "50 records done")
    first.kill()
    seen = source.stat()
    os.utime(source, ns=(seen.st_atime_ns, seen.st_mtime_ns + 60 * 10**9))  # re-copied: same bytes, new mtime

    second = launcher.start(data, slow_catalog)
    job = wait_ended(client(second), arn, timeout=30)  # not taken up again and again
    assert job["status"] == "Failed", f"{job['status']}: {job.get('message')}"
    assert "changed" in job["message"] and "input" in job["message"], job["message"]
    assert "already running" not in second.log.read_text(), second.log_tail()  # no lock-retry loop


# 3. A job that had run, its deadline reached while it waits after a crash


def test_a_job_that_ran_and_times_out_after_a_crash_keeps_what_it_finished(
    launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = launcher.start(data, slow_catalog)
    expected = write_records(first.bucket("in-bucket") / "calls.jsonl", 300)
    bedrock = client(first)
    arn = create(bedrock, "timed-out", "s3://in-bucket/calls.jsonl", "s3://out-bucket/r/")
    chunks = data / "engine" / job_id(arn) / "chunks"
    wait_for(bedrock, arn, lambda _: len(list(chunks.glob("*.jsonl"))) >= 2, "two committed chunks")
    first.kill()
    # time passes while the server is down: the job's deadline (the column the scheduler reads) is now
    _execute(first.store_url, "UPDATE batch_jobs SET expires_at = :t", t=time.time() - 1)

    second = launcher.start(data, slow_catalog)
    job = wait_ended(client(second), arn, timeout=30)
    assert job["status"] == "PartiallyCompleted", f"{job['status']}: {job.get('message')}"
    outputs = local_outputs(data / "s3" / "out-bucket" / "r" / job_id(arn))
    assert sorted(outputs) == ["calls.jsonl.out", "manifest.json.out"], sorted(outputs)
    written = ids_in(outputs["calls.jsonl.out"])
    assert_partial_exactly_once(written, expected)
    assert 0 < len(written) < len(expected)
    manifest = orjson.loads(outputs["manifest.json.out"])
    assert manifest["processedRecordCount"] == len(written) == job["processedRecordCount"], manifest
    assert manifest["totalRecordCount"] == len(expected) and manifest["status"] == "PartiallyCompleted"


# 4. S3 staging over the job quota


@pytest.fixture
def moto_url() -> Iterator[str]:
    """A real S3-protocol server on loopback for one test."""
    with moto_server() as port:
        yield f"http://127.0.0.1:{port}"


def test_staged_inputs_over_the_job_quota_fail_the_job_and_leave_nothing_staged(
    moto_url: str, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    for bucket in ("inb", "outb"):
        s3.create_bucket(Bucket=bucket)
    for i in range(3):  # ~100 kB in all, each object under the quota
        s3.put_object(Bucket="inb", Key=f"big/part{i}.jsonl", Body=records_bytes(200, f"P{i}-"))
    s3.put_object(Bucket="inb", Key="many/calls.jsonl", Body=records_bytes(150, "M"))  # under in bytes
    data = tmp_path / "data"
    quotas = {"BULKINFER_MAX_JOB_BYTES": "50000", "BULKINFER_MAX_RECORDS_PER_JOB": "100"}
    serve = launcher.start(data, slow_catalog, s3_endpoint=moto_url, env={**S3_CREDENTIALS, **quotas})
    bedrock = client(serve)
    too_big = create(bedrock, "over-bytes", "s3://inb/big/", "s3://outb/r/")
    too_many = create(bedrock, "over-records", "s3://inb/many/", "s3://outb/r/")  # staged, then refused

    job = wait_ended(bedrock, too_big, timeout=60)
    assert job["status"] == "Failed", f"{job['status']}: {job.get('message')}"
    assert "over the 50,000 a job may hold" in job["message"], job["message"]
    job = wait_ended(bedrock, too_many, timeout=60)
    assert job["status"] == "Failed", f"{job['status']}: {job.get('message')}"
    assert "over the 100 a job may hold" in job["message"], job["message"]
    for arn in (too_big, too_many):
        staged = data / "staging" / job_id(arn)
        left = sorted(str(p.relative_to(staged)) for p in staged.rglob("*")) if staged.exists() else []
        assert not staged.exists(), f"left under {staged}: {left}"
    assert "Contents" not in s3.list_objects_v2(Bucket="outb")  # nothing ran


# 5. A Stopping job adopted while the stopped replica's run still holds its files


def test_a_stopping_job_adopted_while_its_files_are_held_ends_stopped_exactly(
    postgres: str, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    count, records = 2, 1000
    data = tmp_path / "data"
    frozen = launcher.start(data, slow_catalog, database_url=postgres, jobs_per_model=count)
    bedrock = client(frozen)
    inputs = frozen.bucket("in-bucket")
    expected = {i: write_records(inputs / f"c{i}.jsonl", records, f"J{i}-") for i in range(count)}
    arns = [
        create(bedrock, f"adopted-{i}", f"s3://in-bucket/c{i}.jsonl", "s3://out-bucket/r/")
        for i in range(count)
    ]
    for arn in arns:
        wait_for(bedrock, arn, lambda j: j.get("processedRecordCount", 0) >= 100, "100 records done")
    other = launcher.start(data, slow_catalog, database_url=postgres, jobs_per_model=count)
    survivor = client(other)
    frozen.process.send_signal(signal.SIGSTOP)  # its jobs' file locks stay held, its leases lapse
    try:
        for arn in arns:
            survivor.stop_model_invocation_job(jobIdentifier=arn)
        time.sleep(6.0)  # three leases: the other replica adopts the Stopping jobs meanwhile
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    jobs = [wait_ended(survivor, arn, timeout=90) for arn in arns]

    assert [job["status"] for job in jobs] == ["Stopped"] * count, [job.get("message") for job in jobs]
    for i, (arn, job) in enumerate(zip(arns, jobs, strict=True)):
        outputs = local_outputs(data / "s3" / "out-bucket" / "r" / job_id(arn))
        assert sorted(outputs) == [f"c{i}.jsonl.out", "manifest.json.out"], sorted(outputs)
        written = ids_in(outputs[f"c{i}.jsonl.out"])
        assert_partial_exactly_once(written, expected[i])
        assert 0 < len(written) < records
        manifest = orjson.loads(outputs["manifest.json.out"])
        assert manifest["processedRecordCount"] == len(written) == job["processedRecordCount"], manifest
        assert manifest["status"] == "Stopped"
    for serve in (frozen, other):
        assert serve.process.poll() is None, serve.log_tail()
        assert "IllegalTransition" not in serve.log.read_text(), serve.log_tail(80)


# 6. Internal errors: what the caller is told, and who else is failed with them

LONG_KEY = "A" * 200
"""An access key longer than the job table's tenant column: under --insecure-dev any key is accepted, and
PostgreSQL refuses the row."""

_INCIDENT = re.compile(r"internal error \(incident ([0-9a-f]{12})\)")
_LEAKS = ("INSERT", "SELECT", "batch_jobs", "psycopg", "sqlalchemy", "varying", "parameters", "secret-")


def _once(serve: Serve, key: str) -> Any:
    """A bedrock client that does not retry: each answer is the server's first."""
    return boto3.session.Session().client(
        "bedrock",
        endpoint_url=serve.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key="secret",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=60),
    )


def _create_once(bedrock: Any, name: str) -> ClientError | str:
    try:
        return create(bedrock, name, "s3://in-bucket/c.jsonl", "s3://out-bucket/r/")
    except ClientError as exc:
        return exc


def _assert_clean(serve: Serve, answer: ClientError | str) -> None:
    """A create that succeeded, was refused with a 4xx, or failed with a 500 that names an incident id
    (logged with the details) and says nothing of the database."""
    if isinstance(answer, str):
        return
    status = answer.response["ResponseMetadata"]["HTTPStatusCode"]
    error = answer.response["Error"]
    message = str(error.get("Message"))
    assert not any(leak in message for leak in _LEAKS), message
    if status < 500:
        return
    assert status == 500 and error["Code"] == "InternalServerException", answer.response
    found = _INCIDENT.fullmatch(message)
    assert found is not None, message
    assert f"request failed (incident {found.group(1)})" in serve.log.read_text(), serve.log_tail()


def test_an_internal_error_names_an_incident_and_never_sql(
    postgres: str, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    serve = launcher.start(tmp_path / "data", slow_catalog, database_url=postgres)
    write_records(serve.bucket("in-bucket") / "c.jsonl", 10)
    answer = _create_once(_once(serve, LONG_KEY), "secret-project-long-key")
    _assert_clean(serve, answer)
    if isinstance(answer, str):  # accepted after all: it is an ordinary job
        assert get(_once(serve, LONG_KEY), answer)["jobName"] == "secret-project-long-key"


@contextlib.contextmanager
def _inserts_held(url: str) -> Iterator[None]:
    """Hold the job table's write lock (reads go on) for the block's body."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as held:
            held.execute(sqlalchemy.text("LOCK TABLE batch_jobs IN SHARE ROW EXCLUSIVE MODE"))
            yield
    finally:
        engine.dispose()


def _until_an_insert_waits(url: str, timeout: float = 30) -> None:
    """Until some session's INSERT into the job table waits for a lock (the server's inserting thread)."""
    query = sqlalchemy.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO batch_jobs%'"
    )
    engine = sqlalchemy.create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                if conn.execute(query).scalar_one():
                    return
            assert time.monotonic() < deadline, "no create reached the database"
            time.sleep(0.05)
    finally:
        engine.dispose()


def test_one_refused_create_fails_only_itself_not_the_creates_committed_with_it(
    postgres: str, launcher: Launcher, slow_catalog: Path, tmp_path: Path
) -> None:
    """The creates waiting while one transaction commits are committed together in the next: a row the
    database refuses must not take the others down with it."""
    serve = launcher.start(tmp_path / "data", slow_catalog, database_url=postgres)
    write_records(serve.bucket("in-bucket") / "c.jsonl", 10)
    racers = 12
    keys = [LONG_KEY if i == racers // 2 else f"AKIDTENANT{i}" for i in range(racers)]
    clients = [_once(serve, key) for key in [*keys, "AKIDPILOT"]]
    start = threading.Barrier(racers)

    def one(i: int) -> ClientError | str:
        start.wait()
        return _create_once(clients[i], f"secret-project-{i}")

    with ThreadPoolExecutor(racers + 1) as pool:
        with _inserts_held(postgres):
            # the pilot's transaction waits for the lock; every create sent meanwhile queues behind it
            pilot = pool.submit(_create_once, clients[-1], "pilot")
            _until_an_insert_waits(postgres)
            racing = [pool.submit(one, i) for i in range(racers)]
            time.sleep(1.5)  # for the racers' requests to reach the server (it answers none meanwhile)
        answers = [future.result() for future in racing]
    assert isinstance(pilot.result(), str), pilot.result()

    for answer in answers:
        _assert_clean(serve, answer)
    others = {i: answer for i, answer in enumerate(answers) if keys[i] != LONG_KEY}
    failed = [str(answer) for answer in others.values() if not isinstance(answer, str)]
    assert not failed, f"{len(failed)} of {len(others)} other tenants' creates failed with it: {failed[0]}"
