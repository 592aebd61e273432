"""The bytes of whole files at ``s3://`` URIs, put once, read back in blocks, deleted: local buckets under
the data dir (`LocalBuckets`) when no S3 endpoint is set, the S3 server otherwise.

A file is put from a complete local file (`Blobs.spool_path` says where to write that): locally it is
renamed into place, so a reader sees it whole or not at all; on S3 it is uploaded whole. A transient S3
failure (the server away, slow or failing) is retried with backoff for a few seconds; one that lasts
raises `StorageUnavailable`, which a caller may try again later.
"""

from __future__ import annotations

import contextlib
import errno
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from bulkinfer.errors import BulkinferError
from bulkinfer.storage.files import fsync_dir, read_blocks, remove_quietly, temp_path, write_durably
from bulkinfer.storage.s3 import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    UPLOAD_MIN_BYTES_PER_S,
    UPLOAD_TIMEOUT_S,
    is_transient_s3,
)
from bulkinfer.storage.uris import LocalBuckets
from bulkinfer.transient import retrying_call

T = TypeVar("T")
READ_BYTES = 1 << 20
PATIENCE_S = 5.0
"""How long one call waits out S3 before the caller (a request, a loop) is told it is unavailable."""


class StorageUnavailable(BulkinferError):
    """The file storage is not answering; try again later."""


class Blobs(Protocol):
    def spool_path(self, uri: str) -> Path:
        """A fresh local path to write a file's bytes to before `put` takes them."""
        ...

    def put(self, uri: str, spooled: Path) -> None:
        """Make ``uri`` hold the bytes of the local file ``spooled`` (fsynced), which is consumed."""
        ...

    def open(self, uri: str) -> IO[bytes]:
        """The file at ``uri`` for reading; FileNotFoundError when it is not there."""
        ...

    def delete(self, uri: str) -> None:
        """Remove the file at ``uri``; one already gone is no error."""
        ...


def blocks_of(f: IO[bytes]) -> Iterator[bytes]:
    """A file opened by `Blobs.open`, in blocks; closed at the end (or when the iterator is closed)."""
    with f:
        while block := f.read(READ_BYTES):
            yield block


class LocalBlobs:
    def __init__(self, data_dir: Path) -> None:
        self._buckets = LocalBuckets(data_dir)

    def _path(self, uri: str) -> Path:
        return self._buckets.path(uri, must_exist=False)

    def spool_path(self, uri: str) -> Path:
        # beside the file, renamed into place whole by put; a name of its own, so two writers of one
        # object (two requests showing one ended batch) never rename each other's away
        path = temp_path(self._path(uri))
        path = path.with_name(f".{uuid.uuid4().hex[:12]}{path.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def put(self, uri: str, spooled: Path) -> None:
        path = self._path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            spooled.replace(path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            write_durably(path, read_blocks(spooled))  # spooled on another filesystem: copied
            remove_quietly(spooled)
        fsync_dir(path.parent)

    def open(self, uri: str) -> IO[bytes]:
        path = self._path(uri)
        if not path.is_file() or path.is_symlink():
            raise FileNotFoundError(uri)
        return path.open("rb")

    def delete(self, uri: str) -> None:
        remove_quietly(self._path(uri))


class S3Blobs:
    def __init__(self, endpoint_url: str, spool_dir: Path, patience_s: float = PATIENCE_S) -> None:
        import s3fs  # the serve extra

        self._fs: Any = s3fs.S3FileSystem(
            endpoint_url=endpoint_url,
            skip_instance_cache=True,
            config_kwargs={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
                "retries": {"total_max_attempts": 1},  # our backoff governs (see storage.s3)
            },
        )
        self._fs.retries = 1
        self._spool = spool_dir
        self._patience_s = patience_s

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return retrying_call(fn, what="S3", transient=is_transient_s3, patience_s=self._patience_s)
        except Exception as exc:
            if is_transient_s3(exc):
                raise StorageUnavailable("the file storage (S3) is not answering; try again later") from exc
            raise

    def spool_path(self, uri: str) -> Path:
        self._spool.mkdir(parents=True, exist_ok=True)
        return self._spool / f".{uuid.uuid4().hex}.upload"

    def put(self, uri: str, spooled: Path) -> None:
        key = uri.removeprefix("s3://")
        timeout = UPLOAD_TIMEOUT_S + spooled.stat().st_size / UPLOAD_MIN_BYTES_PER_S
        try:
            try:
                self._call(lambda: self._fs.put_file(str(spooled), key, timeout=timeout))
            except FileNotFoundError:  # the files bucket is not there yet (a new S3 server): made once
                self._call(lambda: self._fs.mkdir(key.split("/", 1)[0]))
                self._call(lambda: self._fs.put_file(str(spooled), key, timeout=timeout))
        finally:
            remove_quietly(spooled)

    def open(self, uri: str) -> IO[bytes]:
        key = uri.removeprefix("s3://")
        opened: IO[bytes] = self._call(lambda: self._fs.open(key, "rb", block_size=READ_BYTES))
        return opened

    def delete(self, uri: str) -> None:
        key = uri.removeprefix("s3://")

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm_file(key)

        self._call(remove)


def blobs_for(data_dir: Path, s3_endpoint_url: str | None) -> Blobs:
    """The server's file storage: its S3 server, or local buckets under its data dir."""
    if s3_endpoint_url is None:
        return LocalBlobs(data_dir)
    return S3Blobs(s3_endpoint_url, data_dir / "uploads")
