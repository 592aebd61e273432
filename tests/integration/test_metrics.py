"""``/metrics`` scraped from a real `bulkinfer serve` during and after jobs, one of them killed with the
server and resumed: its figures equal what the manifests say, every record counted once."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bulkinfer.testing import SimulatorConfig, SimulatorThread
from tests.conftest import SLOW_ECHO_CATALOG, write_jsonl
from tests.integration.test_bedrock_api import (
    Server,
    client,
    create,
    database,
    records,
    start_server,
    wait_status,
)
from tests.integration.test_openai_batches import line, upload, wait

pytestmark = pytest.mark.slow

TOKEN_ENV = "BI_TEST_METRICS_TOKEN"
TOKEN = "scrape-me-7f3a"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(server: Server, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"{server.url}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(server: Server, token: str | None = None) -> Samples:
    status, text = fetch(server, token)
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def summed(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


def manifests(data_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(path.read_bytes()) for path in data_dir.rglob("manifest.json.out")]


def manifest_totals(found: list[dict[str, Any]]) -> Counter[str]:
    totals: Counter[str] = Counter()
    for manifest in found:
        totals["succeeded"] += manifest["successRecordCount"]
        totals["failed"] += manifest["errorRecordCount"]
        totals["input"] += manifest["inputTokenCount"]
        totals["output"] += manifest["outputTokenCount"]
    return totals


def metric_totals(samples: Samples) -> Counter[str]:
    totals: Counter[str] = Counter()
    for outcome in ("succeeded", "failed"):
        totals[outcome] = int(summed(samples, "bulkinfer_records", outcome=outcome))
    for direction in ("input", "output"):
        totals[direction] = int(summed(samples, "bulkinfer_tokens", direction=direction))
    return totals


@pytest.fixture
def token_env() -> Iterator[None]:
    os.environ[TOKEN_ENV] = TOKEN
    try:
        yield
    finally:
        del os.environ[TOKEN_ENV]


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_metrics_count_every_record_once_across_a_kill_and_a_restart(
    store: str, tmp_path: Path, token_env: None
) -> None:
    with database(store) as url:
        stored = ("--database-url", url, "--lease-seconds", "2") if url else ()
        run_kill_and_restart(tmp_path, stored)


def run_kill_and_restart(tmp_path: Path, stored: tuple[str, ...]) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(SLOW_ECHO_CATALOG)
    first = start_server(tmp_path / "data", catalog, "--insecure-dev", *stored)  # no token: open (dev)
    try:
        write_jsonl(first.bucket("metrics-in") / "slow.jsonl", records(300))
        bedrock = client(first)
        arns = [
            create(bedrock, f"slow-{i}", "s3://metrics-in/slow.jsonl", "s3://metrics-out/slow/", "slow-echo")
            for i in range(3)
        ]
        for arn in arns[:2]:
            wait_status(bedrock, arn, {"InProgress"})
        wait_status(bedrock, arns[2], {"Scheduled"})
        during = scrape(first)  # two slow jobs hold both slots, the third waits
        assert value(during, "bulkinfer_slots_in_use", model="slow-echo") == 2
        assert value(during, "bulkinfer_queue_depth", model="slow-echo") == 1
        assert value(during, "bulkinfer_slots", model="slow-echo") == 2
        assert summed(during, "bulkinfer_jobs", status="InProgress", model="slow-echo") == 2
        assert summed(during, "bulkinfer_jobs", status="Scheduled", model="slow-echo") == 1
        deadline = time.monotonic() + 30
        while summed(during, "bulkinfer_records", model="slow-echo") < 60:  # committed chunks show
            assert time.monotonic() < deadline, "no committed records show in /metrics"
            time.sleep(0.2)
            during = scrape(first)
        before_kill = summed(during, "bulkinfer_records", model="slow-echo")
    finally:
        first.stop(signal.SIGKILL)  # mid-job: the two running jobs resume from their committed chunks

    token = ("--metrics-token-env", TOKEN_ENV)
    second = start_server(tmp_path / "data", catalog, "--insecure-dev", *token, *stored)
    try:
        assert fetch(second)[0] == 401 and fetch(second, "wrong")[0] == 401  # a token set is a token needed
        resumed = scrape(second, TOKEN)
        assert summed(resumed, "bulkinfer_records", model="slow-echo") >= before_kill  # nothing lost
        # a Bedrock job with failing records, and an OpenAI batch through the openai SDK
        bad = [{"recordId": f"B{i:010d}", "modelInput": {"nonsense": i}} for i in range(3)]
        write_jsonl(second.bucket("metrics-in") / "mixed.jsonl", [*records(20, "M"), *bad])
        mixed = create(client(second), "mixed", "s3://metrics-in/mixed.jsonl", "s3://metrics-out/mixed/")
        sdk = openai.OpenAI(base_url=f"{second.url}/v1", api_key="metrics-test", max_retries=0, timeout=30)
        batch = sdk.batches.create(
            input_file_id=upload(sdk, [line(f"o{i}", f"hello {i}") for i in range(15)]),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        seen = [resumed]
        for arn in [*arns, mixed]:
            while bedrock_status(second, arn) not in {"Completed", "PartiallyCompleted", "Failed"}:
                seen.append(scrape(second, TOKEN))
                time.sleep(0.3)
        assert wait(sdk, batch.id, {"completed", "failed"}).status == "completed"
        time.sleep(2)  # past the store figures' cache
        after = scrape(second, TOKEN)
        for arn in arns:
            assert wait_status(client(second), arn, {"Completed"})["successRecordCount"] == 300

        found = manifests(tmp_path / "data")
        assert len(found) == 5  # three slow jobs, the mixed one, the OpenAI batch
        assert metric_totals(after) == manifest_totals(found)
        assert summed(after, "bulkinfer_records", model="slow-echo", outcome="succeeded") == 900  # once
        assert value(after, "bulkinfer_records", model="echo", outcome="failed") == 3
        assert value(after, "bulkinfer_records", model="echo", outcome="succeeded") == 35
        assert summed(after, "bulkinfer_jobs", status="Completed", model="slow-echo") == 3
        assert summed(after, "bulkinfer_jobs", status="Completed", api="openai") == 1
        assert value(after, "bulkinfer_slots_in_use", model="slow-echo") == 0
        assert value(after, "bulkinfer_queue_depth", model="slow-echo") == 0
        for earlier, later in zip(seen, [*seen[1:], after], strict=True):  # never counted twice, then less
            assert metric_totals(earlier)["succeeded"] <= metric_totals(later)["succeeded"]
    finally:
        second.stop()


def bedrock_status(server: Server, arn: str) -> str:
    return str(client(server).get_model_invocation_job(jobIdentifier=arn)["status"])


def test_metrics_are_refused_without_a_token_outside_development(tmp_path: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(SLOW_ECHO_CATALOG)
    server = start_server(tmp_path / "data", catalog, "--access-keys", "AKIDMETRICS1:secret")
    try:
        status, body = fetch(server)
        assert status == 403 and "--metrics-token-env" in body
        assert fetch(server, "anything")[0] == 403
    finally:
        server.stop()


def test_provider_calls_429s_and_retries_are_counted(tmp_path: Path) -> None:
    config = SimulatorConfig(
        latency_median_s=0.01, requests_per_minute=600, burst_s=0.5, error_500=0.2, seed=3
    )
    with SimulatorThread(config) as sim:
        catalog = remote_catalog(tmp_path / "models.toml", sim)
        server = start_server(tmp_path / "data", catalog, "--insecure-dev")
        try:
            write_jsonl(server.bucket("metrics-in") / "remote.jsonl", records(40))
            arn = create(
                client(server), "remote", "s3://metrics-in/remote.jsonl", "s3://metrics-out/", "remote"
            )
            assert wait_status(client(server), arn, {"Completed", "Failed"})["status"] == "Completed"
            samples = scrape(server)
        finally:
            server.stop()
        stats = sim.stats()
    by_status = stats.by_status
    calls = summed(samples, "bulkinfer_provider_call_seconds_count", model="remote")
    assert calls == stats.calls  # every call the provider saw, each observed once
    assert value(samples, "bulkinfer_provider_call_seconds_count", model="remote", outcome="ok") == 40
    throttled = value(samples, "bulkinfer_provider_throttled_total", model="remote")
    assert throttled == by_status.get(429, 0) > 0
    failed = value(samples, "bulkinfer_provider_call_seconds_count", model="remote", outcome="failed")
    assert failed == by_status.get(500, 0) > 0
    assert value(samples, "bulkinfer_provider_retries_total", model="remote") == calls - 40
    assert (
        value(samples, "bulkinfer_provider_call_seconds_bucket", model="remote", outcome="ok", le="+Inf")
        == 40
    )


def remote_catalog(path: Path, sim: SimulatorThread) -> Path:
    lines = [
        "[models.remote]",
        'provider = "openai"',
        f'base_url = "{sim.openai_base_url}"',
        'remote_model = "sim-model"',
        'dialects = ["anthropic"]',
        "max_attempts = 20",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
