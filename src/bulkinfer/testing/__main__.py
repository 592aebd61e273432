"""``python -m bulkinfer.testing``: run the provider simulator in a process of its own until signalled.

Prints ``simulator ready at http://HOST:PORT`` once it accepts connections, so a test or benchmark
that starts it as a subprocess can wait for that line (and learn the port when ``--port 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from bulkinfer.testing._config import SimulatorConfig
from bulkinfer.testing.simulator import Simulator

READY_LINE = "simulator ready at {url}"


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimulatorConfig, str, int]:
    parser = argparse.ArgumentParser(prog="python -m bulkinfer.testing", description=__doc__)
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    add("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    add("--latency-ms", type=float, default=0.0, help="median latency of a call")
    add("--latency-sigma", type=float, default=0.3, help="lognormal spread of the latency")
    add("--rpm", type=int, default=None, help="requests per minute (default: unlimited)")
    add("--itpm", type=int, default=None, help="input tokens per minute (default: unlimited)")
    add("--otpm", type=int, default=None, help="output tokens per minute (default: unlimited)")
    add("--burst-s", type=float, default=1.0, help="seconds of each limit that may be spent at once")
    for fault in ("error-500", "error-503", "reset", "timeout", "malformed"):
        add(f"--{fault}", type=float, default=0.0, metavar="RATE", help=f"share of calls that get {fault}")
    add("--hang-s", type=float, default=3600.0, help="how long a timeout fault hangs")
    add("--permanent-marker", default=None, help="calls whose last user text holds this always get 400")
    add("--seed", type=int, default=None, help="seed for the latency and fault draws")
    args = parser.parse_args(argv)
    config = SimulatorConfig(
        latency_median_s=args.latency_ms / 1000.0,
        latency_sigma=args.latency_sigma,
        requests_per_minute=args.rpm,
        input_tokens_per_minute=args.itpm,
        output_tokens_per_minute=args.otpm,
        burst_s=args.burst_s,
        error_500=args.error_500,
        error_503=args.error_503,
        reset=args.reset,
        timeout=args.timeout,
        malformed=args.malformed,
        hang_s=args.hang_s,
        permanent_error_marker=args.permanent_marker,
        seed=args.seed,
    )
    return config, args.host, args.port


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Simulator(config, host=host, port=port) as simulator:
        print(READY_LINE.format(url=simulator.url), flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, host, port = parse_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
