"""The OpenAI dialect: chat completions and embeddings requests in, OpenAI-shaped bodies out."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
import time
from collections.abc import Mapping
from typing import Any

from bulkinfer.testing._wire import (
    Call,
    InvalidRequest,
    content_text,
    count_tokens,
    make_reply,
    new_id,
    optional_int,
    prompt_tokens,
    require,
)

DEFAULT_EMBEDDING_DIMENSIONS = 8
IMAGE_PARTS = frozenset({"image_url", "input_image"})

_ERROR_TYPES = {400: "invalid_request_error", 429: "requests", 500: "server_error", 503: "server_error"}
_DEFAULT_MESSAGES = {
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The engine is currently overloaded, please try again later.",
}


def parse_chat(body: Mapping[str, Any]) -> Call:
    model = require(body, "model", str)
    messages = require(body, "messages", list)
    if not messages:
        raise InvalidRequest("messages: must contain at least one message")
    if body.get("stream"):
        raise InvalidRequest("stream: the simulator does not stream")
    chars, images, last_user = 0, 0, ""
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InvalidRequest("messages: each message must be an object with a role")
        text, n = content_text(message.get("content"), IMAGE_PARTS)
        chars, images = chars + len(text), images + n
        if message["role"] == "user":
            last_user = text
    reply = make_reply(last_user, optional_int(body, "max_completion_tokens", "max_tokens"))
    input_tokens = prompt_tokens(chars, images)
    response = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if reply.truncated else "stop",
            }
        ],
        "usage": _usage(input_tokens, reply.tokens),
        "system_fingerprint": None,
    }
    return Call("openai", model, last_user, last_user, input_tokens, reply.tokens, response)


def parse_embeddings(body: Mapping[str, Any]) -> Call:
    model = require(body, "model", str)
    raw = require(body, "input", (str, list))
    inputs = [raw] if isinstance(raw, str) else [_input_text(item) for item in raw]
    if not inputs:
        raise InvalidRequest("input: must not be empty")
    dimensions = optional_int(body, "dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequest("encoding_format: must be 'float' or 'base64'")
    tokens = max(1, sum(count_tokens(len(text)) for text in inputs))
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(embed(text, dimensions), encoding)}
        for i, text in enumerate(inputs)
    ]
    response = {"object": "list", "data": data, "model": model, "usage": _usage(tokens, None)}
    joined = "\n".join(inputs)
    return Call("openai", model, joined, joined, tokens, 0, response)


def embed(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on the text, so repeated calls agree."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    text = message or _DEFAULT_MESSAGES.get(status, "error")
    error_type = _ERROR_TYPES.get(status, "server_error")
    code = "rate_limit_exceeded" if status == 429 else None
    return {"error": {"message": text, "type": error_type, "param": None, "code": code}}


def rate_limit_message(model: str, limit_name: str, limit: int, wait_s: float) -> str:
    unit = "RPM" if limit_name == "requests" else "TPM"
    return (
        f"Rate limit reached for {model} in organization org-simulator on {limit_name} per min ({unit}): "
        f"Limit {limit}. Please try again in {math.ceil(wait_s * 1000)}ms."
    )


def _input_text(item: object) -> str:
    if isinstance(item, str):
        return item
    # Token-id arrays are accepted as the real API does; their text is the ids themselves.
    if isinstance(item, list | int):
        return str(item)
    raise InvalidRequest("input: must be a string, a list of strings or token arrays")


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    # The SDK asks for base64 by default: little-endian float32, as the real API sends it.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _usage(prompt: int, completion: int | None) -> dict[str, int]:
    if completion is None:
        return {"prompt_tokens": prompt, "total_tokens": prompt}
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
