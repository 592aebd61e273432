"""Images for text-only chat models: each image part becomes the text OCR reads in it.

Set by a catalog entry's ``image_text = "ocr"``. A wrapper, so the wrapped provider stays what it was:
requests are rewritten here, then handed on.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Sequence

from bulkinfer.domain.request import (
    ChatRequest,
    ImagePart,
    Message,
    Outcome,
    Part,
    RecordError,
    Request,
    TextPart,
)
from bulkinfer.providers.base import Provider
from bulkinfer.providers.ocr import OcrEngine, OcrText, image_parts, read_images

TOKENS_PER_IMAGE = 200
"""What an image is taken to add to the prompt when sizing micro-batches, before its text is known.
The wrapped model still checks each real prompt against its context length."""


def image_text(number: int, page: OcrText) -> str:
    """What stands in the prompt for image ``number`` (from 1): the text read in it, fenced.

    It says the text was read from an image, so a question about "this image" finds its answer there.
    Tried on SmolLM2-135M against ``[Image 1 text: ...]``, quoted text and XML-like tags, it did as well
    as any (a model that small uses the text unreliably whatever the wording).
    """
    if not page.text:
        return f"Image {number} (no text could be read from it)"
    return f"Image {number} (the text read from it):\n{page.text}\n(end of image {number})"


class ImageTextProvider(Provider):
    """Gives ``inner`` the text of each image in place of the image, then lets it answer.

    Capabilities are the inner model's, accepting images; records are always translated (never sent as
    written), so no image reaches the inner model. An image that cannot be read is its record's error.
    """

    def __init__(self, inner: Provider, ocr: OcrEngine) -> None:
        self._inner = inner
        self._ocr = ocr
        self.capabilities = dataclasses.replace(inner.capabilities, images=True, native_dialects=frozenset())

    async def infer(self, requests: Sequence[Request]) -> list[Outcome]:
        rewritten = await asyncio.gather(*(self._rewrite(r) for r in requests))
        runnable = [r for r in rewritten if not isinstance(r, RecordError)]
        answers = iter(await self._inner.infer(runnable) if runnable else [])
        return [r if isinstance(r, RecordError) else next(answers) for r in rewritten]

    def count_tokens(self, request: Request) -> int:
        images = len(image_parts(request)) if isinstance(request, ChatRequest) else 0
        return self._inner.count_tokens(request) + TOKENS_PER_IMAGE * images

    def stop(self) -> None:
        self._inner.stop()

    def paused(self) -> str | None:
        return self._inner.paused()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._ocr.close()

    async def _rewrite(self, request: Request) -> Request | RecordError:
        if not isinstance(request, ChatRequest):
            return request
        parts = image_parts(request)
        if not parts:
            return request
        pages = await read_images(self._ocr, parts)
        if isinstance(pages, RecordError):
            return pages
        texts = iter(image_text(n, page) for n, page in enumerate(pages, start=1))
        messages = tuple(Message(m.role, _substitute(m.parts, texts)) for m in request.messages)
        return dataclasses.replace(request, messages=messages)


def _substitute(parts: tuple[Part, ...], texts: Iterator[str]) -> tuple[Part, ...]:
    """Each image part replaced by the next text, set apart from the parts around it by a blank line."""
    out: list[Part] = []
    for i, part in enumerate(parts):
        if not isinstance(part, ImagePart):
            out.append(part)
            continue
        before = "\n\n" if i > 0 and not isinstance(parts[i - 1], ImagePart) else ""
        after = "\n\n" if i < len(parts) - 1 else ""
        out.append(TextPart(f"{before}{next(texts)}{after}"))
    return tuple(out)
