"""OpenAI chat-completions, legacy completions and embeddings bodies."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from bulkinfer.dialects.base import MAX_DIMENSIONS, Body, Dialect, decode_base64, new_id, now
from bulkinfer.domain.request import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationParams,
    ImagePart,
    Message,
    Part,
    Request,
    Result,
    TextPart,
)
from bulkinfer.errors import RecordInvalid

_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class TextContent(Body):
    type: Literal["text"]
    text: str


class ImageURL(Body):
    url: str


class ImageContent(Body):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextContent | ImageContent, Field(discriminator="type")]


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]


class ChatBody(Body):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    tools: list[Any] | None = None


class OpenAIChatDialect(Dialect[ChatBody]):
    name: ClassVar[str] = "openai-chat"
    kind = "chat"
    body_model = ChatBody

    def build_request(self, body: ChatBody) -> Request:
        if body.tools:
            raise RecordInvalid("tool use is not supported in batch jobs", field="modelInput.tools")
        system = [(i, m) for i, m in enumerate(body.messages) if m.role in ("system", "developer")]
        turns = [(i, m) for i, m in enumerate(body.messages) if m.role not in ("system", "developer")]
        for i, m in system:
            _no_images(i, m)
        if not turns:
            raise RecordInvalid("at least one user message is required", field="modelInput.messages")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        params = GenerationParams(
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=stop,
        )
        return ChatRequest(
            messages=tuple(_message(i, m) for i, m in turns),
            system="\n".join(_text_of(m) for _, m in system) or None,
            params=params,
        )

    def render(self, result: Result, request: Request) -> dict[str, Any]:
        assert isinstance(result, ChatResult)
        return {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": now(),
            "model": result.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": _FINISH_REASONS[result.stop_reason],
                }
            ],
            "usage": _usage(result),
        }


def _usage(result: ChatResult) -> dict[str, int]:
    usage = result.usage
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _no_images(index: int, message: ChatMessage) -> None:
    """Images belong in user turns; one in a system message would otherwise pass unchecked."""
    if isinstance(message.content, list):
        for j, part in enumerate(message.content):
            if not isinstance(part, TextContent):
                field = f"modelInput.messages.{index}.content.{j}"
                raise RecordInvalid(f"a {message.role} message may hold only text", field=field)


def _text_of(message: ChatMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    return "".join(p.text for p in message.content if isinstance(p, TextContent))


def _message(index: int, message: ChatMessage) -> Message:
    role: Literal["user", "assistant"] = "assistant" if message.role == "assistant" else "user"
    if isinstance(message.content, str):
        return Message(role, (TextPart(message.content),))
    parts: list[Part] = []
    for j, part in enumerate(message.content):
        if isinstance(part, TextContent):
            parts.append(TextPart(part.text))
        else:
            parts.append(_image(part.image_url.url, f"modelInput.messages.{index}.content.{j}.image_url"))
    return Message(role, tuple(parts))


def _image(url: str, field: str) -> ImagePart:
    if not url.startswith("data:"):
        return ImagePart(media_type="", url=url, field=field)
    header, _, payload = url.partition(",")
    media_type = header[5:].split(";")[0]
    return ImagePart(media_type=media_type, data=decode_base64(payload, f"{field}.url"), field=field)


class CompletionsBody(Body):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    best_of: int | None = Field(default=None, ge=1, le=1)
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None


class OpenAICompletionsDialect(Dialect[CompletionsBody]):
    """The legacy text completion (``/v1/completions``): the prompt is one user turn.

    Without ``max_tokens`` the model's catalog default applies, not the legacy API's 16.
    """

    name: ClassVar[str] = "openai-completions"
    kind = "chat"
    body_model = CompletionsBody

    def build_request(self, body: CompletionsBody) -> Request:
        for key in ("echo", "suffix", "logprobs"):
            if getattr(body, key):
                raise RecordInvalid(f"{key} is not supported", field=f"modelInput.{key}")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise RecordInvalid(f"give one prompt per request, not {len(prompts)}", field="modelInput.prompt")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        params = GenerationParams(
            max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p, stop=stop
        )
        return ChatRequest(messages=(Message("user", (TextPart(prompts[0]),)),), params=params)

    def render(self, result: Result, request: Request) -> dict[str, Any]:
        assert isinstance(result, ChatResult)
        return {
            "id": new_id("cmpl-"),
            "object": "text_completion",
            "created": now(),
            "model": result.model,
            "choices": [
                {
                    "text": result.text,
                    "index": 0,
                    "finish_reason": _FINISH_REASONS[result.stop_reason],
                    "logprobs": None,
                }
            ],
            "usage": _usage(result),
        }


class EmbeddingsBody(Body):
    model: str | None = None
    input: str | list[str] = Field(min_length=1)
    dimensions: int | None = Field(default=None, ge=1, le=MAX_DIMENSIONS)
    encoding_format: Literal["float"] | None = None


class OpenAIEmbeddingsDialect(Dialect[EmbeddingsBody]):
    name: ClassVar[str] = "openai-embeddings"
    kind = "embedding"
    body_model = EmbeddingsBody

    def build_request(self, body: EmbeddingsBody) -> Request:
        texts = (body.input,) if isinstance(body.input, str) else tuple(body.input)
        return EmbeddingRequest(texts=texts, dimensions=body.dimensions)

    def render(self, result: Result, request: Request) -> dict[str, Any]:
        assert isinstance(result, EmbeddingResult)
        tokens = result.usage.input_tokens
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": list(vector)}
                for i, vector in enumerate(result.vectors)
            ],
            "model": result.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
