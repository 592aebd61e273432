"""How soon a provider batch slot is filled again: bulkinfer's openai-batch backend against a timer.

Seed 002's pipeline found free Bedrock batch slots with a timer every 15 minutes, so a slot stayed empty
for up to 900 s (450 s on average). This benchmark runs a second ``bulkinfer serve`` on 127.0.0.1 as the
provider (its OpenAI Batch API, on an echo model slowed so that each provider job takes about a second,
two provider jobs at a time), then:

- ``bulkinfer run`` on ``--records`` records through an ``openai-batch`` catalog entry with a quota of
  2 provider jobs of ``--per-job`` records;
- the baseline: a loop with the official openai SDK that, every ``--timer-s`` seconds (seed 002's timer,
  scaled down so the run stays short), creates provider jobs for the free slots, on the same records.

For each provider job created after the first two, the gap is the time from the latest end of a provider
job before it to its creation, read from the provider's own job table. Prints the median and p90 gap of
each and their ratio.

    python benchmarks/provider_slots.py [--records 2400] [--per-job 200] [--timer-s 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import orjson
import sqlalchemy

PROVIDER_CATALOG = """
[models.bench-echo]
provider = "echo"
batch_size = 10
concurrency = 1
[models.bench-echo.options]
delay_s = 0.05
"""

BATCH_CATALOG = """
[models.bench-batch]
provider = "openai-batch"
remote_model = "bench-echo"
base_url = "{url}/v1"
max_provider_jobs = 2
max_records_per_job = {per_job}
poll_seconds = 60
"""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=2400)
    parser.add_argument("--per-job", type=int, default=200)
    parser.add_argument("--timer-s", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        provider, url = start_provider(root)
        try:
            ours = run_bulkinfer(root, url, args.records, args.per_job)
            baseline = run_timer(root, url, args.records, args.per_job, args.timer_s)
        finally:
            provider.terminate()
            provider.wait(timeout=30)
    report("bulkinfer (a slot freed is filled when seen)", ours)
    report(f"timer every {args.timer_s:g} s (seed 002's, scaled down from 900 s)", baseline)
    ratio = statistics.median(baseline) / max(statistics.median(ours), 1e-6)
    print(f"median gap: the timer's is {ratio:.1f}x bulkinfer's")
    print(f"at seed 002's 900 s timer the mean gap would be 450 s: {450 / statistics.median(ours):,.0f}x")
    return 0


def start_provider(root: Path) -> tuple[subprocess.Popen[str], str]:
    catalog = root / "provider.toml"
    catalog.write_text(PROVIDER_CATALOG)
    command = [
        sys.executable,
        "-m",
        "bulkinfer",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(root / "provider"),
    ]
    command += ["--models", str(catalog), "--jobs-per-model", "2", "--insecure-dev"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "serving on http://127.0.0.1:" not in line:
        raise SystemExit(f"the provider server did not start: {line!r}")
    return process, line.split()[-1]


def records(count: int, tag: str) -> list[bytes]:
    body = {"messages": [{"role": "user", "content": "a record"}], "max_tokens": 8}
    return [orjson.dumps({"recordId": f"{tag}{n:07d}", "modelInput": body}) for n in range(count)]


def run_bulkinfer(root: Path, url: str, count: int, per_job: int) -> list[float]:
    catalog = root / "batch.toml"
    catalog.write_text(BATCH_CATALOG.format(url=url, per_job=per_job))
    source = root / "in.jsonl"
    source.write_bytes(b"\n".join(records(count, "B")) + b"\n")
    started = time.time()
    command = [sys.executable, "-m", "bulkinfer", "run", str(source), "--model", "bench-batch"]
    command += ["--models", str(catalog), "--output", str(root / "out")]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return gaps(root, since=started)


def run_timer(root: Path, url: str, count: int, per_job: int, timer_s: float) -> list[float]:
    """Seed 002's way: every ``timer_s``, look at the provider's jobs and fill the free slots."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    lines = records(count, "T")
    body = {"method": "POST", "url": "/v1/chat/completions"}
    parts = []
    for at in range(0, count, per_job):
        chunk = [orjson.loads(line) for line in lines[at : at + per_job]]
        content = b"\n".join(
            orjson.dumps(
                {"custom_id": r["recordId"], **body, "body": {**r["modelInput"], "model": "bench-echo"}}
            )
            for r in chunk
        )
        parts.append(content)
    started = time.time()
    running: list[str] = []
    while parts or running:
        running = [b for b in running if client.batches.retrieve(b).status not in ("completed", "failed")]
        while parts and len(running) < 2:
            uploaded = client.files.create(file=("part.jsonl", parts.pop(0)), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            running.append(batch.id)
        time.sleep(timer_s)
    return gaps(root, since=started)


def gaps(root: Path, since: float) -> list[float]:
    """For each provider job after the first two made since ``since``: seconds from the latest end
    of one before it to its creation."""
    engine = sqlalchemy.create_engine(f"sqlite:///{root / 'provider' / 'bulkinfer.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text("SELECT submit_time, end_time FROM batch_jobs WHERE submit_time >= :since"),
            {"since": since},
        ).all()
    engine.dispose()
    submits = sorted(r[0] for r in rows)
    ends = sorted(r[1] for r in rows if r[1] is not None)
    return [s - max(e for e in ends if e <= s) for s in submits[2:] if any(e <= s for e in ends)]


def report(name: str, found: list[float]) -> None:
    if not found:
        raise SystemExit(f"{name}: no provider job waited for a slot; give more --records")
    found = sorted(found)
    p90 = found[min(len(found) - 1, int(0.9 * len(found)))]
    print(f"{name}: {len(found)} slot refills, median gap {statistics.median(found):.2f} s, p90 {p90:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
