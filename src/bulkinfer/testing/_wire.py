"""What both simulated dialects share: the parsed call, token estimates and the deterministic reply."""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Provider = Literal["openai", "anthropic"]

IMAGE_TOKENS = 85
"""Tokens charged per image; the simulator never fetches or decodes images, it only counts them."""
REPLY_PREFIX = "sim: "
REPLY_ECHO_CHARS = 40


class InvalidRequest(Exception):
    """A body the real provider would answer 400; the message is what the client sees."""


@dataclass(frozen=True, slots=True)
class Call:
    """One inference call, parsed; ``response`` is the body it gets if it succeeds."""

    provider: Provider
    model: str
    id_text: str
    """The call's request id when the client sent no id header: the last user text or embedding input."""
    marker_text: str
    """Where the permanent-error marker is looked for: the last user text or embedding input."""
    input_tokens: int
    output_tokens: int
    response: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    tokens: int
    truncated: bool
    """The reply was cut at ``max_tokens``."""


def count_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def make_reply(last_user_text: str, max_tokens: int | None) -> Reply:
    """ "sim: " + the first 40 characters of the last user text, cut to ``max_tokens`` if it is longer."""
    text = REPLY_PREFIX + last_user_text[:REPLY_ECHO_CHARS]
    tokens = count_tokens(len(text))
    if max_tokens is not None and tokens > max_tokens:
        return Reply(text[: max_tokens * 4], max_tokens, truncated=True)
    return Reply(text, tokens, truncated=False)


def prompt_tokens(chars: int, images: int) -> int:
    return max(1, count_tokens(chars) + images * IMAGE_TOKENS)


def content_text(content: object, image_types: Collection[str]) -> tuple[str, int]:
    """The text of a message's content (a string or a list of parts) and how many images it holds."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        raise InvalidRequest("message content must be a string or a list of content parts")
    texts: list[str] = []
    images = 0
    for part in content:
        if not isinstance(part, Mapping):
            raise InvalidRequest("each content part must be an object")
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") in image_types:
            images += 1
    return "\n".join(texts), images


def require(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key)
    if value is None:
        raise InvalidRequest(f"{key}: Field required")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidRequest(f"{key}: invalid type")
    return value


def optional_int(body: Mapping[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` present in ``body``, which must be a positive integer."""
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"{key}: must be a positive integer")
        return value
    return None


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]
