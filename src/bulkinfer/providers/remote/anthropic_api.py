"""Anthropic's Messages API through the official SDK."""

from __future__ import annotations

import base64
import time
from typing import Any

import anthropic

from bulkinfer.domain.request import ChatRequest, ChatResult, ImagePart, Message, Request, TextPart, Usage
from bulkinfer.providers.catalog import RemoteSpec
from bulkinfer.providers.remote.call import Answer, Permanent, Retryable
from bulkinfer.providers.remote.sdk import anthropic_hints, api_key, convert, json_body

NATIVE_DIALECTS = frozenset({"anthropic"})
_STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence"})


class AnthropicCall:
    def __init__(self, spec: RemoteSpec, default_max_tokens: int) -> None:
        self._model = spec.remote_model
        self._default_max_tokens = default_max_tokens
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key(spec, "ANTHROPIC_API_KEY"), base_url=spec.base_url, max_retries=0
        )

    async def __call__(self, request: Request, timeout: float) -> Answer:
        if not isinstance(request, ChatRequest):
            raise Permanent("Anthropic models do not produce embeddings")
        body = dict(request.native.body) if request.native is not None else messages_body(request)
        body.pop("anthropic_version", None)  # Bedrock's envelope; the Messages API names the model instead
        body.pop("model", None)
        body.pop("stream", None)
        messages = body.pop("messages")
        max_tokens = body.pop("max_tokens", None) or self._default_max_tokens
        started = time.monotonic()
        try:
            raw = await self._client.messages.with_raw_response.create(
                model=self._model,
                messages=messages,
                max_tokens=max_tokens,
                extra_body=body,
                extra_headers={"Idempotency-Key": request.key} if request.key else {},
                timeout=timeout,
            )
            content = await raw.read()
        except anthropic.AnthropicError as exc:
            convert(anthropic, exc, timeout)
        parsed = json_body(content)
        result = message_result(parsed)
        result.latency_ms = int((time.monotonic() - started) * 1000)
        if request.native is not None:
            result.native = parsed
        return Answer(result, anthropic_hints(raw.headers))

    async def aclose(self) -> None:
        await self._client.close()


def messages_body(request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [_message(m) for m in request.messages]}
    if request.system:
        body["system"] = request.system
    p = request.params
    optional = {"max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k}
    body.update({k: v for k, v in optional.items() if v is not None})
    if p.stop:
        body["stop_sequences"] = list(p.stop)
    return body


def _message(message: Message) -> dict[str, Any]:
    return {"role": message.role, "content": [_block(p) for p in message.parts]}


def _block(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if part.data is not None:
        data = base64.b64encode(part.data).decode()
        return {"type": "image", "source": {"type": "base64", "media_type": part.media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": part.url}}


def message_result(body: dict[str, Any]) -> ChatResult:
    try:
        text = "".join(b.get("text", "") for b in body["content"] if b.get("type") == "text")
        usage = body.get("usage") or {}
        stop = body.get("stop_reason")
        return ChatResult(
            text=text,
            stop_reason=stop if stop in _STOP_REASONS else "end_turn",
            usage=Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))),
            model=str(body.get("model", "")),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise Retryable(f"malformed message response: {exc}") from exc
