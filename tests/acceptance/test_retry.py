"""``bulkinfer run --retry-errors`` and ``bulkinfer retry OUTPUT/JOB``: retry only what failed."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.acceptance.test_cli import BULKINFER, _env, bulkinfer, committed_records, wait_for
from tests.conftest import anthropic_record, read_jsonl, write_jsonl


def _records(total: int, bad: set[int], missing_id: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """Records whose text holds BAD where the failing catalog is to fail them."""
    return [
        anthropic_record(None if i in missing_id else f"R{i:04d}", f"{'BAD' if i in bad else 'ok'} {i}")
        for i in range(total)
    ]


def _manifest(job_dir: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = orjson.loads((job_dir / "manifest.json.out").read_bytes())
    return manifest


def _failed_base(
    tmp_path: Path, echo_catalog: Callable[..., Path], records: list[dict[str, Any]], **catalog: Any
) -> tuple[Path, Path]:
    """A job ``base`` over ``records`` run into ``out`` with a model that fails those holding BAD."""
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    failing = echo_catalog(fail_text="BAD", batch_size=1, **catalog)
    first = bulkinfer("run", source, "-m", "echo-test", "-o", out, "--job-id", "base", "--models", failing)
    assert first.returncode == 0, first.stderr
    return source, out


def test_retry_errors_runs_only_the_failures_and_merges_them_into_the_output(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    bad = {1, 4, 7}
    source, out = _failed_base(tmp_path, echo_catalog, _records(10, bad, missing_id=frozenset({2, 4})))
    base_lines = (out / "base" / "in.jsonl.out").read_bytes().splitlines()
    assert _manifest(out / "base")["errorRecordCount"] == 3

    log = tmp_path / "ran.log"
    healthy = echo_catalog(name="echo-test", invocation_log=str(log), batch_size=1)
    retried = bulkinfer("run", source, "-o", out, "--retry-errors", "--models", healthy)
    assert retried.returncode == 0, retried.stderr
    assert "Job base-retry-1: Completed" in retried.stdout
    assert "base: 7 successes kept, 3 records run again" in retried.stdout
    assert sorted(log.read_text().splitlines()) == ["BAD 1", "BAD 4", "BAD 7"]  # only the failures ran

    lines = (out / "base-retry-1" / "in.jsonl.out").read_bytes().splitlines()
    ids = [orjson.loads(line)["recordId"] for line in lines]
    assert ids == [orjson.loads(line)["recordId"] for line in base_lines]  # each once, in input order
    assert ids[2] == orjson.loads(base_lines[2])["recordId"] and len(ids[2]) == 11  # generated, kept
    for i, (before, after) in enumerate(zip(base_lines, lines, strict=True)):
        if i in bad:
            assert b'"error"' in before and orjson.loads(after)["modelOutput"]
        else:
            assert after == before  # a success is carried byte for byte

    base, combined = _manifest(out / "base"), _manifest(out / "base-retry-1")
    assert combined["totalRecordCount"] == combined["processedRecordCount"] == 10
    assert combined["successRecordCount"] == 10 and combined["errorRecordCount"] == 0
    own_input = sum(2 for _ in bad)  # echo counts words: "BAD <i>" is 2 in, 2 out
    assert combined["inputTokenCount"] == base["inputTokenCount"] + own_input
    assert combined["outputTokenCount"] == base["outputTokenCount"] + own_input
    assert combined["retry"] == {"of": "base", "carriedRecordCount": 7, "retriedRecordCount": 3}
    assert combined["estimatedCostUSD"] == base["estimatedCostUSD"] == 0.0  # both jobs', summed once
    assert combined["prices"]["source"] == "local model: no per-token charge"  # this job's prices

    shown = bulkinfer("results", out / "base-retry-1", "-n", "0")
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 10

    again = bulkinfer("run", source, "-o", out, "--retry-errors", "--models", healthy)
    assert again.returncode == 2
    assert "nothing to retry: all 10 records of job base-retry-1 succeeded" in again.stderr
    assert not (out / "base-retry-2").exists()


def test_retry_of_a_stopped_job_runs_its_remainder(tmp_path: Path, echo_catalog: Callable[..., Path]) -> None:
    total = 200
    source = write_jsonl(tmp_path / "in.jsonl", _records(total, bad=set()))
    out = tmp_path / "out"
    slow = echo_catalog(delay_s=0.1, batch_size=5, concurrency=1)
    args = [*BULKINFER, "run", str(source), "-m", "echo-test", "-o", str(out), "--job-id", "halted"]
    proc = subprocess.Popen(
        [*args, "--models", str(slow)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    wait_for(lambda: committed_records(out, "halted") >= 10, timeout=60)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    kept = committed_records(out, "halted")
    assert 0 < kept < total

    log = tmp_path / "ran.log"
    healthy = echo_catalog(name="echo-test", invocation_log=str(log), batch_size=50)
    retried = bulkinfer("retry", out / "halted", "--models", healthy)
    assert retried.returncode == 0, retried.stderr
    ran = log.read_text().splitlines()
    assert len(ran) == len(set(ran)) == total - kept  # only the remainder ran
    lines = read_jsonl(out / "halted-retry-1" / "in.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"R{i:04d}" for i in range(total)]
    assert all("modelOutput" in line for line in lines)
    manifest = _manifest(out / "halted-retry-1")
    assert manifest["successRecordCount"] == total
    assert manifest["retry"] == {
        "of": "halted",
        "carriedRecordCount": kept,
        "retriedRecordCount": total - kept,
    }


def test_a_killed_retry_resumes_and_repeats_nothing(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    total = 400
    bad = set(range(0, total, 2))
    source, out = _failed_base(tmp_path, echo_catalog, _records(total, bad), concurrency=4)

    log = tmp_path / "ran.log"
    slow = echo_catalog(name="echo-test", invocation_log=str(log), delay_s=0.1, batch_size=5, concurrency=1)
    args = [*BULKINFER, "run", str(source), "-o", str(out), "--retry-errors", "--models", str(slow)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:  # the carried 200 first, then some of the retried
        wait_for(lambda: committed_records(out, "base-retry-1") >= total - len(bad) + 20, timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    at_kill = committed_records(out, "base-retry-1")
    assert at_kill < total, "the retry finished before it could be killed"
    ran_before = log.read_text().splitlines()

    rerun = bulkinfer(*args[3:])  # the same command resumes the unfinished retry of the same base
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming job base-retry-1" in rerun.stderr
    ran_after = log.read_text().splitlines()[len(ran_before) :]
    assert len(ran_after) == len(set(ran_after)) == total - at_kill  # only what was not committed
    assert not set(ran_after) & {f"ok {i}" for i in range(total)}  # no success of the base ran again
    lines = read_jsonl(out / "base-retry-1" / "in.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"R{i:04d}" for i in range(total)]
    assert all("modelOutput" in line for line in lines)
    manifest = _manifest(out / "base-retry-1")
    assert manifest["successRecordCount"] == total
    assert manifest["retry"] == {
        "of": "base",
        "carriedRecordCount": total - len(bad),
        "retriedRecordCount": len(bad),
    }


def test_retry_refuses_before_a_job_exists(tmp_path: Path, echo_catalog: Callable[..., Path]) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", _records(3, bad=set()))
    out = tmp_path / "out"
    catalog = echo_catalog()
    none_yet = bulkinfer("run", source, "-o", out, "--retry-errors", "--models", catalog)
    assert none_yet.returncode == 2 and "no bulkinfer job has run into" in none_yet.stderr
    done = bulkinfer("run", source, "-m", "echo-test", "-o", out, "--job-id", "clean", "--models", catalog)
    assert done.returncode == 0, done.stderr
    clean = bulkinfer("retry", out / "clean", "--models", catalog)
    assert clean.returncode == 2 and "nothing to retry: all 3 records of job clean succeeded" in clean.stderr
    other = write_jsonl(tmp_path / "other.jsonl", _records(3, bad=set()))
    elsewhere = bulkinfer("run", other, "-o", out, "--retry-errors", "--models", catalog)
    assert elsewhere.returncode == 2 and "no job over" in elsewhere.stderr
    assert sorted(p.name for p in out.iterdir()) == [".bulkinfer", "clean"]


def test_a_retry_killed_during_its_carry_over_resumes_it(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    bad = {0, 5}
    source, out = _failed_base(tmp_path, echo_catalog, _records(8, bad))
    log = tmp_path / "ran.log"
    healthy = echo_catalog(name="echo-test", invocation_log=str(log), batch_size=1)
    args = [*BULKINFER, "run", str(source), "-o", str(out), "--retry-errors", "--models", str(healthy)]
    killed = subprocess.run(args, capture_output=True, env={**_env(), "BULKINFER_FAILPOINTS": "carried=kill"})
    assert killed.returncode == -signal.SIGKILL
    assert not log.exists() or not log.read_text()  # killed before any record ran

    rerun = bulkinfer(*args[3:])
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming job base-retry-1: 6 records already done" in rerun.stderr
    assert sorted(log.read_text().splitlines()) == ["BAD 0", "BAD 5"]
    manifest = _manifest(out / "base-retry-1")
    assert manifest["successRecordCount"] == 8
    assert manifest["retry"] == {"of": "base", "carriedRecordCount": 6, "retriedRecordCount": 2}


def test_a_stopped_retry_is_resumed_by_the_same_command_and_repeats_nothing(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    total = 120
    bad = set(range(0, total, 2))
    _, out = _failed_base(tmp_path, echo_catalog, _records(total, bad), concurrency=4)

    log = tmp_path / "ran.log"
    slow = echo_catalog(name="echo-test", invocation_log=str(log), delay_s=0.1, batch_size=2, concurrency=1)
    args = [*BULKINFER, "retry", str(out / "base"), "--models", str(slow)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        wait_for(lambda: committed_records(out, "base-retry-1") >= total - len(bad) + 6, timeout=60)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the retry ends Stopped
        assert proc.wait(timeout=60) == 130
    ran_before = log.read_text().splitlines()

    rerun = bulkinfer(*args[3:])  # the same command goes on with it, rather than start base-retry-2
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming job base-retry-1" in rerun.stderr
    ran = ran_before + log.read_text().splitlines()[len(ran_before) :]
    assert sorted(ran) == sorted(f"BAD {i}" for i in bad)  # each failure ran once, no success again
    assert not (out / "base-retry-2").exists()
    lines = read_jsonl(out / "base-retry-1" / "in.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"R{i:04d}" for i in range(total)]
    assert all("modelOutput" in line for line in lines)


def test_a_retry_that_failed_before_its_carry_over_ended_is_not_taken_as_the_base(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    bad = {0, 5}
    source, out = _failed_base(tmp_path, echo_catalog, _records(8, bad))
    log = tmp_path / "ran.log"
    healthy = echo_catalog(name="echo-test", invocation_log=str(log), batch_size=1)
    args = [*BULKINFER, "run", str(source), "-o", str(out), "--retry-errors", "--models", str(healthy)]
    failing_env = {**_env(), "BULKINFER_FAILPOINTS": "carried=raise"}
    broken = subprocess.run(args, capture_output=True, env=failing_env)
    assert broken.returncode == 1  # base-retry-1 Failed, holding nothing of its own

    again = bulkinfer(*args[3:])
    assert again.returncode == 0, again.stderr
    assert "base: 6 successes kept, 2 records run again" in again.stdout  # base's, not retry-1's
    assert sorted(log.read_text().splitlines()) == ["BAD 0", "BAD 5"]
