"""Routes of the Bedrock batch control plane."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from bulkinfer.api.auth import Caller
from bulkinfer.api.bedrock.outputs import OutputFiles, job_outputs, output_uri
from bulkinfer.api.bedrock.schemas import (
    JOB_IDENTIFIER,
    CreateJobRequest,
    ListJobsQuery,
    RetryJobRequest,
    event_view,
    job_arn,
    job_summary,
    provider_job_view,
)
from bulkinfer.domain.job import JobStatus
from bulkinfer.errors import UserError
from bulkinfer.services.batch import BatchService, JobNotFound, NewJob
from bulkinfer.settings import ServerSettings
from bulkinfer.store.batch_jobs import JobFilter

router = APIRouter()


async def caller(request: Request) -> Caller:
    """Who signed the request: the `Gate` middleware checked it before the route was reached."""
    who: Caller = request.state.caller
    return who


async def service(request: Request) -> BatchService:
    """Async although it awaits nothing: FastAPI runs a plain ``def`` dependency in its thread pool, a
    thread hop per request that, under load, costs more than the store call the route makes."""
    batch: BatchService = request.app.state.batch
    return batch


CallerDep = Annotated[Caller, Depends(caller)]
ServiceDep = Annotated[BatchService, Depends(service)]


def _job_id(identifier: str) -> str:
    match = JOB_IDENTIFIER.fullmatch(unquote(identifier))
    if match is None:
        raise UserError(f"jobIdentifier: {identifier!r} is neither a job id nor a job ARN")
    return match.group(3)


def _account(request: Request) -> str:
    settings: ServerSettings = request.app.state.settings
    return settings.account_id


@router.post("/model-invocation-job")
async def create_job(
    body: CreateJobRequest, who: CallerDep, jobs: ServiceDep, request: Request
) -> dict[str, str]:
    # async, with the store's grouped commit awaited: no thread-pool hop per request (see store.batcher)
    sent = body.model_dump(exclude_none=True)
    sent.pop("clientRequestToken", None)
    # the region the caller signed with: the one in its job's ARN, which the job's webhooks name too
    details = {"region": who.region}
    new = NewJob(who.tenant, body.jobName, body.modelId, body.clientRequestToken, sent, details=details)
    job = await jobs.submit_async(new)
    return {"jobArn": job_arn(job.job_id, who.region, _account(request))}


@router.get("/model-invocation-jobs")
def list_jobs(
    query: Annotated[ListJobsQuery, Depends()], who: CallerDep, jobs: ServiceDep, request: Request
) -> dict[str, Any]:
    wanted = JobFilter(
        tenant=who.tenant.name,
        status=JobStatus(query.statusEquals) if query.statusEquals else None,
        name_contains=query.nameContains,
        submitted_after=query.submitTimeAfter.timestamp() if query.submitTimeAfter else None,
        submitted_before=query.submitTimeBefore.timestamp() if query.submitTimeBefore else None,
        ascending=query.sortOrder == "Ascending",
    )
    page = jobs.list(wanted, query.maxResults, query.nextToken)
    account = _account(request)
    body: dict[str, Any] = {
        "invocationJobSummaries": [job_summary(j, who.region, account, jobs.cost(j)) for j in page.jobs]
    }
    if page.next_token:
        body["nextToken"] = page.next_token
    return body


@router.post("/model-invocation-job/{identifier:path}/stop")
def stop_job(identifier: str, who: CallerDep, jobs: ServiceDep) -> Response:
    jobs.stop(who.tenant.name, _job_id(identifier))
    return JSONResponse({})


@router.post("/model-invocation-job/{identifier:path}/retry")
async def retry_job(
    identifier: str, who: CallerDep, jobs: ServiceDep, request: Request, body: RetryJobRequest | None = None
) -> dict[str, str]:
    """Our own route: a new job that keeps an ended job's successes and runs the rest again."""
    sent = body or RetryJobRequest()
    job = await asyncio.to_thread(
        jobs.retry, who.tenant, _job_id(identifier), sent.jobName, sent.clientRequestToken
    )
    return {"jobArn": job_arn(job.job_id, who.region, _account(request))}


def _outputs(request: Request, who: Caller, jobs: BatchService, identifier: str) -> OutputFiles:
    job = jobs.ended(who.tenant.name, _job_id(identifier))  # 409 until it has ended
    who.tenant.check_read(output_uri(job), "outputDataConfig.s3OutputDataConfig.s3Uri")
    return job_outputs(request.app.state.settings, job, who.tenant.grants.may_read)


@router.get("/model-invocation-job/{identifier:path}/events")
def list_events(identifier: str, who: CallerDep, jobs: ServiceDep) -> dict[str, Any]:
    """Our own route: the job's timeline, each change of status (or provider pause) with its reason, and
    the provider batch jobs it ran as (a ``*-batch`` model's)."""
    tenant, job_id = who.tenant.name, _job_id(identifier)
    events = jobs.events(tenant, job_id)
    provider_jobs = jobs.provider_jobs(tenant, job_id)
    return {
        "events": [event_view(e) for e in events],
        "providerJobs": [provider_job_view(p) for p in provider_jobs],
    }


@router.get("/model-invocation-job/{identifier:path}/outputs")
def list_outputs(identifier: str, who: CallerDep, jobs: ServiceDep, request: Request) -> Response:
    """Our own route: the names and sizes of an ended job's output files."""
    files = _outputs(request, who, jobs, identifier)
    return JSONResponse({"files": [{"name": name, "size": size} for name, size in files.sizes().items()]})


@router.get("/model-invocation-job/{identifier:path}/outputs/{name:path}")
def read_output(identifier: str, name: str, who: CallerDep, jobs: ServiceDep, request: Request) -> Response:
    """Our own route: one output file of an ended job, streamed."""
    # Both parameters may hold '/' (an ARN, a nested file); a job identifier never holds "/outputs/".
    identifier, _, name = f"{identifier}/outputs/{name}".partition("/outputs/")
    files = _outputs(request, who, jobs, identifier)
    if name not in files.sizes():  # only a listed name, so no path can climb out of the job's outputs
        raise JobNotFound(f"Job {_job_id(identifier)} has no output file {name!r}")
    return StreamingResponse(files.read(name), media_type="application/octet-stream")


@router.get("/model-invocation-job/{identifier:path}")
async def get_job(identifier: str, who: CallerDep, jobs: ServiceDep, request: Request) -> dict[str, Any]:
    job = await jobs.get_async(who.tenant.name, _job_id(identifier))
    return job_summary(job, who.region, _account(request), jobs.cost(job))
