"""Webhook signatures, payload shapes, targets and the outbox's retry schedule."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkinfer.domain.job import JobStatus
from bulkinfer.errors import ConfigError, UserError
from bulkinfer.scheduler.webhooks import WebhookSender
from bulkinfer.services import webhooks as hooks
from bulkinfer.store.batch_jobs import BatchJobStore
from bulkinfer.store.webhooks import MAX_RETRY_S, Delivery, retry_delay_s
from tests.unit.test_job_store import job

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
CONFIG = hooks.Webhooks(KEY, region="eu-west-1", account="111122223333")


def verify(secret: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """A receiver's check: the ``standardwebhooks`` package when installed, else the spec by hand."""
    try:
        from standardwebhooks import Webhook  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        sent = [s.split(",", 1)[1] for s in headers["webhook-signature"].split()]
        assert expected in sent
        assert abs(time.time() - int(headers["webhook-timestamp"])) < 300
        return dict(orjson.loads(body))
    return dict(Webhook(secret).verify(body, headers))


def change(status: JobStatus, api: str = "bedrock", **counts: Any) -> hooks.Change:
    return hooks.Change("abc123", "my-job", "echo", api, status, 1_764_800_000.0, "done", **counts)


def test_a_signature_verifies_with_the_secret_and_not_with_another() -> None:
    body = b'{"a":1}'
    sent = hooks.headers(KEY, "msg_1", int(time.time()), body)
    assert verify(SECRET, body, sent) == {"a": 1}
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(Exception):  # noqa: B017 (either verifier's own error)
        verify(other, body, sent)
    with pytest.raises(Exception):  # noqa: B017
        verify(SECRET, b'{"a":2}', sent)


def test_the_signature_is_the_spec_example() -> None:
    """The Standard Webhooks specification's own example."""
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    got = hooks.signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_eventbridge_payload_tells_every_change_with_its_arn_and_counts() -> None:
    body = orjson.loads(
        hooks.payload(CONFIG, "eventbridge", change(JobStatus.COMPLETED, total=3, success=3), "msg_1") or b""
    )
    arn = "arn:aws:bedrock:eu-west-1:111122223333:model-invocation-job/abc123"
    assert body["detail-type"] == "Batch Inference Job State Change"
    assert body["source"] == "aws.bedrock" and body["id"] == "msg_1" and body["resources"] == [arn]
    assert body["time"] == "2025-12-03T22:13:20Z"
    assert body["detail"] == {
        "batchJobArn": arn,
        "batchJobName": "my-job",
        "batchModelId": "echo",
        "status": "Completed",
        "message": "done",
        "totalRecordCount": 3,
        "successRecordCount": 3,
    }
    assert hooks.payload(CONFIG, "eventbridge", change(JobStatus.SCHEDULED), "m") is not None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (JobStatus.COMPLETED, "batch.completed"),
        (JobStatus.FAILED, "batch.failed"),
        (JobStatus.STOPPED, "batch.cancelled"),
        (JobStatus.EXPIRED, "batch.expired"),
    ],
)
def test_openai_payload_tells_only_the_end(status: JobStatus, kind: str) -> None:
    body = orjson.loads(hooks.payload(CONFIG, "openai", change(status, api="openai"), "msg_2") or b"")
    assert body == {
        "object": "event",
        "id": "msg_2",
        "type": kind,
        "created_at": 1764800000,
        "data": {"id": "batch_abc123"},
    }
    assert hooks.payload(CONFIG, "openai", change(JobStatus.IN_PROGRESS, api="openai"), "m") is None
    anthropic = orjson.loads(hooks.payload(CONFIG, "openai", change(status, api="anthropic"), "m") or b"")
    assert anthropic["data"]["id"] == "msgbatch_abc123"


