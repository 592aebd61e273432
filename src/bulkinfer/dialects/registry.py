"""Find the dialect a body is written in."""

from __future__ import annotations

from typing import Any

from bulkinfer.dialects.anthropic import AnthropicDialect
from bulkinfer.dialects.base import Dialect
from bulkinfer.dialects.converse import ConverseDialect
from bulkinfer.dialects.openai import OpenAIChatDialect, OpenAICompletionsDialect, OpenAIEmbeddingsDialect
from bulkinfer.dialects.titan import TitanEmbeddingDialect
from bulkinfer.errors import ConfigError

DIALECTS: dict[str, Dialect[Any]] = {
    d.name: d
    for d in (
        AnthropicDialect(),
        ConverseDialect(),
        OpenAIChatDialect(),
        OpenAICompletionsDialect(),  # named only: `detect` never picks it
        OpenAIEmbeddingsDialect(),
        TitanEmbeddingDialect(),
    )
}

# Keys only one chat dialect uses; a body holding any of them names its dialect.
_OPENAI_ONLY = frozenset(
    {
        "model",
        "max_completion_tokens",
        "n",
        "response_format",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "logprobs",
        "logit_bias",
        "user",
        "tools",
        "tool_choice",
        "stream_options",
    }
)
_ANTHROPIC_ONLY = frozenset({"anthropic_version", "system", "stop_sequences", "top_k", "metadata"})
_CONVERSE_ONLY = frozenset({"inferenceConfig", "additionalModelRequestFields", "toolConfig"})


def get_dialect(name: str) -> Dialect[Any]:
    try:
        return DIALECTS[name]
    except KeyError:
        known = ", ".join(DIALECTS)
        raise ConfigError(f"unknown dialect {name!r}; known dialects: {known}") from None


def detect(body: dict[str, Any], default: str) -> Dialect[Any]:
    """The dialect a body is written in, or ``default`` when its keys fit several."""
    keys = body.keys()
    if "anthropic_version" in keys:  # how Bedrock users write Claude records: the common case first
        return DIALECTS["anthropic"]
    if "inputText" in keys:
        return DIALECTS["titan-embed"]
    if "input" in keys and "messages" not in keys:
        return DIALECTS["openai-embeddings"]
    if not _CONVERSE_ONLY.isdisjoint(keys) or _has_converse_content(body):
        return DIALECTS["converse"]
    if not _ANTHROPIC_ONLY.isdisjoint(keys):
        return DIALECTS["anthropic"]
    if not _OPENAI_ONLY.isdisjoint(keys) or _has_system_message(body) or _has_image_url(body):
        return DIALECTS["openai-chat"]
    return DIALECTS[default]


def _first_content(body: dict[str, Any]) -> Any:
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        return messages[0].get("content")
    return None


def _has_converse_content(body: dict[str, Any]) -> bool:
    content = _first_content(body)
    return (
        isinstance(content, list)
        and bool(content)
        and isinstance(content[0], dict)
        and "type" not in content[0]
    )


def _has_system_message(body: dict[str, Any]) -> bool:
    messages = body.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages
    )


def _has_image_url(body: dict[str, Any]) -> bool:
    """An ``image_url`` content part is OpenAI's alone (Anthropic's image blocks are ``image``)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    return any(
        isinstance(part, dict) and part.get("type") == "image_url"
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for part in m["content"]
    )
