"""Throughput under a provider's rate limit: bulkinfer against one-at-a-time calls and Bespoke Curator.

Each system runs against a fresh provider simulator (``bulkinfer.testing``) on 127.0.0.1 with 250 ms
median latency and a 600 requests-per-minute limit (over it: 429 with Retry-After):

- ``bulkinfer run`` as a subprocess on ``--records`` records, with ``requests_per_minute = 600`` in its
  catalog entry;
- one call at a time with the official openai SDK (each awaited before the next) on ``--baseline-records``;
- Curator (``bespokelabs-curator``, online OpenAI backend, max_requests_per_minute = 600) on the same
  records, run by ``benchmarks/curator_driver.py`` in a virtualenv of its own, made on first use at
  ``.bench/curator-venv`` (``--no-curator`` skips it).

Achieved throughput is successful calls / (last success - first request), in requests per minute, all
read off the simulator's clock. The target: bulkinfer reaches >= 0.95 of the limit with fewer than 1% of
its calls answered 429.

    python benchmarks/rate_limit.py [--records 2000] [--baseline-records 200] [--no-curator]

Takes about 3.5 minutes per 2,000 records per system. Prints a table, the three ratios and PASS/FAIL;
exits 1 when the target is missed, 2 when a system fails to run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from openai import AsyncOpenAI

from bulkinfer.testing import Outcome, Simulator, SimulatorConfig, SimulatorStats

LIMIT_RPM = 600
LATENCY_MEDIAN_S = 0.25
LATENCY_SIGMA = 0.3
"""Lognormal spread: p10 ~ 170 ms, p90 ~ 370 ms, mean ~ 262 ms."""
MAX_TOKENS = 32
MODEL = "sim-model"
TARGET_RATIO = 0.95
MAX_429_SHARE = 0.01
TIMEOUT_FACTOR = 3.0
TIMEOUT_SLACK_S = 180.0
"""A system gets TIMEOUT_FACTOR x the time its records take at the limit, plus this, before it is killed."""
POLL_S = 0.002
"""How often the simulator is polled for the first call until it comes: the resolution of 'first request'."""

ROOT = Path(__file__).resolve().parent.parent
CURATOR_VENV = ROOT / ".bench" / "curator-venv"
CURATOR_DRIVER = Path(__file__).resolve().parent / "curator_driver.py"
CURATOR_REQUIREMENT = "bespokelabs-curator>=0.1,<0.2"
PIP_TIMEOUT_S = 1200
LOOPBACK_ENV = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett"]


@dataclass(frozen=True, slots=True)
class Measurement:
    system: str
    records: int
    completed: int
    """Calls the simulator answered 200 (each record once: none of these systems repeats a success)."""
    wall_s: float
    """From starting the system (process start, for the subprocesses) to its end."""
    active_s: float
    """From the first request reaching the simulator to the last successful answer."""
    calls: int
    """Inference calls received (malformed probes such as Curator's empty rate-limit request excluded)."""
    rate_limited: int

    @property
    def rpm(self) -> float:
        return self.completed * 60.0 / self.active_s if self.active_s > 0 else 0.0

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.calls if self.calls else 0.0


def simulator_config(seed: int) -> SimulatorConfig:
    return SimulatorConfig(
        latency_median_s=LATENCY_MEDIAN_S,
        latency_sigma=LATENCY_SIGMA,
        requests_per_minute=LIMIT_RPM,
        seed=seed,
    )


def prompt(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(12)) + f" #{i}"


def write_records(path: Path, count: int) -> None:
    with path.open("wb") as f:
        for i in range(count):
            body = {"messages": [{"role": "user", "content": prompt(i)}], "max_tokens": MAX_TOKENS}
            f.write(orjson.dumps({"recordId": f"R{i:08d}", "modelInput": body}) + b"\n")


def time_limit(records: int) -> float:
    return TIMEOUT_FACTOR * records * 60.0 / LIMIT_RPM + TIMEOUT_SLACK_S


async def first_call(simulator: Simulator) -> float:
    """``time.monotonic()`` when the first inference call reached the simulator (to within POLL_S)."""
    while True:
        stats = simulator.stats()
        if stats.calls - stats.by_outcome.get(Outcome.INVALID, 0) > 0:
            return time.monotonic()
        await asyncio.sleep(POLL_S)


async def measure(
    system: str, records: int, seed: int, drive: Callable[[Simulator], Awaitable[None]]
) -> Measurement:
    """Run ``drive`` against a fresh simulator and read its throughput off the simulator's counters."""
    async with Simulator(simulator_config(seed)) as simulator:
        watch = asyncio.create_task(first_call(simulator))
        started = time.monotonic()
        try:
            await drive(simulator)
        finally:
            if not watch.done():
                watch.cancel()
        wall = time.monotonic() - started
        stats = simulator.stats()
    first = watch.result() if watch.done() and not watch.cancelled() else None
    return summarize(system, records, wall, first, stats)


def summarize(
    system: str, records: int, wall: float, first: float | None, stats: SimulatorStats
) -> Measurement:
    active = stats.success_times[-1] - first if first is not None and stats.success_times else 0.0
    return Measurement(
        system=system,
        records=records,
        completed=stats.successes,
        wall_s=wall,
        active_s=active,
        calls=stats.calls - stats.by_outcome.get(Outcome.INVALID, 0),
        rate_limited=stats.rate_limited,
    )


async def run_process(command: list[str], log: Path, limit_s: float) -> bytes:
    """Run a subprocess to its end (killed after ``limit_s``); stdout returned, stderr into ``log``."""
    env = os.environ | LOOPBACK_ENV
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"{Path(command[1]).name} ran past {limit_s:.0f} s: {tail(log)}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(command[1]).name} exited {proc.returncode}: {tail(log)}")
    return out


