"""Webhooks from a real server to a receiver on 127.0.0.1 that fails each URL's first request."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from bulkinfer.services.webhooks import JOB_TAG, METADATA_KEY
from tests.conftest import SLOW_ECHO_CATALOG, write_jsonl
from tests.integration.test_bedrock_api import (
    Server,
    client,
    create,
    database,
    records,
    start_server,
    wait_status,
)
from tests.integration.test_openai_batches import create as create_batch
from tests.integration.test_openai_batches import line, upload, wait
from tests.unit.test_webhooks import verify

SECRET = "whsec_" + base64.b64encode(b"webhook-test-key-0123456789abcdef").decode()
SECRET_ENV = "BI_TEST_WEBHOOK_SECRET"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """Answers 500 to the first request to each path, 200 to every later one; keeps them all."""

    port: int = 0
    got: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def take(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            status = 200 if any(r.path == path for r in self.got) else 500
            self.got.append(Received(path, headers, body, status))
            return status

    def events(self, path: str, secret: str = SECRET) -> dict[str, dict[str, Any]]:
        """Each event delivered (a 200) to ``path``, by webhook id, its signature verified."""
        with self.lock:
            return {
                r.headers["webhook-id"]: verify(secret, r.body, r.headers)
                for r in self.got
                if r.path == path and r.status == 200
            }

    def wait_for(self, found: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not found():
            assert time.monotonic() < deadline, self.got
            time.sleep(0.05)


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    kept = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.send_response(kept.take(self.path, headers, body))
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    kept.port = http.server_address[1]
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield kept
    finally:
        http.shutdown()
        http.server_close()


@dataclass
class Hooked:
    server: Server
    receiver: Receiver


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def hooked(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
) -> Iterator[Hooked]:
    """A server telling /all of every change (loopback: the operator's choice), with its first retry
    soon; per-job URLs may name the host ``localhost`` (the fetch allowlist) but not 127.0.0.1. On its
    SQLite store, then on PostgreSQL."""
    root = tmp_path_factory.mktemp("hooks")
    (root / "models.toml").write_text(SLOW_ECHO_CATALOG)
    monkeypatch_module.setenv(SECRET_ENV, SECRET)
    monkeypatch_module.setenv("BULKINFER_FETCH_ALLOW", "localhost")
    with database(request.param) as url, receiving() as receiver:
        flags = ["--webhook", receiver.url("/all"), "--webhook-secret-env", SECRET_ENV]
        flags += ["--webhook-retry-base-s", "0.2", *(["--database-url", url] if url else [])]
        running = start_server(root / "data", root / "models.toml", "--insecure-dev", *flags)
        yield Hooked(running, receiver)
        running.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def of_job(events: dict[str, dict[str, Any]], arn: str) -> list[dict[str, Any]]:
    return [e for e in events.values() if e["resources"] == [arn]]


def test_each_state_change_is_delivered_once_signed_after_a_failed_try(hooked: Hooked) -> None:
    server, receiver = hooked.server, hooked.receiver
    write_jsonl(server.bucket("hook-in") / "hooks" / "part.jsonl", records(7))
    bedrock = client(server)
    arn = create(bedrock, "hooked", "s3://hook-in/hooks/", "s3://hook-out/hooks/")
    assert wait_status(bedrock, arn, {"Completed", "Failed"})["status"] == "Completed"

    def told_all() -> bool:
        """Completed told, and the event refused at first told again (by its retry)."""
        events = receiver.events("/all")
        refused = {r.headers["webhook-id"] for r in receiver.got if r.status == 500}
        done = any(e["detail"]["status"] == "Completed" for e in of_job(events, arn))
        return done and refused <= events.keys()

    receiver.wait_for(told_all)
    told = of_job(receiver.events("/all"), arn)
    statuses = [e["detail"]["status"] for e in told]
    assert len(statuses) == len(set(statuses)), statuses  # each change once, though retried
    assert set(statuses) == {"Submitted", "Validating", "Scheduled", "InProgress", "Completed"}
    assert all(e["detail-type"] == "Batch Inference Job State Change" for e in told)
    (done,) = [e for e in told if e["detail"]["status"] == "Completed"]
    assert done["detail"]["batchJobArn"] == arn and done["region"] == "eu-west-1"
    assert done["detail"]["batchJobName"] == "hooked"
    assert done["detail"]["totalRecordCount"] == done["detail"]["successRecordCount"] == 7

    failed = [r for r in receiver.got if r.status == 500 and r.path == "/all"]
    assert len(failed) == 1  # the first one; it came again with the same id, and verified
    assert failed[0].headers["webhook-id"] in receiver.events("/all")


def test_a_job_url_on_loopback_is_refused_at_create_naming_the_tag(hooked: Hooked) -> None:
    bedrock = client(hooked.server)
    tags = [{"key": JOB_TAG, "value": "http://127.0.0.1:9/mine"}]
    with pytest.raises(ClientError) as refused:
        create(bedrock, "refused", "s3://hook-in/hooks/", "s3://hook-out/refused/", tags=tags)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert JOB_TAG in str(refused.value) and "loopback" in str(refused.value)


def test_an_openai_batch_with_a_webhook_in_its_metadata_is_told_it_completed(hooked: Hooked) -> None:
    server, receiver = hooked.server, hooked.receiver
    import openai

    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-any", max_retries=0, timeout=30)
    url = receiver.url("/batch", host="localhost")
    created = create_batch(
        sdk, upload(sdk, [line("a", "hi"), line("b", "there")]), metadata={METADATA_KEY: url}
    )
    assert wait(sdk, created.id, {"completed", "failed"}).status == "completed"

    # its own URL is signed with the tenant's key (which it reads from the server), not the server's
    answer = httpx.get(f"{server.url}/webhooks/secret", headers={"Authorization": "Bearer sk-any"})
    assert answer.status_code == 200, answer.text
    tenant_secret = answer.json()["secret"]
    assert tenant_secret.startswith("whsec_") and tenant_secret != SECRET
    receiver.wait_for(lambda: any(r.path == "/batch" and r.status == 200 for r in receiver.got))
    with pytest.raises(AssertionError):
        receiver.events("/batch")  # the server's key does not verify it
    (told,) = receiver.events("/batch", tenant_secret).values()
    assert told["type"] == "batch.completed" and told["object"] == "event"
    assert told["data"] == {"id": created.id}


def test_serve_refuses_a_webhook_without_a_secret(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bulkinfer.cli.main import app

    args = ["serve", "--insecure-dev", "--data-dir", str(tmp_path), "--webhook", "https://example.com/h"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--webhook-secret-env" in result.output
