"""What a request can cost `bulkinfer serve` before it is refused, and what it can learn from the answer.

Floods of large bodies (declared, chunked, signed or not) are refused without the server's memory
growing; a signed request cannot be replayed with another body; a signature for another service is no
signature; runtime images pass the batch media policy; a list token cannot be made huge; files the
server writes are its user's alone; and a job's message names s3:// URIs, never the server's paths.
Every server runs on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.client
import io
import itertools
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from PIL import Image, ImageDraw, ImageFont

from tests.conftest import SLOW_ECHO_CATALOG, anthropic_record
from tests.integration.test_bedrock_api import (
    ROLE,
    Server,
    client,
    create,
    start_server,
    tenants_file,
    wait_status,
)
from tests.moto import S3_CREDENTIALS, moto_server, s3_client

TENANT = ("AKIDBOUNDS", "bounds-secret")
NARROW = ("AKIDNARROW", "narrow-secret")
"""A second tenant, granted only ``s3://narrow/``."""
REGION = "eu-west-1"
MiB = 2**20
CAP = 32 * MiB
"""--max-request-bytes' default."""
FLOOD_BODY = 100 * MiB
FLOOD_REQUESTS = 20
MAX_FLOOD_GROWTH = 100 * MiB
MAX_OCR_GROWTH = 600 * MiB
ANTHROPIC = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 32}


@dataclass
class Bench:
    """The module's server, and every path this test process wrote under its data dir (inputs)."""

    server: Server
    written: set[Path] = field(default_factory=set)

    def put(self, uri: str, data: bytes) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        path = self.server.data_dir / "s3" / bucket / key
        missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.written.update([path, *missing])

    @property
    def pid(self) -> int:
        return self.server.process.pid

    @property
    def port(self) -> int:
        return int(urlsplit(self.server.url).port or 0)


def with_narrow_tenant(tenants: Path) -> Path:
    os.environ["BI_TEST_SECRET_NARROW"] = NARROW[1]
    narrow = f'[tenants.narrow]\naccess_keys = {{ {NARROW[0]} = "BI_TEST_SECRET_NARROW" }}\n'
    tenants.write_text(tenants.read_text() + "\n" + narrow + 'grants = ["s3://narrow/"]\n')
    return tenants


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bounds")
    (root / "models.toml").write_text(SLOW_ECHO_CATALOG)
    with_narrow_tenant(tenants_file(root / "tenants.toml", {TENANT[0]: TENANT[1]}))
    return root


@pytest.fixture(scope="module")
def bench(root: Path) -> Iterator[Bench]:
    server = start_server(root / "data", root / "models.toml", "--tenants", str(root / "tenants.toml"))
    try:
        yield Bench(server)
    finally:
        server.stop()


def bedrock(bench: Bench) -> Any:
    return client(bench.server, *TENANT)


def runtime(server: Server, key: tuple[str, str] = TENANT) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
    )


# -- memory ----------------------------------------------------------------------------------------


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def peak_rss(pid: int) -> Iterator[dict[str, int]]:
    """Samples the process's resident memory in a thread; yields ``{"before", "peak"}``, filled in."""
    seen = {"before": rss(pid), "peak": rss(pid)}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen["peak"] = max(seen["peak"], rss(pid))
            stop.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        stop.set()
        sampler.join()
        seen["peak"] = max(seen["peak"], rss(pid))


def growth(seen: dict[str, int]) -> int:
    return seen["peak"] - seen["before"]


# -- raw requests ----------------------------------------------------------------------------------


def head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def exchange(port: int, request_head: bytes, body: Iterator[bytes]) -> int | None:
    """Send a request while reading: the status of the answer, which may come (and the connection be
    reset) before the body is all sent; None where no answer came."""
    received = b""
    blocks = itertools.chain([request_head], body)
    view = memoryview(b"")
    sending = True
    deadline = time.monotonic() + 60
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setblocking(False)
        while b"\r\n\r\n" not in received:
            assert time.monotonic() < deadline, "no answer within a minute"
            if sending and not view:
                view = memoryview(next(blocks, b""))
                sending = bool(view)
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 1)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                received += data
            elif writable:
                try:
                    view = view[sock.send(view) :]
                except (BrokenPipeError, ConnectionResetError):
                    sending, view = False, memoryview(b"")
    if not received.startswith(b"HTTP/1.1 "):
        return None
    return int(received.split(b" ", 2)[1])


