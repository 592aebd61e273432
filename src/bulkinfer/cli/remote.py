"""Commands that drive a running ``bulkinfer serve`` through its Bedrock API, with boto3.

Credentials come from the standard AWS variables (or profile), as for any boto3 client. A job's output
files are read through the server's own routes for them, signed the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bulkinfer.cli.progress import JobProgress
from bulkinfer.errors import UserError
from bulkinfer.providers.cost import usd_text
from bulkinfer.providers.extras import require_client

ServerOption = Annotated[
    str, typer.Option("--server", envvar="BULKINFER_SERVER", help="URL of a running bulkinfer serve.")
]
TERMINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
WAITING = {"Submitted", "Validating", "Scheduled"}
"""States of a job that has not begun to run."""
POLL_S = 0.5
DEFAULT_ROLE = "arn:aws:iam::123456789012:role/bulkinfer"
RECORDS_SUFFIX = ".jsonl.out"
"""An output file of records (``<input-name>.out``); the manifest is ``manifest.json.out``."""
READ_BYTES = 1 << 20


def _session() -> Any:
    require_client()  # (the commands check first; this keeps any other caller from a bare ImportError)
    import boto3

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    session = boto3.session.Session(region_name=region)
    for call in ("GetModelInvocationJob", "ListModelInvocationJobs"):  # every client made from it
        session.events.register(f"after-call.bedrock.{call}", _keep_own_members)
    return session


OWN_MEMBERS = ("inputTokenCount", "outputTokenCount", "estimatedCostUSD", "prices")
"""bulkinfer's own members of a job as Get and List return it, which boto3 leaves out of what it parses."""


def client(server: str) -> Any:
    return _session().client("bedrock", endpoint_url=server_url(server))


def _keep_own_members(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
    """Put bulkinfer's own members of the raw response back into what boto3 parsed (the same jobs, in
    the same order); a server that sends none leaves it as it is."""
    try:
        raw = orjson.loads(http_response.content)
    except orjson.JSONDecodeError:
        return
    if not isinstance(raw, dict) or http_response.status_code >= 300:
        return
    pairs = zip(parsed.get("invocationJobSummaries", []), raw.get("invocationJobSummaries", []), strict=False)
    for job, sent in [(parsed, raw), *pairs]:
        if isinstance(sent, dict):
            job.update({key: sent[key] for key in OWN_MEMBERS if key in sent})


def server_url(server: str) -> str:
    """``--server`` as given, once it is an http(s) URL; anything else is a usage error saying what to
    give (boto3 would fail on it with a long traceback)."""
    parts = urlsplit(server)
    if parts.scheme in ("http", "https") and parts.netloc:
        return server
    if "://" in server:
        raise UserError(f"--server {server}: give the server's URL with http:// or https://")
    raise UserError(f"--server {server}: give the server's URL with its scheme: http://{server}")


def output_files(server: str, job: str) -> tuple[dict[str, Any], list[Iterator[bytes]] | None]:
    """A server job (as Get returns it) and the blocks of each of its record files, in name order;
    each file is requested only when its blocks are first read. ``None`` for a job that has not ended:
    the server writes its files only then."""
    session = _session()
    bedrock = session.client("bedrock", endpoint_url=server_url(server))
    found: dict[str, Any] = bedrock.get_model_invocation_job(jobIdentifier=job)
    if found["status"] not in TERMINAL:
        return found, None
    credentials = session.get_credentials()  # present: the call above was signed with them
    outputs = ServerOutputs(
        server, job_id_of(found), credentials.get_frozen_credentials(), session.region_name
    )
    return found, [outputs.blocks(name) for name in outputs.names() if name.endswith(RECORDS_SUFFIX)]


class ServerOutputs:
    """An ended job's output files, read through the server's own routes for them (with no S3 endpoint
    they are in its local buckets, out of a client's reach). Requests are signed as boto3 signs its calls.
    """

    def __init__(self, server: str, job_id: str, credentials: Any, region: str) -> None:
        self._signed = Signed(credentials, region)
        self._base = f"{server.rstrip('/')}/model-invocation-job/{job_id}/outputs"

    def names(self) -> list[str]:
        listing = orjson.loads(self._get(self._base, stream=False).content)
        return [str(f["name"]) for f in listing["files"]]

    def blocks(self, name: str) -> Iterator[bytes]:
        # '/' quoted too, so no name reads as '..' segments that a client or proxy would resolve
        response = self._get(f"{self._base}/{quote(name, safe='')}", stream=True)
        try:
            yield from response.raw.stream(READ_BYTES)
        finally:
            response.raw.close()  # a reader that stops early leaves the rest unread

    def _get(self, url: str, *, stream: bool) -> Any:
        return self._signed.send("GET", url, stream=stream)


def job_events(server: str, job: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A server job (as Get returns it) and our ``/events`` route's answer: its timeline (``events``)
    and the provider batch jobs it ran as (``providerJobs``)."""
    session = _session()
    bedrock = session.client("bedrock", endpoint_url=server_url(server))
    found: dict[str, Any] = bedrock.get_model_invocation_job(jobIdentifier=job)
    credentials = session.get_credentials().get_frozen_credentials()
    url = f"{server.rstrip('/')}/model-invocation-job/{job_id_of(found)}/events"
    response = Signed(credentials, session.region_name).send("GET", url)
    return found, dict(orjson.loads(response.content))


def events_table(events: list[dict[str, Any]]) -> Table:
    table = Table(title="Timeline")
    for column in ("time", "event", "status", "reason"):
        table.add_column(column)
    for e in events:  # the server's text (a reason quotes a provider's error): never markup
        table.add_row(*(Text(str(e.get(key) or "")) for key in ("time", "event", "status", "reason")))
    return table


def provider_jobs_table(provider_jobs: list[dict[str, Any]]) -> Table:
    table = Table(title="Provider jobs")
    columns = (
        "providerJobId",
        "attempt",
        "records",
        "providerStatus",
        "done",
        "failed",
        "createdAt",
        "endedAt",
    )
    table.add_column("provider job", overflow="fold")  # an ARN is long: shown whole
    for column in ("attempt", "records", "status", "done", "failed", "created", "ended"):
        table.add_column(column)
    for p in provider_jobs:  # the provider's words: never markup
        shown = {**p, "providerJobId": p.get("providerJobId") or p.get("token"),
                 "providerStatus": p.get("providerStatus") or p.get("state")}  # fmt: skip
        table.add_row(*(Text(str(shown.get(key) if shown.get(key) is not None else "")) for key in columns))
    return table


def _client_error(response: Any) -> Exception:
    """The server's error as boto3 raises it, so the CLI reports it as it reports any other."""
    from botocore.exceptions import ClientError

    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    code = response.headers.get("x-amzn-ErrorType") or f"HTTP{response.status_code}"
    meta = {"HTTPStatusCode": response.status_code}
    error: Exception = ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": meta},
        "ReadModelInvocationJobOutputs",
    )
    return error


def submit(
    console: Console,
    progress: Console,
    server: str,
    input_uri: str,
    model: str,
    output_uri: str,
    name: str | None,
    wait: bool,
) -> dict[str, Any] | None:
    """Create the job and print its ARN; with ``wait``, follow it (progress on the second console),
    print how it ended and return it."""
    bedrock = client(server)
    arn = bedrock.create_model_invocation_job(
        jobName=name or f"bulkinfer-{int(time.time())}",
        roleArn=DEFAULT_ROLE,
        modelId=model,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}},
    )["jobArn"]
    return _created(console, progress, bedrock, arn, wait)


