"""OpenAI's Batch API (Files + Batches) through the official SDK: ``provider = "openai-batch"``.

The input is uploaded as a file first and its id kept, so a create a kill interrupted is sent again as
the same request, under the same ``Idempotency-Key`` (the token is in the batch's metadata too).
"""

from __future__ import annotations

from typing import Any, Literal

import openai
import orjson

from bulkinfer.domain.request import ChatRequest, Outcome, RecordError, Request
from bulkinfer.providers.batchapi.api import Answer, BatchApi, Save, Status, read_line
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.remote.call import Permanent
from bulkinfer.providers.remote.openai_api import (
    NATIVE_DIALECTS,
    chat_body,
    chat_result,
    embedding_body,
    embedding_result,
)
from bulkinfer.providers.remote.sdk import api_key, convert
from bulkinfer.store.provider_jobs import ProviderJob

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
WINDOW: Literal["24h"] = "24h"
SKIPPED = frozenset({"batch_expired", "batch_cancelled"})
"""Error codes of records the batch never ran: not answered (sent again, or unsent at a stop)."""


class OpenAIBatchApi(BatchApi):
    native_dialects = NATIVE_DIALECTS

    def __init__(self, spec: ModelSpec) -> None:
        assert spec.remote is not None
        self._model = spec.remote.remote_model
        self._timeout = spec.remote.timeout_seconds
        self._url = "/v1/embeddings" if spec.kind == "embedding" else "/v1/chat/completions"
        self._client = openai.AsyncOpenAI(
            api_key=api_key(spec.remote, "OPENAI_API_KEY"),
            base_url=spec.remote.base_url,
            max_retries=0,  # BatchProvider retries, with backoff, and says so in the job's message
            timeout=self._timeout,
        )

    def line(self, custom_id: str, request: Request) -> bytes:
        body: dict[str, Any]
        if isinstance(request, ChatRequest):
            body = dict(request.native.body) if request.native is not None else chat_body(request)
            body.pop("stream", None)
        else:
            body = dict(request.native.body) if request.native is not None else embedding_body(request)
            body.setdefault("encoding_format", "float")
        body["model"] = self._model
        return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": self._url, "body": body})

    async def create(self, job: ProviderJob, lines: list[bytes] | None, save: Save) -> str:
        try:
            file_id = job.provider_file
            if file_id is None:
                if lines is None:
                    raise Permanent("its input file was never uploaded")
                content = b"\n".join(lines) + b"\n"
                uploaded = await self._client.files.create(
                    file=(f"{job.token}.jsonl", content), purpose="batch"
                )
                file_id = uploaded.id
                await save(provider_file=file_id)
            batch = await self._client.batches.create(
                input_file_id=file_id,
                endpoint=self._url,  # type: ignore[arg-type]
                completion_window=WINDOW,
                metadata={"bulkinfer_token": job.token, "bulkinfer_job": job.job_id},
                extra_headers={"Idempotency-Key": job.token},
            )
        except openai.OpenAIError as exc:
            convert(openai, exc, self._timeout)
        return batch.id

    async def status(self, provider_id: str) -> Status:
        batch = await self._retrieve(provider_id)
        counts = batch.request_counts
        message = None
        if batch.errors is not None and batch.errors.data:
            first = batch.errors.data[0]
            message = f"{first.code}: {first.message}" if first.code else first.message
        return Status(
            state=batch.status,
            ended=batch.status in ENDED,
            total=counts.total if counts else 0,
            done=counts.completed if counts else 0,
            failed=counts.failed if counts else 0,
            message=message,
        )

    async def results(self, job: ProviderJob) -> dict[int, Answer]:
        assert job.provider_id is not None
        batch = await self._retrieve(job.provider_id)
        answers: dict[int, Answer] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            try:
                content = await self._client.files.content(file_id)
            except openai.OpenAIError as exc:
                convert(openai, exc, self._timeout)
            for raw in content.content.splitlines():
                read_line(raw, _read_line, answers)
        return answers

    def outcome(self, body: dict[str, Any], request: Request) -> Outcome:
        result = chat_result(body) if isinstance(request, ChatRequest) else embedding_result(body)
        if request.native is not None:
            result.native = body
        return result

    async def cancel(self, provider_id: str) -> None:
        try:
            await self._client.batches.cancel(provider_id)
        except openai.ConflictError:
            pass  # it ended meanwhile
        except openai.OpenAIError as exc:
            convert(openai, exc, self._timeout)

    async def aclose(self) -> None:
        await self._client.close()

    async def _retrieve(self, provider_id: str) -> Any:
        try:
            return await self._client.batches.retrieve(provider_id)
        except openai.OpenAIError as exc:
            convert(openai, exc, self._timeout)


def _read_line(line: Any, answers: dict[int, Answer]) -> None:
    try:
        index = int(line["custom_id"])
    except (KeyError, TypeError, ValueError):
        return  # not one of ours
    error = line.get("error")
    if error:
        if error.get("code") not in SKIPPED:
            answers[index] = Answer(
                error=RecordError(500, _said(error), str(error.get("code") or "ProviderError"))
            )
        return
    response = line.get("response") or {}
    status = int(response.get("status_code") or 500)
    body = response.get("body")
    if status == 200 and isinstance(body, dict):
        answers[index] = Answer(body=body)
        return
    detail = body.get("error") if isinstance(body, dict) else None
    said = _said(detail) if isinstance(detail, dict) else f"status {status}"
    kind = str((detail or {}).get("type") or "ProviderError") if isinstance(detail, dict) else "ProviderError"
    answers[index] = Answer(error=RecordError(status, f"the provider answered {status}: {said}", kind))


def _said(error: dict[str, Any]) -> str:
    return str(error.get("message") or error.get("code") or "no reason given")
