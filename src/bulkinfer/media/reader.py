"""Reading images a record names by path or ``s3://`` URI, inside the folders a job may read.

A relative path is relative to the input file's folder and may not climb out of it; an absolute path or
``file://`` URI must lie in that folder or in a configured root, after symlinks are followed. ``s3://``
objects are read through a small injected callable: local buckets under the data dir, or an
S3-protocol server through s3fs, chosen from the same settings as the rest of bulkinfer's storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from bulkinfer.errors import InputError
from bulkinfer.media.errors import MediaError, MediaRefused
from bulkinfer.media.policy import MiB, describe_bytes
from bulkinfer.storage.uris import LocalBuckets

ObjectGet = Callable[[str, int], Awaitable[bytes]]
"""Reads the ``s3://bucket/key`` object, refusing it (``MediaError``) when over the byte cap given."""


class MediaReader(Protocol):
    """Gets the bytes of a non-HTTP reference (path, ``file://``, ``s3://``), or raises ``MediaError``."""

    async def read(self, uri: str, base_dir: Path | None) -> bytes: ...


class FileReader:
    """Reads paths and ``file://`` URIs within the allowed folders, and ``s3://`` URIs through ``objects``.

    ``roots`` are folders any absolute path may point into; the input file's folder (``base_dir``) is
    always allowed. Without ``objects``, ``s3://`` references are refused.
    """

    def __init__(
        self, *, roots: Iterable[Path] = (), objects: ObjectGet | None = None, max_bytes: int = 20 * MiB
    ) -> None:
        self._roots = tuple(Path(r).resolve() for r in roots)
        self._objects = objects
        self._max_bytes = max_bytes

    async def read(self, uri: str, base_dir: Path | None) -> bytes:
        if uri.startswith("s3://"):
            if self._objects is None:
                raise MediaRefused("s3:// images are not enabled here")
            return await self._objects(uri, self._max_bytes)
        # resolve() touches the disk (symlinks), so it runs off the event loop with the read.
        return await asyncio.to_thread(self._read_local, uri, base_dir)

    def _read_local(self, uri: str, base_dir: Path | None) -> bytes:
        return read_capped(self._local_path(uri, base_dir), self._max_bytes)

    def _local_path(self, uri: str, base_dir: Path | None) -> Path:
        path = _path_of(uri)
        base = base_dir.resolve() if base_dir is not None else None
        if not path.is_absolute():
            if base is None:
                raise MediaRefused("a relative path needs the input file's folder to resolve against")
            target = (base / path).resolve()
            if not target.is_relative_to(base):
                raise MediaRefused("the path leaves the input file's folder")
            return target
        target = path.resolve()
        allowed = (*self._roots, base) if base is not None else self._roots
        if not any(target.is_relative_to(root) for root in allowed):
            raise MediaRefused("the path is outside the folders images may be read from")
        return target


def _path_of(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise MediaRefused(f"file URIs name no host (got {parts.netloc!r})")
        return Path(unquote(parts.path))
    if parts.scheme:
        raise MediaRefused(
            f"scheme {parts.scheme!r} is not supported; use http(s)://, s3://, file:// or a path"
        )
    return Path(uri)


def read_capped(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, refusing a file over ``max_bytes`` without reading it all."""
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)  # one past the cap: a file still growing cannot slip through
    except FileNotFoundError:
        raise MediaError("no such file") from None
    except IsADirectoryError:
        raise MediaError("is a folder, not a file") from None
    except OSError as exc:
        raise MediaError(f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise MediaError(f"file is over the {describe_bytes(max_bytes)} limit")
    return data


def local_buckets(data_dir: Path, may_read: Callable[[str], bool] | None = None) -> ObjectGet:
    """``s3://bucket/key`` as ``DATA_DIR/s3/bucket/key``: what bulkinfer does with no S3 endpoint.

    With ``may_read``, the file a symbolic link leads to must be granted too (a link in one tenant's
    folder to another's in the same bucket is not)."""
    buckets = LocalBuckets(data_dir)

    def read(uri: str, max_bytes: int) -> bytes:
        try:
            path = buckets.path(uri)
        except InputError as exc:
            raise MediaError(str(exc).removeprefix(f"{uri}: ")) from None
        if may_read is not None and not may_read(buckets.uri_of(path, uri)):
            raise MediaRefused("not granted")
        return read_capped(path, max_bytes)

    async def get(uri: str, max_bytes: int) -> bytes:
        return await asyncio.to_thread(read, uri, max_bytes)

    return get


def s3fs_objects(endpoint_url: str | None, **storage_options: Any) -> ObjectGet:
    """Objects on an S3-protocol server through s3fs (the ``serve`` extra); credentials come from the
    standard AWS environment, as for job inputs."""
    import s3fs  # the serve extra

    fs: Any = s3fs.S3FileSystem(endpoint_url=endpoint_url, **storage_options)

    def read(uri: str, max_bytes: int) -> bytes:
        key = uri.removeprefix("s3://")
        try:
            size = int(fs.size(key))
            if size > max_bytes:
                raise MediaError(f"object is {size:,} bytes, over the {describe_bytes(max_bytes)} limit")
            data = bytes(fs.cat_file(key, start=0, end=max_bytes + 1))  # replaced since sized: still capped
        except FileNotFoundError:
            raise MediaError("no such object") from None
        except OSError as exc:  # s3fs maps access and network failures to OSError subclasses
            raise MediaError(f"cannot be read: {exc}") from None
        if len(data) > max_bytes:
            raise MediaError(f"object is over the {describe_bytes(max_bytes)} limit")
        return data

    async def get(uri: str, max_bytes: int) -> bytes:
        return await asyncio.to_thread(read, uri, max_bytes)

    return get


def granted_only(objects: ObjectGet, may_read: Callable[[str], bool]) -> ObjectGet:
    """``objects`` for the URIs ``may_read`` grants; any other is refused before it is looked at, so the
    refusal tells nothing of whether the object exists."""

    async def get(uri: str, max_bytes: int) -> bytes:
        if not may_read(uri):
            raise MediaRefused("not granted")
        return await objects(uri, max_bytes)

    return get


def object_reader(data_dir: Path, s3_endpoint_url: str | None) -> ObjectGet:
    """The ``s3://`` reader bulkinfer's settings imply: s3fs with an endpoint, local buckets without."""
    return s3fs_objects(s3_endpoint_url) if s3_endpoint_url else local_buckets(data_dir)
