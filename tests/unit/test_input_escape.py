"""Inputs that would be read from outside their bucket: a symbolic link under a local bucket folder, and
(the last resort behind the key check) a staged S3 object whose path resolves outside the job's folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bulkinfer.errors import InputError
from bulkinfer.storage.files import list_inputs
from bulkinfer.storage.s3 import _staged_paths
from bulkinfer.storage.uris import LocalBuckets

RECORD = b'{"recordId": "R"}\n'


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data dir with bucket ``bkt`` holding ``in/a.jsonl``, and a secret file outside every bucket."""
    (tmp_path / "data" / "s3" / "bkt" / "in").mkdir(parents=True)
    (tmp_path / "data" / "s3" / "bkt" / "in" / "a.jsonl").write_bytes(RECORD)
    (tmp_path / "secret.jsonl").write_bytes(b'{"recordId": "secret"}\n')
    return tmp_path / "data"


def listed(data: Path, uri: str) -> list[str]:
    """The scheduler's listing of a local bucket URI."""
    buckets = LocalBuckets(data)
    return [f.name for f in list_inputs(buckets.path(uri), within=buckets.bucket_dir(uri))]


def refusal(name: str) -> str:
    return re.escape(f"{name}: a symbolic link to outside its bucket is not read")


def test_a_link_in_a_folder_input_to_a_file_outside_the_bucket_is_refused(data: Path) -> None:
    link = data / "s3" / "bkt" / "in" / "sub" / "b.jsonl"
    link.parent.mkdir()
    link.symlink_to(data.parent / "secret.jsonl")
    with pytest.raises(InputError, match=refusal("sub/b.jsonl")):
        listed(data, "s3://bkt/in/")
    assert [f.name for f in list_inputs(link.parent.parent)] == ["a.jsonl", "sub/b.jsonl"]  # no within


def test_a_link_to_a_file_in_another_bucket_is_refused(data: Path) -> None:
    (data / "s3" / "other").mkdir()
    (data / "s3" / "other" / "x.jsonl").write_bytes(RECORD)
    (data / "s3" / "bkt" / "in" / "x.jsonl").symlink_to(data / "s3" / "other" / "x.jsonl")
    with pytest.raises(InputError, match=refusal("x.jsonl")):
        listed(data, "s3://bkt/in/")


def test_a_link_given_as_the_input_itself_is_refused(data: Path) -> None:
    link = data / "s3" / "bkt" / "in" / "b.jsonl"
    link.symlink_to(data.parent / "secret.jsonl")
    with pytest.raises(InputError, match="the key leaves its bucket"):
        listed(data, "s3://bkt/in/b.jsonl")  # LocalBuckets.path resolves the link first
    with pytest.raises(InputError, match=refusal("b.jsonl")):
        list_inputs(link, within=data / "s3" / "bkt")  # and list_inputs alone refuses it too


def test_a_link_to_a_file_inside_the_same_bucket_is_read(data: Path) -> None:
    (data / "s3" / "bkt" / "shared").mkdir()
    (data / "s3" / "bkt" / "shared" / "x.jsonl").write_bytes(RECORD)
    (data / "s3" / "bkt" / "in" / "x.jsonl").symlink_to(Path("..") / "shared" / "x.jsonl")
    assert listed(data, "s3://bkt/in/") == ["a.jsonl", "x.jsonl"]


def test_a_bucket_folder_that_is_itself_a_link_is_read(data: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere" / "bucket"
    (real / "in").mkdir(parents=True)
    (real / "in" / "a.jsonl").write_bytes(RECORD)
    (real / "shared.jsonl").write_bytes(RECORD)
    (real / "in" / "b.jsonl").symlink_to(real / "shared.jsonl")  # inside the bucket, by its real path
    (data / "s3" / "linked").symlink_to(real, target_is_directory=True)
    assert listed(data, "s3://linked/in/") == ["a.jsonl", "b.jsonl"]
    assert listed(data, "s3://linked/in/a.jsonl") == ["a.jsonl"]
    assert [f.name for f in list_inputs(data / "s3" / "linked" / "in", within=data / "s3" / "linked")] == [
        "a.jsonl",
        "b.jsonl",
    ]


def test_a_linked_folder_under_the_input_is_not_followed(data: Path) -> None:
    (data.parent / "outside").mkdir()
    (data.parent / "outside" / "x.jsonl").write_bytes(RECORD)
    (data / "s3" / "bkt" / "in" / "dir").symlink_to(data.parent / "outside", target_is_directory=True)
    assert listed(data, "s3://bkt/in/") == ["a.jsonl"]


def test_a_staged_path_that_resolves_outside_the_jobs_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "staging" / "job" / "input.partial"
    folder.mkdir(parents=True)
    (folder / "sub").symlink_to(tmp_path, target_is_directory=True)
    assert _staged_paths(["bkt/in/a.jsonl"], "bkt/in", folder) == {"bkt/in/a.jsonl": folder / "a.jsonl"}
    with pytest.raises(InputError, match=re.escape("s3://bkt/in/sub/x.jsonl: would be staged outside")):
        _staged_paths(["bkt/in/a.jsonl", "bkt/in/sub/x.jsonl"], "bkt/in", folder)
