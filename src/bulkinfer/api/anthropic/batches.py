"""Anthropic's Message Batches API (``/v1/messages/batches``) over the service's jobs.

A batch's requests come inline and are validated before the create is answered (one bad request is a
400 for the whole batch, as Anthropic does); they are kept as the job's input in the tenant's folder of
the files bucket, and the job (api ``anthropic``, record format ``anthropic``) validates, queues, runs,
resumes and stops as every job does. Its results stream from an absolute ``results_url`` on this server
(the SDK fetches it with the caller's key) once it has ended. bulkinfer runs a batch on one model, so
its requests must all name the same one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bulkinfer.api.auth import Caller
from bulkinfer.api.bedrock.outputs import job_outputs
from bulkinfer.api.bedrock.routes import caller, service
from bulkinfer.api.openai.batches import cost_fields
from bulkinfer.api.openai.files import FilesDep
from bulkinfer.dialects.registry import get_dialect
from bulkinfer.domain.job import SERVICE_ENDED, JobStatus
from bulkinfer.domain.request import RecordError
from bulkinfer.domain.tenant import own_area
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.errors import RecordInvalid, UserError
from bulkinfer.formats.anthropic_batch import params_body, render_error, render_unrun, request_problem
from bulkinfer.formats.bedrock import InputRecord
from bulkinfer.formats.records import ANTHROPIC, results_of_unrun
from bulkinfer.providers.base import Capabilities, refusal
from bulkinfer.providers.registry import capabilities_of
from bulkinfer.services.batch import BatchService, JobNotEnded, JobNotFound, NewJob
from bulkinfer.services.files import FileService
from bulkinfer.settings import ServerSettings
from bulkinfer.store.batch_jobs import BatchJob, JobFilter

router = APIRouter()

PREFIX = "msgbatch_"
API = "anthropic"
MAX_REQUESTS = 100_000
WINDOW_HOURS = 24

CallerDep = Annotated[Caller, Depends(caller)]
ServiceDep = Annotated[BatchService, Depends(service)]


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    requests: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_REQUESTS)


def batch_id(job_id: str) -> str:
    return f"{PREFIX}{job_id}"


def job_id_of(identifier: str) -> str:
    job_id = identifier.removeprefix(PREFIX)
    if not identifier.startswith(PREFIX) or not (job_id.isascii() and job_id.isalnum()) or len(job_id) > 64:
        raise JobNotFound(f"No message batch found with id '{identifier}'")
    return job_id


@router.post("/v1/messages/batches")
async def create_batch(
    body: CreateBatch,
    who: CallerDep,
    jobs: ServiceDep,
    files: FilesDep,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> dict[str, Any]:
    tenant = who.tenant
    settings: ServerSettings = request.app.state.settings
    _check_count(len(body.requests), settings)
    model = await asyncio.to_thread(_checked, body.requests, request, tenant.may_use)
    area = own_area(settings.files_bucket, tenant.name)
    lines = [orjson.dumps(r) for r in body.requests]
    _check_sizes(lines)
    token = await asyncio.to_thread(jobs.dedupe_token, tenant.name, idempotency_key, b"\n".join(lines))
    found = await asyncio.to_thread(jobs.by_token, tenant.name, token)
    if found is not None and idempotency_key:  # a create sent again (a client's retry, a restart's)
        if found.api != API:
            raise UserError("Idempotency-Key: given before for a job of another API; give another key")
        if (found.details or {}).get("requestCount") != len(lines):
            raise UserError("Idempotency-Key: given before for a different request; give another key")
    if found is not None and found.api == API:
        return _render(await _with_live(jobs, found), request)
    source = f"{area}messages/{uuid.uuid4().hex}.jsonl"
    await files.keep(source, lines)
    name = f"message-batch-{len(lines)}"
    sent = {
        "jobName": name,
        "modelId": model,
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": source, "s3InputFormat": "JSONL"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"{area}batches/"}},
        "timeoutDurationInHours": WINDOW_HOURS,
        "recordFormat": API,
    }
    details = {"requestCount": len(lines)}
    job = await jobs.submit_async(NewJob(tenant, name, model, token, sent, api=API, details=details))
    if job.request["inputDataConfig"] != sent["inputDataConfig"]:  # a concurrent twin was made first
        await files.discard(source)
    return _render(job, request)


def _check_count(count: int, settings: ServerSettings) -> None:
    """A batch is one input file of one job: more requests than this server's quotas let a file or a
    job hold would fail it while validating, so they are refused before a batch is made."""
    most = min(settings.max_records_per_file, settings.max_records_per_job)
    if count > most:
        raise UserError(f"requests: {count:,} requests, over the {most:,} this server runs in one batch")


def _check_sizes(lines: list[bytes]) -> None:
    """A request longer than the engine reads as one line would fail the batch while validating."""
    most = EngineSettings().max_line_bytes
    for index, line in enumerate(lines):
        if len(line) > most:
            raise UserError(f"requests.{index}: {len(line):,} bytes, over the {most:,} a request may have")


def _checked(requests: list[dict[str, Any]], request: Request, may_use: Any) -> str:
    """The model of a batch whose every request is valid; else a `UserError` naming the first bad one."""
    seen: set[str] = set()
    model: str | None = None
    takes = Capabilities()
    anthropic = get_dialect("anthropic")
    jobs: BatchService = request.app.state.batch
    catalog = jobs.catalog
    for index, item in enumerate(requests):
        where = f"requests.{index}"
        problem = request_problem(item)
        if problem is not None:
            raise UserError(f"{where}.{problem}")
        custom_id, params = item["custom_id"], item["params"]
        if custom_id in seen:
            raise UserError(
                f"{where}.custom_id: {custom_id!r} is used by another request; each must be unique"
            )
        seen.add(custom_id)
        if model is None:
            try:  # unknown, or not the tenant's: a 400 naming the request (the message lists what it may use)
                takes = capabilities_of(catalog.get(params["model"], may_use))
            except UserError as exc:
                raise UserError(f"{where}.params.model: {exc}") from None
            model = str(params["model"])
        elif params["model"] != model:
            raise UserError(
                f"{where}.params.model: {params['model']!r} differs from the batch's {model!r}; bulkinfer "
                "runs a batch on one model: send one batch a model"
            )
        try:
            refused = refusal(takes, anthropic.to_request(params_body(params)))
        except RecordInvalid as exc:
            problem = str(exc).replace("modelInput", "params")
            named = problem if problem.startswith("params") else f"params: {problem}"
            raise UserError(f"{where}.{named}") from None
        if refused is not None:  # an embeddings model, an image to a text-only one: it would fail the batch
            raise UserError(f"{where}.params: {model!r} cannot run it: {refused.message}")
    assert model is not None
    return model


@router.get("/v1/messages/batches")
async def list_batches(
    who: CallerDep,
    jobs: ServiceDep,
    request: Request,
    after_id: str | None = None,
    before_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, Any]:
    if after_id and before_id:
        raise UserError("give after_id or before_id, not both")
    wanted = JobFilter(tenant=who.tenant.name, api=API)
    after = job_id_of(after_id) if after_id else None
    before = job_id_of(before_id) if before_id else None
    found, more = await asyncio.to_thread(jobs.page, wanted, limit, after, before)
    data = [_render(job, request) for job in found]
    return {
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.get("/v1/messages/batches/{identifier}")
async def retrieve_batch(
    identifier: str, who: CallerDep, jobs: ServiceDep, request: Request
) -> dict[str, Any]:
    return _render(await _batch(jobs, who, identifier), request)


@router.post("/v1/messages/batches/{identifier}/cancel")
async def cancel_batch(identifier: str, who: CallerDep, jobs: ServiceDep, request: Request) -> dict[str, Any]:
    job = await _batch(jobs, who, identifier)
    if job.status not in SERVICE_ENDED and job.status != JobStatus.STOPPING:
        await asyncio.to_thread(jobs.stop, who.tenant.name, job.job_id)
        job = await asyncio.to_thread(jobs.get, who.tenant.name, job.job_id)
        job = await asyncio.to_thread(
            jobs.note, job, keep=True, cancel_initiated_at=datetime.now(UTC).timestamp()
        )
    return _render(job, request)


@router.delete("/v1/messages/batches/{identifier}")
async def delete_batch(
    identifier: str, who: CallerDep, jobs: ServiceDep, files: FilesDep, request: Request
) -> dict[str, Any]:
    job = await _batch(jobs, who, identifier)
    if job.status not in SERVICE_ENDED:
        raise UserError(f"Batch {identifier} cannot be deleted while it is processing; cancel it first")
    gone = await asyncio.to_thread(jobs.delete, who.tenant.name, job.job_id)
    folder = _folder(gone)
    await files.discard(_source(gone), f"{folder}/{_name(gone)}.out", f"{folder}/manifest.json.out")
    return {"id": batch_id(gone.job_id), "type": "message_batch_deleted"}


@router.get("/v1/messages/batches/{identifier}/results")
async def batch_results(
    identifier: str, who: CallerDep, jobs: ServiceDep, files: FilesDep, request: Request
) -> StreamingResponse:
    job = await _batch(jobs, who, identifier)
    if job.status not in SERVICE_ENDED:
        raise JobNotEnded(f"Batch {identifier} has not ended: its results are not ready")
    if not job.start_time:  # it never ran: each request errored, or was canceled or expired
        lines = _never_ran(files, job)
    else:
        settings: ServerSettings = request.app.state.settings
        tenant = request.app.state.tenants.get(job.tenant)
        outputs = job_outputs(settings, job, tenant.grants.may_read)
        name = f"{_name(job)}.out"
        if name not in await asyncio.to_thread(outputs.sizes):
            raise JobNotFound(f"Batch {identifier} has no results (they were removed)")
        lines = outputs.read(name)
    return StreamingResponse(lines, media_type="application/binary")


def _never_ran(files: FileService, job: BatchJob) -> Iterator[bytes]:
    """Result lines of a batch that ended before it ran: every request errored (the batch failed, saying
    why), or was canceled, or expired."""
    try:
        blocks = files.read(_source(job))
    except FileNotFoundError:
        removed = f"Batch {batch_id(job.job_id)} has no results (its requests were removed)"
        raise JobNotFound(removed) from None
    error = RecordError(500, job.message or "the batch failed before it ran", "api_error")
    why = "cancelled" if job.status == JobStatus.STOPPED else "expired"

    def result(record: InputRecord) -> bytes:
        line = render_error(record, error) if job.status == JobStatus.FAILED else render_unrun(record, why)
        return line + b"\n"

    name = _name(job)
    seed, max_line = f"{job.job_id}:{name}", EngineSettings().max_line_bytes
    return results_of_unrun(blocks, ANTHROPIC, result, source=name, seed=seed, max_line_bytes=max_line)


async def _batch(jobs: BatchService, who: Caller, identifier: str) -> BatchJob:
    job = await jobs.get_async(who.tenant.name, job_id_of(identifier))
    if job.api != API:
        raise JobNotFound(f"No message batch found with id '{identifier}'")
    return job


async def _with_live(jobs: BatchService, job: BatchJob) -> BatchJob:
    return await jobs.get_async(job.tenant, job.job_id)


def _source(job: BatchJob) -> str:
    return str(job.request["inputDataConfig"]["s3InputDataConfig"]["s3Uri"])


def _name(job: BatchJob) -> str:
    return _source(job).rsplit("/", 1)[-1]


def _folder(job: BatchJob) -> str:
    return f"{job.request['outputDataConfig']['s3OutputDataConfig']['s3Uri'].rstrip('/')}/{job.job_id}"


def _render(job: BatchJob, request: Request) -> dict[str, Any]:
    """A job as Anthropic's MessageBatch. Counts are live (Anthropic's stay 0 until the end)."""
    ended = job.status in SERVICE_ENDED
    details = job.details or {}
    total = job.total if job.total is not None else int(details.get("requestCount", 0))
    succeeded, errored = job.success or 0, job.errors or 0
    unrun = max(total - succeeded - errored, 0)
    counts = {"processing": 0 if ended else unrun, "succeeded": succeeded, "errored": errored}
    counts["canceled"] = unrun if ended and job.status == JobStatus.STOPPED else 0
    counts["expired"] = (
        unrun if ended and job.status in (JobStatus.PARTIALLY_COMPLETED, JobStatus.EXPIRED) else 0
    )
    if job.status == JobStatus.FAILED:
        counts["errored"] += unrun
    status = "ended" if ended else "canceling" if job.status == JobStatus.STOPPING else "in_progress"
    base = str(request.base_url).rstrip("/")
    return {
        "id": batch_id(job.job_id),
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "created_at": _rfc3339(job.submit_time),
        "expires_at": _rfc3339(job.expires_at or job.submit_time + WINDOW_HOURS * 3600),
        "ended_at": _rfc3339(job.end_time) if ended else None,
        "cancel_initiated_at": _rfc3339(details.get("cancel_initiated_at")),
        "archived_at": None,
        "results_url": f"{base}/v1/messages/batches/{batch_id(job.job_id)}/results" if ended else None,
        **cost_fields(request, job),  # bulkinfer's own, as on an OpenAI batch
    }


def _rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
