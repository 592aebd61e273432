"""A cancelled commit is waited for before a job lets go of its files; the watch folder submits each
file once, not at every scan."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest

from bulkinfer.domain.tenant import Tenant
from bulkinfer.engine import committer as committer_module
from bulkinfer.engine.committer import Committer, Finished
from bulkinfer.scheduler.watch import WatchFolder
from bulkinfer.services.batch import BatchService, NewJob
from bulkinfer.storage.files import write_durably
from bulkinfer.storage.uris import LocalBuckets
from bulkinfer.store.state import StateStore


async def test_settle_waits_for_a_commit_whose_flush_was_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    writing = threading.Event()

    def slow_write(path: Path, parts: Iterable[bytes]) -> None:
        writing.set()
        release.wait(60)
        write_durably(path, parts)

    monkeypatch.setattr(committer_module, "write_durably", slow_write)
    store = StateStore.at(tmp_path / "state.db")
    committer = Committer(store, "job", tmp_path / "chunks", max_records=1, interval_s=60)
    flush = asyncio.create_task(committer.add(0, [Finished(line=0, data=b"{}")]))
    await asyncio.to_thread(writing.wait, 60)
    flush.cancel()  # the job was fenced: its coroutine goes, its commit thread does not
    settled = threading.Thread(target=committer.settle)
    settled.start()
    settled.join(0.3)
    assert settled.is_alive()  # close() would release the lock now: the commit still writes
    release.set()
    settled.join(60)
    assert not settled.is_alive()
    assert [c.path for c in store.chunks("job")] == [p.name for p in (tmp_path / "chunks").iterdir()]
    store.close()


class CountingJobs:
    def __init__(self) -> None:
        self.tokens: list[str | None] = []

    def submit(self, new: NewJob) -> Any:
        self.tokens.append(new.client_token)


def test_the_watch_folder_submits_a_file_once_and_again_when_it_changes(tmp_path: Path) -> None:
    inbox = tmp_path / "s3" / "watched" / "in" / "to-process"
    inbox.mkdir(parents=True)
    dropped = inbox / "a.jsonl"
    dropped.write_text("{}\n")
    jobs = CountingJobs()
    watch = WatchFolder(
        "s3://watched/in", "echo", LocalBuckets(tmp_path), cast(BatchService, jobs), Tenant("t")
    )
    watch.scan()
    watch.scan()
    assert len(jobs.tokens) == 1  # seen before: no second submit (nor its database round trips)
    stat = dropped.stat()
    os.utime(dropped, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    watch.scan()
    assert len(jobs.tokens) == 2 and jobs.tokens[0] != jobs.tokens[1]  # a new version is a new job


def test_a_call_that_comes_as_the_batcher_goes_idle_is_still_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concurrent.futures import Future

    from bulkinfer.store import batcher as batcher_module
    from bulkinfer.store.batcher import Batcher

    monkeypatch.setattr(batcher_module, "IDLE_S", 0.01)
    doubled = Batcher[int, int]("test", lambda items: [2 * i for i in items], max_group=10)
    late: list[Future[int]] = []
    real_wait = doubled._changed.wait

    def wait_then_call(timeout: float | None = None) -> bool:
        woken = real_wait(timeout)
        if not woken and not late:  # the wait timed out, and just then a call comes in
            late.append(doubled.submit(21))
        return woken

    monkeypatch.setattr(doubled._changed, "wait", wait_then_call)
    assert doubled.submit(1).result(timeout=30) == 2
    deadline = time.monotonic() + 30
    while not late:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert late[0].result(timeout=30) == 42