def test_a_job_gets_its_own_url_in_its_apis_style_beside_the_servers() -> None:
    server = hooks.Webhooks(KEY, (hooks.Target("http://10.0.0.1/h", "eventbridge", guarded=False),))
    tags = {"tags": [{"key": hooks.JOB_TAG, "value": "https://example.com/h"}]}
    assert hooks.targets_of(server, "bedrock", tags, None)[1] == hooks.Target(
        "https://example.com/h", "eventbridge", guarded=True
    )
    meta = {"metadata": {hooks.METADATA_KEY: "https://example.com/o"}}
    assert hooks.targets_of(server, "openai", {}, meta)[1].style == "openai"
    assert hooks.targets_of(server, "openai", {}, {"metadata": None}) == list(server.targets)


def test_configuration_refuses_a_url_without_secret_a_bad_scheme_and_a_bad_secret() -> None:
    with pytest.raises(ConfigError, match="--webhook-secret-env"):
        hooks.Webhooks.of(["https://example.com/"], None)
    with pytest.raises(ConfigError, match="http"):
        hooks.Webhooks.of(["file:///etc/passwd"], "S", environ={"S": SECRET})
    with pytest.raises(ConfigError, match="whsec_"):
        hooks.Webhooks.of(["https://example.com/"], "S", environ={})
    config = hooks.Webhooks.of(["http://127.0.0.1/"], "S", "openai", environ={"S": SECRET})
    assert config is not None and config.secret == KEY and config.targets[0].style == "openai"
    assert hooks.Webhooks.of([], None) is None


async def test_a_job_url_on_loopback_is_refused_naming_its_field_unless_allowed() -> None:
    tags = {"tags": [{"key": hooks.JOB_TAG, "value": "http://127.0.0.1:9/h"}]}
    with pytest.raises(UserError, match=r"tags\[bulkinfer:webhook\].*loopback"):
        await hooks.check_job_url(CONFIG, tags, None)
    allowed = hooks.Webhooks(KEY, fetch_allow=("127.0.0.1/32",))
    await hooks.check_job_url(allowed, tags, None)
    with pytest.raises(UserError, match="no --webhook-secret-env"):
        await hooks.check_job_url(None, tags, None)


def test_retries_back_off_to_a_day() -> None:
    first, second = retry_delay_s(1, 5.0), retry_delay_s(2, 5.0)
    assert 5.0 <= first <= 6.0 and 30.0 <= second <= 36.0
    assert retry_delay_s(30, 5.0) <= MAX_RETRY_S * 1.2


def test_the_outbox_gets_a_row_per_committed_change_and_none_for_a_lost_one(tmp_path: Path) -> None:
    server = hooks.Webhooks(KEY, (hooks.Target("http://10.0.0.1/h", "eventbridge", guarded=False),))
    store = BatchJobStore(f"sqlite:///{tmp_path / 'jobs.db'}", webhooks=server)
    tags = {"tags": [{"key": hooks.JOB_TAG, "value": "https://example.com/mine"}]}
    created = store.create(replace(job(), request=tags))
    assert store.transition(created, JobStatus.STOPPED, message="stopped by its owner") is not None
    assert store.transition(created, JobStatus.VALIDATING) is None  # (it had left Submitted)

    due = store.claim_webhooks(10, hold_s=60.0)
    assert sorted((d.url, d.guarded) for d in due) == [
        ("http://10.0.0.1/h", False),
        ("http://10.0.0.1/h", False),
        ("https://example.com/mine", True),
        ("https://example.com/mine", True),
    ]
    assert {(d.guarded, d.tenant) for d in due} == {(False, None), (True, "team")}  # (whose key signs)
    statuses = [orjson.loads(d.payload)["detail"]["status"] for d in due if not d.guarded]
    assert sorted(statuses) == ["Stopped", "Submitted"]
    assert store.claim_webhooks(10, hold_s=60.0) == []  # held by this sender

    assert store.webhook_sent(due[0], None, 5.0) is None
    retry_at = store.webhook_sent(due[1], "status 500", 5.0)
    assert retry_at is not None and retry_at > time.time() + 4.0

    assert store.prune_webhooks(before=time.time() + 1.0) == 1  # only the delivered one is done with
    assert store.prune_webhooks(before=time.time() + 1.0) == 0


