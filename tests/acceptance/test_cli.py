"""The CLI as a user runs it: a subprocess, killed with SIGKILL or interrupted, then run again."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.conftest import anthropic_record, read_jsonl, write_jsonl

BULKINFER = [sys.executable, "-m", "bulkinfer"]


def bulkinfer(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BULKINFER, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def committed_records(output: Path, job_id: str) -> int:
    db = output / ".bulkinfer" / "state.db"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            query = "SELECT COALESCE(SUM(records), 0) FROM chunks WHERE job_id = ?"
            row = conn.execute(query, (job_id,)).fetchone()
    except sqlite3.OperationalError:  # the job has not created its tables yet
        return 0
    return int(row[0])


PRICE = """
[models."echo-test".price]
input_per_million = 2
output_per_million = 10
batch_discount = 0.5
"""


def committed_tokens(output: Path) -> tuple[int, int]:
    """The input and output tokens of every job's committed records, as the state file sums them."""
    with sqlite3.connect(output / ".bulkinfer" / "state.db") as conn:
        query = "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) FROM chunks"
        row = conn.execute(query).fetchone()
    return int(row[0]), int(row[1])


def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_sigkill_mid_job_then_rerun_gives_every_record_exactly_once(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    total = 600
    log = tmp_path / "invocations.log"
    catalog = echo_catalog(delay_s=0.1, invocation_log=str(log), batch_size=10, concurrency=2)
    catalog.write_text(catalog.read_text() + PRICE)  # so "counted once" shows in the cost too
    records = [anthropic_record(f"K{i:010d}", f"record-{i}") for i in range(total)]
    source = write_jsonl(tmp_path / "in" / "records.jsonl", records)
    out = tmp_path / "out"
    args = [*BULKINFER, "run", str(source), "--model", "echo-test", "--output", str(out)]
    args += ["--job-id", "killme", "--models", str(catalog)]

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        wait_for(lambda: committed_records(out, "killme") >= 100, timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    committed_at_kill = committed_records(out, "killme")
    ran_before = log.read_text().splitlines()
    assert committed_at_kill < total, "the job finished before it could be killed"

    rerun = bulkinfer(*args[3:])
    assert rerun.returncode == 0, rerun.stderr
    assert f"{committed_at_kill:,} records already done" in rerun.stderr

    lines = read_jsonl(out / "killme" / "records.jsonl.out")
    ids = [line["recordId"] for line in lines]
    assert ids == [r["recordId"] for r in records]  # every id once, in input order
    assert all("modelOutput" in line for line in lines)
    manifest = orjson.loads((out / "killme" / "manifest.json.out").read_bytes())
    assert manifest["totalRecordCount"] == manifest["successRecordCount"] == total
    # tokens and cost are the committed records', once each: not those of records run twice
    used = [line["modelOutput"]["usage"] for line in lines]
    tokens = (sum(u["input_tokens"] for u in used), sum(u["output_tokens"] for u in used))
    assert (manifest["inputTokenCount"], manifest["outputTokenCount"]) == tokens == committed_tokens(out)
    assert manifest["estimatedCostUSD"] == round((tokens[0] * 2 + tokens[1] * 10) / 1e6 * 0.5, 6)
    assert manifest["prices"]["source"] == "catalog" and manifest["prices"]["inputPerMillion"] == 2

    ran_after = log.read_text().splitlines()[len(ran_before) :]
    everything = {f"record-{i}" for i in range(total)}
    committed = everything - set(ran_after)
    assert len(committed) == committed_at_kill  # the rerun ran exactly the records not committed
    assert len(ran_after) == len(set(ran_after)) == total - committed_at_kill
    assert len(ran_before) == len(set(ran_before))  # no record ran twice within the first run
    run_twice = set(ran_before) & set(ran_after)
    # the only records that ran twice are those in flight (invoked, not yet committed) at the kill
    assert run_twice == set(ran_before) - committed
    # and those are bounded by the read-ahead window plus about one commit interval of results
    assert len(run_twice) <= 3 * 64 + 250


def test_ctrl_c_stops_gracefully_and_says_how_to_resume(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(delay_s=0.2, batch_size=5, concurrency=1)
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record(f"C{i:010d}", f"r{i}") for i in range(300)])
    out = tmp_path / "out"
    args = [*BULKINFER, "run", str(source), "-m", "echo-test", "-o", str(out), "--job-id", "ctrlc"]
    args += ["--models", str(catalog)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    wait_for(lambda: committed_records(out, "ctrlc") >= 10, timeout=60)
    live = bulkinfer("status", out, "--job-id", "ctrlc", "--models", catalog)  # another terminal watching
    assert live.returncode == 0 and "InProgress" in live.stdout and "of 300" in live.stdout
    assert "$0.000000" in live.stdout  # its committed records' cost: a local model, no per-token charge
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Stopped" in stdout
    assert "Resume with:" in stderr and "--job-id ctrlc" in stderr

    resumed = bulkinfer("run", source, "-m", "echo-test", "-o", out, "--job-id", "ctrlc", "--models", catalog)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming job ctrlc" in resumed.stderr
    assert len(read_jsonl(out / "ctrlc" / "in.jsonl.out")) == 300
    done = bulkinfer("status", out)
    assert "Completed" in done.stdout and "300 of 300" in done.stdout
    assert "unknown" in done.stdout and "$" not in done.stdout  # its model is not in the built-in catalog


def committed_chunks(state: Path) -> int:
    """Chunks the state file records as committed (0 while it does not exist yet)."""
    if not state.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(state, timeout=5)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM chunks").fetchone()[0])
        except sqlite3.OperationalError:  # its tables not made yet
            return 0


def test_resume_flag_picks_the_unfinished_job(tmp_path: Path, echo_catalog: Callable[..., Path]) -> None:
    catalog = echo_catalog(delay_s=0.2, batch_size=5, concurrency=1)
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record(f"C{i:010d}", f"r{i}") for i in range(100)])
    out = tmp_path / "out"
    args = [*BULKINFER, "run", str(source), "-m", "echo-test", "-o", str(out), "--models", str(catalog)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    wait_for(
        lambda: committed_chunks(out / ".bulkinfer" / "state.db") > 0, timeout=60
    )  # a file alone: not yet
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    resumed = bulkinfer("run", source, "-m", "echo-test", "-o", out, "--models", catalog, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming job" in resumed.stderr


def test_user_errors_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    missing = bulkinfer("run", tmp_path / "nope.jsonl", "--model", "echo", "--output", tmp_path / "out")
    assert missing.returncode == 2
    assert "input not found" in missing.stderr and "nope.jsonl" in missing.stderr

    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("X0000000001", "hi")])
    unknown = bulkinfer("run", source, "--model", "gpt-17", "--output", tmp_path / "out")
    assert unknown.returncode == 2
    assert "unknown model 'gpt-17'" in unknown.stderr and "smollm2-135m-instruct" in unknown.stderr


