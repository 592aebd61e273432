"""Anthropic Messages bodies, as Bedrock sends them to Claude models."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from bulkinfer.dialects.base import Body, Dialect, StrictBody, decode_base64, new_id
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


class TextBlock(Body):
    type: Literal["text"]
    text: str


class ImageSource(Body):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(Body):
    type: Literal["image"]
    source: ImageSource


ContentBlock = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class AnthropicMessage(Body):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class AnthropicBody(StrictBody):
    anthropic_version: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    system: str | list[TextBlock] | None = None
    messages: list[AnthropicMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    metadata: dict[str, Any] | None = None


class AnthropicDialect(Dialect[AnthropicBody]):
    name: ClassVar[str] = "anthropic"
    kind = "chat"
    body_model = AnthropicBody

    def build_request(self, body: AnthropicBody) -> Request:
        system = body.system if isinstance(body.system, str) or body.system is None else _join(body.system)
        params = GenerationParams(
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            stop=tuple(body.stop_sequences or ()),
        )
        messages = tuple(_message(i, m) for i, m in enumerate(body.messages))
        return ChatRequest(messages=messages, system=system, params=params)

    def render(self, result: Result, request: Request) -> dict[str, Any]:
        assert isinstance(result, ChatResult)
        return {
            "id": new_id("msg_bulk_"),
            "type": "message",
            "role": "assistant",
            "model": result.model,
            "content": [{"type": "text", "text": result.text}],
            "stop_reason": result.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": result.usage.input_tokens,
                "output_tokens": result.usage.output_tokens,
            },
        }


def _join(blocks: list[TextBlock]) -> str:
    return "\n".join(b.text for b in blocks)


def _message(index: int, message: AnthropicMessage) -> Message:
    if isinstance(message.content, str):
        return Message(message.role, (TextPart(message.content),))
    parts: list[Part] = []
    for j, block in enumerate(message.content):
        if isinstance(block, TextBlock):
            parts.append(TextPart(block.text))
        else:
            parts.append(_image(block.source, f"modelInput.messages.{index}.content.{j}.source"))
    return Message(message.role, tuple(parts))


def _image(source: ImageSource, field: str) -> ImagePart:
    if source.type == "url":
        if not source.url:
            raise RecordInvalid("url required for a url image source", field=field)
        return ImagePart(media_type=source.media_type or "", url=source.url, field=field)
    if not source.data or not source.media_type:
        raise RecordInvalid("media_type and data required for a base64 image source", field=field)
    data = decode_base64(source.data, f"{field}.data")
    return ImagePart(media_type=source.media_type, data=data, field=field)
