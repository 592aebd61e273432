"""Anthropic's Message Batches API through the official SDK: ``provider = "anthropic-batch"``.

A batch's requests go inline in its create, sent under the row's token as ``Idempotency-Key``; a create
a kill interrupted is sent again with the same lines, rebuilt from the same records.
"""

from __future__ import annotations

from typing import Any

import anthropic
import orjson

from bulkinfer.domain.request import ChatRequest, Outcome, RecordError, Request
from bulkinfer.providers.batchapi.api import Answer, BatchApi, Save, Status, read_line
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.remote.anthropic_api import NATIVE_DIALECTS, message_result, messages_body
from bulkinfer.providers.remote.call import Permanent, Retryable
from bulkinfer.providers.remote.sdk import api_key, convert
from bulkinfer.store.provider_jobs import ProviderJob

SENT = "inline"
"""A message batch's ``provider_file``: its requests went in the create itself."""
ERROR_CODES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class AnthropicBatchApi(BatchApi):
    native_dialects = NATIVE_DIALECTS
    keeps_inputs = False

    def __init__(self, spec: ModelSpec) -> None:
        assert spec.remote is not None
        self._model = spec.remote.remote_model
        self._default_max_tokens = spec.default_max_tokens
        self._timeout = spec.remote.timeout_seconds
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key(spec.remote, "ANTHROPIC_API_KEY"),
            base_url=spec.remote.base_url,
            max_retries=0,
            timeout=self._timeout,
        )

    def line(self, custom_id: str, request: Request) -> bytes:
        if not isinstance(request, ChatRequest):
            raise Permanent("Anthropic models do not produce embeddings")
        body = dict(request.native.body) if request.native is not None else messages_body(request)
        for key in ("anthropic_version", "stream"):
            body.pop(key, None)
        body["model"] = self._model
        body.setdefault("max_tokens", self._default_max_tokens)
        return orjson.dumps({"custom_id": custom_id, "params": body})

    async def create(self, job: ProviderJob, lines: list[bytes] | None, save: Save) -> str:
        if lines is None:
            raise Permanent("its requests, sent inline, were not all at hand to send again")
        if job.provider_file is None:
            await save(provider_file=SENT)
        try:
            batch = await self._client.messages.batches.create(
                requests=[orjson.loads(line) for line in lines],
                extra_headers={"Idempotency-Key": job.token},
            )
        except anthropic.AnthropicError as exc:
            convert(anthropic, exc, self._timeout)
        return batch.id

    async def status(self, provider_id: str) -> Status:
        try:
            batch = await self._client.messages.batches.retrieve(provider_id)
        except anthropic.AnthropicError as exc:
            convert(anthropic, exc, self._timeout)
        counts = batch.request_counts
        failed = counts.errored + counts.expired + counts.canceled
        total = counts.processing + counts.succeeded + failed
        return Status(
            batch.processing_status, batch.processing_status == "ended", total, counts.succeeded, failed
        )

    async def results(self, job: ProviderJob) -> dict[int, Answer]:
        assert job.provider_id is not None
        try:
            # (the SDK finds the results' address; its lines are read here, so that one line the
            # provider garbled is skipped instead of ending the file's other answers)
            stream = await self._client.messages.batches.results(job.provider_id)
        except anthropic.AnthropicError as exc:
            convert(anthropic, exc, self._timeout)
        try:
            content = await stream.http_response.aread()
        except Exception as exc:  # the SDK's HTTP client's own error: the connection broke mid-file
            raise Retryable(f"connection lost reading results: {exc}") from exc
        finally:
            await stream.close()
        answers: dict[int, Answer] = {}
        for raw in content.splitlines():
            read_line(raw, _read, answers)
        return answers

    def outcome(self, body: dict[str, Any], request: Request) -> Outcome:
        result = message_result(body)
        if request.native is not None:
            result.native = body
        return result

    async def cancel(self, provider_id: str) -> None:
        try:
            await self._client.messages.batches.cancel(provider_id)
        except anthropic.AnthropicError as exc:
            convert(anthropic, exc, self._timeout)

    async def aclose(self) -> None:
        await self._client.close()


def _read(item: dict[str, Any], answers: dict[int, Answer]) -> None:
    """One result line; a request the batch never ran (expired, canceled) has no answer."""
    index = int(item["custom_id"])
    result = item["result"]
    if result["type"] == "succeeded":
        answers[index] = Answer(body=dict(result["message"]))
    elif result["type"] == "errored":
        detail = (result.get("error") or {}).get("error") or {}
        kind = str(detail.get("type") or "api_error")
        message = str(detail.get("message") or kind)
        code = ERROR_CODES.get(kind, 500)
        answers[index] = Answer(error=RecordError(code, f"the provider answered {kind}: {message}", kind))
