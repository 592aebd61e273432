"""Jobs whose data lives on an S3-protocol server: inputs are staged to local disk, outputs published.

The engine works on local files (durable chunks need fsync and rename, which object stores lack), so a
job's input objects are copied into the data dir while it validates, and its output folder is uploaded
to ``<output-uri>/<job-id>/`` when it ends, as Bedrock's own outputs appear when a job ends.
Credentials come from the standard AWS environment variables.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bulkinfer.errors import InputError


class S3Staging:
    def __init__(self, endpoint_url: str, data_dir: Path) -> None:
        import s3fs  # the serve extra

        self._fs: Any = s3fs.S3FileSystem(endpoint_url=endpoint_url)
        self._root = data_dir / "staging"

    def input_dir(self, job_id: str) -> Path:
        return self._root / job_id / "input"

    def output_dir(self, job_id: str) -> Path:
        return self._root / job_id / "output"

    def fetch(self, job_id: str, uri: str) -> Path:
        """Copy the job's ``.jsonl`` objects (one object, or every one under a prefix) to local disk."""
        key = uri.removeprefix("s3://").rstrip("/")
        try:
            found = self._fs.find(key) if not self._fs.isfile(key) else [key]
        except (FileNotFoundError, PermissionError, OSError) as exc:
            raise InputError(f"{uri}: cannot be listed: {exc}") from exc
        objects = [o for o in found if o.endswith(".jsonl")]
        if not objects:
            raise InputError(f"{uri}: no .jsonl object there")
        target = self.input_dir(job_id)
        shutil.rmtree(target, ignore_errors=True)
        base = key if len(objects) > 1 or objects[0] != key else key.rsplit("/", 1)[0]
        for name in objects:
            local = target / name[len(base) :].lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            self._fs.get(name, str(local))
        return target if len(objects) > 1 or objects[0] != key else target / objects[0].rsplit("/", 1)[1]

    def publish(self, job_id: str, uri: str) -> None:
        """Upload the job's outputs to ``<uri>/<job-id>/``, then drop the staged copies."""
        local = self.output_dir(job_id) / job_id
        if local.is_dir():
            destination = f"{uri.removeprefix('s3://').rstrip('/')}/{job_id}"
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                self._fs.put_file(str(path), f"{destination}/{path.relative_to(local).as_posix()}")
        shutil.rmtree(self._root / job_id, ignore_errors=True)
