"""A deterministic, instant model for tests, demos of the machinery, and overhead benchmarks."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from bulkinfer.domain.request import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    ImagePart,
    Outcome,
    Request,
    Usage,
)
from bulkinfer.errors import ProviderError
from bulkinfer.providers.base import Capabilities, Provider

EMBEDDING_DIMENSIONS = 8


class EchoProvider(Provider):
    """Replies with the last user text; embeds a text as a hash-derived unit vector.

    Options: ``delay_s`` sleeps that long per batch (to watch progress or test interruption);
    ``invocation_log`` appends the last user text of every request it runs to a file, one per line,
    so a test can tell which records ran, and how often; ``fail_text`` makes a whole batch fail, as a
    crashed model would, when one of its requests contains that text; ``describe_images`` puts a note
    on each image it was given (``[image/png 32x24]``) before the text, so a test sees what arrived.
    """

    capabilities = Capabilities(chat=True, embeddings=True, images=True)

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self._name = name
        self._delay = float(options.get("delay_s", 0.0))
        self._fail_text = options.get("fail_text")
        self._describe_images = bool(options.get("describe_images", False))
        log = options.get("invocation_log")
        self._log = Path(log).open("a", encoding="utf-8") if log else None  # noqa: SIM115 - closed in aclose

    async def infer(self, requests: Sequence[Request]) -> list[Outcome]:
        self._record(requests)
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._fail_text and any(
            isinstance(r, ChatRequest) and self._fail_text in r.last_user_text for r in requests
        ):
            raise ProviderError(f"echo was told to fail on {self._fail_text!r}")
        return [self._answer(r) for r in requests]

    def _answer(self, request: Request) -> Outcome:
        if isinstance(request, EmbeddingRequest):
            vectors = tuple(_vector(t, request.dimensions or EMBEDDING_DIMENSIONS) for t in request.texts)
            return EmbeddingResult(vectors, Usage(input_words(request), 0), self._name)
        text = request.last_user_text
        if self._describe_images:
            text = " ".join([*_image_notes(request), text])
        limit = request.params.max_tokens
        words = text.split()
        if limit is not None and len(words) > limit:
            return ChatResult(" ".join(words[:limit]), "max_tokens", _usage(request, limit), self._name)
        return ChatResult(text, "end_turn", _usage(request, len(words)), self._name)

    def _record(self, requests: Sequence[Request]) -> None:
        if self._log is None:
            return
        lines = (
            (r.last_user_text if isinstance(r, ChatRequest) else " ".join(r.texts)).replace("\n", " ")
            for r in requests
        )
        self._log.write("".join(f"{line}\n" for line in lines))
        self._log.flush()

    async def aclose(self) -> None:
        if self._log is not None:
            self._log.close()


def _image_notes(request: ChatRequest) -> list[str]:
    notes = []
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, ImagePart):
                if part.data is None:
                    notes.append(f"[{part.media_type or 'image'} not fetched]")
                    continue
                with Image.open(io.BytesIO(part.data)) as image:
                    notes.append(f"[{part.media_type} {image.width}x{image.height}]")
    return notes


def _words(text: str) -> int:
    return len(text.split())


def input_words(request: Request) -> int:
    """The input tokens echo counts for a request: its words (of every turn and the system prompt)."""
    if isinstance(request, EmbeddingRequest):
        return sum(_words(t) for t in request.texts)
    return sum(_words(m.text) for m in request.messages) + _words(request.system or "")


def _usage(request: ChatRequest, output_tokens: int) -> Usage:
    return Usage(input_words(request), output_tokens)


def _vector(text: str, dimensions: int) -> tuple[float, ...]:
    digest = hashlib.shake_128(text.encode()).digest(dimensions)
    raw = [b - 127.5 for b in digest]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return tuple(round(x / norm, 6) for x in raw)
