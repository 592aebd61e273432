"""Commands that drive a running ``bulkinfer serve`` through its Bedrock API, with boto3.

Credentials come from the standard AWS variables (or profile), as for any boto3 client.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bulkinfer.cli.progress import JobProgress

ServerOption = Annotated[
    str, typer.Option("--server", envvar="BULKINFER_SERVER", help="URL of a running bulkinfer serve.")
]
TERMINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
DEFAULT_ROLE = "arn:aws:iam::123456789012:role/bulkinfer"


def client(server: str) -> Any:
    try:
        import boto3
    except ImportError:
        raise typer.BadParameter("the client needs boto3: pip install 'bulkinfer[client]'") from None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("bedrock", endpoint_url=server, region_name=region)


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
    """Create the job and print its ARN; with ``wait``, follow it (progress on the second console)
    and return how it ended."""
    bedrock = client(server)
    arn = bedrock.create_model_invocation_job(
        jobName=name or f"bulkinfer-{int(time.time())}",
        roleArn=DEFAULT_ROLE,
        modelId=model,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}},
    )["jobArn"]
    console.print(arn, highlight=False)
    if not wait:
        return None
    return follow(progress, bedrock, bedrock.get_model_invocation_job(jobIdentifier=arn))


def follow(console: Console, bedrock: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Poll a job until it ends, drawing the same progress display as ``bulkinfer run``."""
    while job["status"] in ("Submitted", "Validating", "Scheduled"):
        time.sleep(0.5)
        job = bedrock.get_model_invocation_job(jobIdentifier=job["jobArn"])
    done, errors = job.get("processedRecordCount", 0), job.get("errorRecordCount", 0)
    with JobProgress(console, job.get("totalRecordCount", 0), done) as progress:
        while True:
            processed, failed = job.get("processedRecordCount", 0), job.get("errorRecordCount", 0)
            progress.advance(processed - done, failed - errors, 0, 0)
            done, errors = processed, failed
            if job["status"] in TERMINAL:
                return job
            time.sleep(0.5)
            job = bedrock.get_model_invocation_job(jobIdentifier=job["jobArn"])


def jobs_table(bedrock: Any, status: str | None, limit: int) -> Table:
    query: dict[str, Any] = {"maxResults": limit}
    if status:
        query["statusEquals"] = status
    summaries = bedrock.list_model_invocation_jobs(**query)["invocationJobSummaries"]
    table = Table(title="Jobs")
    for column in ("job", "name", "model", "status", "records", "errors", "submitted"):
        table.add_column(column)
    for job in summaries:
        table.add_row(*_row(job))
    return table


def job_table(job: dict[str, Any]) -> Table:
    table = Table(title=f"Job {job['jobArn'].rsplit('/', 1)[1]}: {job['status']}", show_header=False)
    for key in ("jobName", "modelId", "status", "message", "submitTime", "endTime"):
        if key in job:
            table.add_row(key, str(job[key]))
    table.add_row("records", _records(job))
    table.add_row("errors", str(job.get("errorRecordCount", 0)))
    table.add_row("output", job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])
    return table


def _row(job: dict[str, Any]) -> list[str]:
    return [
        job["jobArn"].rsplit("/", 1)[1],
        job.get("jobName", ""),
        job["modelId"],
        job["status"],
        _records(job),
        str(job.get("errorRecordCount", 0)),
        str(job["submitTime"]),
    ]


def _records(job: dict[str, Any]) -> str:
    total = job.get("totalRecordCount")
    return f"{job.get('processedRecordCount', 0):,}" + (f" of {total:,}" if total is not None else "")