def zeros(total: int, chunked: bool) -> Iterator[bytes]:
    """``total`` zero bytes in 1 MiB blocks, each framed as a chunk where ``chunked``; one block is
    ever in memory."""
    block = bytes(MiB)
    framed = f"{MiB:x}\r\n".encode() + block + b"\r\n" if chunked else block
    for _ in range(total // MiB):
        yield framed
    if chunked:
        yield b"0\r\n\r\n"


def forged_authorization(key: str = TENANT[0], service: str = "bedrock") -> dict[str, str]:
    """Headers with a known access key id and a well-formed signature that is wrong."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    credential = f"{key}/{stamp[:8]}/{REGION}/{service}/aws4_request"
    return {
        "X-Amz-Date": stamp,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host;x-amz-date, "
        f"Signature={'0' * 64}",
    }


def flood(port: int, headers: dict[str, str], chunked: bool) -> list[int | None]:
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(FLOOD_BODY)}
    request_head = head("/model-invocation-job", {**headers, **framing, "Content-Type": "application/json"})
    with ThreadPoolExecutor(FLOOD_REQUESTS) as pool:
        calls = [
            pool.submit(exchange, port, request_head, zeros(FLOOD_BODY, chunked))
            for _ in range(FLOOD_REQUESTS)
        ]
        return [call.result() for call in calls]


def warm_up(bench: Bench) -> None:
    """One ordinary refused request, so the first one's own allocations are not counted."""
    assert exchange(bench.port, head("/model-invocation-job", {"Content-Length": "2"}), iter([b"{}"])) == 403


def test_a_flood_of_unsigned_100_mb_bodies_is_refused_with_flat_memory(bench: Bench) -> None:
    warm_up(bench)
    with peak_rss(bench.pid) as seen:
        statuses = flood(bench.port, {}, chunked=False)
    assert all(status in (403, 413) for status in statuses), statuses
    assert growth(seen) < MAX_FLOOD_GROWTH, f"RSS grew {growth(seen) / MiB:.0f} MiB"


def test_a_flood_of_chunked_bodies_with_a_bad_signature_stops_at_the_cap(bench: Bench) -> None:
    warm_up(bench)
    with peak_rss(bench.pid) as seen:
        statuses = flood(bench.port, forged_authorization(), chunked=True)
    # each read to the cap (413), or refused once the server's budget for bodies in memory is spent (503):
    # never to the signature check (which of the two each gets is a race, so neither is required)
    assert statuses and set(statuses) <= {413, 503}, statuses
    assert growth(seen) < MAX_FLOOD_GROWTH, f"RSS grew {growth(seen) / MiB:.0f} MiB"


def whole_answer(sock: socket.socket) -> bytes:
    """An HTTP answer's head and its Content-Length of body, however many reads they arrive in."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_sent(bench: Bench) -> None:
    headers = {**forged_authorization(), "Content-Length": str(CAP + 1)}
    with socket.create_connection(("127.0.0.1", bench.port), timeout=30) as sock:
        sock.sendall(head("/model-invocation-job", headers))  # and not a byte of the body
        answer = whole_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"__type":"ValidationException"' in answer and b"33,554,432-byte limit" in answer


# -- signatures ------------------------------------------------------------------------------------


def signed(
    bench: Bench,
    method: str,
    path: str,
    body: bytes = b"",
    service: str = "bedrock",
    content_hash: str | None = None,
) -> AWSRequest:
    headers = {"Content-Type": "application/json"}
    if content_hash is not None:
        headers["X-Amz-Content-SHA256"] = content_hash
    request = AWSRequest(method=method, url=f"{bench.server.url}{path}", data=body, headers=headers)
    SigV4Auth(Credentials(*TENANT), service, REGION).add_auth(request)
    return request


def send(bench: Bench, request: AWSRequest, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """Send ``request``'s signed headers with ``body`` (its own by default): status and JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", bench.port, timeout=30)
    try:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        path = urlsplit(request.url).path
        connection.request(request.method, path, body=request.body if body is None else body, headers=headers)
        response = connection.getresponse()
        return response.status, orjson.loads(response.read() or b"{}")
    finally:
        connection.close()


def create_body(name: str, input_uri: str) -> bytes:
    return orjson.dumps(
        {
            "jobName": name,
            "roleArn": ROLE,
            "modelId": "echo",
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": input_uri}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://replay-out/"}},
        }
    )


