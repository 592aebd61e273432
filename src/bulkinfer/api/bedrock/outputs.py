"""A finished job's output files, read back through the server.

With no S3 endpoint, outputs are files in the server's local buckets, which no remote client can reach;
with one, the staged copies are gone once the outputs are uploaded, so they are read back from the S3
server. Either way a file is named by its path under ``<output-uri>/<job-id>/``, and only a name the
listing holds can be read, so a name can never reach anything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from bulkinfer.settings import ServerSettings
from bulkinfer.storage.uris import LocalBuckets
from bulkinfer.store.batch_jobs import BatchJob

READ_BYTES = 1 << 20


class OutputFiles(Protocol):
    def sizes(self) -> dict[str, int]:
        """Each output file's name and size in bytes, sorted by name."""
        ...

    def read(self, name: str) -> Iterator[bytes]:
        """The bytes of a file ``sizes`` listed, in blocks."""
        ...


def job_outputs(settings: ServerSettings, job: BatchJob) -> OutputFiles:
    uri = str(job.request["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])
    if settings.s3_endpoint_url is not None:
        key = f"{uri.removeprefix('s3://').rstrip('/')}/{job.job_id}"
        return S3Outputs(settings.s3_endpoint_url, key)
    return LocalOutputs(LocalBuckets(settings.data_dir).path(uri, must_exist=False) / job.job_id)


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
