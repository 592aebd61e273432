"""Overhead of the whole machinery: `bulkinfer run` on the instant echo model against a plain loop.

The baseline reads the same file, parses each line with orjson, builds the same kind of output line
(the record plus an Anthropic-shaped answer) and writes it: the least any tool must do. bulkinfer does
that plus validation, dialect translation, duplicate checks, durable chunk commits and the final merge.
Peak RSS is measured for two record counts 10x apart to show memory stays flat.

    python benchmarks/overhead.py [--records 1000000]

Prints records/s of each, peak RSS, and last the ratio (target >= 0.5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliett",
    "kilo",
    "lima",
    "mike",
    "november",
]


def make_input(path: Path, records: int) -> None:
    with path.open("wb") as f:
        for i in range(records):
            text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(12)) + f" #{i}"
            body = {
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 64,
                "system": "Reply briefly.",
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
            }
            f.write(orjson.dumps({"recordId": f"R{i:010d}", "modelInput": body}) + b"\n")


def baseline(source: Path, target: Path) -> float:
    started = time.perf_counter()
    with source.open("rb") as src, target.open("wb") as out:
        for line in src:
            record = orjson.loads(line)
            text = record["modelInput"]["messages"][-1]["content"][0]["text"]
            answer = {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 14, "output_tokens": 14},
            }
            record["modelOutput"] = answer
            out.write(orjson.dumps(record) + b"\n")
    return time.perf_counter() - started


def bulkinfer_run(source: Path, output: Path) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of one `bulkinfer run` subprocess."""
    command = [sys.executable, "-m", "bulkinfer", "run", str(source), "--model", "echo"]
    command += ["--output", str(output), "--job-id", "bench"]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        assert proc.stderr is not None
        sys.exit(f"bulkinfer run failed: {proc.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    small = args.records // 10
    with tempfile.TemporaryDirectory(prefix="bulkinfer-bench-") as tmp:
        folder = Path(tmp)
        rss: dict[int, int] = {}
        for count in (small, args.records):
            source = folder / f"records-{count}.jsonl"
            make_input(source, count)
            size = source.stat().st_size
            base = baseline(source, folder / "baseline.out")
            ours, rss[count] = bulkinfer_run(source, folder / f"out-{count}")
            lines = (folder / f"out-{count}" / "bench" / f"{source.name}.out").read_bytes().count(b"\n")
            assert lines == count, f"expected {count} output lines, got {lines}"
            print(f"{count:>9,} records ({size / count:.0f} bytes each)")
            print(f"  plain orjson loop : {count / base:>10,.0f} records/s ({base:.2f} s)")
            print(f"  bulkinfer run     : {count / ours:>10,.0f} records/s ({ours:.2f} s with start-up)")
            print(f"  bulkinfer peak RSS: {rss[count] / 2**20:>10,.0f} MB")
            ratio = base / ours
            shutil.rmtree(folder / f"out-{count}")
            source.unlink()
        growth = rss[args.records] / rss[small]
        print(f"peak RSS at {args.records:,} vs {small:,} records: x{growth:.2f}")
        print(f"ratio (bulkinfer records/s / plain loop records/s) at {args.records:,} records: {ratio:.2f}")


if __name__ == "__main__":
    main()
