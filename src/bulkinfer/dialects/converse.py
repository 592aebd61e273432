"""Bedrock Converse bodies (the ``modelInput`` of a Converse-type batch job)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from bulkinfer.dialects.base import Body, Dialect, decode_base64
from bulkinfer.domain.request import (
    ChatRequest,
    ChatResult,
    GenerationParams,
    ImagePart,
    Message,
    Part,
    Request,
    Result,
    TextPart,
)
from bulkinfer.errors import RecordInvalid

_STOP_REASONS = {"end_turn": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence"}


class S3Location(Body):
    uri: str = Field(pattern=r"^s3://")
    bucketOwner: str | None = None


class ImageSource(Body):
    """Exactly one of inline ``bytes`` (base64 in a JSONL record) or an ``s3Location``."""

    bytes: str | None = None
    s3Location: S3Location | None = None


class ImageContent(Body):
    format: Literal["png", "jpeg", "gif", "webp"]
    source: ImageSource


class ContentBlock(Body):
    text: str | None = None
    image: ImageContent | None = None


class ConverseMessage(Body):
    role: Literal["user", "assistant"]
    content: list[ContentBlock] = Field(min_length=1)


class SystemBlock(Body):
    text: str


class InferenceConfig(Body):
    maxTokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=1)
    topP: float | None = Field(default=None, ge=0, le=1)
    stopSequences: list[str] | None = None


class ConverseBody(Body):
    messages: list[ConverseMessage] = Field(min_length=1)
    system: list[SystemBlock] | None = None
    inferenceConfig: InferenceConfig | None = None
    additionalModelRequestFields: dict[str, Any] | None = None
    toolConfig: dict[str, Any] | None = None


class ConverseDialect(Dialect[ConverseBody]):
    name: ClassVar[str] = "converse"
    kind = "chat"
    body_model = ConverseBody

    def build_request(self, body: ConverseBody) -> Request:
        if body.toolConfig is not None:
            raise RecordInvalid("tool use is not supported in batch jobs", field="modelInput.toolConfig")
        config = body.inferenceConfig or InferenceConfig()
        extra = body.additionalModelRequestFields or {}
        top_k = extra.get("top_k")
        params = GenerationParams(
            max_tokens=config.maxTokens,
            temperature=config.temperature,
            top_p=config.topP,
            top_k=top_k if isinstance(top_k, int) else None,
            stop=tuple(config.stopSequences or ()),
        )
        system = "\n".join(b.text for b in body.system) if body.system else None
        messages = tuple(_message(i, m) for i, m in enumerate(body.messages))
        return ChatRequest(messages=messages, system=system, params=params)

    def render(self, result: Result, request: Request) -> dict[str, Any]:
        assert isinstance(result, ChatResult)
        usage = result.usage
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": result.text}]}},
            "stopReason": _STOP_REASONS[result.stop_reason],
            "usage": {
                "inputTokens": usage.input_tokens,
                "outputTokens": usage.output_tokens,
                "totalTokens": usage.input_tokens + usage.output_tokens,
            },
            "metrics": {"latencyMs": result.latency_ms},
        }


def _message(index: int, message: ConverseMessage) -> Message:
    parts: list[Part] = []
    for j, block in enumerate(message.content):
        field = f"modelInput.messages.{index}.content.{j}"
        if block.text is not None:
            parts.append(TextPart(block.text))
        elif block.image is not None:
            parts.append(_image(block.image, field))
        else:
            raise RecordInvalid("a content block needs text or image", field=field)
    return Message(message.role, tuple(parts))


def _image(image: ImageContent, field: str) -> ImagePart:
    source, where, media_type = image.source, f"{field}.image.source", f"image/{image.format}"
    if (source.bytes is None) == (source.s3Location is None):
        raise RecordInvalid("give exactly one of bytes and s3Location", field=where)
    if source.s3Location is not None:
        return ImagePart(media_type=media_type, url=source.s3Location.uri, field=where)
    data = decode_base64(source.bytes or "", f"{where}.bytes")
    return ImagePart(media_type=media_type, data=data, field=where)