def test_a_job_requeued_when_its_replica_went_away_is_told(tmp_path: Path) -> None:
    server = hooks.Webhooks(KEY, (hooks.Target("http://10.0.0.1/h", "eventbridge", guarded=False),))
    store = BatchJobStore(f"sqlite:///{tmp_path / 'jobs.db'}", webhooks=server)
    validating = store.transition(store.create(job()), JobStatus.VALIDATING, owner="a", lease_until=0.0)
    assert validating is not None and store.transition(validating, JobStatus.SCHEDULED) is not None
    assert store.claim("echo", "a", slots=1, lease_s=60.0) is not None
    assert store.release_expired(everyone=True) == 1
    told = [orjson.loads(d.payload)["detail"]["status"] for d in store.claim_webhooks(10, 60.0)]
    assert told == ["Submitted", "Validating", "Scheduled", "InProgress", "Scheduled"]


async def test_a_tenants_url_is_guarded_again_at_delivery(tmp_path: Path) -> None:
    """DNS may have changed since the job was made: the sender's connect step checks the address."""
    store = BatchJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    sender = WebhookSender(store, CONFIG)
    row = Delivery(1, "msg_1", "job", "http://127.0.0.1:9/h", True, b"{}", time.time(), 0)
    try:
        error = await sender.post(row)
    finally:
        await sender.close()
    assert error is not None and "loopback" in error


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:99999/",
        "http://example.com:abc/",
        "http://example.com:0/",
        "http://[::1",
        f"http://{'a' * 300}.example.com/",
        "ftp://example.com/",
        "http:///no-host",
    ],
)
async def test_a_malformed_job_url_is_a_400_naming_its_field_never_a_crash(url: str) -> None:
    metadata = {"metadata": {hooks.METADATA_KEY: url}}
    with pytest.raises(UserError, match=rf"metadata\.{hooks.METADATA_KEY}"):
        await hooks.check_job_url(CONFIG, {}, metadata)


TRICKLE = """
import asyncio, contextlib, sys, time
from bulkinfer.scheduler import webhooks
from bulkinfer.services.webhooks import Webhooks
from bulkinfer.store.batch_jobs import BatchJobStore
from bulkinfer.store.webhooks import Delivery


async def trickle(reader, writer):
    await reader.read(65536)
    with contextlib.suppress(ConnectionError):  # (the sender hangs up, as it should)
        for byte in b"HTTP/1.1 ":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.5)
    writer.close()


async def main():
    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    webhooks.TIMEOUT_S = 1.0
    sender = webhooks.WebhookSender(BatchJobStore(f"sqlite:///{sys.argv[1]}"), Webhooks(b"k" * 32))
    row = Delivery(1, "msg_1", "job", f"http://127.0.0.1:{port}/h", False, b"{}", time.time(), 0)
    try:
        print(await sender.post(row))
    finally:
        await sender.close()
        server.close()


asyncio.run(main())
"""


def test_a_receiver_that_trickles_its_answer_is_cut_off(tmp_path: Path) -> None:
    """httpx's timeouts are per read: a byte every few seconds would hold the sender for good.

    (In a process of its own: on CPython 3.11.7, once an httpx timeout has been raised in a pytest
    run, ``ast.parse`` fails there, and pytest needs it for modules it imports later.)
    """
    command = [sys.executable, "-c", TRICKLE, str(tmp_path / "jobs.db")]
    sent = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert sent.stdout.startswith("TimeoutError"), sent.stdout + sent.stderr


def test_each_tenant_has_its_own_key_and_none_is_the_servers() -> None:
    keys = {hooks.tenant_key(KEY, tenant) for tenant in ("alice", "bob")}
    assert len(keys) == 2 and KEY not in keys
    assert hooks.tenant_key(KEY, "alice") == hooks.tenant_key(KEY, "alice")
    assert hooks.secret_text(KEY) == "whsec_" + base64.b64encode(KEY).decode()
