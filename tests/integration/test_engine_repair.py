"""Whole jobs that meet a fault and still end with every record exactly once, in order.

A PostgreSQL whose connections are cut mid-job, a chunk file lost, a kill during clean-up, a full disk, a
damaged state file, a service's job cancelled or stopped; in process, or as the CLI in a subprocess
(failpoints from ``bulkinfer.faults`` kill it at exact places).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy

from bulkinfer.domain.job import JobStatus
from bulkinfer.engine.job import LocalJob, RunRequest
from bulkinfer.engine.progress import NoProgress
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.storage.files import DiskFull
from tests.acceptance.test_cli import BULKINFER, _env, bulkinfer, committed_records, wait_for
from tests.conftest import anthropic_record, read_jsonl, run_job, run_until_stopped, write_jsonl
from tests.integration.test_bedrock_api import database

SMALL_CHUNKS = EngineSettings(block_records=10, blocks_in_flight=1, chunk_records=5, commit_interval_s=0.01)


def records(n: int, prefix: str = "R") -> list[dict[str, Any]]:
    return [anthropic_record(f"{prefix}{i:010d}", f"record-{i}") for i in range(n)]


def output_ids(path: Path) -> list[str]:
    return [line["recordId"] for line in read_jsonl(path)]


def opened(request: RunRequest) -> Any:
    """The engine's row of a job, read by opening it as a re-run would."""
    job = LocalJob.open(request)
    try:
        return job.job
    finally:
        job.close()


# 1. transient database faults


def test_a_job_on_postgresql_survives_its_connections_being_cut(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(delay_s=0.02, batch_size=5, concurrency=1)
    wanted = records(300)
    source = write_jsonl(tmp_path / "in.jsonl", wanted)
    with database("postgres") as url:
        assert url is not None
        request = RunRequest(
            source, "echo-test", tmp_path / "out", "cut", catalog, settings=SMALL_CHUNKS, state_url=url
        )
        cutter = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        cut = sqlalchemy.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        done = threading.Event()
        terminated: list[int] = []

        def cut_connections() -> None:
            with cutter.connect() as conn:
                while not done.wait(0.15) and len(terminated) < 8:
                    terminated.append(int(conn.execute(cut).scalar_one()))

        thread = threading.Thread(target=cut_connections)
        thread.start()
        try:
            report = run_job(request)
        finally:
            done.set()
            thread.join()
            cutter.dispose()
    assert sum(terminated) > 0, "no connection was cut while the job ran"
    assert report.job.status == JobStatus.COMPLETED
    assert output_ids(tmp_path / "out" / "cut" / "in.jsonl.out") == [r["recordId"] for r in wanted]
    assert report.counts.processed == report.counts.success == 300


# 3. a committed chunk whose file is lost


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_lost_chunk_file_runs_its_records_again(
    tmp_path: Path, echo_catalog: Callable[..., Path], damage: str
) -> None:
    log = tmp_path / "invocations.log"
    catalog = echo_catalog(delay_s=0.05, batch_size=5, concurrency=1, invocation_log=str(log))
    wanted = records(200)
    source = write_jsonl(tmp_path / "in.jsonl", wanted)
    request = RunRequest(source, "echo-test", tmp_path / "out", "lost", catalog, settings=SMALL_CHUNKS)

    first = run_until_stopped(request, 0.4, at_least=10)
    assert first.job.status == JobStatus.STOPPED and first.counts.processed >= 10
    chunk_files = sorted((tmp_path / "out" / ".bulkinfer" / "lost" / "chunks").iterdir())
    victim = chunk_files[1]
    lost = len(victim.read_bytes().splitlines())
    if damage == "deleted":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes().splitlines(keepends=True)[0])
    ran_before = len(log.read_text().splitlines())

    second = run_job(request)
    assert second.job.status == JobStatus.COMPLETED
    assert output_ids(tmp_path / "out" / "lost" / "in.jsonl.out") == [r["recordId"] for r in wanted]
    assert second.counts.processed == second.counts.success == 200
    ran_again = len(log.read_text().splitlines()) - ran_before
    assert ran_again == 200 - first.counts.processed + lost


# 4. temporary files and the chunk folder after a kill during clean-up


