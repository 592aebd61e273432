"""`bulkinfer serve --log-format json`: its log as an operator reads it (a JSON object a line, an
``http.request`` line per request, one ``job.*`` line per change of each job, no secret anywhere), and
``/health`` and ``/ready`` as a load balancer asks them, without credentials, with the database up and
down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import sqlalchemy
from botocore.exceptions import ClientError

from tests.conftest import SLOW_ECHO_CATALOG
from tests.integration.test_bedrock_api import Server, client, create, database, records, wait_status
from tests.integration.test_openai_batches import create as create_batch
from tests.integration.test_openai_batches import line, upload, wait

ACCESS_KEY = "AKIDLOGS0001"
SECRET = "logs-secret-key-do-not-print-4f1c9e"
API_KEY = "sk-logs-api-key-do-not-print-77aa10"
KEYS_VAR = "BI_TEST_LOGS_API_KEYS"
CUT = sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d")
LIFECYCLE = ["job.submitted", "job.validating", "job.scheduled", "job.started", "job.ended"]


def start_logged(root: Path, log: Path, *extra: str) -> Server:
    """A server for one tenant (a signing key and an API key) whose log goes to ``log``."""
    (root / "models.toml").write_text(SLOW_ECHO_CATALOG)
    command = [sys.executable, "-m", "bulkinfer", "serve", "--port", "0", "--data-dir", str(root / "data")]
    command += ["--models", str(root / "models.toml"), "--log-format", "json", "--log-level", "info", *extra]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "BULKINFER_ACCESS_KEYS": f"{ACCESS_KEY}:{SECRET}",  # (kept off the command line, as a user would)
        "BULKINFER_API_KEYS_ENV": KEYS_VAR,
        KEYS_VAR: API_KEY,
    }
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sink, text=True, env=env)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert "serving on http://127.0.0.1:" in first, log.read_text()
    database_url = extra[extra.index("--database-url") + 1] if "--database-url" in extra else None
    return Server(first.split()[-1], root / "data", process, database_url)


def read_log(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines()
    assert lines
    parsed = [orjson.loads(text) for text in lines]  # every line is one JSON object
    for entry in parsed:
        assert {"time", "level", "event", "message"} <= entry.keys(), entry
    return parsed


def events_of(entries: list[dict[str, Any]], job_id: str) -> list[str]:
    return [e["event"] for e in entries if e["event"].startswith("job.") and e.get("job_id") == job_id]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    log = tmp_path / "server.log"
    server = start_logged(tmp_path, log)
    try:
        yield server, log
    finally:
        if server.process.poll() is None:
            server.stop()


def test_the_json_log_has_a_line_per_request_and_per_job_change_and_no_secret(
    served: tuple[Server, Path],
) -> None:
    server, log = served
    write_jsonl_records(server.bucket("logs-in") / "calls.jsonl", 20)
    bedrock = client(server, ACCESS_KEY, SECRET)
    arn = create(bedrock, "logged", "s3://logs-in/calls.jsonl", "s3://logs-out/", model="slow-echo")
    assert wait_status(bedrock, arn, {"Completed", "Failed"})["status"] == "Completed"
    job_id = arn.rsplit("/", 1)[1]
    with pytest.raises(ClientError):  # a signature that does not match: refused, and logged as such
        client(server, ACCESS_KEY, "not-the-secret").list_model_invocation_jobs()

    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=30)
    file_id = upload(sdk, [line(f"c{i}", f"hello {i}") for i in range(5)])
    batch = create_batch(sdk, file_id)
    assert wait(sdk, batch.id, {"completed", "failed"}).status == "completed"
    timeline = show_status(server, arn)  # the stored timeline, as `bulkinfer status JOB --server` shows it
    assert [name for name in LIFECYCLE if name in timeline] == LIFECYCLE, timeline
    assert "it waits for one of slow-echo's job slots" in timeline
    assert "it got one of slow-echo's job slots" in timeline
    assert "20 records processed: 20 succeeded, 0 failed" in timeline
    for path in ("/health", "/ready"):
        answer = httpx.get(f"{server.url}{path}?token={SECRET}")  # (a query string is never logged)
        assert answer.status_code == 200, answer.text
    server.stop()

    entries = read_log(log)
    text = log.read_text()
    for secret in (SECRET, API_KEY, "AWS4-HMAC-SHA256", "Bearer", "Signature="):
        assert secret not in text
    requests = [e for e in entries if e["event"] == "http.request"]
    assert all(isinstance(e["status"], int) and e["duration_ms"] >= 0 for e in requests)
    assert all("?" not in e["path"] for e in requests)
    assert {(e["method"], e["path"], e["status"]) for e in requests} >= {
        ("POST", "/model-invocation-job", 200),
        ("GET", "/model-invocation-jobs", 403),
        ("POST", "/v1/files", 200),
        ("POST", "/v1/batches", 200),
        ("GET", "/health", 200),
        ("GET", "/ready", 200),
    }
    created = next(e for e in requests if e["path"] == "/model-invocation-job")
    assert created["tenant"] == "default"
    assert "tenant" not in next(e for e in requests if e["path"] == "/health")

    assert events_of(entries, job_id) == LIFECYCLE
    batch_job = batch.id.removeprefix("batch_")  # (an OpenAI batch's id is its job's, prefixed)
    assert events_of(entries, batch_job) == LIFECYCLE
    for job, api in ((job_id, "bedrock"), (batch_job, "openai")):
        for entry in (e for e in entries if e["event"].startswith("job.") and e.get("job_id") == job):
            assert entry["tenant"] == "default" and entry["api"] == api, entry
        ended = next(e for e in entries if e["event"] == "job.ended" and e["job_id"] == job)
        assert ended["status"] == "Completed" and ended["processed"] == (20 if api == "bedrock" else 5)


def show_status(server: Server, arn: str) -> str:
    command = [sys.executable, "-m", "bulkinfer", "status", arn, "--server", server.url]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "COLUMNS": "300"}
    shown = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_ready_answers_503_while_the_database_is_away_and_names_no_url(tmp_path: Path) -> None:
    with database("postgres") as url:
        assert url is not None
        log = tmp_path / "server.log"
        server = start_logged(tmp_path, log, "--database-url", url)
        try:
            ready = f"{server.url}/ready"
            assert httpx.get(ready).json() == {"status": "ready"}
            name = str(sqlalchemy.make_url(url).database)
            with _renamed(name, f"{name}_away"):
                started = time.monotonic()
                away = httpx.get(ready, timeout=10)
                assert time.monotonic() - started < 3
                assert away.status_code == 503, away.text
                body = away.json()
                assert body["status"] == "not ready" and body["check"] == "database"
                parts = sqlalchemy.make_url(url)
                for said in (name, "postgresql", "@", str(parts.host), str(parts.port), str(parts.password)):
                    assert said not in away.text
                assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}  # alive all the same
            assert _eventually(lambda: httpx.get(ready).status_code == 200)
        finally:
            server.stop()
    not_ready = [e for e in read_log(log) if e["event"] == "health.not_ready"]
    assert not_ready and all(e["check"] == "database" for e in not_ready)
    parts = sqlalchemy.make_url(url)
    assert url not in log.read_text() and f":{parts.password}@" not in log.read_text()


class _renamed:
    """The server's database renamed while inside (its connections cut): to the server it is gone."""

    def __init__(self, name: str, away: str) -> None:
        self._engine = sqlalchemy.create_engine(
            os.environ["BULKINFER_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT"
        )
        self._name, self._away = name, away

    def __enter__(self) -> None:
        self._rename(self._name, self._away)

    def __exit__(self, *_: object) -> None:
        self._rename(self._away, self._name)
        self._engine.dispose()

    def _rename(self, old: str, new: str) -> None:
        with self._engine.connect() as conn:
            for _ in range(50):  # the server reconnects at once: cut its connections until the rename wins
                conn.execute(CUT, {"d": old})
                try:
                    conn.execute(sqlalchemy.text(f'ALTER DATABASE "{old}" RENAME TO "{new}"'))
                    return
                except sqlalchemy.exc.OperationalError:
                    time.sleep(0.05)
        raise AssertionError(f"could not rename database {old}")


def _eventually(check: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def write_jsonl_records(path: Path, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records(count)))