def tail(log: Path) -> str:
    """The end of a log, for an error message (the logs go with the temporary folder)."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-15:])


def catalog(base_url: str) -> str:
    return (
        "[models.sim]\n"
        'provider = "openai"\n'
        f'base_url = "{base_url}"\n'
        f'remote_model = "{MODEL}"\n'
        f"requests_per_minute = {LIMIT_RPM}\n"
        "max_attempts = 8\n"
        "timeout_seconds = 30\n"
    )


def bulkinfer_driver(folder: Path, source: Path, records: int) -> Callable[[Simulator], Awaitable[None]]:
    async def drive(simulator: Simulator) -> None:
        models = folder / "models.toml"
        models.write_text(catalog(simulator.openai_base_url))
        command = [sys.executable, "-m", "bulkinfer", "run", str(source), "--model", "sim"]
        command += ["--models", str(models), "--output", str(folder / "out"), "--job-id", "bench"]
        await run_process(command, folder / "bulkinfer.log", time_limit(records))
        manifest = orjson.loads((folder / "out" / "bench" / "manifest.json.out").read_bytes())
        if manifest["successRecordCount"] != records:
            raise RuntimeError(
                f"bulkinfer succeeded on {manifest['successRecordCount']} of {records} records"
            )

    return drive


def sequential_driver(records: int) -> Callable[[Simulator], Awaitable[None]]:
    async def drive(simulator: Simulator) -> None:
        client = AsyncOpenAI(base_url=simulator.openai_base_url, api_key="unused", max_retries=8, timeout=30)
        try:
            async with asyncio.timeout(time_limit(records)):
                for i in range(records):
                    await client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": prompt(i)}], max_tokens=MAX_TOKENS
                    )
        finally:
            await client.close()

    return drive


def curator_driver(
    python: Path, folder: Path, source: Path, records: int
) -> Callable[[Simulator], Awaitable[None]]:
    async def drive(simulator: Simulator) -> None:
        command = [str(python), str(CURATOR_DRIVER), "--base-url", simulator.openai_base_url]
        command += ["--model", MODEL, "--rpm", str(LIMIT_RPM), "--records", str(records)]
        command += ["--input", str(source), "--max-tokens", str(MAX_TOKENS)]
        out = await run_process(command, folder / "curator.log", time_limit(records) + 120)
        lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"the Curator driver printed no result: {tail(folder / 'curator.log')}")
        result = orjson.loads(lines[-1])
        if result["failed"]:
            print(f"  Curator reports {result['failed']} failed requests", flush=True)

    return drive


def curator_python() -> tuple[Path | None, str]:
    """The Curator virtualenv's python, made on first use; or None and why it cannot be had."""
    python = CURATOR_VENV / "bin" / "python"
    check = [str(python), "-c", "import bespokelabs.curator"]
    if python.exists() and subprocess.run(check, capture_output=True, timeout=300).returncode == 0:
        return python, "existing"
    print(f"setting up Curator in {CURATOR_VENV.relative_to(ROOT)} (once; a few minutes)...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(CURATOR_VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", CURATOR_REQUIREMENT],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(step[:4])} failed: {exc}"
        if done.returncode != 0:
            errors = [
                line for line in done.stderr.splitlines() if "ERROR" in line
            ] or done.stderr.splitlines()
            return None, f"{' '.join(step[:4])} failed: {' / '.join(errors[-3:])}"
    if subprocess.run(check, capture_output=True, timeout=300).returncode != 0:
        return None, "bespokelabs-curator installed but does not import"
    return python, "installed"


