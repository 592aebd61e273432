"""Replicas on one PostgreSQL hear each other's job changes at once (LISTEN/NOTIFY), not at a poll."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bulkinfer.domain.job import JobStatus
from bulkinfer.providers.catalog import Catalog
from bulkinfer.scheduler.scheduler import Scheduler
from bulkinfer.services.batch import BatchService
from bulkinfer.settings import ServerSettings
from bulkinfer.store.batch_jobs import BatchJobStore
from tests.conftest import SLOW_ECHO_CATALOG, anthropic_record, write_jsonl
from tests.integration.test_bedrock_api import database
from tests.integration.test_scheduler import new_job, wait_for

POLL_S = 120.0  # far longer than the test: only events can move it along


async def test_a_replica_starts_and_stops_jobs_another_one_was_asked_about(tmp_path: Path) -> None:
    catalog_file = tmp_path / "models.toml"
    catalog_file.write_text(SLOW_ECHO_CATALOG)
    write_jsonl(tmp_path / "data" / "s3" / "in-bucket" / "in.jsonl", [anthropic_record(None, "x")] * 400)
    with database("postgres") as url:
        assert url is not None
        settings = ServerSettings(
            data_dir=tmp_path / "data", models=catalog_file, database_url=url, poll_seconds=POLL_S
        )
        catalog = Catalog.load(catalog_file)
        worker_store, front_store = BatchJobStore(url), BatchJobStore(url)
        worker = Scheduler(worker_store, settings, catalog)
        front = BatchService(front_store, Scheduler(front_store, settings, catalog), catalog)  # never runs
        loop = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(0.5)  # the worker is listening
            started = time.monotonic()
            job = front.submit(new_job("elsewhere"))
            await wait_for(worker_store, job.job_id, JobStatus.IN_PROGRESS, timeout=10)
            took_to_start = time.monotonic() - started

            front.stop("tenant", job.job_id)
            started = time.monotonic()
            await wait_for(worker_store, job.job_id, JobStatus.STOPPED, timeout=10)
            took_to_stop = time.monotonic() - started
        finally:
            loop.cancel()
            await worker.close()
            worker_store.close()
            front_store.close()
    assert took_to_start < 3 and took_to_stop < 3, (took_to_start, took_to_stop)
