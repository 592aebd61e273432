"""The fault-injection suite's tools: `bulkinfer serve` as a subprocess that a failpoint or the test kills,
boto3 clients of it, waits that fail fast on the wrong outcome, and checks that every record is in the
outputs exactly once.

Servers write their output to a log file (never a pipe that could fill and block them), and every server
a test starts is killed when the test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
import sqlalchemy
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.conftest import SLOW_ECHO_CATALOG
from tests.integration.test_bedrock_api import ROLE, database

LEASE_S = 2.0
"""Every server in this suite renews its leases this often, so lapsed ones are taken up within seconds."""

# 0.1 s per batch of 5 records (50 records a second), so a test can act while a job runs.
SLOW_CATALOG = SLOW_ECHO_CATALOG

ENDED = frozenset({"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"})
"""The statuses a service job does not leave (Stopped included: a service never resumes it)."""

S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

_RECORD = (
    b'{"recordId":"%s","modelInput":{"anthropic_version":"bedrock-2023-05-31","max_tokens":16,'
    b'"messages":[{"role":"user","content":[{"type":"text","text":"text %d"}]}]}}\n'
)


def record_ids(count: int, prefix: str = "R") -> list[str]:
    return [f"{prefix}{i:010d}" for i in range(count)]


def records_bytes(count: int, prefix: str = "R") -> bytes:
    """``count`` Anthropic-shaped records as JSONL, built from bytes (45k of them in a few ms)."""
    return b"".join(_RECORD % (rid.encode(), i) for i, rid in enumerate(record_ids(count, prefix)))


def write_records(path: Path, count: int, prefix: str = "R") -> list[str]:
    """Write ``count`` records to ``path``; their ids, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(records_bytes(count, prefix))
    return record_ids(count, prefix)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Serve:
    """One `bulkinfer serve` process."""

    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path
    database_url: str | None

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'bulkinfer.db'}"

    def kill(self) -> None:
        """``kill -9``, and wait until it is gone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def bucket(self, name: str) -> Path:
        """A local bucket (s3://name/... when the server has no S3 endpoint)."""
        path = self.data_dir / "s3" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Launcher:
    """Starts servers for one test (or module) and kills whatever of them is still running at its end."""

    root: Path
    started: list[Serve] = field(default_factory=list)

    def start(
        self,
        data_dir: Path,
        catalog: Path,
        *,
        database_url: str | None = None,
        failpoints: str | None = None,
        jobs_per_model: int = 2,
        s3_endpoint: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Serve:
        command = [sys.executable, "-m", "bulkinfer", "serve", "--port", "0", "--insecure-dev"]
        command += ["--data-dir", str(data_dir), "--models", str(catalog)]
        command += ["--jobs-per-model", str(jobs_per_model)]
        if database_url is not None:
            command += ["--database-url", database_url]
        if s3_endpoint is not None:
            command += ["--s3-endpoint-url", s3_endpoint]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("BULKINFER_")}
        environment |= {
            "COLUMNS": "200",
            "PYTHONUNBUFFERED": "1",
            "BULKINFER_LEASE_SECONDS": str(LEASE_S),
            **(env or {}),
        }
        if failpoints:
            environment["BULKINFER_FAILPOINTS"] = failpoints
        log = self.root / f"serve-{len(self.started)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment)
        serve = Serve("", data_dir, process, log, database_url)
        self.started.append(serve)
        serve.url = _announced_url(serve)
        return serve

    def close(self) -> None:
        for serve in self.started:
            serve.kill()


def _announced_url(serve: Serve, timeout: float = 60) -> str:
    """The URL the server prints once it is ready."""
    deadline = time.monotonic() + timeout
    while True:
        for line in serve.log.read_text(errors="replace").splitlines():
            if "serving on http://127.0.0.1:" in line:
                return line.split()[-1]
        if serve.process.poll() is not None:
            pytest.fail(f"serve exited ({serve.process.returncode}) before serving:\n{serve.log_tail()}")
        assert time.monotonic() < deadline, f"serve did not start:\n{serve.log_tail()}"
        time.sleep(0.05)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def slow_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(SLOW_CATALOG)
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for the embedded SQLite store; a fresh PostgreSQL database's URL for PostgreSQL."""
    with database(request.param) as url:
        yield url


# The Bedrock API through boto3


def client(serve: Serve | str, key: str = "AKIDFAULTS", session: Any = None) -> Any:
    """A boto3 `bedrock` client of the server, from its own session unless given one (a session may make
    clients in one thread at a time; the clients themselves may be used from any thread)."""
    url = serve if isinstance(serve, str) else serve.url
    return (session or boto3.session.Session()).client(
        "bedrock",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key="secret",
        config=Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=5, read_timeout=60),
    )


def create(bedrock: Any, name: str, input_uri: str, output_uri: str, model: str = "slow-echo") -> str:
    """Create a job; its ARN. The client token is the job's name, so a create cut short by a kill can
    be repeated after the restart and finds the same job."""
    response = bedrock.create_model_invocation_job(
        jobName=name,
        roleArn=ROLE,
        modelId=model,
        clientRequestToken=name,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri, "s3InputFormat": "JSONL"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}},
    )
    return str(response["jobArn"])


