"""A finished job's output files, read back through the server.

With no S3 endpoint, outputs are files in the server's local buckets, which no remote client can reach;
with one, the staged copies are gone once the outputs are uploaded, so they are read back from the S3
server. Either way a file is named by its path under ``<output-uri>/<job-id>/``, and only a name the
listing holds can be read, so a name can never reach anything else.

The listing holds only the files the job wrote: its manifest and the ``.out`` file of each input file
the manifest names. Anything else under the folder (another job's outputs, when that job was pointed at
this one's folder, or a file someone put there) is never listed nor served.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from bulkinfer.domain.tenant import is_plain_key
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


def job_outputs(settings: ServerSettings, job: BatchJob) -> OutputFiles:
    uri = output_uri(job)
    if settings.s3_endpoint_url is not None:
        key = f"{uri.removeprefix('s3://').rstrip('/')}/{job.job_id}"
        return Written(S3Outputs(settings.s3_endpoint_url, key))
    return Written(LocalOutputs(LocalBuckets(settings.data_dir).path(uri, must_exist=False) / job.job_id))


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
        names = {MANIFEST} | {
            f"{name}.out" for name in inputs if isinstance(name, str) and is_plain_key(name)
        }
        return {name: size for name, size in found.items() if name in names}

    def read(self, name: str) -> Iterator[bytes]:
        return self._folder.read(name)


class LocalOutputs:
    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def sizes(self) -> dict[str, int]:
        if not self._folder.is_dir():
            return {}
        files = (p for p in sorted(self._folder.rglob("*")) if p.is_file() and not self._hidden(p))
        return {p.relative_to(self._folder).as_posix(): p.stat().st_size for p in files}

    def _hidden(self, path: Path) -> bool:
        """A temporary file of a durable write (``.name.tmp``), or anything else not an output."""
        return any(part.startswith(".") for part in path.relative_to(self._folder).parts)

    def read(self, name: str) -> Iterator[bytes]:
        with (self._folder / name).open("rb") as f:
            while block := f.read(READ_BYTES):
                yield block


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