def test_a_signed_request_cannot_be_replayed_with_another_body(bench: Bench) -> None:
    bench.put("s3://replay-in/in.jsonl", orjson.dumps(anthropic_record("R1", "hello")) + b"\n")
    original = create_body("original", "s3://replay-in/in.jsonl")
    request = signed(
        bench, "POST", "/model-invocation-job", original, content_hash=hashlib.sha256(original).hexdigest()
    )
    assert "x-amz-content-sha256" in request.headers["Authorization"]  # the hash header is signed
    status, answer = send(bench, request, create_body("swapped", "s3://replay-in/in.jsonl"))
    assert (status, answer["__type"]) == (403, "AccessDeniedException"), answer
    assert "X-Amz-Content-SHA256" in answer["message"]
    status, answer = send(bench, request)
    assert status == 200 and "model-invocation-job/" in answer["jobArn"], answer
    names = {j["jobName"] for j in bedrock(bench).list_model_invocation_jobs()["invocationJobSummaries"]}
    assert "original" in names and "swapped" not in names


def test_an_unsigned_payload_is_refused(bench: Bench) -> None:
    body = create_body("unsigned", "s3://replay-in/in.jsonl")
    request = signed(bench, "POST", "/model-invocation-job", body, content_hash="UNSIGNED-PAYLOAD")
    status, answer = send(bench, request)
    assert (status, answer["__type"]) == (403, "AccessDeniedException"), answer


@pytest.mark.parametrize("service", ["s3", "execute-api", "bedrock-runtime"])
def test_a_signature_for_another_service_is_refused_on_the_control_plane(bench: Bench, service: str) -> None:
    body = create_body("wrong-service", "s3://replay-in/in.jsonl")
    status, answer = send(bench, signed(bench, "POST", "/model-invocation-job", body, service))
    assert status == 403, answer
    assert "bedrock" in answer["message"] and service in answer["message"]
    status, answer = send(bench, signed(bench, "GET", "/model-invocation-jobs", service=service))
    assert status == 403, answer


@pytest.mark.parametrize("service", ["bedrock", "bedrock-runtime"])
def test_the_runtime_routes_take_bedrock_runtime_signatures(bench: Bench, service: str) -> None:
    body = orjson.dumps({**ANTHROPIC, "messages": [{"role": "user", "content": "signed for runtime"}]})
    status, answer = send(bench, signed(bench, "POST", "/model/echo/invoke", body, service))
    assert status == 200, answer
    assert answer["content"][0]["text"] == "signed for runtime"
    status, answer = send(bench, signed(bench, "POST", "/model/echo/invoke", body, "s3"))
    assert status == 403, answer


def test_boto3s_bedrock_runtime_client_is_accepted(bench: Bench) -> None:
    body = {**ANTHROPIC, "messages": [{"role": "user", "content": "from boto3"}]}
    answer = runtime(bench.server).invoke_model(modelId="echo", body=orjson.dumps(body))
    assert orjson.loads(answer["body"].read())["content"][0]["text"] == "from boto3"


# -- docs ------------------------------------------------------------------------------------------


