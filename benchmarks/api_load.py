"""Latency of `bulkinfer serve` under 1,000 concurrent creates and gets, signed as boto3 signs them.

Starts `bulkinfer serve` as a subprocess on 127.0.0.1 (a free port) with ``--access-keys``, on a fresh
data dir: SQLite by default, or a fresh database made on the PostgreSQL server that ``--database-url``
(an admin URL, as ``scripts/postgres`` prints) points to, dropped afterwards. Every request carries a
real SigV4 signature from botocore's ``SigV4Auth``, computed before the clock starts so the client's
signing is not counted against the server. Then, in order:

1. baseline: ``--requests`` concurrent InvokeModel calls on the instant ``echo`` model, which touch no
   job store: SigV4 checking, HTTP and JSON at the same concurrency, the floor for the phases below;
2. floor: ``--floor`` CreateModelInvocationJob calls one at a time (another tenant, so the counts below
   stay exact): what one create costs on an otherwise idle server; then waits for those jobs to end;
3. create: ``--requests`` concurrent CreateModelInvocationJob calls, distinct names, half with a
   clientRequestToken, all pointing at one tiny .jsonl in a local bucket;
4. get: one concurrent GetModelInvocationJob per created job (while the scheduler works through them);
5. checks: ListModelInvocationJobs, paginated, shows exactly ``--requests`` jobs with the names sent,
   and a create repeating a token returns the job that token made.

Each phase fires all its requests at once, one connection each, and reports p50, p99 and max latency
(a request's own send to its last response byte), errors (non-2xx or exceptions, with a sample),
throughput (requests / the phase's wall time) and the server process's CPU time per request (all its
threads, the scheduler's work on the new jobs included).

    python benchmarks/api_load.py [--requests 1000] [--database-url ADMIN_URL] [--floor 50]

Prints p99 / baseline p99 for create and get, and PASS when both p99 are under 1 s with no error and the
checks hold; exits 1 otherwise, 2 when the server does not start.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import sqlalchemy
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from yarl import URL

TARGET_P99_S = 1.0
REGION = "us-east-1"
SERVICE = "bedrock"
LOAD_KEY = ("AKIDBENCHLOAD", "load-secret")
"""The tenant whose jobs the create and get phases make and read."""
SIDE_KEY = ("AKIDBENCHSIDE", "side-secret")
"""The tenant of the warm-up, baseline and floor calls, so the load tenant's job count stays exact."""
ROLE = "arn:aws:iam::123456789012:role/BatchRole"
MODEL = "echo"
INPUT_URI = "s3://bench-in/records.jsonl"
OUTPUT_URI = "s3://bench-out/"
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 120.0
"""No request waits longer: a slower one counts as an error."""
SETTLE_TIMEOUT_S = 180.0
SETTLE_POLL_S = 0.25
STOP_TIMEOUT_S = 30.0
PAGE_SIZE = 1000
ENDED = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
CHAT_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": [{"type": "text", "text": "ping"}]}],
}
ERROR_SAMPLES = 3


@dataclass(frozen=True, slots=True)
class Signed:
    """A request ready to send: the signature is over exactly these headers, URL and body."""

    method: str
    url: str
    """Already percent-encoded, sent as is."""
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    latency_s: float
    status: int
    """The HTTP status; 0 when the request raised."""
    body: bytes
    """The response body, or the exception's text."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    outcomes: list[Outcome]
    wall_s: float
    server_cpu_s: float | None

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def latency(self, q: float) -> float:
        """Nearest-rank quantile of the latencies, all requests counted (failed ones too)."""
        ranked = sorted(o.latency_s for o in self.outcomes)
        if not ranked:
            return math.nan
        return ranked[max(math.ceil(q * len(ranked)) - 1, 0)]


@dataclass(slots=True)
class Server:
    base: str
    process: subprocess.Popen[str]
    log: Path

    def cpu_s(self) -> float | None:
        """User + system CPU seconds the server process has used (Linux), None where unknown."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sign(method: str, url: str, key: tuple[str, str], body: Any = None) -> Signed:
    data = orjson.dumps(body) if body is not None else b""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = AWSRequest(method=method, url=url, data=data, headers=headers)
    SigV4Auth(Credentials(*key), SERVICE, REGION).add_auth(request)
    return Signed(method, url, dict(request.headers.items()), data)


def create_body(name: str, token: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "jobName": name,
        "roleArn": ROLE,
        "modelId": MODEL,
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": INPUT_URI, "s3InputFormat": "JSONL"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": OUTPUT_URI}},
    }
    if token is not None:
        body["clientRequestToken"] = token
    return body


def load_creates(base: str, count: int, run: str) -> list[Signed]:
    """Distinct names; every other one carries a client token."""
    return [
        sign("POST", f"{base}/model-invocation-job", LOAD_KEY, create_body(*name_and_token(run, i)))
        for i in range(count)
    ]


