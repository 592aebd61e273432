"""Any OpenAI-compatible server (OpenAI, vLLM, SGLang, llama.cpp, Ollama) through the official SDK."""

from __future__ import annotations

import base64
import time
from typing import Any

import openai

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
from bulkinfer.providers.remote.call import Answer, Retryable
from bulkinfer.providers.remote.sdk import api_key, convert, json_body, openai_hints

NATIVE_DIALECTS = frozenset({"openai-chat", "openai-embeddings"})
_STOP: dict[str | None, StopReason] = {"length": "max_tokens", "stop": "end_turn"}


class OpenAICall:
    def __init__(self, spec: RemoteSpec) -> None:
        self._model = spec.remote_model
        self._client = openai.AsyncOpenAI(
            api_key=api_key(spec, "OPENAI_API_KEY"), base_url=spec.base_url, max_retries=0
        )

    async def __call__(self, request: Request, timeout: float) -> Answer:
        started = time.monotonic()
        try:
            if isinstance(request, ChatRequest):
                raw = await self._chat(request, timeout)
            else:
                raw = await self._embed(request, timeout)
        except openai.OpenAIError as exc:
            convert(openai, exc, timeout)
        body = json_body(raw.content)
        latency = int((time.monotonic() - started) * 1000)
        result = chat_result(body) if isinstance(request, ChatRequest) else embedding_result(body)
        result.latency_ms = latency
        if request.native is not None:
            result.native = body
        return Answer(result, openai_hints(raw.headers))

    async def aclose(self) -> None:
        await self._client.close()

    async def _chat(self, request: ChatRequest, timeout: float) -> Any:
        body = dict(request.native.body) if request.native is not None else chat_body(request)
        body.pop("model", None)
        body.pop("stream", None)  # one answer per record: never a stream
        messages = body.pop("messages")
        return await self._client.chat.completions.with_raw_response.create(
            model=self._model,
            messages=messages,
            extra_body=body,
            extra_headers=_key(request),
            timeout=timeout,
        )

    async def _embed(self, request: EmbeddingRequest, timeout: float) -> Any:
        body = dict(request.native.body) if request.native is not None else embedding_body(request)
        body.pop("model", None)
        texts = body.pop("input")
        body.setdefault("encoding_format", "float")
        return await self._client.embeddings.with_raw_response.create(
            model=self._model, input=texts, extra_body=body, extra_headers=_key(request), timeout=timeout
        )


def _key(request: Request) -> dict[str, str]:
    return {"Idempotency-Key": request.key} if request.key else {}


def chat_body(request: ChatRequest) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages += [_message(m) for m in request.messages]
    body: dict[str, Any] = {"messages": messages}
    p = request.params
    optional = {"max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p}
    body.update({k: v for k, v in optional.items() if v is not None})
    if p.stop:
        body["stop"] = list(p.stop)
    return body


def _message(message: Message) -> dict[str, Any]:
    parts = message.parts
    if all(isinstance(p, TextPart) for p in parts):
        return {"role": message.role, "content": message.text}
    return {"role": message.role, "content": [_part(p) for p in parts]}


def _part(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    url = part.url
    if part.data is not None:
        url = f"data:{part.media_type};base64,{base64.b64encode(part.data).decode()}"
    return {"type": "image_url", "image_url": {"url": url}}


def embedding_body(request: EmbeddingRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"input": list(request.texts)}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return body


def chat_result(body: dict[str, Any]) -> ChatResult:
    try:
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
        usage = body.get("usage") or {}
        return ChatResult(
            text=text,
            stop_reason=_STOP.get(choice.get("finish_reason"), "end_turn"),
            usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
            model=str(body.get("model", "")),
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise Retryable(f"malformed chat completion: missing {exc}") from exc


def embedding_result(body: dict[str, Any]) -> Result:
    try:
        rows = sorted(body["data"], key=lambda row: row["index"])
        vectors = tuple(tuple(float(x) for x in row["embedding"]) for row in rows)
        usage = body.get("usage") or {}
        return EmbeddingResult(
            vectors, Usage(int(usage.get("prompt_tokens", 0)), 0), str(body.get("model", ""))
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Retryable(f"malformed embeddings response: {exc}") from exc
