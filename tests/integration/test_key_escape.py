"""Object keys that would climb out of the job's staging folder, against a real S3-protocol server.

An S3 key is any string: ``in/../../x.jsonl`` is one object, and moto (like S3) stores and lists it as
written. Staged naively, it would be written outside ``DATA_DIR/staging/<job>``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from bulkinfer.errors import InputError
from bulkinfer.storage.s3 import S3Staging
from tests.moto import moto_server

# Each climbs out of ``data/staging/<job>/input.partial``: to ``data/`` or to ``tmp_path`` itself.
ESCAPES = ["in/../../../escape.jsonl", "in/../../../../escape.jsonl", "in/sub/../../../../../escape.jsonl"]
ODD_SEGMENTS = ["in/./x.jsonl", "in//y.jsonl", "in/sub/./z.jsonl", "in/sub//w.jsonl"]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    for key, value in {**credentials, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)  # read by boto3 here and by s3fs in S3Staging
    return boto3.client("s3", endpoint_url=endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def put(s3: Any, bucket: str, keys: list[str]) -> dict[str, bytes]:
    bodies = {key: f'{{"recordId": "{key}"}}\n'.encode() for key in keys}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    return bodies


def written(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_the_server_keeps_such_keys_as_written(s3: Any, bucket: str) -> None:
    """Nothing on the way (boto3, the server) normalises them: the fetch below sees them as they are."""
    keys = ESCAPES + ODD_SEGMENTS
    bodies = put(s3, bucket, keys)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(listed) == sorted(keys)
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == bodies[key]


@pytest.mark.parametrize("bad", ESCAPES + ODD_SEGMENTS)
def test_a_key_with_a_dot_dot_dot_or_empty_segment_fails_the_fetch_before_anything_is_written(
    s3: Any, bucket: str, endpoint: str, tmp_path: Path, bad: str
) -> None:
    # Good keys on both sides of the bad one in listing order ('-' < '.' < '/' < 'z'): the first would
    # have been downloaded already if the keys were checked one download at a time.
    put(s3, bucket, ["in/-first.jsonl", bad, "in/z-last.jsonl"])
    staging = S3Staging(endpoint, tmp_path / "data")
    message = f"s3://{bucket}/{bad}: an object key may not hold '..', '.' or empty segments; refusing"
    with pytest.raises(InputError, match=re.escape(message)):
        staging.fetch("job-x", f"s3://{bucket}/in/")
    assert list(tmp_path.rglob("escape.jsonl")) == []
    assert written(tmp_path) == []  # not even the staging folder: nothing was downloaded
    assert not staging.input_dir("job-x").exists()
    assert not staging.input_dir("job-x").with_name("input.partial").exists()


def test_a_bad_key_also_fails_a_fetch_that_had_staged_before(
    s3: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    """A second fetch of the job (a retried validation) leaves no input from the first behind."""
    put(s3, bucket, ["in/a.jsonl"])
    staging = S3Staging(endpoint, tmp_path / "data")
    staging.fetch("job-y", f"s3://{bucket}/in/")
    put(s3, bucket, ["in/../../../escape.jsonl"])
    with pytest.raises(InputError, match=re.escape(f"s3://{bucket}/in/../../../escape.jsonl: an object")):
        staging.fetch("job-y", f"s3://{bucket}/in/")
    assert list(tmp_path.rglob("escape.jsonl")) == []
    assert written(staging.input_dir("job-y").parent) == []


def test_a_single_object_uri_holding_dot_dot_is_refused_too(
    s3: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    put(s3, bucket, ["in/../x.jsonl"])
    staging = S3Staging(endpoint, tmp_path / "data")
    with pytest.raises(InputError, match=re.escape(f"s3://{bucket}/in/../x.jsonl: an object key may not")):
        staging.fetch("job-z", f"s3://{bucket}/in/../x.jsonl")
    assert written(tmp_path) == []


def test_keys_with_dots_inside_their_segments_stage_as_usual(
    s3: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    bodies = put(s3, bucket, ["in/a.jsonl", "in/v1..v2.jsonl", "in/...jsonl", "in/sub/b.jsonl"])
    s3.put_object(Bucket=bucket, Key="other/../../escape.jsonl", Body=b"not under the prefix\n")
    staging = S3Staging(endpoint, tmp_path / "data")
    path = staging.fetch("job-ok", f"s3://{bucket}/in/")
    assert path == staging.input_dir("job-ok")
    staged = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert staged == {key.removeprefix("in/"): body for key, body in bodies.items()}
    assert written(staging.input_dir("job-ok").parent) == ["input", *(f"input/{n}" for n in written(path))]