def test_stale_temp_files_are_removed_when_a_job_opens(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", records(3))
    out = tmp_path / "out"
    stale = [out / "tmp" / ".in.jsonl.out.tmp", out / ".bulkinfer" / "tmp" / "chunks" / ".00000-x.jsonl.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half a write")
    report = run_job(RunRequest(source, "echo", out, "tmp"))
    assert report.job.status == JobStatus.COMPLETED
    assert not any(path.exists() for path in stale)
    assert sorted(p.name for p in (out / "tmp").iterdir()) == ["in.jsonl.out", "manifest.json.out"]


def failpoint_run(args: list[str], failpoints: str) -> subprocess.CompletedProcess[str]:
    env = {**_env(), "BULKINFER_FAILPOINTS": failpoints}
    return subprocess.run([*BULKINFER, *args], capture_output=True, text=True, timeout=120, env=env)


def test_a_kill_after_the_outputs_are_written_leaves_no_chunk_folder_behind(tmp_path: Path) -> None:
    wanted = records(40)
    source = write_jsonl(tmp_path / "in.jsonl", wanted)
    out = tmp_path / "out"
    args = ["run", str(source), "-m", "echo", "-o", str(out), "--job-id", "cleanup"]
    killed = failpoint_run(args, "output-written=kill")
    assert killed.returncode == -signal.SIGKILL
    assert any((out / ".bulkinfer" / "cleanup" / "chunks").iterdir())  # the clean-up never ran

    again = bulkinfer(*args)
    assert again.returncode == 0, again.stderr
    assert "already completed" in again.stderr
    assert not (out / ".bulkinfer" / "cleanup" / "chunks").exists()
    assert output_ids(out / "cleanup" / "in.jsonl.out") == [r["recordId"] for r in wanted]


# 9. failpoints in the engine


def test_a_kill_after_a_commit_and_a_failure_before_the_merge_both_resume(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    log = tmp_path / "invocations.log"
    catalog = echo_catalog(delay_s=0.05, batch_size=5, concurrency=1, invocation_log=str(log))
    total = 300  # about 3 s of work; the CLI commits about every second
    wanted = records(total)
    source = write_jsonl(tmp_path / "in.jsonl", wanted)
    out = tmp_path / "out"
    args = ["run", str(source), "-m", "echo-test", "-o", str(out), "--job-id", "fp", "--models", str(catalog)]

    killed = failpoint_run(args, "chunk-committed=kill@2")
    assert killed.returncode == -signal.SIGKILL
    committed = committed_records(out, "fp")
    assert 0 < committed < total

    failed = failpoint_run(args, "writing-outputs=raise")
    assert failed.returncode == 1 and "failpoint writing-outputs" in failed.stderr
    assert f"{total:,} finished records are kept" in failed.stderr
    assert not (out / "fp" / "in.jsonl.out").exists()

    ran_before = len(log.read_text().splitlines())
    done = bulkinfer(*args)
    assert done.returncode == 0, done.stderr
    assert len(log.read_text().splitlines()) == ran_before  # every record was committed already
    assert output_ids(out / "fp" / "in.jsonl.out") == [r["recordId"] for r in wanted]


# 5. a service's job: a finished stop is not run again; a cancelled one resumes


def stop_with(request: RunRequest, final: JobStatus) -> None:
    async def go() -> None:
        job = LocalJob.open(request)
        try:
            task = asyncio.create_task(job.execute(NoProgress()))
            while job.committed().processed < 10:
                await asyncio.sleep(0.02)
            job.request_stop(final)
            await task
        finally:
            job.close()

    asyncio.run(go())


@pytest.mark.parametrize("final", [JobStatus.STOPPED, JobStatus.PARTIALLY_COMPLETED])
def test_a_service_job_whose_stop_was_written_is_not_run_again(
    tmp_path: Path, echo_catalog: Callable[..., Path], final: JobStatus
) -> None:
    log = tmp_path / "invocations.log"
    catalog = echo_catalog(delay_s=0.05, batch_size=5, concurrency=1, invocation_log=str(log))
    source = write_jsonl(tmp_path / "in.jsonl", records(200))
    request = RunRequest(
        source, "echo-test", tmp_path / "out", "svc", catalog, settings=SMALL_CHUNKS, keep_partial=True
    )
    stop_with(request, final)
    manifest = orjson.loads((tmp_path / "out" / "svc" / "manifest.json.out").read_bytes())
    assert manifest["status"] == final.value
    ran = len(log.read_text().splitlines())

    again = run_job(request)  # the service opening it again, say after a restart
    assert again.job.status == final and again.manifest == manifest
    assert len(log.read_text().splitlines()) == ran


def test_a_cancelled_service_job_stays_resumable_and_writes_no_manifest(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(delay_s=0.05, batch_size=5, concurrency=1)
    wanted = records(150)
    source = write_jsonl(tmp_path / "in.jsonl", wanted)
    request = RunRequest(
        source, "echo-test", tmp_path / "out", "lease", catalog, settings=SMALL_CHUNKS, keep_partial=True
    )

    async def cancel_mid_run() -> None:
        job = LocalJob.open(request)
        try:
            task = asyncio.create_task(job.execute(NoProgress()))
            while job.committed().processed < 10:
                await asyncio.sleep(0.02)
            task.cancel()  # a server shutting down, or a lease lost
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            job.close()

    asyncio.run(cancel_mid_run())
    assert opened(request).status == JobStatus.IN_PROGRESS
    assert not (tmp_path / "out" / "lease" / "manifest.json.out").exists()

    report = run_job(request)
    assert report.job.status == JobStatus.COMPLETED
    assert output_ids(tmp_path / "out" / "lease" / "in.jsonl.out") == [r["recordId"] for r in wanted]


# 6. a full disk


def test_a_full_disk_fails_the_job_with_a_plain_message_and_the_rerun_completes(tmp_path: Path) -> None:
    wanted = records(20)
    source = write_jsonl(tmp_path / "in.jsonl", wanted)
    request = RunRequest(source, "echo", tmp_path / "out", "full")
    job = LocalJob.open(request)
    try:
        job.output_dir.mkdir(parents=True)
        (job.output_dir / ".in.jsonl.out.tmp").symlink_to("/dev/full")  # this output's writes: ENOSPC
        with pytest.raises(DiskFull) as caught:
            asyncio.run(job.execute(NoProgress()))
    finally:
        job.close()
    folder = tmp_path / "out" / "full"
    assert re.fullmatch(
        rf"disk full: no space left on the filesystem of {folder} \([\d,]+ MB free\)", str(caught.value)
    )
    failed = opened(request)
    assert failed.status == JobStatus.FAILED and failed.message == str(caught.value)

    report = run_job(request)
    assert report.job.status == JobStatus.COMPLETED
    assert output_ids(folder / "in.jsonl.out") == [r["recordId"] for r in wanted]


# 7. a damaged state file, moved aside; the committed records are taken back from the chunk files


def test_a_damaged_state_file_is_named_and_the_rerun_keeps_the_committed_records(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    total = 300
    log = tmp_path / "invocations.log"
    catalog = echo_catalog(delay_s=0.1, batch_size=5, concurrency=1, invocation_log=str(log))
    wanted = records(total)
    wanted[7] = anthropic_record(None, "record-7")  # a generated id is taken back too
    source = write_jsonl(tmp_path / "in.jsonl", wanted)
    out = tmp_path / "out"
    args = [
        "run",
        str(source),
        "-m",
        "echo-test",
        "-o",
        str(out),
        "--job-id",
        "dmg",
        "--models",
        str(catalog),
    ]

    proc = subprocess.Popen(
        [*BULKINFER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    wait_for(lambda: committed_records(out, "dmg") >= 30, timeout=60)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    committed = committed_records(out, "dmg")
    ran_before = log.read_text().splitlines()
    db = out / ".bulkinfer" / "state.db"
    checkpoint = sqlite3.connect(db)  # pages still in the journal would hide the damage below
    checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoint.close()
    with db.open("r+b") as f:
        f.write(os.urandom(100))  # the header is gone

    refused = bulkinfer(*args)
    assert refused.returncode == 2
    assert f"the state file {db} is damaged" in refused.stderr
    (mv,) = [line.strip() for line in refused.stderr.splitlines() if line.strip().startswith("mv ")]
    assert mv.startswith(f"mv {db} {db}.corrupt-")
    assert f"bulkinfer run {source} --model echo-test --output {out} --job-id dmg" in refused.stderr
    subprocess.run(mv, shell=True, check=True)

    rerun = bulkinfer(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{committed:,} records already done" in rerun.stderr
    lines = read_jsonl(out / "dmg" / "in.jsonl.out")
    assert [line["modelOutput"]["content"][0]["text"] for line in lines] == [
        f"record-{i}" for i in range(total)
    ]
    assert len({line["recordId"] for line in lines}) == total
    ran_after = log.read_text().splitlines()[len(ran_before) :]
    assert len(ran_after) == total - committed  # none of the committed records ran again
    assert not set(ran_after) & set(ran_before)


# 8. what the CLI says is kept


def test_a_failure_before_any_record_finished_says_nothing_is_kept(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(invocation_log=str(tmp_path / "missing-folder" / "log.txt"))  # cannot load
    source = write_jsonl(tmp_path / "in.jsonl", records(3))
    result = bulkinfer("run", source, "-m", "echo-test", "-o", tmp_path / "out", "--models", catalog)
    assert result.returncode == 1
    assert "no record had finished, so nothing is kept" in result.stderr
    assert "finished records are kept" not in result.stderr
