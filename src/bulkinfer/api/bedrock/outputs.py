"""A finished job's output files, read back through the server.

With no S3 endpoint, outputs are files in the server's local buckets, which no remote client can reach;
with one, the staged copies are gone once the outputs are uploaded, so they are read back from the S3
server. Either way a file is named by its path under ``<output-uri>/<job-id>/``, and only a name the
listing holds can be read, so a name can never reach anything else.

The listing holds only the files the job wrote: its manifest and the ``.out`` file of each input file
the manifest names (and its error file, for a job of OpenAI batch lines). Anything else under the
folder (another job's outputs, when that job was pointed at this one's folder, or a file someone put
there) is never listed nor served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from bulkinfer.domain.tenant import is_plain_key
from bulkinfer.formats.records import ERRORS_SUFFIX
from bulkinfer.settings import ServerSettings
from bulkinfer.storage.uris import LocalBuckets
from bulkinfer.store.batch_jobs import BatchJob

READ_BYTES = 1 << 20
MANIFEST = "manifest.json.out"
MAX_MANIFEST_BYTES = 16 << 20


class OutputFiles(Protocol):
    def sizes(self) -> dict[str, int]:
        """Each output file's name and size in bytes, sorted by name."""
        ...

    def read(self, name: str) -> Iterator[bytes]:
        """The bytes of a file ``sizes`` listed, in blocks."""
        ...


def output_uri(job: BatchJob) -> str:
    return str(job.request["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])


def job_outputs(settings: ServerSettings, job: BatchJob, may_read: Callable[[str], bool]) -> OutputFiles:
    """The files the job wrote, which its tenant (``may_read``) may read."""
    uri = output_uri(job)
    if settings.s3_endpoint_url is not None:
        key = f"{uri.removeprefix('s3://').rstrip('/')}/{job.job_id}"
        return Written(S3Outputs(settings.s3_endpoint_url, key))
    buckets = LocalBuckets(settings.data_dir)
    folder = buckets.path(uri, must_exist=False) / job.job_id
    # a symbolic link on the way (put there after the job ended) is followed only to what may be read
    if folder.is_symlink() or not may_read(buckets.uri_of(folder, uri)):
        return Written(LocalOutputs(None))
    return Written(LocalOutputs(folder))


class Written:
    """Of a folder's files, the ones the job wrote (see the module's docstring)."""

    def __init__(self, folder: OutputFiles) -> None:
        self._folder = folder

    def sizes(self) -> dict[str, int]:
        found = self._folder.sizes()
        if found.get(MANIFEST, MAX_MANIFEST_BYTES + 1) > MAX_MANIFEST_BYTES:
            return {}  # no manifest (the job failed before writing outputs), or not one we wrote
        try:
            inputs = orjson.loads(b"".join(self._folder.read(MANIFEST))).get("inputFiles", [])
        except (orjson.JSONDecodeError, AttributeError):
            return {}
        plain = [name for name in inputs if isinstance(name, str) and is_plain_key(name)]
        names = {MANIFEST} | {f"{name}.out" for name in plain} | {f"{name}{ERRORS_SUFFIX}" for name in plain}
        return {name: size for name, size in found.items() if name in names}

    def read(self, name: str) -> Iterator[bytes]:
        return self._folder.read(name)


class LocalOutputs:
    """Files of a job folder in a local bucket (None: a folder that may not be read, so no files).
    A file that is a symbolic link was not written by the job (its writes replace links): never listed."""

    def __init__(self, folder: Path | None) -> None:
        self._folder = folder

    def sizes(self) -> dict[str, int]:
        folder = self._folder
        if folder is None or not folder.is_dir():
            return {}
        files = (p for p in sorted(folder.rglob("*")) if _plain_file(folder, p) and not self._hidden(p))
        return {p.relative_to(folder).as_posix(): p.stat().st_size for p in files}

    def _hidden(self, path: Path) -> bool:
        """A temporary file of a durable write (``.name.tmp``), or anything else not an output."""
        assert self._folder is not None
        return any(part.startswith(".") for part in path.relative_to(self._folder).parts)

    def read(self, name: str) -> Iterator[bytes]:
        assert self._folder is not None  # (only a name sizes() listed is read)
        path = self._folder / name
        if not _plain_file(self._folder, path):
            raise FileNotFoundError(name)  # became a link since it was listed
        with path.open("rb") as f:
            while block := f.read(READ_BYTES):
                yield block


def _plain_file(folder: Path, path: Path) -> bool:
    """A regular file reached through no symbolic link below the job folder."""
    between = [folder / p for p in path.relative_to(folder).parents if p != Path(".")]
    return path.is_file() and not path.is_symlink() and not any(p.is_symlink() for p in between)


class S3Outputs:
    def __init__(self, endpoint_url: str, prefix: str) -> None:
        import s3fs  # the serve extra

        self._fs: Any = s3fs.S3FileSystem(endpoint_url=endpoint_url)
        self._prefix = prefix

    def sizes(self) -> dict[str, int]:
        self._fs.invalidate_cache(self._prefix)  # listed while the job ran, perhaps: look again
        try:
            found: dict[str, dict[str, Any]] = self._fs.find(self._prefix, detail=True)
        except FileNotFoundError:
            return {}
        folder = f"{self._prefix}/"
        return {
            key.removeprefix(folder): int(info["size"])
            for key, info in sorted(found.items())
            if key.startswith(folder)
        }

    def read(self, name: str) -> Iterator[bytes]:
        with self._fs.open(f"{self._prefix}/{name}", "rb") as f:
            while block := f.read(READ_BYTES):
                yield block
