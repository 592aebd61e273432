"""Records per second of ``--executor ray`` with 1 and 2 actors against the local executor, same job.

Starts a Ray head on 127.0.0.1 (``--num-cpus``, default 2), writes ``--records`` Bedrock records, and runs
``bulkinfer run`` on them three times per model: local, Ray with 1 actor, Ray with 2 actors. Two models:

- ``echo``: answers at once, so its time is bulkinfer's own (reading, planning, committing, writing):
  what Ray adds per record shows plainly;
- ``paced``: an echo that takes ``--delay-s`` per batch of 10 with one batch at a time per process, like a
  model that one process cannot run faster (a GPU, a rate-limited key): what more actors bring.

The time is the job's own (its manifest's start to end, with Ray's actor start-up, not the CLI's
import). Prints records/s of each, the ratio of each Ray run to the local one, and Ray's overhead per
record (1 actor, ``echo``).

    python benchmarks/ray_executor.py [--records 100000] [--delay-s 0.01]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from bulkinfer.testing.ray_head import RAY_ENV, ray_head

CATALOG = """
[models.paced]
provider = "echo"
batch_size = 10
concurrency = 1
[models.paced.options]
delay_s = {delay}
"""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--paced-records", type=int, default=4_000)
    parser.add_argument("--delay-s", type=float, default=0.01)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, **RAY_ENV}
    with ray_head(args.num_cpus) as head, tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        catalog = root / "models.toml"
        catalog.write_text(CATALOG.format(delay=args.delay_s))
        runs = {
            "echo": _compare(root, "echo", args.records, catalog, head.address, env),
            "paced": _compare(root, "paced", args.paced_records, catalog, head.address, env),
        }
    for model, (count, rates) in runs.items():
        local = rates["local"]
        print(f"{model}: {count:,} records")
        for name, rate in rates.items():
            print(f"  {name:<14} {rate:>10,.0f} records/s   {rate / local:5.2f}x local")
    count, rates = runs["echo"]
    overhead = (1 / rates["ray, 1 actor"] - 1 / rates["local"]) * 1e6
    print(f"Ray's overhead per record (echo, 1 actor): {overhead:,.0f} us")
    return 0


def _compare(
    root: Path, model: str, count: int, catalog: Path, address: str, env: dict[str, str]
) -> tuple[int, dict[str, float]]:
    source = root / f"{model}.jsonl"
    with source.open("wb") as f:
        for i in range(count):
            text = {"type": "text", "text": f"record {i}"}
            body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 16,
                    "messages": [{"role": "user", "content": [text]}]}  # fmt: skip
            f.write(orjson.dumps({"recordId": f"R{i}", "modelInput": body}) + b"\n")
    runs = {"local": [], "ray, 1 actor": ["--ray-actors", "1"], "ray, 2 actors": ["--ray-actors", "2"]}
    rates = {}
    for name, extra in runs.items():
        job = f"{model}-{name.replace(', ', '-').replace(' ', '')}"
        command = [
            sys.executable,
            "-m",
            "bulkinfer",
            "run",
            str(source),
            "-m",
            model,
            "-o",
            str(root / "out"),
        ]
        command += ["--job-id", job, "--models", str(catalog)]
        if extra:
            command += ["--executor", "ray", "--ray-address", address, *extra]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        manifest = orjson.loads((root / "out" / job / "manifest.json.out").read_bytes())
        assert manifest["successRecordCount"] == count, manifest
        rates[name] = count / manifest["durationSeconds"]
    return count, rates


if __name__ == "__main__":
    raise SystemExit(main())
