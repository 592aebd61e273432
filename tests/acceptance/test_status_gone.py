"""``bulkinfer status`` of a local job whose process was killed: it says so, and how to resume, instead of
showing InProgress for ever."""

from __future__ import annotations

import shlex
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.acceptance.test_cli import BULKINFER, _env, bulkinfer, committed_records, wait_for
from tests.conftest import anthropic_record, write_jsonl

GONE = "the process running it is gone (killed?)"


def test_status_of_a_killed_run_says_its_process_is_gone_and_how_to_resume(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(delay_s=0.1, batch_size=5, concurrency=1)
    source = write_jsonl(
        tmp_path / "in" / "records.jsonl", [anthropic_record(f"R{i:04d}", f"r{i}") for i in range(400)]
    )
    out = tmp_path / "out"
    args = ["run", str(source), "--model", "echo-test", "--output", str(out), "--job-id", "slow"]
    args += ["--models", str(catalog)]
    proc = subprocess.Popen(
        [*BULKINFER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    try:
        wait_for(lambda: committed_records(out, "slow") >= 10, timeout=30)
        running = bulkinfer("status", out)
        assert running.returncode == 0, running.stderr
        assert "InProgress" in running.stdout
        assert GONE not in running.stdout and "resume with" not in running.stdout
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert committed_records(out, "slow") < 400, "the job finished before it could be killed"

    for target in (out, out / "slow"):  # the output folder, and the job's own folder in it
        dead = bulkinfer("status", target)
        assert dead.returncode == 0, dead.stderr
        text = " ".join(dead.stdout.split())  # (a table cell may wrap)
        assert f"InProgress: {GONE}" in text
        assert f"job slow: {GONE}; resume with:" in text
        command = dead.stdout.split("resume with:", 1)[1].strip().splitlines()[0]
        assert shlex.split(command)[:2] == ["bulkinfer", "run"]
        assert "--job-id slow" in command and f"--output {out}" in command
        assert "--models FILE" in command  # its model is in a catalog file the state does not record

    # the command (with the catalog filled in) resumes the job to the end
    resumed = [*shlex.split(command.split(" --models FILE")[0])[1:], "--models", str(catalog)]
    rerun = bulkinfer(*resumed)
    assert rerun.returncode == 0, rerun.stderr
    assert "records already done" in rerun.stderr
    done = bulkinfer("status", out)
    assert "Completed" in done.stdout and GONE not in " ".join(done.stdout.split())