def fmt_row(m: Measurement) -> str:
    return (
        f"{m.system:<26} {m.records:>7,} {m.completed:>9,} {m.wall_s:>8.1f} {m.active_s:>8.1f} "
        f"{m.rpm:>7.1f} {m.rpm / LIMIT_RPM:>8.3f} {m.rate_limited:>6,} {m.share_429:>8.2%}"
    )


def report(
    ours: Measurement, baseline: Measurement, curator: Measurement | None, skipped: str | None
) -> bool:
    print()
    print(
        f"simulator: {LATENCY_MEDIAN_S * 1000:.0f} ms median latency (sigma {LATENCY_SIGMA}), {LIMIT_RPM} RPM"
    )
    header = f"{'system':<26} {'records':>7} {'completed':>9} {'wall s':>8} {'active s':>8}"
    print(header + f" {'RPM':>7} {'of limit':>8} {'429s':>6} {'429 share':>8}")
    for m in (ours, baseline, curator):
        if m is not None:
            print(fmt_row(m))
    ratio = ours.rpm / LIMIT_RPM
    passed = ratio >= TARGET_RATIO and ours.share_429 < MAX_429_SHARE and ours.completed == ours.records
    mean_latency = LATENCY_MEDIAN_S * math.exp(LATENCY_SIGMA**2 / 2)
    ceiling = LIMIT_RPM / (60.0 / mean_latency)
    print()
    print(f"bulkinfer throughput / limit     : {ratio:.3f} (target >= {TARGET_RATIO})")
    print(f"bulkinfer calls answered 429     : {ours.share_429:.2%} (target < {MAX_429_SHARE:.0%})")
    print(
        f"bulkinfer / one-at-a-time        : x{ours.rpm / baseline.rpm:.2f} "
        f"(ceiling ~x{ceiling:.1f} on average: the limit / (60 s / mean latency))"
    )
    if curator is not None:
        print(f"bulkinfer / Curator              : x{ours.rpm / curator.rpm:.3f}")
    else:
        print(f"bulkinfer / Curator              : skipped ({skipped})")
    print(f"{'PASS' if passed else 'FAIL'}: bulkinfer at {ratio:.3f} of the limit, {ours.share_429:.2%} 429s")
    return passed


async def run_all(args: argparse.Namespace, python: Path | None, folder: Path) -> bool:
    source = folder / "records.jsonl"
    write_records(source, args.records)
    print(f"bulkinfer run on {args.records:,} records...", flush=True)
    ours = await measure(
        "bulkinfer run", args.records, args.seed, bulkinfer_driver(folder, source, args.records)
    )
    print(fmt_row(ours), flush=True)
    print(f"one call at a time on {args.baseline_records:,} records...", flush=True)
    driver = sequential_driver(args.baseline_records)
    baseline = await measure("one at a time (openai SDK)", args.baseline_records, args.seed, driver)
    print(fmt_row(baseline), flush=True)
    curator = None
    if python is not None:
        print(f"Curator on {args.records:,} records...", flush=True)
        driver = curator_driver(python, folder, source, args.records)
        try:
            curator = await measure("Curator", args.records, args.seed, driver)
        except RuntimeError as exc:
            args.skip_reason = f"Curator failed: {exc}"
        else:
            print(fmt_row(curator), flush=True)
    return report(ours, baseline, curator, args.skip_reason)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--baseline-records", type=int, default=200)
    parser.add_argument("--no-curator", action="store_true", help="skip the Curator comparison")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulator's latency draws")
    args = parser.parse_args()
    python: Path | None = None
    args.skip_reason = "--no-curator"
    if not args.no_curator:
        python, how = curator_python()
        if python is None:
            args.skip_reason = how
            print(f"Curator comparison skipped: {how}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bulkinfer-ratelimit-") as tmp:
        try:
            passed = asyncio.run(run_all(args, python, Path(tmp)))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
