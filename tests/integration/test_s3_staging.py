"""S3Staging against a real S3-protocol server (moto) behind NetCut: the network is cut and restored
around fetches and publishes, and what ends up on disk or in the bucket is checked byte for byte."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from moto.core.authorization import enable_iam_authentication
from moto.server import ThreadedMotoServer
from s3fs.errors import translate_boto_error

from bulkinfer.errors import InputError
from bulkinfer.storage import s3 as s3_module
from bulkinfer.storage.s3 import S3Staging, is_transient_s3
from bulkinfer.transient import Outage
from tests.netcut import NetCut

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def net(moto_url: str) -> Iterator[NetCut]:
    with NetCut(int(moto_url.rsplit(":", 1)[1])) as net:
        yield net


@pytest.fixture
def s3(moto_url: str) -> Any:
    """A client straight to moto, past NetCut: sets up and checks whatever the network is doing."""
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", **_keys(CREDENTIALS))


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def staging(net: NetCut, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Staging:
    for key, value in {**CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    return S3Staging(net.url, tmp_path / "data")


class RestoreOnWait:
    """An ``on_wait`` that records each Outage and, at the first, restores the network from another
    thread while the caller backs off."""

    def __init__(self, net: NetCut) -> None:
        self.net = net
        self.outages: list[Outage] = []
        self._thread: threading.Thread | None = None

    def __call__(self, outage: Outage) -> None:
        self.outages.append(outage)
        if self._thread is None:
            self._thread = threading.Thread(target=self.net.restore)
            self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


def _keys(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }


def put_inputs(s3: Any, bucket: str, prefix: str, count: int) -> dict[str, bytes]:
    bodies = {f"part-{i}.jsonl": f'{{"recordId": "R{i}"}}\n'.encode() * (i + 1) for i in range(count)}
    for name, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body)
    return bodies


def write_outputs(staging: S3Staging, job_id: str, files: dict[str, bytes]) -> None:
    folder = staging.output_dir(job_id) / job_id
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(body)


def published(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        o["Key"][len(prefix) :]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed
    }


def staged(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_fetch_waits_while_s3_is_cut_and_stages_every_object_after_restore(
    staging: S3Staging, net: NetCut, s3: Any, bucket: str
) -> None:
    bodies = put_inputs(s3, bucket, "calls", 3)
    s3.put_object(Bucket=bucket, Key="calls/README.txt", Body=b"not an input")
    net.cut()
    waiter = RestoreOnWait(net)
    path = staging.fetch("job-a", f"s3://{bucket}/calls/", on_wait=waiter, patience_s=60)
    waiter.join()
    assert path == staging.input_dir("job-a")
    assert staged(path) == bodies
    assert waiter.outages and all(o.what == "S3" for o in waiter.outages)
    assert str(waiter.outages[0]).startswith("S3 not answering since ")


def test_a_single_object_is_staged_as_one_file_through_an_outage(
    staging: S3Staging, net: NetCut, s3: Any, bucket: str
) -> None:
    bodies = put_inputs(s3, bucket, "one", 2)
    net.cut()
    waiter = RestoreOnWait(net)
    path = staging.fetch("job-one", f"s3://{bucket}/one/part-1.jsonl", on_wait=waiter, patience_s=60)
    waiter.join()
    assert path == staging.input_dir("job-one") / "part-1.jsonl"
    assert staged(staging.input_dir("job-one")) == {"part-1.jsonl": bodies["part-1.jsonl"]}
    assert waiter.outages


def test_fetch_again_stages_afresh_and_sees_objects_changed_since(
    staging: S3Staging, s3: Any, bucket: str
) -> None:
    put_inputs(s3, bucket, "calls", 2)
    staging.fetch("job-r", f"s3://{bucket}/calls")
    # What a crash mid-fetch leaves behind, and a change on the server since the first listing.
    (staging.input_dir("job-r") / "stale.jsonl").write_bytes(b"left over\n")
    (staging.input_dir("job-r").with_name("input.partial") / "x.jsonl").parent.mkdir(parents=True)
    (staging.input_dir("job-r").with_name("input.partial") / "x.jsonl").write_bytes(b"half\n")
    s3.delete_object(Bucket=bucket, Key="calls/part-0.jsonl")
    s3.put_object(Bucket=bucket, Key="calls/deeper/new.jsonl", Body=b'{"recordId": "N"}\n')
    path = staging.fetch("job-r", f"s3://{bucket}/calls")
    assert staged(path) == {
        "part-1.jsonl": b'{"recordId": "R1"}\n' * 2,
        "deeper/new.jsonl": b'{"recordId": "N"}\n',
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["input"]


def test_publish_waits_while_s3_is_cut_and_uploads_every_output_after_restore(
    staging: S3Staging, net: NetCut, s3: Any, bucket: str
) -> None:
    outputs = {
        "part-0.jsonl.out": b'{"recordId": "R0"}\n',
        "sub/part-1.jsonl.out": b'{"recordId": "R1"}\n' * 50,
        "manifest.json.out": b'{"totalRecordCount": 51}',
    }
    write_outputs(staging, "job-p", outputs)
    net.cut()
    waiter = RestoreOnWait(net)
    staging.publish("job-p", f"s3://{bucket}/results/", on_wait=waiter, patience_s=60)
    waiter.join()
    assert published(s3, bucket, "results/job-p/") == outputs
    assert waiter.outages and str(waiter.outages[-1]).startswith("S3 not answering since ")
    assert staged(staging.output_dir("job-p") / "job-p") == outputs  # kept until discard
    staging.discard("job-p")
    assert not staging.output_dir("job-p").parent.exists()
    staging.discard("job-p")  # discarding twice is harmless


def test_publish_cut_in_the_middle_then_run_again_ends_with_every_object_right(
    staging: S3Staging, net: NetCut, s3: Any, bucket: str
) -> None:
    outputs = {f"part-{i:02d}.jsonl.out": bytes([65 + i]) * 100_000 for i in range(10)}
    write_outputs(staging, "job-m", outputs)
    s3.put_object(Bucket=bucket, Key="out/job-m/part-09.jsonl.out", Body=b"from an earlier attempt")
    net.cut_after(350_000)  # the network dies during the fourth upload and stays down
    outages: list[Outage] = []
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)) as raised:
        staging.publish("job-m", f"s3://{bucket}/out", on_wait=outages.append, patience_s=0.5)
    assert is_transient_s3(raised.value) and outages
    partly = published(s3, bucket, "out/job-m/")
    assert 1 <= sum(partly.get(name) == body for name, body in outputs.items()) < len(outputs)
    net.restore()
    staging.publish("job-m", f"s3://{bucket}/out")
    assert published(s3, bucket, "out/job-m/") == outputs


def test_a_missing_bucket_or_prefix_is_refused_at_once(staging: S3Staging, s3: Any, bucket: str) -> None:
    outages: list[Outage] = []
    with pytest.raises(InputError, match=r"s3://no-such-bucket/in: cannot list: NoSuchBucket"):
        staging.fetch("job-d", "s3://no-such-bucket/in", on_wait=outages.append, patience_s=60)
    put_inputs(s3, bucket, "calls", 1)
    with pytest.raises(InputError, match=rf"s3://{bucket}/nothing/: no .jsonl object there"):
        staging.fetch("job-d", f"s3://{bucket}/nothing/", on_wait=outages.append, patience_s=60)
    write_outputs(staging, "job-d", {"manifest.json.out": b"{}"})
    with pytest.raises(
        InputError, match=r"s3://no-such-bucket/out/job-d/manifest.json.out: cannot upload: NoSuchBucket"
    ):
        staging.publish("job-d", "s3://no-such-bucket/out", on_wait=outages.append, patience_s=60)
    assert outages == []


def test_refused_credentials_are_refused_at_once(
    net: NetCut, s3: Any, bucket: str, moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_inputs(s3, bucket, "calls", 1)
    iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1", **_keys(CREDENTIALS))
    iam.create_user(UserName="no-rights")
    key = iam.create_access_key(UserName="no-rights")["AccessKey"]
    outages: list[Outage] = []
    cases = {
        "InvalidAccessKeyId": ("AKIANOSUCHKEY0000000", "whatever"),
        "SignatureDoesNotMatch": (key["AccessKeyId"], "not-the-secret"),
        "AccessDenied": (key["AccessKeyId"], key["SecretAccessKey"]),  # a real key without a policy
    }
    with enable_iam_authentication():
        for code, (key_id, secret) in cases.items():
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            refused = S3Staging(net.url, tmp_path / "data")
            with pytest.raises(InputError, match=rf"s3://{bucket}/calls: cannot list: {code}"):
                refused.fetch("job-c", f"s3://{bucket}/calls", on_wait=outages.append, patience_s=60)
    assert outages == []


def test_when_patience_runs_out_the_last_error_is_raised(
    staging: S3Staging, net: NetCut, s3: Any, bucket: str
) -> None:
    put_inputs(s3, bucket, "calls", 1)
    write_outputs(staging, "job-e", {"manifest.json.out": b"{}"})
    net.cut()
    outages: list[Outage] = []
    with pytest.raises(EndpointConnectionError):
        staging.fetch("job-e", f"s3://{bucket}/calls", on_wait=outages.append, patience_s=0.5)
    with pytest.raises(EndpointConnectionError):
        staging.publish("job-e", f"s3://{bucket}/out", on_wait=outages.append, patience_s=0.5)
    # (how many tries fit in the patience depends on the machine's load; each wait is reported)
    assert outages and all(outage.what == "S3" for outage in outages)
    assert "EndpointConnectionError: Could not connect to the endpoint URL" in str(outages[-1])
    assert not staging.input_dir("job-e").exists()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections and never answers, as a hung server or a dead load balancer
    does (no S3 protocol at all: nothing is ever read or written)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener was closed
            while True:
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close alone would not)
        listener.close()
        thread.join()
        for conn in accepted:
            conn.close()


def test_a_server_that_never_answers_is_given_up_on_as_a_transient_failure(
    silent_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {**CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(s3_module, "READ_TIMEOUT_S", 1)
    monkeypatch.setattr(s3_module, "UPLOAD_TIMEOUT_S", 1.0)
    staging = S3Staging(silent_endpoint, tmp_path / "data")
    write_outputs(staging, "job-s", {"manifest.json.out": b"{}"})
    with pytest.raises(ReadTimeoutError) as listing:
        staging.fetch("job-s", "s3://bucket/calls", patience_s=0.5)
    # An upload waits for "100 Continue" where no read timeout applies: only the wall-clock bound ends it.
    with pytest.raises(TimeoutError, match="no answer to the upload of bucket/out/job-s/") as upload:
        staging.publish("job-s", "s3://bucket/out", patience_s=0.5)
    assert is_transient_s3(listing.value) and is_transient_s3(upload.value)


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (translate_boto_error(_client_error("SlowDown", 503)), True),
        (translate_boto_error(_client_error("ServiceUnavailable", 503)), True),
        (translate_boto_error(_client_error("InternalError", 500)), True),
        (translate_boto_error(_client_error("SomethingNew", 502)), True),
        (translate_boto_error(_client_error("RequestTimeout", 400)), True),
        (translate_boto_error(_client_error("TooManyRequests", 429)), True),
        (translate_boto_error(_client_error("NoSuchBucket", 404)), False),
        (translate_boto_error(_client_error("NoSuchKey", 404)), False),
        (translate_boto_error(_client_error("AccessDenied", 403)), False),
        (translate_boto_error(_client_error("InvalidAccessKeyId", 403)), False),
        (translate_boto_error(_client_error("SignatureDoesNotMatch", 403)), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:9"), True),
        (ConnectionResetError(104, "reset"), True),
        (TimeoutError(), True),
        (FileNotFoundError("bucket/key"), False),
        (ValueError("a bug"), False),
    ],
)
def test_is_transient_s3_tells_what_may_pass_from_what_will_not(exc: BaseException, transient: bool) -> None:
    assert is_transient_s3(exc) is transient