def get(url: str) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=30)
    try:
        connection.request("GET", parts.path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_docs_are_off_unless_asked_for(bench: Bench, root: Path) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert get(bench.server.url + path) in (403, 404), path
    documented = start_server(
        root / "docs-data", root / "models.toml", "--tenants", str(root / "tenants.toml"), "--docs"
    )
    try:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert get(documented.url + path) == 200, path
        assert get(documented.url + "/model-invocation-jobs") == 403  # only the docs are public
    finally:
        documented.stop()


# -- runtime images --------------------------------------------------------------------------------


def image_bytes(kind: str, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "red").save(out, format=kind)
    return out.getvalue()


def anthropic_image(source: dict[str, Any]) -> bytes:
    content = [{"type": "image", "source": source}, {"type": "text", "text": "what is this?"}]
    return orjson.dumps({**ANTHROPIC, "messages": [{"role": "user", "content": content}]})


def inline(data: bytes, media_type: str = "image/png") -> bytes:
    return anthropic_image(
        {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}
    )


def refusal(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException", error
    return str(error["Message"])


@pytest.mark.parametrize("kind", ["TIFF", "BMP"])
def test_runtime_images_of_other_formats_are_refused(bench: Bench, kind: str) -> None:
    calls = runtime(bench.server)
    data = image_bytes(kind)
    message = refusal(lambda: calls.invoke_model(modelId="echo", body=inline(data)))
    assert "not an image of an allowed format" in message and "modelInput.messages.0.content.0" in message
    converse = [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": data}}}]}]
    message = refusal(lambda: calls.converse(modelId="echo", messages=converse))
    assert "not an image of an allowed format" in message and "image.source" in message


def test_runtime_images_outside_the_grants_or_on_paths_are_refused(bench: Bench) -> None:
    bench.put("s3://someone-else/secret.png", image_bytes("PNG"))
    bench.put("s3://narrow/mine.png", image_bytes("PNG"))
    calls = runtime(bench.server, NARROW)
    theirs = {"type": "url", "url": "s3://someone-else/secret.png"}
    assert "not granted" in refusal(lambda: calls.invoke_model(modelId="echo", body=anthropic_image(theirs)))
    converse = [
        {
            "role": "user",
            "content": [{"image": {"format": "png", "source": {"s3Location": {"uri": theirs["url"]}}}}],
        }
    ]
    assert "not granted" in refusal(lambda: calls.converse(modelId="echo", messages=converse))
    paths = {
        "images/cat.png": "a relative path",
        "../s3/someone-else/secret.png": "a relative path",
        "file:///etc/hostname": "the path is outside the folders images may be read from",
    }
    for path, reason in paths.items():
        body = anthropic_image({"type": "url", "url": path})
        message = refusal(functools.partial(calls.invoke_model, modelId="echo", body=body))
        assert f"modelInput.messages.0.content.0.source: {path}: {reason}" in message
    mine = {"type": "url", "url": "s3://narrow/mine.png"}
    answer = calls.invoke_model(modelId="echo", body=anthropic_image(mine))  # its own grant is fine
    assert orjson.loads(answer["body"].read())["type"] == "message"


def big_page() -> bytes:
    """A 20-megapixel PNG, mostly white, with a line of text: small on the wire, large decoded."""
    image = Image.new("RGB", (5000, 4000), "white")
    ImageDraw.Draw(image).text(
        (300, 300), "INVOICE 2024-117", fill="black", font=ImageFont.load_default(size=220)
    )
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def test_a_20_megapixel_image_is_read_by_ocr_with_bounded_memory(bench: Bench) -> None:
    pytest.importorskip("rapidocr")
    calls = runtime(bench.server)
    small = Image.new("RGB", (400, 120), "white")
    ImageDraw.Draw(small).text((10, 10), "WARM UP", fill="black", font=ImageFont.load_default(size=60))
    out = io.BytesIO()
    small.save(out, format="PNG")
    calls.invoke_model(modelId="ocr", body=inline(out.getvalue()))  # loads the model before measuring
    page = big_page()
    body = inline(page)
    assert len(page) < 20 * MiB and len(body) < CAP
    with peak_rss(bench.pid) as seen:
        answer = calls.invoke_model(modelId="ocr", body=body)
    text = orjson.loads(answer["body"].read())["content"][0]["text"]
    assert "INVOICE" in text, text
    assert growth(seen) < MAX_OCR_GROWTH, f"RSS grew {growth(seen) / MiB:.0f} MiB"


# -- list tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "x" * 3000,
        base64.urlsafe_b64encode(b"offset:99999999999999999999").decode(),
        base64.urlsafe_b64encode(b"offset:" + b"9" * 1500).decode(),
        base64.urlsafe_b64encode(b"offset:-1").decode(),
    ],
    ids=["over-2048-chars", "enormous-offset", "long-offset", "negative-offset"],
)
def test_a_forged_next_token_is_a_validation_error(bench: Bench, token: str) -> None:
    calls = bedrock(bench)
    with pytest.raises(ClientError) as caught:
        calls.list_model_invocation_jobs(nextToken=token)
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] < 500, error
    assert error["Error"]["Code"] == "ValidationException", error
    assert "nextToken" in error["Error"]["Message"]


def test_a_100_000_character_next_token_is_refused_before_the_app(bench: Bench) -> None:
    """uvicorn refuses a request line this long (400, plain text) before any route sees it."""
    calls = bedrock(bench)
    with pytest.raises(ClientError) as caught:
        calls.list_model_invocation_jobs(nextToken="x" * 100_000)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400, caught.value.response
    assert "invocationJobSummaries" in calls.list_model_invocation_jobs(maxResults=1)  # still serving


# -- files and messages ----------------------------------------------------------------------------


