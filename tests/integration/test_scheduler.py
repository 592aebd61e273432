"""The scheduler in-process, on a clock the test moves: timeouts end jobs as Bedrock's do."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from bulkinfer.domain.job import JobStatus
from bulkinfer.domain.tenant import Tenant
from bulkinfer.providers.catalog import Catalog
from bulkinfer.scheduler.scheduler import Scheduler
from bulkinfer.services.batch import BatchService, NewJob
from bulkinfer.settings import ServerSettings
from bulkinfer.store.batch_jobs import BatchJobStore
from tests.conftest import SLOW_ECHO_CATALOG as CATALOG
from tests.conftest import anthropic_record, read_jsonl, write_jsonl


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def new_job(name: str) -> NewJob:
    request = {
        "roleArn": "arn:aws:iam::123456789012:role/R",
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://in-bucket/in.jsonl"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://out-bucket/"}},
        "timeoutDurationInHours": 24,
    }
    return NewJob(Tenant("tenant"), name, "slow-echo", None, request)


async def wait_for(store: BatchJobStore, job_id: str, status: JobStatus, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (job := store.get(job_id)) is None or job.status != status:
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)


async def test_timeouts_expire_waiting_jobs_and_partially_complete_running_ones(tmp_path: Path) -> None:
    catalog_file = tmp_path / "models.toml"
    catalog_file.write_text(CATALOG)
    records = [anthropic_record(f"T{i:010d}", f"r{i}") for i in range(400)]
    write_jsonl(tmp_path / "data" / "s3" / "in-bucket" / "in.jsonl", records)
    settings = ServerSettings(data_dir=tmp_path / "data", models=catalog_file, jobs_per_model=1)
    store = BatchJobStore(settings.store_url)
    catalog = Catalog.load(catalog_file)
    clock = Clock()
    scheduler = Scheduler(store, settings, catalog, clock)
    jobs = BatchService(store, scheduler, catalog)
    loop = asyncio.create_task(scheduler.run())
    try:
        running = jobs.submit(new_job("runs"))
        await wait_for(store, running.job_id, JobStatus.IN_PROGRESS)
        waiting = jobs.submit(new_job("waits"))  # the model's one slot is taken
        await wait_for(store, waiting.job_id, JobStatus.SCHEDULED)
        deadline = time.monotonic() + 60
        while (live := scheduler.live_counts(running.job_id)) is None or live.processed == 0:
            assert time.monotonic() < deadline, "the running job finished no record"
            await asyncio.sleep(0.05)

        clock.offset = 25 * 3600  # a day and an hour later
        scheduler.notify()
        await wait_for(store, waiting.job_id, JobStatus.EXPIRED)
        await wait_for(store, running.job_id, JobStatus.PARTIALLY_COMPLETED)
    finally:
        loop.cancel()
        await scheduler.close()
    expired = store.get(waiting.job_id)
    assert expired is not None and expired.message == "the job did not start before its timeout"
    done = store.get(running.job_id)
    assert done is not None and done.processed is not None and 0 < done.processed < 400
    out = tmp_path / "data" / "s3" / "out-bucket" / running.job_id
    assert len(read_jsonl(out / "in.jsonl.out")) == done.processed
    assert orjson.loads((out / "manifest.json.out").read_bytes())["status"] == "PartiallyCompleted"
    store.close()
