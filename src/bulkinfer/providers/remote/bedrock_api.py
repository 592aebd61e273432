"""Amazon Bedrock's runtime through aiobotocore (botocore's async twin, already needed for S3).

A record in a dialect the model speaks itself (Claude's ``anthropic`` bodies, Titan embeddings) goes to
InvokeModel as written and its answer comes back as written; any other chat record goes through Converse,
which every Bedrock chat model understands.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import orjson
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from bulkinfer.domain.request import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    ImagePart,
    Message,
    Request,
    Result,
    StopReason,
    TextPart,
    Usage,
)
from bulkinfer.providers.catalog import RemoteSpec
from bulkinfer.providers.remote.call import (
    Answer,
    CallFailed,
    Permanent,
    ProviderDown,
    RateHints,
    RateLimited,
    Retryable,
)
from bulkinfer.providers.remote.sdk import json_body

INVOKE_DIALECTS = frozenset({"anthropic", "titan-embed"})
THROTTLED = frozenset({"ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException"})
TRANSIENT = frozenset(
    {
        "ModelNotReadyException",
        "ServiceUnavailableException",
        "InternalServerException",
        "ModelTimeoutException",
    }
)
_STOP: dict[str, StopReason] = {"max_tokens": "max_tokens", "stop_sequence": "stop_sequence"}


class BedrockCall:
    def __init__(self, spec: RemoteSpec, default_max_tokens: int) -> None:
        self._spec = spec
        self._default_max_tokens = default_max_tokens
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def __call__(self, request: Request, timeout: float) -> Answer:
        client = await self._connect(timeout)
        started = time.monotonic()
        try:
            if request.native is not None:
                result = await self._invoke(client, request)
            elif isinstance(request, ChatRequest):
                result = await self._converse(client, request)
            else:
                result = await self._invoke(client, request)
        except (ClientError, BotoCoreError) as exc:
            raise converted(exc, timeout) from exc
        result.latency_ms = int((time.monotonic() - started) * 1000)
        return Answer(result, RateHints())

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def _connect(self, timeout: float) -> Any:
        if self._client is None:
            config = Config(
                retries={"total_max_attempts": 1},  # our retries, with our backoff, are the only ones
                read_timeout=timeout,
                connect_timeout=min(timeout, 10.0),
                max_pool_connections=self._spec.max_concurrency or 256,
            )
            creator = get_session().create_client(
                "bedrock-runtime",
                region_name=self._spec.region or "us-east-1",
                endpoint_url=self._spec.base_url,
                config=config,
            )
            self._client = await self._stack.enter_async_context(creator)
        return self._client

    async def _invoke(self, client: Any, request: Request) -> Result:
        body = request.native.body if request.native is not None else titan_body(request)
        response = await client.invoke_model(
            modelId=self._spec.remote_model,
            body=orjson.dumps(body),
            contentType="application/json",
            accept="application/json",
        )
        async with response["body"] as stream:
            parsed = json_body(await stream.read())
        result = invoke_result(parsed, request)
        if request.native is not None:
            result.native = parsed
        return result

    async def _converse(self, client: Any, request: ChatRequest) -> Result:
        response = await client.converse(modelId=self._spec.remote_model, **converse_kwargs(request))
        try:
            blocks = response["output"]["message"]["content"]
            usage = response.get("usage", {})
            return ChatResult(
                text="".join(b.get("text", "") for b in blocks),
                stop_reason=_STOP.get(response.get("stopReason", ""), "end_turn"),
                usage=Usage(int(usage.get("inputTokens", 0)), int(usage.get("outputTokens", 0))),
                model=self._spec.remote_model,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise Retryable(f"malformed Converse response: missing {exc}") from exc


def converse_kwargs(request: ChatRequest) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"messages": [_message(m) for m in request.messages]}
    if request.system:
        kwargs["system"] = [{"text": request.system}]
    p = request.params
    config = {"maxTokens": p.max_tokens, "temperature": p.temperature, "topP": p.top_p}
    inference: dict[str, Any] = {k: v for k, v in config.items() if v is not None}
    if p.stop:
        inference["stopSequences"] = list(p.stop)
    if inference:
        kwargs["inferenceConfig"] = inference
    if p.top_k is not None:
        kwargs["additionalModelRequestFields"] = {"top_k": p.top_k}
    return kwargs


def _message(message: Message) -> dict[str, Any]:
    return {"role": message.role, "content": [_block(p) for p in message.parts]}


def _block(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    if part.data is None:
        raise Permanent("Bedrock takes images as bytes; this image is only a URL")
    return {"image": {"format": part.media_type.removeprefix("image/"), "source": {"bytes": part.data}}}


def titan_body(request: Request) -> dict[str, Any]:
    if not isinstance(request, EmbeddingRequest) or len(request.texts) != 1:
        raise Permanent("Bedrock embedding models take one text per record")
    body: dict[str, Any] = {"inputText": request.texts[0]}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return body


def invoke_result(body: dict[str, Any], request: Request) -> Result:
    try:
        if isinstance(request, EmbeddingRequest):
            vector = tuple(float(x) for x in body["embedding"])
            return EmbeddingResult((vector,), Usage(int(body.get("inputTextTokenCount", 0)), 0))
        text = "".join(b.get("text", "") for b in body["content"] if b.get("type") == "text")
        usage = body.get("usage") or {}
        stop = body.get("stop_reason", "")
        return ChatResult(
            text=text,
            stop_reason=_STOP.get(stop, "end_turn"),
            usage=Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))),
            model=str(body.get("model", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Retryable(f"malformed InvokeModel response: missing {exc}") from exc


def converted(exc: ClientError | BotoCoreError, timeout: float) -> CallFailed:
    if isinstance(exc, EndpointConnectionError):
        return ProviderDown(f"cannot connect: {exc}")
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return Retryable(f"no answer within {timeout:g} s (timeout_seconds)", code=408)
    if isinstance(exc, BotoCoreError):
        return Retryable(f"connection lost: {exc}")
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500))
    message = f"{code}: {error.get('Message', '')}"
    if code in THROTTLED or status == 429:
        return RateLimited(message)
    if code in TRANSIENT or status >= 500:
        return Retryable(message, code=status)
    return Permanent(f"provider refused the request: {message}", code=status, kind=code or "ValidationError")
