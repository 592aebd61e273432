"""``--executor ray``: jobs run by `bulkinfer run` (a subprocess, as a user runs it) on the actors of a real
Ray cluster started on 127.0.0.1 for this module; killed workers, stops and resumes on either executor."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
import pytest

from bulkinfer.testing.ray_head import RAY_ENV, RayHead, ray_head
from tests.acceptance.test_cli import committed_records
from tests.conftest import anthropic_record, read_jsonl, write_jsonl

pytest.importorskip("ray")

BULKINFER = [sys.executable, "-m", "bulkinfer"]
ACTOR = "ray::ShardWorker"


def _env() -> dict[str, str]:
    return {**os.environ, **RAY_ENV, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def actor_processes(head: RayHead) -> list[psutil.Process]:
    """The actors' worker processes of this cluster."""
    found = []
    for process in psutil.Process(head.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(ACTOR in part for part in process.cmdline()):
                found.append(process)
    return found


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayHead]:
    """A Ray head of 2 CPUs on 127.0.0.1, for this module's jobs."""
    with ray_head() as head:
        yield head


@pytest.fixture
def ray_address(ray_cluster: RayHead) -> str:
    return ray_cluster.address


def run_args(source: Path, out: Path, model: str, job_id: str, *extra: str | Path) -> list[str]:
    args = [*BULKINFER, "run", str(source), "--model", model, "--output", str(out), "--job-id", job_id]
    return args + [str(e) for e in extra]


def bulkinfer(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env())


def assert_each_once_in_order(output: Path, ids: list[str]) -> list[dict[str, object]]:
    lines = read_jsonl(output)
    assert [line["recordId"] for line in lines] == ids
    return lines


