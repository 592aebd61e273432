"""The watch folder: every ``.jsonl`` that lands under ``PREFIX/to-process/`` becomes a job.

Its outputs go under ``PREFIX/processed/<job-id>/``. A file is submitted once: the job's client token
is derived from the file's name, size and modification time, so a rescan finds the job it already made.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from bulkinfer.errors import BulkinferError
from bulkinfer.services.batch import BatchService, NewJob
from bulkinfer.storage.uris import LocalBuckets

log = logging.getLogger(__name__)

WATCH_TENANT = "watch-folder"
WATCH_ROLE = "arn:aws:iam::000000000000:role/bulkinfer-watch-folder"


class WatchFolder:
    def __init__(self, prefix: str, model: str, buckets: LocalBuckets, jobs: BatchService) -> None:
        self._prefix = prefix.rstrip("/")
        self._model = model
        self._buckets = buckets
        self._jobs = jobs

    async def run(self, every_s: float) -> None:
        while True:
            try:
                self.scan()
            except Exception:  # a bad file or a vanished folder must not stop the watcher
                log.exception("watch folder scan failed")
            await asyncio.sleep(every_s)

    def scan(self) -> None:
        """Submit a job for each file not seen before (a file seen before returns its job)."""
        inbox_uri = f"{self._prefix}/to-process/"
        try:
            inbox = self._buckets.path(inbox_uri)
        except BulkinferError:
            return  # nothing has landed yet
        for path in sorted(inbox.rglob("*.jsonl")):
            relative = path.relative_to(inbox).as_posix()
            self._jobs.submit(
                NewJob(
                    tenant=WATCH_TENANT,
                    name=_job_name(relative),
                    model_id=self._model,
                    client_token=_token(relative, path),
                    request={
                        "roleArn": WATCH_ROLE,
                        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": inbox_uri + relative}},
                        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"{self._prefix}/processed/"}},
                    },
                )
            )


def _token(relative: str, path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:64]


def _job_name(relative: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in relative.removesuffix(".jsonl")).strip("-")
    return (cleaned or "watched")[:63]
