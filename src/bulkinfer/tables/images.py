"""Where a table's images live, and the checks an image must pass before it goes into a record.

Image names come from a table column and are looked up under one location: a local folder, or an
``s3://bucket/prefix/`` read through the repository's storage policy (a local bucket folder under the
data dir when no S3 endpoint is given, an S3-protocol server through s3fs when one is). A name may not
climb out of that location.

An inlined image is read and decoded in full: it must be PNG, JPEG, GIF or WebP (by its content, not its
name), at most ``MAX_IMAGE_BYTES`` and ``MAX_IMAGE_SIDE`` pixels a side, as Bedrock accepts for Claude and
Converse. A referenced image is only checked to exist and to have one of those formats' extensions; the
engine fetches and checks it when the job runs.
"""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from PIL import Image

from bulkinfer import media
from bulkinfer.errors import UserError
from bulkinfer.storage.uris import S3_URI, LocalBuckets

MAX_IMAGE_BYTES = 3_750_000
"""Bedrock's limit for one image in a Claude or Converse request (3.75 MB)."""
MAX_IMAGE_SIDE = 8000
"""Bedrock's limit on an image's width and height, in pixels."""
_POLICY = media.MediaPolicy(max_bytes=MAX_IMAGE_BYTES)
SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif", ".webp": "webp"}

ProblemKind = Literal["image-name", "image-missing", "image-unreadable", "image-format", "image-too-large"]


class ImageProblem(Exception):
    """One image a row names cannot be used; ``kind`` classifies it for the report."""

    def __init__(self, kind: ProblemKind, message: str) -> None:
        super().__init__(message)
        self.kind: ProblemKind = kind
        self.message = message


class ImageStore(Protocol):
    """A place image names are looked up in."""

    kind: Literal["folder", "s3"]

    def read(self, name: str) -> bytes:
        """The image's bytes; ``ImageProblem`` when it is missing, unreadable or too large to send."""

    def check_exists(self, name: str) -> None:
        """Raise ``ImageProblem`` when there is no such image."""

    def reference(self, name: str) -> str:
        """The URI or path a record uses to point at the image."""


def check_image(data: bytes) -> str:
    """Decode an image in full; its format's short name (``png``), or ``ImageProblem``.

    The same checks the engine makes before a model sees an image (``bulkinfer.media``), held to
    Bedrock's tighter limits, since a prepared record should be one Bedrock takes as it is.
    """
    try:
        checked = media.check_image(data, _POLICY)
    except media.NotAnImage:
        raise ImageProblem("image-format", _refused_format(data)) from None
    except media.ImageTooLarge as exc:
        raise ImageProblem("image-too-large", str(exc)) from None
    except media.MediaError as exc:
        raise ImageProblem("image-unreadable", str(exc)) from None
    if max(checked.width, checked.height) > MAX_IMAGE_SIDE:
        message = f"{checked.width}x{checked.height} pixels, over {MAX_IMAGE_SIDE} a side"
        raise ImageProblem("image-too-large", message)
    return checked.media_type.removeprefix("image/")


def _refused_format(data: bytes) -> str:
    """Why an image's format is refused, naming the format when Pillow knows it (header only)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f"{image.format} images are not accepted ({_ACCEPTED})"
    except Exception:  # not an image Pillow knows at all
        return f"not an image in an accepted format ({_ACCEPTED})"


def suffix_format(name: str) -> str:
    """The format a referenced image's extension names, or ``ImageProblem``."""
    short = SUFFIX_FORMATS.get(PurePosixPath(name).suffix.lower())
    if short is None:
        raise ImageProblem("image-format", f"the extension names no accepted format ({_ACCEPTED})")
    return short


_ACCEPTED = "png, jpeg, gif, webp"


def safe_name(name: str) -> str:
    """An image name as a relative POSIX path that stays inside the image location."""
    path = PurePosixPath(name.strip().replace("\\", "/"))
    if not path.parts or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        raise ImageProblem("image-name", "an image name must be a relative path inside the image location")
    return path.as_posix()