def test_echo_records_over_two_actors_come_out_once_in_input_order(tmp_path: Path, ray_address: str) -> None:
    total = 200_000
    ids = [f"R{i:07d}" for i in range(total)]
    source = write_jsonl(tmp_path / "in" / "records.jsonl", (anthropic_record(i, f"text {i}") for i in ids))
    out = tmp_path / "out"
    ray = bulkinfer(run_args(source, out, "echo", "onray", *on_ray(ray_address)))
    assert ray.returncode == 0, ray.stderr
    lines = assert_each_once_in_order(out / "onray" / "records.jsonl.out", ids)
    for line in lines[:: total // 100]:
        model_output = line["modelOutput"]
        assert isinstance(model_output, dict)
        assert model_output["content"][0]["text"] == f"text {line['recordId']}"
    manifest = orjson.loads((out / "onray" / "manifest.json.out").read_bytes())
    assert (manifest["totalRecordCount"], manifest["successRecordCount"]) == (total, total)


def test_a_local_model_runs_on_two_actors(tmp_path: Path, ray_address: str) -> None:
    ids = [f"Q{i:03d}" for i in range(64)]
    records = (anthropic_record(i, f"Say the number {n}.", max_tokens=4) for n, i in enumerate(ids))
    source = write_jsonl(tmp_path / "in" / "records.jsonl", records)
    out = tmp_path / "out"
    done = bulkinfer(run_args(source, out, "smollm2-135m-instruct", "smol", *on_ray(ray_address)))
    assert done.returncode == 0, done.stderr
    for line in assert_each_once_in_order(out / "smol" / "records.jsonl.out", ids):
        assert "error" not in line
        model_output = line["modelOutput"]
        assert isinstance(model_output, dict) and model_output["usage"]["output_tokens"] > 0


@contextlib.contextmanager
def started(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The CLI started, its output in ``log``; killed if the test ends first."""
    with log.open("wb") as sink, subprocess.Popen(args, stdout=sink, stderr=sink, env=_env()) as job:
        try:
            yield job
        finally:
            if job.poll() is None:
                job.kill()


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@dataclass(frozen=True)
class SlowJob:
    """A job on a slow echo model (50 ms a batch of 10), to act on while it runs on Ray."""

    source: Path
    out: Path
    ids: list[str]
    catalog: Path

    @classmethod
    def of(cls, folder: Path, echo_catalog: Callable[..., Path], total: int, concurrency: int) -> SlowJob:
        ids = [f"K{i:05d}" for i in range(total)]
        source = write_jsonl(folder / "in" / "records.jsonl", (anthropic_record(i, i) for i in ids))
        catalog = echo_catalog(delay_s=0.05, batch_size=10, concurrency=concurrency)
        return cls(source, folder / "out", ids, catalog)

    def args(self, job_id: str, *extra: str) -> list[str]:
        return run_args(self.source, self.out, "echo-test", job_id, "--models", self.catalog, *extra)


def on_ray(address: str) -> list[str]:
    return ["--executor", "ray", "--ray-address", address, "--ray-actors", "2"]


def test_a_ray_worker_killed_mid_job_leaves_every_record_in_the_output_once(
    tmp_path: Path, ray_cluster: RayHead, echo_catalog: Callable[..., Path]
) -> None:
    total = 1_200
    slow = SlowJob.of(tmp_path, echo_catalog, total, concurrency=2)
    out, ids, args = slow.out, slow.ids, slow.args("killed", *on_ray(ray_cluster.address))
    with started(args, tmp_path / "killed.log") as job:
        _wait_for(lambda: committed_records(out, "killed") >= 100, 300, "records committed")
        actors = actor_processes(ray_cluster)
        assert actors, "no actor process found"
        actors[0].send_signal(signal.SIGKILL)
        assert job.wait(timeout=600) == 0, (tmp_path / "killed.log").read_text()
    assert_each_once_in_order(out / "killed" / "records.jsonl.out", ids)
    manifest = orjson.loads((out / "killed" / "manifest.json.out").read_bytes())
    assert manifest["successRecordCount"] == total


def test_an_actor_lost_for_good_leaves_its_shard_to_the_others(
    tmp_path: Path, ray_cluster: RayHead, echo_catalog: Callable[..., Path]
) -> None:
    """One actor killed more times than Ray restarts it: the job goes on with the other, and every
    record comes out once. (The job is long enough never to end first; it is stopped, then resumed
    on a fast copy of the model.)"""
    from bulkinfer.engine.cluster import ACTOR_RESTARTS

    slow = SlowJob.of(tmp_path, echo_catalog, 40_000, concurrency=1)
    out, ids, args = slow.out, slow.ids, slow.args("lost", *on_ray(ray_cluster.address))
    log = tmp_path / "lost.log"
    with started(args, log) as job:
        _wait_for(lambda: committed_records(out, "lost") >= 50, 300, "records committed")
        victim: psutil.Process | None = actor_processes(ray_cluster)[0]
        for _ in range(ACTOR_RESTARTS + 1):
            assert victim is not None
            known = {p.pid for p in actor_processes(ray_cluster)}
            victim.kill()
            victim = _reborn(ray_cluster, known, job)  # (Ray restarts it in a process it did not have)
            if victim is None:
                break
        _wait_for(lambda: "lost for good" in log.read_text() or job.poll() is not None, 300, "the loss said")
        assert job.poll() is None, log.read_text()  # it goes on with the other actor
        before = committed_records(out, "lost")
        _wait_for(lambda: committed_records(out, "lost") > before, 300, "records committed after the loss")
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=300) == 130, log.read_text()
    fast = tmp_path / "fast.toml"
    assert "delay_s = 0.05" in slow.catalog.read_text()
    fast.write_text(slow.catalog.read_text().replace("delay_s = 0.05", "delay_s = 0"))
    resumed = bulkinfer(run_args(slow.source, out, "echo-test", "lost", "--models", fast))
    assert resumed.returncode == 0, resumed.stderr
    assert_each_once_in_order(out / "lost" / "records.jsonl.out", ids)


def _reborn(head: RayHead, known: set[int], job: subprocess.Popen[bytes]) -> psutil.Process | None:
    """The actor process that is none of ``known`` (the one killed, restarted by Ray), once it is up."""
    deadline = time.monotonic() + 60
    while job.poll() is None and time.monotonic() < deadline:
        new = [p for p in actor_processes(head) if p.pid not in known]
        if new:
            return new[0]
        time.sleep(0.2)
    return None


def test_a_job_stopped_on_ray_resumes_on_the_local_executor_exactly_once(
    tmp_path: Path, ray_address: str, echo_catalog: Callable[..., Path]
) -> None:
    total = 1_000
    slow = SlowJob.of(tmp_path, echo_catalog, total, concurrency=1)
    out, ids, args = slow.out, slow.ids, slow.args("moved", *on_ray(ray_address))
    with started(args, tmp_path / "moved.log") as job:
        _wait_for(lambda: committed_records(out, "moved") >= 50, 300, "records committed")
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=300) == 130, (tmp_path / "moved.log").read_text()
    assert 0 < committed_records(out, "moved") < total
    hint = (tmp_path / "moved.log").read_text().split("Resume with:", 1)[1]
    assert f"--executor ray --ray-address {ray_address} --ray-actors 2" in " ".join(hint.split())
    local = bulkinfer(slow.args("moved"))
    assert local.returncode == 0, local.stderr
    assert_each_once_in_order(out / "moved" / "records.jsonl.out", ids)


def test_a_job_stopped_at_once_on_ray_leaves_no_actor_and_resumes_exactly_once(
    tmp_path: Path, ray_cluster: RayHead, echo_catalog: Callable[..., Path]
) -> None:
    """A second Ctrl-C (as a service's shutdown or fence) does not wait for the calls under way: the
    actors are ended at once, and what they were running runs again at the resume."""
    ids = [f"N{i:04d}" for i in range(200)]
    source = write_jsonl(tmp_path / "in" / "records.jsonl", (anthropic_record(i, i) for i in ids))
    catalog = echo_catalog(delay_s=3.0, batch_size=10, concurrency=2)  # calls long under way
    out, log = tmp_path / "out", tmp_path / "now.log"
    args = run_args(source, out, "echo-test", "now", "--models", catalog, *on_ray(ray_cluster.address))
    with started(args, log) as job:
        _wait_for(lambda: committed_records(out, "now") >= 10, 300, "records committed")
        job.send_signal(signal.SIGINT)
        _wait_for(lambda: "stopping:" in log.read_text(), 60, "the first Ctrl-C said")
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=120) == 130, log.read_text()
    _wait_for(lambda: not actor_processes(ray_cluster), 60, "the actors ended")
    assert committed_records(out, "now") < len(ids)
    local = bulkinfer(run_args(source, out, "echo-test", "now", "--models", catalog))
    assert local.returncode == 0, local.stderr
    assert_each_once_in_order(out / "now" / "records.jsonl.out", ids)


def test_a_provider_batch_model_is_refused_before_any_job(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[models.gpt-batch]\nprovider = "openai-batch"\nbase_url = "http://127.0.0.1:9/v1"\n')
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("a", "hi")])
    done = bulkinfer(run_args(source, tmp_path / "out", "gpt-batch", "nope", "--models", catalog,
                              "--executor", "ray"))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "batch API" in done.stderr and "--executor ray" in done.stderr
    assert not (tmp_path / "out" / ".bulkinfer").exists()


def test_a_service_runs_its_jobs_on_ray_and_a_stop_keeps_what_finished(
    tmp_path: Path, ray_address: str
) -> None:
    from tests.faults.conftest import (
        SLOW_CATALOG,
        Launcher,
        assert_complete_outputs,
        assert_partial_exactly_once,
        client,
        create,
        ids_in,
        job_id,
        local_outputs,
        wait_ended,
        wait_for,
        write_records,
    )

    catalog = tmp_path / "models.toml"
    catalog.write_text(SLOW_CATALOG)
    launcher = Launcher(tmp_path)
    on_ray = {**RAY_ENV, "BULKINFER_EXECUTOR": "ray", "RAY_ADDRESS": ray_address, "BULKINFER_RAY_ACTORS": "2"}
    try:
        serve = launcher.start(tmp_path / "data", catalog, env=on_ray)
        whole = write_records(serve.bucket("in-bucket") / "whole.jsonl", 300)
        stopped = write_records(serve.bucket("in-bucket") / "stopped.jsonl", 5_000, "S")
        bedrock = client(serve)
        arn = create(bedrock, "whole", "s3://in-bucket/whole.jsonl", "s3://out-bucket/")
        job = wait_ended(bedrock, arn, timeout=300)
        assert job["status"] == "Completed", job
        assert_complete_outputs(
            local_outputs(serve.bucket("out-bucket") / job_id(arn)), {"whole.jsonl": whole}
        )

        arn = create(bedrock, "stopped", "s3://in-bucket/stopped.jsonl", "s3://out-bucket/")
        wait_for(bedrock, arn, lambda job: job.get("processedRecordCount", 0) > 0, "records done", 300)
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
        job = wait_ended(bedrock, arn, timeout=300)
        assert job["status"] == "Stopped", job
        written = ids_in(local_outputs(serve.bucket("out-bucket") / job_id(arn))["stopped.jsonl.out"])
        assert_partial_exactly_once(written, stopped)
        assert "Ray actors" in serve.log.read_text()  # (the job said where it ran)
    finally:
        launcher.close()


def test_a_service_waits_out_its_ray_cluster_going_away(tmp_path: Path) -> None:
    """The head killed mid-job: the service lives on (a Ray driver left connected to a dead head ends
    its process), its jobs wait rather than fail, and they finish once a head is back at the address,
    each record once."""
    from tests.faults.conftest import (
        SLOW_CATALOG,
        Launcher,
        assert_complete_outputs,
        client,
        create,
        job_id,
        local_outputs,
        wait_ended,
        wait_for,
        write_records,
    )

    catalog = tmp_path / "models.toml"
    catalog.write_text(SLOW_CATALOG)
    launcher = Launcher(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    address = f"127.0.0.1:{port}"
    on_ray = {**RAY_ENV, "BULKINFER_EXECUTOR": "ray", "RAY_ADDRESS": address, "BULKINFER_RAY_ACTORS": "2"}
    try:
        with ray_head(port=port) as head:
            serve = launcher.start(tmp_path / "data", catalog, env=on_ray)
            records = write_records(serve.bucket("in-bucket") / "lost.jsonl", 3_000)
            bedrock = client(serve)
            arn = create(bedrock, "lost", "s3://in-bucket/lost.jsonl", "s3://out-bucket/")
            wait_for(bedrock, arn, lambda job: job.get("processedRecordCount", 0) > 0, "records done", 300)
            kill_tree(head.pid)
            waiting = wait_for(
                bedrock,
                arn,
                lambda job: "waiting for the Ray cluster" in job.get("message", ""),
                "a wait",
                300,
            )
            assert waiting["processedRecordCount"] < len(records)
        with ray_head(port=port):
            job = wait_ended(bedrock, arn, timeout=300)
            assert job["status"] == "Completed", job
            assert "waiting" not in job.get("message", "")
        assert_complete_outputs(
            local_outputs(serve.bucket("out-bucket") / job_id(arn)), {"lost.jsonl": records}
        )
        assert serve.process.poll() is None, serve.log.read_text()[-3000:]
    finally:
        launcher.close()


def kill_tree(pid: int) -> None:
    """``kill -9`` a process and every process below it."""
    root = psutil.Process(pid)
    for process in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.Error):
            process.kill()


def test_a_remote_model_on_two_actors_stays_under_its_limit(tmp_path: Path, ray_address: str) -> None:
    from bulkinfer.testing import SimulatorConfig, SimulatorThread
    from tests.integration.test_remote_reliability import catalog, records

    count = 200
    config = SimulatorConfig(requests_per_minute=600, latency_median_s=0.01)
    with SimulatorThread(config) as sim:
        models = catalog(tmp_path / "m.toml", sim, requests_per_minute=600, max_attempts=20, batch_size=1)
        source = write_jsonl(tmp_path / "in" / "a.jsonl", records(count))
        args = run_args(
            source, tmp_path / "out", "remote", "limited", "--models", models, *on_ray(ray_address)
        )
        done = bulkinfer(args)
        assert done.returncode == 0, done.stderr
        stats = sim.idle_stats()
    assert stats.successes == count
    assert stats.rate_limited < 0.01 * stats.calls, stats.by_outcome
    times = stats.success_times
    assert len(times) <= 600 / 60 * (times[-1] - times[0] + config.burst_s) + 1  # at most the limit
    callers = {line["recordId"] for line in read_jsonl(tmp_path / "out" / "limited" / "a.jsonl.out")}
    assert len(callers) == count
    assert "2 Ray actors" in done.stderr  # (both actors ran: the job said so)


def test_an_unreachable_cluster_is_said_before_any_job(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("a", "hi")])
    done = bulkinfer(run_args(source, tmp_path / "out", "echo", "nope", "--executor", "ray",
                              "--ray-address", address), timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cannot reach the Ray cluster at {address}" in done.stderr
    assert not (tmp_path / "out" / ".bulkinfer").exists()


def test_relative_paths_mean_the_same_to_the_actors(tmp_path: Path, ray_address: str) -> None:
    ids = [f"P{i:04d}" for i in range(300)]
    write_jsonl(tmp_path / "in" / "records.jsonl", (anthropic_record(i, i) for i in ids))
    args = run_args(Path("in"), Path("out"), "echo", "relative", *on_ray(ray_address))
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_each_once_in_order(tmp_path / "out" / "relative" / "records.jsonl.out", ids)


def test_more_actors_than_the_cluster_can_place_is_said_before_any_job(
    tmp_path: Path, ray_address: str
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [anthropic_record("a", "hi")])
    done = bulkinfer(run_args(source, tmp_path / "out", "echo", "crowd", "--executor", "ray",
                              "--ray-address", ray_address, "--ray-actors", "64"), timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--ray-actors 64" in done.stderr and "at most 4" in done.stderr
    assert not (tmp_path / "out" / ".bulkinfer").exists()