def job_id(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def get(bedrock: Any, arn: str) -> dict[str, Any]:
    job: dict[str, Any] = bedrock.get_model_invocation_job(jobIdentifier=arn)
    return job


def wait_for(
    bedrock: Any, arn: str, done: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60
) -> dict[str, Any]:
    """Poll the job until ``done`` says so; fails naming ``what`` if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        job = get(bedrock, arn)
        if done(job):
            return job
        assert job["status"] not in ENDED, f"ended {job['status']} ({job.get('message')}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s: {job['status']}, {job}"
        time.sleep(0.1)


def wait_ended(bedrock: Any, arn: str, timeout: float = 90) -> dict[str, Any]:
    """Wait for the job to end, with no one's help; the job as it ended."""
    deadline = time.monotonic() + timeout
    while True:
        job = get(bedrock, arn)
        if job["status"] in ENDED:
            return job
        why = job.get("message")
        assert time.monotonic() < deadline, f"still {job['status']} after {timeout:.0f} s: {why!r}"
        time.sleep(0.1)


def wait_died(serve: Serve, name: str, timeout: float = 60) -> int:
    """Wait for a server to die by itself at a failpoint while it works on the job called ``name``; its
    exit status. Fails at once if that job ends with the server alive: the failpoint never fired."""
    engine = sqlalchemy.create_engine(serve.store_url)
    deadline = time.monotonic() + timeout
    try:
        while (code := serve.process.poll()) is None:
            rows = _named(engine, name)
            if rows and rows[0][1] in ENDED:
                pytest.fail(f"the failpoint never fired: the job ended {rows[0][1]} with the server alive")
            if time.monotonic() > deadline:
                pytest.fail(f"the server is still alive after {timeout:.0f} s: the failpoint never fired")
            time.sleep(0.1)
        return code
    finally:
        engine.dispose()


def stored(serve: Serve, name: str) -> tuple[str, str]:
    """(job id, status) of the job called ``name``, read from the store itself (the server may be dead)."""
    engine = sqlalchemy.create_engine(serve.store_url)
    try:
        rows = _named(engine, name)
    finally:
        engine.dispose()
    assert len(rows) == 1, f"{len(rows)} jobs named {name!r} in the store"
    return rows[0]


def _named(engine: sqlalchemy.Engine, name: str) -> list[tuple[str, str]]:
    query = sqlalchemy.text("SELECT job_id, status FROM batch_jobs WHERE name = :name")
    try:
        with engine.connect() as conn:
            return [(str(r[0]), str(r[1])) for r in conn.execute(query, {"name": name}).all()]
    except sqlalchemy.exc.OperationalError:  # SQLite before the server made its tables
        return []


def quietly(call: Callable[[], object]) -> None:
    """Make a call a kill may cut short (its answer may never come)."""
    with contextlib.suppress(BotoCoreError, ClientError):
        call()


# Outputs


def assert_exactly_once(found: list[str], expected: list[str]) -> None:
    """Every expected record id once, and nothing else."""
    counts = Counter(found)
    twice = sorted(rid for rid, n in counts.items() if n > 1)
    missing = sorted(set(expected) - counts.keys())
    strangers = sorted(counts.keys() - set(expected))
    assert not (twice or missing or strangers), (
        f"{len(twice)} duplicated {twice[:5]}, {len(missing)} missing {missing[:5]}, "
        f"{len(strangers)} unknown {strangers[:5]}"
    )


def assert_partial_exactly_once(found: list[str], expected: list[str]) -> None:
    """Records from ``expected`` at most once each (a stopped job's output holds what it finished)."""
    counts = Counter(found)
    twice = sorted(rid for rid, n in counts.items() if n > 1)
    strangers = sorted(counts.keys() - set(expected))
    assert not (twice or strangers), f"{len(twice)} duplicated {twice[:5]}, unknown {strangers[:5]}"


def ids_in(data: bytes) -> list[str]:
    return [str(orjson.loads(line)["recordId"]) for line in data.splitlines() if line.strip()]


def local_outputs(folder: Path) -> dict[str, bytes]:
    """A job's output folder in a local bucket: file name -> contents."""
    assert folder.is_dir(), f"no output folder {folder}"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_complete_outputs(files: dict[str, bytes], expected: dict[str, list[str]]) -> None:
    """One ``<input>.out`` per input file holding each of its records exactly once, and a manifest that
    counts them all."""
    names = sorted([*(f"{name}.out" for name in expected), "manifest.json.out"])
    assert sorted(files) == names, sorted(files)
    for name, ids in expected.items():
        assert_exactly_once(ids_in(files[f"{name}.out"]), ids)
    manifest = orjson.loads(files["manifest.json.out"])
    total = sum(len(ids) for ids in expected.values())
    assert manifest["totalRecordCount"] == manifest["processedRecordCount"] == total, manifest
    assert manifest["successRecordCount"] == total and manifest["errorRecordCount"] == 0, manifest


class RunningSampler:
    """Samples how many jobs of each model are InProgress (one List call per sample), in a thread, for
    as long as it runs; `most` is the highest count seen per model. Errors (a server restarting) are
    skipped: they say nothing about the count."""

    def __init__(self, url: str) -> None:
        self._bedrock = client(url)
        self._done = threading.Event()
        self.most: Counter[str] = Counter()
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="running-sampler", daemon=True)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                page = self._bedrock.list_model_invocation_jobs(statusEquals="InProgress", maxResults=1000)
            except (BotoCoreError, ClientError):
                self._done.wait(0.2)
                continue
            now = Counter(str(s["modelId"]) for s in page["invocationJobSummaries"])
            for model, count in now.items():
                self.most[model] = max(self.most[model], count)
            self.samples += 1
            self._done.wait(0.05)
