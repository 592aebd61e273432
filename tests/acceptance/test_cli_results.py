"""`bulkinfer results` as a user runs it: on a job still running, and on an output folder of several jobs;
and the top-level `--version` and the help's rendering of flags."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bulkinfer import __version__
from bulkinfer.cli.main import app
from tests.acceptance.test_cli import BULKINFER, _env, bulkinfer, committed_records, wait_for
from tests.conftest import anthropic_record, write_jsonl

COMMITTED = re.compile(r"job live is InProgress: (\d+) of 300 records committed so far, 0 errors")


def test_results_of_a_running_job_show_its_committed_records_and_how_many(
    tmp_path: Path, echo_catalog: Callable[..., Path]
) -> None:
    catalog = echo_catalog(delay_s=0.2, batch_size=5, concurrency=1)
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record(f"L{i:010d}", f"r{i}") for i in range(300)])
    out = tmp_path / "out"
    args = [*BULKINFER, "run", str(source), "-m", "echo-test", "-o", str(out), "--job-id", "live"]
    proc = subprocess.Popen(
        [*args, "--models", str(catalog)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    try:
        wait_for(lambda: committed_records(out, "live") >= 10, timeout=60)
        shown = bulkinfer("results", out / "live", "-n", "0")
        assert shown.returncode == 0, shown.stderr
        said = COMMITTED.search(shown.stderr)
        assert said is not None, shown.stderr
        lines = shown.stdout.splitlines()
        assert len(lines) == int(said[1]) >= 10  # the count said is that of the records shown
        assert lines[:2] == ["L0000000000 r0", "L0000000001 r1"]  # in input order

        first = bulkinfer("results", out, "-n", "3")  # the output folder of this one job
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == ["L0000000000 r0", "L0000000001 r1", "L0000000002 r2"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    stopped = bulkinfer("results", out / "live", "-n", "0")
    assert stopped.returncode == 0, stopped.stderr
    assert "job live is Stopped: " in stopped.stderr
    assert len(stopped.stdout.splitlines()) == committed_records(out, "live")


def test_results_of_a_folder_of_several_jobs_asks_for_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for job_id in ("first", "second"):
        source = write_jsonl(tmp_path / f"{job_id}.jsonl", [anthropic_record(f"{job_id}-1", job_id)])
        ran = bulkinfer("run", source, "-m", "echo", "-o", out, "--job-id", job_id)
        assert ran.returncode == 0, ran.stderr

    asked = bulkinfer("results", out)
    assert asked.returncode == 2 and asked.stdout == ""
    assert f"{out} holds 2 jobs; show one with `bulkinfer results {out / '<job-id>'}`" in asked.stderr
    assert f"  {out / 'first'}\n  {out / 'second'}" in asked.stderr

    one = bulkinfer("results", out / "second")
    assert one.returncode == 0 and one.stdout.splitlines() == ["second-1 second"]


def test_version() -> None:
    shown = CliRunner().invoke(app, ["--version"])
    assert shown.exit_code == 0 and shown.stdout == f"bulkinfer {__version__}\n"


@pytest.mark.parametrize(
    "command", ["", "run", "status", "submit", "jobs", "stop", "serve", "models", "results", "prepare"]
)
def test_flags_show_no_type_in_help(command: str) -> None:
    shown = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.stdout
    assert "--help" in shown.stdout and "<bool>" not in shown.stdout
    assert re.search(r"<(str|path|int)>", shown.stdout) or not command  # other options keep their type