def test_the_servers_files_are_its_users_alone(bench: Bench) -> None:
    lines = b"".join(orjson.dumps(anthropic_record(f"M{i}", f"m {i}")) + b"\n" for i in range(5))
    bench.put("s3://modes-in/calls/in.jsonl", lines)
    calls = bedrock(bench)
    arn = create(calls, "modes", "s3://modes-in/calls/", "s3://modes-out/results/")
    assert wait_status(calls, arn, {"Completed", "Failed"})["status"] == "Completed"
    job_dir = bench.server.data_dir / "s3" / "modes-out" / "results" / arn.rsplit("/", 1)[1]
    assert {p.name for p in job_dir.iterdir()} >= {"in.jsonl.out", "manifest.json.out"}
    made = [p for p in bench.server.data_dir.rglob("*") if p not in bench.written]
    expected = ["bulkinfer.db", "engine/state.db", "s3/modes-out/results"]
    assert {bench.server.data_dir / name for name in expected} <= set(made)
    assert {job_dir / "in.jsonl.out", job_dir / "manifest.json.out"} <= set(made)
    loose = {str(p): oct(p.stat().st_mode & 0o777) for p in made if p.is_file() and p.stat().st_mode & 0o077}
    assert loose == {}
    folders = {
        str(p): oct(p.stat().st_mode & 0o777)
        for p in made
        if p.is_dir() and p.stat().st_mode & 0o777 != 0o700
    }
    assert folders == {}
    assert bench.server.data_dir.stat().st_mode & 0o777 == 0o700


def invalid_lines() -> bytes:
    return b'{"recordId": "A1", "modelInput": {"messages": "not a list"}}\nnot json at all\n'


def test_a_failed_jobs_message_names_s3_uris_not_server_paths(bench: Bench) -> None:
    bench.put("s3://broken-in/all-bad/nested/records.jsonl", invalid_lines())
    outside = bench.server.data_dir.parent / "outside.jsonl"
    outside.write_bytes(invalid_lines())
    link = bench.server.data_dir / "s3" / "broken-in" / "linked" / "evil.jsonl"
    link.parent.mkdir()
    link.symlink_to(outside)
    bench.written.update([link, link.parent])
    calls = bedrock(bench)
    messages = {}
    for name, uri in [
        ("all-bad", "s3://broken-in/all-bad/"),
        ("linked-folder", "s3://broken-in/linked/"),
        ("linked-file", "s3://broken-in/linked/evil.jsonl"),
    ]:
        arn = create(calls, name, uri, "s3://broken-out/")
        messages[name] = wait_status(calls, arn, {"Failed"})["message"]
    for message in messages.values():
        assert str(bench.server.data_dir.parent) not in message and "/tmp" not in message, messages
    assert "nested/records.jsonl line 1" in messages["all-bad"], messages
    assert "s3://broken-in/linked/evil.jsonl" in messages["linked-file"], messages


def test_a_failed_jobs_message_names_s3_uris_on_an_s3_endpoint(root: Path) -> None:
    credentials = S3_CREDENTIALS
    with moto_server() as port, pytest.MonkeyPatch.context() as env:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket="broken-in")
        s3.create_bucket(Bucket="broken-out")
        s3.put_object(Bucket="broken-in", Key="all-bad/nested/records.jsonl", Body=invalid_lines())
        for name, value in credentials.items():
            env.setenv(name, value)
        server = start_server(
            root / "s3-data",
            root / "models.toml",
            "--tenants",
            str(root / "tenants.toml"),
            "--s3-endpoint-url",
            endpoint,
        )
        try:
            calls = client(server, *TENANT)
            arn = create(calls, "all-bad", "s3://broken-in/all-bad/", "s3://broken-out/")
            message = wait_status(calls, arn, {"Failed"})["message"]
        finally:
            server.stop()
    assert str(server.data_dir) not in message and "/tmp" not in message, message
    assert "records.jsonl line 1" in message, message


def test_big_bodies_stalled_under_one_key_block_no_one_else(bench: Bench) -> None:
    """Knowing a key id is enough to send a body; stalled big bodies under it hold that key's share of
    the server's budget for bodies at most, and a small request never waits on the budget at all."""
    stalled = []
    framing = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    block = 4 * MiB
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", bench.port), timeout=30)
            stalled.append(sock)
            with contextlib.suppress(OSError):  # refused (503) once past the key's share: it may hang up
                sock.sendall(head("/model-invocation-job", {**forged_authorization(NARROW[0]), **framing}))
                for _ in range(7):  # 28 MiB, then nothing more
                    sock.sendall(f"{block:x}\r\n".encode() + b"\0" * block + b"\r\n")
        assert bedrock(bench).list_model_invocation_jobs()["ResponseMetadata"]["HTTPStatusCode"] == 200
        body = create_body("beside-stalled-uploads", "s3://replay-in/in.jsonl")
        status, answer = send(bench, signed(bench, "POST", "/model-invocation-job", body))
        assert status != 503, answer
    finally:
        for sock in stalled:
            sock.close()
