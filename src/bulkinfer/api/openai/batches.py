"""OpenAI's Batch API (``/v1/batches``) over the service's jobs.

A batch is a job of the caller's tenant made through this API (``api = openai``): its input is an
uploaded file of batch lines, its outputs land in the tenant's folder of the files bucket, and it
validates, queues for its model's slot, runs, resumes and stops as every job does. This module only
translates: the create request into a job, a job into OpenAI's Batch object (reference §1.3, §2.5).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bulkinfer.api.auth import Caller
from bulkinfer.api.bedrock.outputs import job_outputs
from bulkinfer.api.bedrock.routes import caller, service
from bulkinfer.api.errors import OPENAI, error_response
from bulkinfer.api.openai.files import FilesDep
from bulkinfer.domain.job import SERVICE_ENDED, JobStatus
from bulkinfer.domain.tenant import own_area
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.errors import UserError
from bulkinfer.formats import records
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.formats.openai_batch import ENDPOINTS, first_model, render_unrun
from bulkinfer.formats.records import ERRORS_SUFFIX, results_of_unrun
from bulkinfer.services.batch import BatchService, JobConflict, JobNotFound, NewJob
from bulkinfer.services.files import FileService, check_file_id
from bulkinfer.settings import ServerSettings
from bulkinfer.store.batch_jobs import BatchJob, JobFilter

router = APIRouter()

PREFIX = "batch_"
API = "openai"
WINDOW_S = 24 * 3600
MODEL_SCAN_LINES = 100
CANCELLED = (JobStatus.STOPPING, JobStatus.STOPPED)

CallerDep = Annotated[Caller, Depends(caller)]
ServiceDep = Annotated[BatchService, Depends(service)]


class ExpiresAfter(BaseModel):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, endpoint: str) -> str:
        if endpoint not in ENDPOINTS:
            raise ValueError(
                f"{endpoint!r} is not a supported batch endpoint; supported: {', '.join(ENDPOINTS)}"
            )
        return endpoint

    @field_validator("completion_window")
    @classmethod
    def _window(cls, window: str) -> str:
        if window != "24h":
            raise ValueError("only '24h' is supported")
        return window

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata is None:
            return None
        if len(metadata) > 16:
            raise ValueError("at most 16 key-value pairs")
        for key, value in metadata.items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError("keys are at most 64 characters and values at most 512")
        return metadata


def batch_id(job_id: str) -> str:
    return f"{PREFIX}{job_id}"


def job_id_of(identifier: str) -> str:
    """The job id of a batch id; an id of another shape is no batch of ours."""
    job_id = identifier.removeprefix(PREFIX)
    if not identifier.startswith(PREFIX) or not job_id.isalnum() or len(job_id) > 64:
        raise JobNotFound(f"No batch found with id '{identifier}'")
    return job_id


@router.post("/v1/batches")
async def create_batch(
    body: CreateBatch,
    who: CallerDep,
    jobs: ServiceDep,
    files: FilesDep,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> dict[str, Any]:
    tenant = who.tenant
    check_file_id(body.input_file_id, "input_file_id")
    stored = await files.get(tenant.name, body.input_file_id)
    if stored.purpose != "batch":
        raise UserError(
            f"input_file_id: file {stored.file_id} was uploaded with purpose {stored.purpose!r}, not 'batch'"
        )
    _, blocks = await files.content(tenant.name, stored.file_id)
    model = await asyncio.to_thread(_model_of, blocks)
    settings: ServerSettings = request.app.state.settings
    name = f"openai-{stored.file_id}"[:63]
    sent = {
        "jobName": name,
        "modelId": model,
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": stored.uri, "s3InputFormat": "JSONL"}},
        "outputDataConfig": {
            "s3OutputDataConfig": {"s3Uri": f"{own_area(settings.files_bucket, tenant.name)}batches/"}
        },
        "timeoutDurationInHours": WINDOW_S // 3600,
        "recordFormat": "openai",
        "endpoint": body.endpoint,
        "completionWindow": body.completion_window,
        "inputFileId": stored.file_id,
    }
    details: dict[str, Any] = {"metadata": body.metadata}
    if body.output_expires_after is not None:
        details["outputExpiresAfter"] = body.output_expires_after.seconds
    sent_body = orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)
    token = await asyncio.to_thread(jobs.dedupe_token, tenant.name, idempotency_key, sent_body)
    new = NewJob(tenant, name, model, token, sent, api=API, details=details, check_model=False)
    job = await jobs.submit_async(new)
    if job.api != API:
        raise UserError("Idempotency-Key: given before for a job of another API; give another key")
    if not _same_create(job, sent, details):
        raise UserError("Idempotency-Key: given before for a different request; give another key")
    return await render(job, request, files)


def _same_create(job: BatchJob, sent: dict[str, Any], details: dict[str, Any]) -> bool:
    """Whether the batch a repeated token found was made by this very request (a key reused for another
    file, endpoint or metadata must not answer with the earlier batch as if it were the one asked for)."""
    earlier = job.details or {}
    same_request = all(job.request.get(k) == sent[k] for k in ("inputFileId", "endpoint", "completionWindow"))
    return same_request and all(earlier.get(k) == details.get(k) for k in ("metadata", "outputExpiresAfter"))


def _model_of(blocks: Iterator[bytes]) -> str:
    """The model the batch's lines name (validation checks that they all name it, and may use it)."""
    try:
        lines = split_lines(blocks, EngineSettings().max_line_bytes)
        return first_model(itertools.islice(lines, MODEL_SCAN_LINES)) or ""
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()  # the file is read no further


