"""Request bodies and response shapes of the Bedrock model-invocation-job API (rest-json).

botocore checks only required members, types and minimums, so every maximum, pattern and enum is
checked here and answered with a ValidationException naming the member.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from bulkinfer.providers.cost import JobCost
from bulkinfer.store.batch_jobs import BatchJob
from bulkinfer.store.job_events import JobEvent
from bulkinfer.store.provider_jobs import ProviderJob


def _fullmatch(pattern: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"Member must satisfy regular expression pattern: {pattern}")
        return value

    return AfterValidator(check)


JOB_NAME = r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}"
ROLE_ARN = r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+"
TOKEN = r"[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}"
S3_URI = r"s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](?:/[-!_*'().a-z0-9A-Z]+(?:/[-!_*'().a-z0-9A-Z]+)*)?/?"
MODEL_ID = (
    r"(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:(([0-9]{12}:custom-model/[a-z0-9-]{1,63}[.]{1}"
    r"[a-z0-9-:]{1,63}/[a-z0-9]{12}$)|(:foundation-model/([a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}"
    r"([.]?[a-z0-9-]{1,63})([:][a-z0-9-]{1,63}){0,2})|(([0-9a-zA-Z][_-]?)+)$)|([0-9]{12}:"
    r"(inference-profile|application-inference-profile)/[a-zA-Z0-9-:.]+$)))|([a-z0-9-]{1,63}[.]{1}"
    r"[a-z0-9-]{1,63}([.]?[a-z0-9-]{1,63})([:][a-z0-9-]{1,63}){0,2})|(([0-9a-zA-Z][_-]?)+)"
)
TAG_TEXT = r"[a-zA-Z0-9\s._:/=+@-]*"
ACCOUNT = r"[0-9]{12}"
JOB_IDENTIFIER = re.compile(
    r"(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-invocation-job/)?([a-z0-9]{12})"
)

Status = Literal[
    "Submitted", "InProgress", "Completed", "Failed", "Stopping", "Stopped",
    "PartiallyCompleted", "Expired", "Validating", "Scheduled",
]  # fmt: skip


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class S3InputDataConfig(Wire):
    s3Uri: Annotated[str, Field(min_length=1, max_length=1024), _fullmatch(S3_URI)]
    s3InputFormat: Literal["JSONL"] | None = None
    s3BucketOwner: Annotated[str, _fullmatch(ACCOUNT)] | None = None


class S3OutputDataConfig(Wire):
    s3Uri: Annotated[str, Field(min_length=1, max_length=1024), _fullmatch(S3_URI)]
    s3EncryptionKeyId: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    s3BucketOwner: Annotated[str, _fullmatch(ACCOUNT)] | None = None


class InputDataConfig(Wire):
    """A union with one member: exactly ``s3InputDataConfig``."""

    s3InputDataConfig: S3InputDataConfig


class OutputDataConfig(Wire):
    s3OutputDataConfig: S3OutputDataConfig


class Tag(Wire):
    key: Annotated[str, Field(min_length=1, max_length=128), _fullmatch(TAG_TEXT)]
    value: Annotated[str, Field(max_length=256), _fullmatch(TAG_TEXT)]


class VpcConfig(Wire):
    subnetIds: list[Annotated[str, Field(max_length=32), _fullmatch(r"[-0-9a-zA-Z]+")]] = Field(
        min_length=1, max_length=16
    )
    securityGroupIds: list[Annotated[str, Field(max_length=32), _fullmatch(r"[-0-9a-zA-Z]+")]] = Field(
        min_length=1, max_length=5
    )


class CreateJobRequest(Wire):
    jobName: Annotated[str, Field(min_length=1, max_length=63), _fullmatch(JOB_NAME)]
    roleArn: Annotated[str, Field(max_length=2048), _fullmatch(ROLE_ARN)]
    clientRequestToken: Annotated[str, Field(min_length=1, max_length=256), _fullmatch(TOKEN)] | None = None
    modelId: Annotated[str, Field(min_length=1, max_length=2048), _fullmatch(MODEL_ID)]
    inputDataConfig: InputDataConfig
    outputDataConfig: OutputDataConfig
    vpcConfig: VpcConfig | None = None
    timeoutDurationInHours: int | None = Field(default=None, ge=24, le=168)
    tags: list[Tag] | None = Field(default=None, max_length=200)
    modelInvocationType: Literal["InvokeModel", "Converse"] | None = None


class RetryJobRequest(Wire):
    """Our own call: the retry job of an ended job (see `BatchService.retry`); every member optional."""

    jobName: Annotated[str, Field(min_length=1, max_length=63), _fullmatch(JOB_NAME)] | None = None
    clientRequestToken: Annotated[str, Field(min_length=1, max_length=256), _fullmatch(TOKEN)] | None = None


class ListJobsQuery(Wire):
    submitTimeAfter: datetime | None = None
    submitTimeBefore: datetime | None = None
    statusEquals: Status | None = None
    nameContains: Annotated[str, Field(min_length=1, max_length=63), _fullmatch(JOB_NAME)] | None = None
    maxResults: int = Field(default=100, ge=1, le=1000)
    nextToken: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    sortBy: Literal["CreationTime"] = "CreationTime"
    sortOrder: Literal["Ascending", "Descending"] = "Descending"


def job_arn(job_id: str, region: str, account: str) -> str:
    return f"arn:aws:bedrock:{region}:{account}:model-invocation-job/{job_id}"


def job_summary(job: BatchJob, region: str, account: str, cost: JobCost) -> dict[str, Any]:
    """A job as Get and List return it: only members that have a value, times in ISO 8601 UTC. Then
    bulkinfer's own members, which boto3 leaves out of what it returns (the raw body keeps them): the
    tokens, and the cost with the prices used (``estimatedCostUSD`` null where the price is unknown)."""
    request = job.request
    timeout = request.get("timeoutDurationInHours") or 24
    body: dict[str, Any] = {
        "jobArn": job_arn(job.job_id, region, account),
        "jobName": job.name,
        "modelId": job.model_id,
        "clientRequestToken": job.client_token,
        "roleArn": request.get("roleArn"),  # (none for a job made through another API)
        "status": job.status.value,
        "message": job.message,
        "submitTime": _iso(job.submit_time),
        "lastModifiedTime": _iso(job.last_modified),
        "endTime": _iso(job.end_time),
        "inputDataConfig": request["inputDataConfig"],
        "outputDataConfig": request["outputDataConfig"],
        "vpcConfig": request.get("vpcConfig"),
        "timeoutDurationInHours": timeout,
        "jobExpirationTime": _iso(job.expires_at or job.submit_time + timeout * 3600),
        "modelInvocationType": request.get("modelInvocationType"),
        "totalRecordCount": job.total,
        "processedRecordCount": job.processed,
        "successRecordCount": job.success,
        "errorRecordCount": job.errors,
    }
    own = {
        "inputTokenCount": job.input_tokens or 0,
        "outputTokenCount": job.output_tokens or 0,
        "estimatedCostUSD": None if cost.usd is None else round(cost.usd, 6),
        "prices": cost.prices.as_json(),
    }
    return {key: value for key, value in body.items() if value is not None} | own


def event_view(event: JobEvent) -> dict[str, Any]:
    """One step of a job's timeline as our ``/events`` route returns it."""
    return {"time": _iso(event.at), "event": event.name, "status": event.status, "reason": event.reason}


def provider_job_view(job: ProviderJob) -> dict[str, Any]:
    """One provider batch job behind a job (a ``*-batch`` model's), as our ``/events`` route lists it."""
    return {
        "providerJobId": job.provider_id,
        "token": job.token,
        "attempt": job.attempt,
        "records": len(job.keys),
        "state": job.state,
        "providerStatus": job.provider_status,
        "done": job.done,
        "failed": job.failed,
        "createdAt": _iso(job.created_at),
        "endedAt": _iso(job.ended_at),
        "message": job.message,
    }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