def name_and_token(run: str, i: int) -> tuple[str, str | None]:
    return f"load-{run}-{i:06d}", (f"tok{run}{i:06d}" if i % 2 == 0 else None)


async def send(session: aiohttp.ClientSession, request: Signed) -> Outcome:
    started = time.perf_counter()
    try:
        async with session.request(
            request.method, URL(request.url, encoded=True), headers=request.headers, data=request.body
        ) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(time.perf_counter() - started, 0, f"{type(exc).__name__}: {exc}".encode())
    return Outcome(time.perf_counter() - started, status, body)


def session() -> aiohttp.ClientSession:
    """Unlimited connections, so every request of a phase is in flight at once on its own."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))


async def fire(name: str, server: Server, requests: Sequence[Signed]) -> Phase:
    """All at once."""
    async with session() as client:
        cpu = server.cpu_s()
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(send(client, r) for r in requests))
        wall = time.perf_counter() - started
        after = server.cpu_s()
    return Phase(name, list(outcomes), wall, None if cpu is None or after is None else after - cpu)


async def one_at_a_time(name: str, server: Server, requests: Sequence[Signed]) -> Phase:
    async with session() as client:
        cpu = server.cpu_s()
        started = time.perf_counter()
        outcomes = [await send(client, r) for r in requests]
        wall = time.perf_counter() - started
        after = server.cpu_s()
    return Phase(name, outcomes, wall, None if cpu is None or after is None else after - cpu)


async def call(server: Server, method: str, path: str, key: tuple[str, str], body: Any = None) -> Any:
    """One signed request outside any measurement; its JSON answer, or exit naming the failure."""
    async with session() as client:
        outcome = await send(client, sign(method, server.base + path, key, body))
    if not outcome.ok:
        sys.exit(f"{method} {path} failed: {outcome.status} {outcome.body[:500]!r}")
    return orjson.loads(outcome.body)


async def list_jobs(server: Server, key: tuple[str, str]) -> list[dict[str, Any]]:
    """Every job of the tenant, page by page (bounded by the page count the jobs can fill)."""
    summaries: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(1_000_000 // PAGE_SIZE):
        query: dict[str, Any] = {"maxResults": PAGE_SIZE} | ({"nextToken": token} if token else {})
        page = await call(server, "GET", f"/model-invocation-jobs?{urlencode(query)}", key)
        summaries += page["invocationJobSummaries"]
        token = page.get("nextToken")
        if token is None:
            return summaries
    sys.exit("ListModelInvocationJobs never ended its pages")


async def settle(server: Server, key: tuple[str, str]) -> None:
    """Wait until every job of the tenant has ended, so background work does not load later phases."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        jobs = await list_jobs(server, key)
        if all(j["status"] in ENDED for j in jobs):
            return
        await asyncio.sleep(SETTLE_POLL_S)
    print(f"warning: jobs of {key[0]} still running after {SETTLE_TIMEOUT_S:.0f} s", file=sys.stderr)


async def warm_up(server: Server) -> None:
    """Load the echo model and touch every code path once, outside the measurements."""
    await call(server, "POST", f"/model/{MODEL}/invoke", SIDE_KEY, CHAT_BODY)
    created = await call(server, "POST", "/model-invocation-job", SIDE_KEY, create_body("warm-up", None))
    await call(server, "GET", f"/model-invocation-job/{job_id(created)}", SIDE_KEY)


def job_id(created: dict[str, Any]) -> str:
    return str(created["jobArn"]).rsplit("/", 1)[1]


async def verify(server: Server, creates: Phase, count: int, run: str) -> list[str]:
    """What went wrong with the jobs the create phase left behind; empty when all is well."""
    problems = []
    jobs = await list_jobs(server, LOAD_KEY)
    names = {j["jobName"] for j in jobs}
    expected = {name_and_token(run, i)[0] for i in range(count)}
    if len(jobs) != count or names != expected:
        problems.append(f"ListModelInvocationJobs shows {len(jobs)} jobs ({len(names)} names), not {count}")
    first = creates.outcomes[0]
    if first.ok:
        again = await call(
            server, "POST", "/model-invocation-job", LOAD_KEY, create_body(*name_and_token(run, 0))
        )
        if again["jobArn"] != orjson.loads(first.body)["jobArn"]:
            problems.append(f"a repeated client token made a new job: {again['jobArn']}")
        if len(await list_jobs(server, LOAD_KEY)) != len(jobs):
            problems.append("a repeated client token added a job")
    return problems


