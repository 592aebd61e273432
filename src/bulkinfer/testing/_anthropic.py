"""The Anthropic dialect: Messages requests in, Anthropic-shaped bodies out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bulkinfer.testing._wire import (
    Call,
    InvalidRequest,
    content_text,
    make_reply,
    new_id,
    prompt_tokens,
    require,
)

IMAGE_BLOCKS = frozenset({"image"})

_ERROR_TYPES = {
    400: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_DEFAULT_MESSAGES = {500: "Internal server error", 503: "Overloaded", 529: "Overloaded"}


def parse_messages(body: Mapping[str, Any]) -> Call:
    model = require(body, "model", str)
    messages = require(body, "messages", list)
    max_tokens = require(body, "max_tokens", int)
    if max_tokens < 1:
        raise InvalidRequest("max_tokens: must be greater than or equal to 1")
    if not messages:
        raise InvalidRequest("messages: at least one message is required")
    if body.get("stream"):
        raise InvalidRequest("stream: the simulator does not stream")
    chars, images = len(content_text(body.get("system"), IMAGE_BLOCKS)[0]), 0
    last_user = ""
    for message in messages:
        if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest("messages: each message must be an object with role user or assistant")
        text, n = content_text(message.get("content"), IMAGE_BLOCKS)
        chars, images = chars + len(text), images + n
        if message["role"] == "user":
            last_user = text
    reply = make_reply(last_user, max_tokens)
    input_tokens = prompt_tokens(chars, images)
    response = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": "max_tokens" if reply.truncated else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": reply.tokens},
    }
    return Call("anthropic", model, last_user, last_user, input_tokens, reply.tokens, response)


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    error = {
        "type": _ERROR_TYPES.get(status, "api_error"),
        "message": message or _DEFAULT_MESSAGES.get(status, "error"),
    }
    return {"type": "error", "error": error, "request_id": new_id("req_")}


def rate_limit_message(model: str, limit_name: str, limit: int, wait_s: float) -> str:
    return (
        f"This request would exceed the rate limit for your organization of {limit} {limit_name} per "
        f"minute (model {model}). Try again in {math.ceil(wait_s)} s."
    )