@router.get("/v1/batches")
async def list_batches(
    who: CallerDep,
    jobs: ServiceDep,
    files: FilesDep,
    request: Request,
    after: str | None = None,
    limit: Annotated[int, Field(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    wanted = JobFilter(tenant=who.tenant.name, api=API)
    after_job = job_id_of(after) if after else None
    try:
        found, more = await asyncio.to_thread(jobs.page, wanted, limit, after_job)
    except JobNotFound:  # (said as the batch id asked for, not as our job id)
        raise JobNotFound(f"after: no batch found with id '{after}'") from None
    data = [await render(job, request, files) for job in found]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@router.get("/v1/batches/{identifier}")
async def retrieve_batch(
    identifier: str, who: CallerDep, jobs: ServiceDep, files: FilesDep, request: Request
) -> dict[str, Any]:
    return await render(await _batch(jobs, who, identifier), request, files)


@router.post("/v1/batches/{identifier}/cancel", response_model=None)
async def cancel_batch(
    identifier: str, who: CallerDep, jobs: ServiceDep, files: FilesDep, request: Request
) -> dict[str, Any] | JSONResponse:
    job = await _batch(jobs, who, identifier)
    if job.status not in CANCELLED and job.status not in SERVICE_ENDED:
        try:
            await asyncio.to_thread(jobs.stop, who.tenant.name, job.job_id)
        except JobConflict:  # it moved on meanwhile: another cancel stopped it, or it ended
            job = await asyncio.to_thread(jobs.get, who.tenant.name, job.job_id)
            if job.status not in CANCELLED and job.status not in SERVICE_ENDED:
                raise
        job = await asyncio.to_thread(jobs.get, who.tenant.name, job.job_id)
    if job.status in CANCELLED and "cancelling_at" not in (job.details or {}):
        # (as each of several cancels at once does: the first one's time is kept)
        job = await asyncio.to_thread(jobs.note, job, keep=True, cancelling_at=time.time())
    if job.status in CANCELLED:
        return await render(job, request, files)  # cancelled (maybe already): answered as it is
    if job.status in SERVICE_ENDED:
        message = f"Cannot cancel a batch with status {status_of(job)}."
        return error_response(409, "ConflictException", message, OPENAI)
    return await render(job, request, files)


async def _batch(jobs: BatchService, who: Caller, identifier: str) -> BatchJob:
    job = await jobs.get_async(who.tenant.name, job_id_of(identifier))
    if job.api != API:
        raise JobNotFound(f"No batch found with id '{identifier}'")
    return job


_STATUS = {
    JobStatus.SUBMITTED: "validating",
    JobStatus.VALIDATING: "validating",
    JobStatus.SCHEDULED: "in_progress",
    JobStatus.IN_PROGRESS: "in_progress",
    JobStatus.STOPPING: "cancelling",
    JobStatus.STOPPED: "cancelled",
    JobStatus.COMPLETED: "completed",
    JobStatus.PARTIALLY_COMPLETED: "expired",
    JobStatus.EXPIRED: "expired",
    JobStatus.FAILED: "failed",
}
"""A job's status as a batch's (a job that timed out, running or waiting, has expired)."""


def status_of(job: BatchJob) -> str:
    return _STATUS[job.status]


async def render(job: BatchJob, request: Request, files: FileService) -> dict[str, Any]:
    """A job as OpenAI's Batch object."""
    job, output_id, error_id = await _result_files(job, request, files)
    details = job.details or {}
    status = status_of(job)
    ended_at = int(job.end_time) if job.end_time else None
    total = job.total if job.total is not None else int(details.get("unrunCount", 0))
    completed = job.success or 0
    failed = total - completed if status in ("cancelled", "expired") else job.errors or 0
    tokens_in, tokens_out = job.input_tokens or 0, job.output_tokens or 0
    errors = details.get("errors") or _failure(job, status)
    return {
        "id": batch_id(job.job_id),
        "object": "batch",
        "endpoint": job.request.get("endpoint"),
        "model": job.model_id or None,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": job.request.get("inputFileId"),
        "completion_window": job.request.get("completionWindow", "24h"),
        "status": status,
        "output_file_id": output_id,
        "error_file_id": error_id,
        "created_at": int(job.submit_time),
        "in_progress_at": int(job.start_time) if job.start_time else None,
        "expires_at": int(job.expires_at) if job.expires_at else int(job.submit_time) + WINDOW_S,
        "finalizing_at": None,
        "completed_at": ended_at if status == "completed" else None,
        "failed_at": ended_at if status == "failed" else None,
        "expired_at": ended_at if status == "expired" else None,
        "cancelling_at": _int(details.get("cancelling_at"))
        if status in ("cancelling", "cancelled")
        else None,
        "cancelled_at": ended_at if status == "cancelled" else None,
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "usage": {
            "input_tokens": tokens_in,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_in + tokens_out,
        },
        "metadata": details.get("metadata"),
        # bulkinfer's own: why a batch is where it is (validation's word, an outage being waited out)
        "status_message": job.message,
        **cost_fields(request, job),
    }


def cost_fields(request: Request, job: BatchJob) -> dict[str, Any]:
    """bulkinfer's own fields of a batch object (both SDKs keep fields they do not know): the cost of
    the tokens in ``usage`` (null where the model's price is unknown) and the prices used."""
    batch: BatchService = request.app.state.batch
    cost = batch.cost(job)
    usd = None if cost.usd is None else round(cost.usd, 6)
    return {"estimated_cost_usd": usd, "prices": cost.prices.as_json()}


def _failure(job: BatchJob, status: str) -> list[dict[str, Any]] | None:
    """A batch failed for no error of a line (its input over a quota, gone, unreadable) still says why
    in ``errors``, where clients look, not only in our own ``status_message``."""
    if status != "failed" or not job.message:
        return None
    return [{"code": "batch_failed", "message": job.message, "param": None, "line": None}]


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


async def _never_ran(files: FileService, job: BatchJob, source: str, target: str) -> tuple[int, int]:
    """Write the error file of a batch that ended before it ran: a ``batch_cancelled`` or
    ``batch_expired`` line for each request. Its size and its lines (none if the input is gone)."""
    name = source.rsplit("/", 1)[-1]
    why = "cancelled" if job.status == JobStatus.STOPPED else "expired"

    def lines() -> list[bytes]:
        try:
            blocks = files.read(source)
        except FileNotFoundError:
            return []
        unrun = results_of_unrun(
            blocks,
            records.OPENAI,
            lambda record: render_unrun(record, why),
            source=name,
            seed=f"{job.job_id}:{name}",
            max_line_bytes=EngineSettings().max_line_bytes,
        )
        return list(unrun)

    written = await asyncio.to_thread(lines)
    if written:
        await files.keep(f"{target}{ERRORS_SUFFIX}", written)
    return sum(len(line) + 1 for line in written), len(written)


async def _result_files(
    job: BatchJob, request: Request, files: FileService
) -> tuple[BatchJob, str | None, str | None]:
    """The ids of an ended batch's output and error files, each None when it would be empty. Each is
    registered as a file of the tenant the first time the batch is shown ended, and noted on the job
    (returned as noted)."""
    details = job.details or {}
    if "output_file_id" in details:
        return job, details["output_file_id"], details["error_file_id"]
    if job.status not in SERVICE_ENDED or (job.status == JobStatus.FAILED and not job.start_time):
        return job, None, None
    noted: dict[str, Any] = {}
    source = job.request["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
    input_name = source.rsplit("/", 1)[-1]
    folder = f"{job.request['outputDataConfig']['s3OutputDataConfig']['s3Uri'].rstrip('/')}/{job.job_id}"
    if not job.start_time:  # cancelled, or its window passed, before it ran
        size, noted["unrunCount"] = await _never_ran(files, job, source, f"{folder}/{input_name}")
        sizes = {f"{input_name}{ERRORS_SUFFIX}": size}
    else:
        settings: ServerSettings = request.app.state.settings
        tenant = request.app.state.tenants.get(job.tenant)
        outputs = job_outputs(settings, job, tenant.grants.may_read)
        sizes = await asyncio.to_thread(outputs.sizes)
    expires = details.get("outputExpiresAfter")
    ids: list[str | None] = []
    for kind, name in (("output", f"{input_name}.out"), ("error", f"{input_name}{ERRORS_SUFFIX}")):
        size = sizes.get(name, 0)
        if not size:
            ids.append(None)
            continue
        file_id = f"file-{job.job_id}{kind}"
        expires_at = time.time() + expires if expires else None
        filename = f"{batch_id(job.job_id)}_{kind}.jsonl"
        await files.register(
            job.tenant, file_id, filename, "batch_output", f"{folder}/{name}", size, expires_at
        )
        ids.append(file_id)
    output_id, error_id = ids
    jobs: BatchService = request.app.state.batch
    job = await asyncio.to_thread(jobs.note, job, output_file_id=output_id, error_file_id=error_id, **noted)
    return job, output_id, error_id
