"""Bedrock's batch inference (CreateModelInvocationJob) through boto3: ``provider = "bedrock-batch"``.

Inputs are staged as JSONL under the catalog's ``staging`` prefix, one folder per provider job named by
its token; the create carries the token as ``clientRequestToken``, so a create a kill interrupted is
sent again as the same request and makes no second job. Results are read from the job's output folder.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import boto3
import orjson
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bulkinfer.domain.request import ChatRequest, Outcome, RecordError, Request
from bulkinfer.providers.batchapi.api import Answer, BatchApi, Save, SlotsFull, Status, read_line
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.remote.anthropic_api import messages_body
from bulkinfer.providers.remote.bedrock_api import INVOKE_DIALECTS, converted, invoke_result, titan_body
from bulkinfer.providers.remote.call import Permanent
from bulkinfer.storage.uris import split_s3
from bulkinfer.store.provider_jobs import ProviderJob

ENDED = frozenset({"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"})
BEDROCK_VERSION = "bedrock-2023-05-31"
INPUT_NAME = "records.jsonl"
MIN_TIMEOUT_HOURS = 24


class BedrockBatchApi(BatchApi):
    def __init__(self, spec: ModelSpec) -> None:
        remote, batch = spec.remote, spec.remote.batch if spec.remote else None
        assert remote is not None and batch is not None and batch.staging and batch.role_arn
        self.native_dialects = INVOKE_DIALECTS & frozenset(spec.dialects)
        self._model = remote.remote_model
        self._default_max_tokens = spec.default_max_tokens
        self._staging = batch.staging.rstrip("/") + "/"
        self._role = batch.role_arn
        self._hours = max(MIN_TIMEOUT_HOURS, int(batch.turnaround_hours + 0.999))
        config = Config(retries={"total_max_attempts": 1}, read_timeout=remote.timeout_seconds)
        region = remote.region or "us-east-1"
        self._bedrock = boto3.client(
            "bedrock", region_name=region, endpoint_url=remote.base_url, config=config
        )
        self._s3 = boto3.client("s3", region_name=region, endpoint_url=batch.s3_endpoint_url, config=config)

    def line(self, custom_id: str, request: Request) -> bytes:
        if request.native is not None:
            body = dict(request.native.body)
        elif isinstance(request, ChatRequest):
            body = {"anthropic_version": BEDROCK_VERSION, **messages_body(request)}
            body.setdefault("max_tokens", self._default_max_tokens)
        else:
            body = titan_body(request)
        return orjson.dumps({"recordId": _record_id(int(custom_id)), "modelInput": body})

    async def create(self, job: ProviderJob, lines: list[bytes] | None, save: Save) -> str:
        folder = f"{self._staging}{job.token}/"
        if job.provider_file is None:
            if lines is None:
                raise Permanent("its input was never staged")
            bucket, key = split_s3(f"{folder}input/{INPUT_NAME}")
            await self._call(self._s3.put_object, Bucket=bucket, Key=key, Body=b"\n".join(lines) + b"\n")
            await save(provider_file=f"{folder}input/")
        try:
            response = await self._call(
                self._bedrock.create_model_invocation_job,
                jobName=job.token[:63],
                roleArn=self._role,
                clientRequestToken=job.token,
                modelId=self._model,
                inputDataConfig={"s3InputDataConfig": {"s3Uri": f"{folder}input/", "s3InputFormat": "JSONL"}},
                outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"{folder}output/"}},
                timeoutDurationInHours=self._hours,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ServiceQuotaExceededException":
                raise SlotsFull(str(exc)) from exc
            raise
        return str(response["jobArn"])

    async def status(self, provider_id: str) -> Status:
        job = await self._call(self._bedrock.get_model_invocation_job, jobIdentifier=provider_id)
        status = str(job["status"])
        # (Bedrock's job shows no live counts; a bulkinfer server adds them, read where present.)
        total = int(job.get("totalRecordCount") or 0)
        done = int(job.get("successRecordCount") or 0)
        failed = int(job.get("errorRecordCount") or 0)
        message = job.get("message") if status in ("Failed", "Expired") else None
        return Status(status, status in ENDED, total, done, failed, message)

    async def results(self, job: ProviderJob) -> dict[int, Answer]:
        assert job.provider_id is not None
        job_part = job.provider_id.rsplit("/", 1)[-1]
        bucket, key = split_s3(f"{self._staging}{job.token}/output/{job_part}/{INPUT_NAME}.out")
        try:
            response = await self._call(self._s3.get_object, Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return {}  # it wrote no output (failed, or stopped before any record)
            raise
        body = await asyncio.to_thread(response["Body"].read)
        answers: dict[int, Answer] = {}
        for raw in body.splitlines():
            read_line(raw, _read_line, answers)
        return answers

    def outcome(self, body: dict[str, Any], request: Request) -> Outcome:
        result = invoke_result(body, request)
        if request.native is not None:
            result.native = body
        return result

    async def cancel(self, provider_id: str) -> None:
        with contextlib.suppress(Permanent):  # it ended meanwhile
            await self._call(self._bedrock.stop_model_invocation_job, jobIdentifier=provider_id)

    async def _call(self, method: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(method, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ServiceQuotaExceededException":
                raise
            raise converted(exc, 60.0) from exc
        except BotoCoreError as exc:
            raise converted(exc, 60.0) from exc


def _record_id(index: int) -> str:
    return f"R{index:010d}"


def _read_line(line: Any, answers: dict[int, Answer]) -> None:
    record_id = str(line.get("recordId", ""))
    if not (record_id.startswith("R") and record_id[1:].isdigit()):
        return
    index = int(record_id[1:])
    error = line.get("error")
    if isinstance(error, dict):
        code = int(error.get("errorCode") or 500)
        message = str(error.get("errorMessage") or "no reason given")
        answers[index] = Answer(
            error=RecordError(code, f"the provider answered {code}: {message}", "ProviderError")
        )
    elif isinstance(line.get("modelOutput"), dict):
        answers[index] = Answer(body=line["modelOutput"])