def test_dry_run_counts_and_validates_without_running(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(anthropic_record(f"D{i:010d}", "a few words here", max_tokens=50)) for i in range(10)
    ]
    lines.insert(3, b'{"recordId": "BROKEN00001", "modelInput": {"messages": "nope"}}')
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    result = bulkinfer("run", source, "--model", "echo", "--output", tmp_path / "out", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "11" in result.stdout and "anthropic: 10" in result.stdout
    assert "most output tokens: 500" in result.stdout
    assert "in.jsonl line 4: modelInput.messages" in result.stdout
    assert not (tmp_path / "out").exists()


def test_models_lists_the_catalog() -> None:
    result = bulkinfer("models")
    assert result.returncode == 0
    for name in ("echo", "smollm2-135m-instruct", "all-minilm-l6-v2"):
        assert name in result.stdout


def test_run_prints_a_summary_and_results_shows_records(tmp_path: Path) -> None:
    records = [anthropic_record(f"S{i:010d}", f"text {i}") for i in range(5)]
    records[1] = anthropic_record("[/x]markup", "[bold]not markup[/bold]")  # shown as written
    source = write_jsonl(tmp_path / "in.jsonl", records)
    result = bulkinfer("run", source, "--model", "echo", "--output", tmp_path / "out", "--job-id", "sum")
    assert result.returncode == 0, result.stderr
    assert "Job sum: Completed" in result.stdout and "5 of 5 processed" in result.stdout
    shown = bulkinfer("results", tmp_path / "out" / "sum", "-n", "2")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["S0000000000 text 0", "[/x]markup [bold]not markup[/bold]"]
    assert "tokens in/out: " in shown.stderr and "; cost: $0.000000" in shown.stderr


def test_a_bad_job_id_is_a_usage_error(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("X0000000001", "hi")])
    result = bulkinfer("run", source, "--model", "echo", "--output", tmp_path / "out", "--job-id", "../up")
    assert result.returncode == 2 and "invalid job id '../up'" in result.stderr