def retry(console: Console, progress: Console, server: str, job: str, wait: bool) -> dict[str, Any] | None:
    """Create the retry job of an ended server job and print its ARN; with ``wait``, follow it as
    `submit` does. boto3 has no such call: the server's own route is called, signed as boto3 signs."""
    session = _session()
    bedrock = session.client("bedrock", endpoint_url=server_url(server))
    credentials = session.get_credentials()
    if credentials is None:
        raise UserError("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)")
    signed = Signed(credentials.get_frozen_credentials(), session.region_name)
    url = f"{server.rstrip('/')}/model-invocation-job/{quote(job, safe='')}/retry"
    arn = str(orjson.loads(signed.send("POST", url, b"{}").content)["jobArn"])
    return _created(console, progress, bedrock, arn, wait)


def _created(
    console: Console, progress: Console, bedrock: Any, arn: str, wait: bool
) -> dict[str, Any] | None:
    """Print a new job's ARN; with ``wait``, follow it to its end, print how it ended and return it."""
    console.print(arn, markup=False, highlight=False)
    if not wait:
        return None
    watched = follow(progress, bedrock, bedrock.get_model_invocation_job(jobIdentifier=arn))
    console.print(ending(watched), markup=False, highlight=False, soft_wrap=True)
    return watched.job


class Signed:
    """Requests to the server's own routes, signed with SigV4 as boto3 signs its calls."""

    def __init__(self, credentials: Any, region: str) -> None:
        from botocore.auth import SigV4Auth
        from botocore.httpsession import URLLib3Session

        self._signer = SigV4Auth(credentials, "bedrock", region)
        self._http = URLLib3Session()

    def send(self, method: str, url: str, body: bytes | None = None, *, stream: bool = False) -> Any:
        from botocore.awsrequest import AWSRequest

        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = AWSRequest(method=method, url=url, data=body, headers=headers, stream_output=stream)
        self._signer.add_auth(request)
        response = self._http.send(request.prepare())
        if response.status_code >= 300:
            raise _client_error(response)
        return response


@dataclass(frozen=True, slots=True)
class Watched:
    """How a followed job ended, and its rate while it was watched."""

    job: dict[str, Any]
    records_per_s: float | None
    """Records processed per second between the last poll before it ran (or the first poll, when it
    already ran) and the poll that saw it end; ``None`` when no record was processed meanwhile."""


