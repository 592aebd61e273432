"""One policy for every URI a job names: ``s3://bucket/key`` maps to a local bucket folder.

With no S3 endpoint configured, bucket ``B`` is the folder ``DATA_DIR/s3/B``, so the boto3 flow works
out of the box; a key may not climb out of its bucket.
"""

from __future__ import annotations

import re
from pathlib import Path

from bulkinfer.errors import InputError

S3_URI = re.compile(r"s3://([a-z0-9][-.a-z0-9]{1,61}[a-z0-9])(?:/(.*))?")


class LocalBuckets:
    def __init__(self, data_dir: Path) -> None:
        self.root = (data_dir / "s3").resolve()

    def uri_of(self, path: Path, uri: str) -> str:
        """The ``s3://`` URI of a path reached through ``uri``, as the path resolves (symbolic links
        followed), in the same bucket; "" for a path outside that bucket. Grants are checked on this,
        so a link in one tenant's folder to another's in the same bucket is granted by where it leads."""
        bucket = split_s3(uri)[0]
        resolved, bucket_dir = path.resolve(), (self.root / bucket).resolve()
        if not resolved.is_relative_to(bucket_dir):
            return ""
        key = resolved.relative_to(bucket_dir).as_posix()
        return f"s3://{bucket}/" + ("" if key == "." else key)

    def bucket_dir(self, uri: str) -> Path:
        """The folder of an ``s3://`` URI's bucket: every input file listed must resolve inside it."""
        return self.root / split_s3(uri)[0]

    def path(self, uri: str, *, must_exist: bool = True) -> Path:
        """The local path of an ``s3://`` URI."""
        bucket, key = split_s3(uri)
        if ".." in key.split("/"):
            raise InputError(f"{uri}: a key may not contain '..'")
        bucket_dir = self.root / bucket
        if must_exist and not bucket_dir.is_dir():
            raise InputError(f"{uri}: bucket {bucket!r} does not exist")
        target = (bucket_dir / key).resolve()
        if not target.is_relative_to(bucket_dir.resolve()):
            raise InputError(f"{uri}: the key leaves its bucket")
        if must_exist and not target.exists():
            raise InputError(f"{uri}: no such key or prefix")
        return target


def split_s3(uri: str) -> tuple[str, str]:
    """An ``s3://`` URI's bucket and key."""
    match = S3_URI.fullmatch(uri)
    if match is None:
        raise InputError(f"{uri}: not an s3://bucket/key URI")
    return match.group(1), match.group(2) or ""