class FolderImages:
    """Images in a local folder. References are paths relative to the output file's folder (the engine
    reads them against the input file's folder), or absolute ``file://`` URIs."""

    kind: Literal["folder", "s3"] = "folder"

    def __init__(self, root: Path, output_dir: Path, *, absolute: bool = False) -> None:
        if not root.is_dir():
            raise UserError(f"image folder not found: {root}")
        self.root = root.resolve()
        self._output_dir = output_dir.resolve()
        self._absolute = absolute

    def _path(self, name: str) -> Path:
        return self.root / safe_name(name)

    def read(self, name: str) -> bytes:
        path = self._path(name)
        try:
            size = path.stat().st_size
            if size > MAX_IMAGE_BYTES:
                raise _too_big(size)
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageProblem("image-missing", f"no such file in {self.root}") from None
        except IsADirectoryError:
            raise ImageProblem("image-missing", f"a folder, not an image file, in {self.root}") from None
        except OSError as exc:
            raise ImageProblem("image-unreadable", f"cannot be read: {exc.strerror}") from None

    def check_exists(self, name: str) -> None:
        if not self._path(name).is_file():
            raise ImageProblem("image-missing", f"no such file in {self.root}")

    def reference(self, name: str) -> str:
        path = self._path(name)
        if self._absolute:
            return path.as_uri()
        return Path(os.path.relpath(path, self._output_dir)).as_posix()


class BucketImages:
    """Images under an ``s3://bucket/prefix/``: in a local bucket folder (``buckets``) or, given an
    s3fs filesystem, on an S3-protocol server. References are the images' ``s3://`` URIs."""

    kind: Literal["folder", "s3"] = "s3"

    def __init__(self, prefix: str, *, buckets: LocalBuckets | None = None, fs: Any = None) -> None:
        match = S3_URI.fullmatch(prefix)
        if match is None:
            raise UserError(f"{prefix}: not an s3://bucket/prefix/ URI")
        self._bucket, self._prefix = match.group(1), (match.group(2) or "").strip("/")
        self._buckets, self._fs = buckets, fs
        if buckets is not None:
            buckets.path(f"s3://{self._bucket}")  # the bucket must exist: InputError otherwise

    def reference(self, name: str) -> str:
        key = f"{self._prefix}/{safe_name(name)}" if self._prefix else safe_name(name)
        return f"s3://{self._bucket}/{key}"

    def read(self, name: str) -> bytes:
        uri = self.reference(name)
        try:
            if self._buckets is not None:
                path = self._buckets.path(uri, must_exist=False)
                size = path.stat().st_size
                if size > MAX_IMAGE_BYTES:
                    raise _too_big(size)
                return path.read_bytes()
            size = int(self._fs.size(uri))
            if size > MAX_IMAGE_BYTES:
                raise _too_big(size)
            return bytes(self._fs.cat_file(uri))
        except (FileNotFoundError, IsADirectoryError):
            raise ImageProblem("image-missing", f"no such object: {uri}") from None
        except OSError as exc:
            raise ImageProblem("image-unreadable", f"{uri} cannot be read: {exc}") from None

    def check_exists(self, name: str) -> None:
        uri = self.reference(name)
        if self._buckets is not None:
            found = self._buckets.path(uri, must_exist=False).is_file()
        else:
            try:
                found = bool(self._fs.isfile(uri))
            except OSError as exc:
                raise ImageProblem("image-unreadable", f"{uri} cannot be checked: {exc}") from None
        if not found:
            raise ImageProblem("image-missing", f"no such object: {uri}")


def open_images(
    location: str, output_dir: Path, *, data_dir: Path, endpoint_url: str | None, absolute: bool = False
) -> ImageStore:
    """The image store a ``--images`` value names: a local folder or an ``s3://`` prefix."""
    if not location.startswith("s3://"):
        return FolderImages(Path(location), output_dir, absolute=absolute)
    if endpoint_url is None:
        return BucketImages(location, buckets=LocalBuckets(data_dir))
    try:
        import s3fs  # the serve extra
    except ImportError:
        raise UserError(
            'reading images from an S3 server needs s3fs: pip install "bulkinfer[serve]"'
        ) from None
    return BucketImages(location, fs=s3fs.S3FileSystem(endpoint_url=endpoint_url))


def _too_big(size: int) -> ImageProblem:
    return ImageProblem("image-too-large", f"{size:,} bytes, over the {MAX_IMAGE_BYTES:,}-byte limit")