async def measure(server: Server, count: int, floor: int) -> tuple[list[Phase], list[str]]:
    run = uuid.uuid4().hex[:8]
    await warm_up(server)
    invokes = [sign("POST", f"{server.base}/model/{MODEL}/invoke", SIDE_KEY, CHAT_BODY)] * count
    baseline = await fire("baseline: InvokeModel echo", server, invokes)
    singles = [
        sign("POST", f"{server.base}/model-invocation-job", SIDE_KEY, create_body(f"floor-{run}-{i}", None))
        for i in range(floor)
    ]
    floored = await one_at_a_time("floor: create one at a time", server, singles)
    if floor:
        await settle(server, SIDE_KEY)
    creates = await fire("CreateModelInvocationJob", server, load_creates(server.base, count, run))
    ids = [job_id(orjson.loads(o.body)) for o in creates.outcomes if o.ok]
    gets = [sign("GET", f"{server.base}/model-invocation-job/{i}", LOAD_KEY) for i in ids]
    got = await fire("GetModelInvocationJob", server, gets)
    problems = await verify(server, creates, count, run)
    return [baseline, floored, creates, got], problems


ROW = "{:<30} {:>6} {:>8} {:>8} {:>8} {:>6} {:>8} {:>16}"


def print_phase(phase: Phase) -> None:
    n = len(phase.outcomes)
    if n == 0:
        return
    cpu = "n/a" if phase.server_cpu_s is None else f"{phase.server_cpu_s * 1000 / n:.2f} ms"
    ms = [f"{phase.latency(q) * 1000:.0f}" for q in (0.5, 0.99, 1.0)]
    print(ROW.format(phase.name, n, *ms, len(phase.errors), f"{n / phase.wall_s:.0f}", cpu))
    for error in phase.errors[:ERROR_SAMPLES]:
        print(f"    error sample: {error.status} {error.body[:300]!r}")


def report(phases: list[Phase], problems: list[str], count: int) -> bool:
    print(ROW.format("phase", "calls", "p50 ms", "p99 ms", "max ms", "errors", "req/s", "server CPU/call"))
    for phase in phases:
        print_phase(phase)
    baseline, _, creates, gets = phases
    passed = not problems
    for phase in (creates, gets):
        ratio = phase.latency(0.99) / baseline.latency(0.99)
        print(f"ratio ({phase.name} p99 / baseline p99): {ratio:.2f}")
        passed &= phase.latency(0.99) < TARGET_P99_S and not phase.errors and len(phase.outcomes) == count
    for problem in problems:
        print(f"check failed: {problem}")
    if not problems:
        print(f"checks: exactly {count} jobs listed, a repeated client token returned its job")
    verdict = "PASS" if passed else "FAIL"
    print(f"{verdict}: create and get p99 under {TARGET_P99_S:.0f} s with 0 errors at {count} concurrent")
    return passed


def start_server(data_dir: Path, database_url: str | None) -> Server:
    keys = ",".join(f"{k}:{s}" for k, s in (LOAD_KEY, SIDE_KEY))
    command = [sys.executable, "-m", "bulkinfer", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--data-dir", str(data_dir), "--access-keys", keys]
    command += ["--database-url", database_url] if database_url else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKINFER_") or k == "BULKINFER_CACHE"}
    env |= {"PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    log = data_dir.parent / "server.log"
    with log.open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
    line = process.stdout.readline() if ready else ""
    if "serving on http://127.0.0.1:" not in line:
        process.kill()
        process.wait()
        print(f"the server did not start: {line!r}\n{log.read_text()[-3000:]}", file=sys.stderr)
        sys.exit(2)
    return Server(line.split()[-1], process, log)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    if server.process.stdout is not None:
        server.process.stdout.close()


@contextmanager
def fresh_database(admin_url: str | None) -> Iterator[str | None]:
    """A new, empty PostgreSQL database on the admin URL's server, dropped afterwards."""
    if admin_url is None:
        yield None
        return
    name = f"bulkinfer_bench_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield sqlalchemy.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
        engine.dispose()


def prepare(data_dir: Path) -> None:
    bucket = data_dir / "s3" / "bench-in"
    bucket.mkdir(parents=True)
    lines = [{"recordId": f"R{i:010d}", "modelInput": CHAT_BODY} for i in range(2)]
    (bucket / "records.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    (data_dir / "s3" / "bench-out").mkdir()


def raise_file_limit(count: int) -> None:
    """Each of the server and this client holds one socket per concurrent request."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 512
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="Concurrent calls per phase.")
    parser.add_argument("--floor", type=int, default=50, help="Creates sent one at a time.")
    parser.add_argument(
        "--database-url", help="PostgreSQL admin URL: a fresh database is made on it (default: SQLite)."
    )
    args = parser.parse_args()
    raise_file_limit(args.requests)
    with (
        tempfile.TemporaryDirectory(prefix="bulkinfer-bench-") as tmp,
        fresh_database(args.database_url) as url,
    ):
        data_dir = Path(tmp) / "data"
        prepare(data_dir)
        server = start_server(data_dir, url)
        try:
            phases, problems = asyncio.run(measure(server, args.requests, args.floor))
        finally:
            stop_server(server)
    print(f"bulkinfer serve on {'PostgreSQL' if url else 'SQLite'}, {os.cpu_count()} CPUs")
    sys.exit(0 if report(phases, problems, args.requests) else 1)


if __name__ == "__main__":
    main()
