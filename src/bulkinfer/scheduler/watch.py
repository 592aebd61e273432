"""The watch folder: every ``.jsonl`` that lands under ``PREFIX/to-process/`` becomes a job.

Its outputs go under ``PREFIX/processed/<job-id>/``. A file is submitted once: the job's client token
is derived from the file's name, size and modification time, so a rescan finds the job it already made.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from bulkinfer.domain.tenant import Tenant
from bulkinfer.errors import BulkinferError
from bulkinfer.scheduler.supervisor import supervise
from bulkinfer.services.batch import BatchService, NewJob
from bulkinfer.storage.uris import LocalBuckets

WATCH_TENANT = "watch-folder"
"""The tenant of watch-folder jobs in development mode (with real tenants: ``--watch-tenant``)."""
WATCH_ROLE = "arn:aws:iam::000000000000:role/bulkinfer-watch-folder"


class WatchFolder:
    def __init__(
        self, prefix: str, model: str, buckets: LocalBuckets, jobs: BatchService, tenant: Tenant
    ) -> None:
        self._prefix = prefix.rstrip("/")
        self._tenant = tenant
        self._model = model
        self._buckets = buckets
        self._jobs = jobs
        self._submitted: set[str] = set()
        """Tokens of the files in the inbox already made into jobs (forgotten once a file goes)."""

    async def run(self, every_s: float) -> None:
        """Scan every ``every_s`` until cancelled; a failed scan (a vanished folder, the database away)
        is logged and tried again with backoff."""

        async def step() -> None:
            await asyncio.to_thread(self.scan)  # file system and store calls stay off the event loop
            await asyncio.sleep(every_s)

        await supervise("watch folder", step)

    def scan(self) -> None:
        """Submit a job for each file not seen before (a file seen before returns its job)."""
        inbox_uri = f"{self._prefix}/to-process/"
        try:
            inbox = self._buckets.path(inbox_uri)
        except BulkinferError:
            return  # nothing has landed yet
        present: set[str] = set()
        for path in sorted(inbox.rglob("*.jsonl")):
            relative = path.relative_to(inbox).as_posix()
            token = _token(relative, path)
            present.add(token)
            if token in self._submitted:
                continue  # made into a job by an earlier scan (the store's token would find it too)
            self._jobs.submit(
                NewJob(
                    tenant=self._tenant,
                    name=_job_name(relative),
                    model_id=self._model,
                    client_token=token,
                    request={
                        "roleArn": WATCH_ROLE,
                        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": inbox_uri + relative}},
                        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"{self._prefix}/processed/"}},
                    },
                )
            )
            self._submitted.add(token)
        self._submitted &= present  # bounded by the files in the inbox


def _token(relative: str, path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:64]


def _job_name(relative: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in relative.removesuffix(".jsonl")).strip("-")
    return (cleaned or "watched")[:63]