def follow(console: Console, bedrock: Any, job: dict[str, Any]) -> Watched:
    """Poll a job until it ends, drawing the same progress display as ``bulkinfer run`` while it runs
    (a job that ends before it runs, as one failing validation does, gets no display)."""
    started, first, first_errors = time.monotonic(), _processed(job), job.get("errorRecordCount", 0)
    while job["status"] in WAITING:
        started = time.monotonic()  # the poll just made saw it waiting: it had not begun yet
        time.sleep(POLL_S)
        job = bedrock.get_model_invocation_job(jobIdentifier=job["jobArn"])
    if job["status"] not in TERMINAL or _processed(job) > first:
        total = job.get("totalRecordCount", 0)
        with JobProgress(console, total, first, tokens=False, since=started) as progress:
            job = _poll_to_end(progress, bedrock, job, first, first_errors)
    processed, elapsed = _processed(job) - first, time.monotonic() - started
    return Watched(job, processed / elapsed if processed > 0 and elapsed > 0 else None)


def _poll_to_end(
    progress: JobProgress, bedrock: Any, job: dict[str, Any], done: int, errors: int
) -> dict[str, Any]:
    while True:
        processed, failed = _processed(job), job.get("errorRecordCount", 0)
        progress.advance(processed - done, failed - errors, 0, 0)
        done, errors = processed, failed
        if job["status"] in TERMINAL:
            return job
        time.sleep(POLL_S)
        job = bedrock.get_model_invocation_job(jobIdentifier=job["jobArn"])


def _processed(job: dict[str, Any]) -> int:
    return int(job.get("processedRecordCount", 0))


def ending(watched: Watched) -> str:
    """One line on how a job ended: its status, counts, rate, output folder and the server's message."""
    job = watched.job
    processed = job.get("processedRecordCount", 0)
    facts = []
    if processed or "totalRecordCount" in job:
        errors = job.get("errorRecordCount", 0)
        facts.append(f"{records_of(job)} records, {errors:,} error{'' if errors == 1 else 's'}")
    if watched.records_per_s is not None:
        facts.append(f"{watched.records_per_s:,.1f} rec/s")
    if processed:
        facts.append(f"output {job_output_uri(job)}")
    if job.get("message"):
        facts.append(str(job["message"]))
    said = f"job {job_id_of(job)} {job['status']}"
    return f"{said}: {'; '.join(facts)}" if facts else said


def job_id_of(job: dict[str, Any]) -> str:
    return str(job["jobArn"]).rsplit("/", 1)[1]


def job_output_uri(job: dict[str, Any]) -> str:
    """Where the job writes its files: ``<output s3Uri>/<job-id>/``."""
    base = str(job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]).rstrip("/")
    return f"{base}/{job_id_of(job)}/"


def jobs_table(bedrock: Any, status: str | None, limit: int) -> Table:
    query: dict[str, Any] = {"maxResults": limit}
    if status:
        query["statusEquals"] = status
    summaries = bedrock.list_model_invocation_jobs(**query)["invocationJobSummaries"]
    table = Table(title="Jobs")
    columns = ("job", "name", "model", "status", "records", "errors", "tokens in/out", "cost", "submitted")
    for column in columns:
        table.add_column(column)
    for job in summaries:
        table.add_row(*map(Text, _row(job)))  # the server's text: never markup
    return table


def job_table(job: dict[str, Any]) -> Table:
    title = Text(f"Job {job_id_of(job)}: {job['status']}")
    table = Table(title=title, show_header=False)
    keys = ("jobName", "modelId", "status", "message", "submitTime", "endTime")
    rows = [(key, str(job[key])) for key in keys if key in job]
    rows += [
        ("records", records_of(job)),
        ("errors", str(job.get("errorRecordCount", 0))),
        ("tokens in/out", tokens_of(job)),
        ("cost", cost_of(job)),
        ("output", str(job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])),
    ]
    for key, value in rows:
        table.add_row(key, Text(value))  # the server's text (a message quotes its input): never markup
    return table


def _row(job: dict[str, Any]) -> list[str]:
    return [
        job["jobArn"].rsplit("/", 1)[1],
        job.get("jobName", ""),
        job["modelId"],
        job["status"],
        records_of(job),
        str(job.get("errorRecordCount", 0)),
        tokens_of(job),
        cost_of(job),
        str(job["submitTime"]),
    ]


def tokens_of(job: dict[str, Any]) -> str:
    return f"{job.get('inputTokenCount', 0):,} / {job.get('outputTokenCount', 0):,}"


def cost_of(job: dict[str, Any]) -> str:
    """The server's cost of the job's committed tokens, or ``unknown`` (no price, or not said)."""
    usd = job.get("estimatedCostUSD")
    return usd_text(float(usd) if isinstance(usd, int | float) else None)


def records_of(job: dict[str, Any]) -> str:
    """Processed records, and of how many when the total is known."""
    total = job.get("totalRecordCount")
    return f"{job.get('processedRecordCount', 0):,}" + (f" of {total:,}" if total is not None else "")
