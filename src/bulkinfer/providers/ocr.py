"""A real image model on the CPU: OCR with the PP-OCR ONNX models that ship inside the ``rapidocr`` wheel.

``OcrEngine`` reads the text in one image. Two providers use it: ``OcrProvider``, the ``ocr`` catalog model,
whose reply is the text in the request's images, and ``ImageTextProvider`` (``image_text = "ocr"``), which
hands a text-only chat model that text in place of the images.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from bulkinfer.domain.request import (
    ChatRequest,
    ChatResult,
    ImagePart,
    Outcome,
    RecordError,
    Request,
    StopReason,
    Usage,
)
from bulkinfer.errors import ConfigError, RecordInvalid
from bulkinfer.providers.base import Capabilities, Provider
from bulkinfer.providers.catalog import ModelSpec

INSTALL_HINT = 'pip install "bulkinfer[ocr]"'
MAX_WORKERS = 8
MAX_SIDE = 2000
"""rapidocr scales a longer side down to this (``Global.max_side_len``), so big JPEGs decode at a reduced
scale no smaller than it."""
DEFAULT_PARAMS: dict[str, Any] = {
    # rapidocr logs a warning for every image without text; the job's own display is the one to watch.
    "Global.log_level": "error",
    # Detect at the image's own size (up to MAX_SIDE), enlarging only images under 320 px. rapidocr's
    # default enlarges the shorter side to 736 px: a 900x260 image took 5x as long, read no better.
    "Det.limit_side_len": 320,
    # One thread per engine, one engine per worker: on 2 cores two single-threaded workers read 1.4x as
    # many images per second as one engine using both cores.
    "EngineConfig.onnxruntime.intra_op_num_threads": 1,
}
TOKEN_PIXELS = 750
TOKEN_SIDE = 1568
"""Images count as input tokens by Anthropic's published rule: width x height / 750, after fitting the
image within 1568 px; so a model's cost estimate in the manifest compares with a hosted VLM's."""


@dataclass(frozen=True, slots=True)
class OcrText:
    """What one image says: its text lines in reading order, joined by newlines."""

    text: str
    width: int
    height: int

    @property
    def tokens(self) -> int:
        """The image as input tokens (see ``TOKEN_PIXELS``)."""
        scale = min(1.0, TOKEN_SIDE / max(self.width, self.height, 1))
        return max(1, math.ceil(self.width * scale * self.height * scale / TOKEN_PIXELS))


class OcrEngine:
    """RapidOCR behind a small pool of worker threads, each with an engine of its own.

    An engine is never shared between threads (rapidocr keeps per-call state on it), and each runs its
    ONNX sessions on one thread, so the pool size is how many cores OCR may use.
    """

    def __init__(self, factory: Any, workers: int, params: Mapping[str, Any]) -> None:
        self._factory = factory
        self._params = dict(params)
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bulkinfer-ocr")
        self._local = threading.local()

    @classmethod
    def load(cls, workers: int | None = None, params: Mapping[str, Any] | None = None) -> OcrEngine:
        """Check that rapidocr is installed; models load in each worker on its first image (about 0.5 s).

        ``params`` are rapidocr settings by dotted name (``{"Det.limit_side_len": 960}``) over ours.
        """
        try:
            rapidocr = importlib.import_module("rapidocr")
            importlib.import_module("onnxruntime")
        except ImportError as exc:
            missing = f"OCR needs rapidocr and onnxruntime ({exc.name} is missing)"
            raise ConfigError(f"{missing}: {INSTALL_HINT}") from exc
        count = workers or min(_cpus(), MAX_WORKERS)
        return cls(rapidocr.RapidOCR, count, {**DEFAULT_PARAMS, **(params or {})})

    async def read(self, part: ImagePart) -> OcrText:
        """The text in an image part; ``RecordInvalid`` naming the part when it holds no readable image."""
        if part.data is None:
            raise RecordInvalid("the image was not resolved before reaching the model", field=part.field)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read, part.data, part.field)

    def read_bytes(self, data: bytes) -> OcrText:
        """The text in an encoded image, read in the calling thread (for tools and tests)."""
        return self._read(data, "")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _read(self, data: bytes, field: str) -> OcrText:
        width, height, pixels = decode_image(data, field)
        result = self._engine()(pixels)
        boxes = [] if result.boxes is None else result.boxes.tolist()
        return OcrText(reading_order(boxes, list(result.txts or ())), width, height)

    def _engine(self) -> Any:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine = self._local.engine = self._factory(params=self._params)
        return engine


def decode_image(data: bytes, field: str = "") -> tuple[int, int, np.ndarray[Any, Any]]:
    """Width, height and BGR pixels (what rapidocr takes) of a JPEG, PNG, GIF (first frame) or WebP.

    The width and height are the image's own (what it counts as in tokens); the pixels are shrunk to fit
    within MAX_SIDE first, so memory per image is bounded whatever its size. EXIF orientation is applied;
    transparent pixels become a background that contrasts with the rest.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            opened.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG only: decode big photos at a reduced scale
            # Shrink before turning: exif_transpose copies the whole image even when it turns nothing.
            image = ImageOps.exif_transpose(_shrink(opened))
            rgb = _flatten(image)
    except Exception as exc:  # Pillow raises many kinds for a broken file; each is this record's fault
        raise RecordInvalid(f"the image cannot be decoded: {exc}", field=field) from exc
    return width, height, np.ascontiguousarray(rgb[:, :, ::-1])


def _shrink(image: Image.Image) -> Image.Image:
    """The image with its longer side at most MAX_SIDE (rapidocr would scale it down to that anyway)."""
    if max(image.size) <= MAX_SIDE:
        return image
    if image.mode not in _RESAMPLED_MODES or "transparency" in image.info:
        # Pillow resizes a palette image by nearest neighbour, and a transparent colour would not survive.
        image = image.convert("RGBA" if _has_alpha(image) else "RGB")
    # In place; Pillow premultiplies alpha while it resamples, so hidden pixels do not bleed into edges.
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


_RESAMPLED_MODES = ("RGB", "RGBA", "L", "LA")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _flatten(image: Image.Image) -> np.ndarray[Any, Any]:
    """RGB pixels; transparent areas get white, or black when the visible pixels are mostly light."""
    if not _has_alpha(image):
        rgb: np.ndarray[Any, Any] = np.asarray(image.convert("RGB"))
        return rgb
    rgba = np.asarray(image.convert("RGBA"))
    colour, alpha = rgba[:, :, :3], rgba[:, :, 3:].astype(np.uint16)
    visible = colour[rgba[:, :, 3] > 0]
    light = visible.size > 0 and float((visible @ np.array([0.299, 0.587, 0.114])).mean()) >= 128
    background = 0 if light else 255
    # Integer blending, rounded to nearest: (colour * a + background * (255 - a)) / 255 never ends in .5,
    # so this matches float rounding exactly, and it fits 16 bits (at most 255 * 255 + 127).
    blended = (colour * alpha + background * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def reading_order(boxes: Sequence[Sequence[Sequence[float]]], texts: Sequence[str]) -> str:
    """Text boxes as lines, top to bottom; boxes on one line left to right, joined by a space.

    A box joins the line above when it overlaps that line vertically by half its own height or more
    (rapidocr returns one box per run of words; a line cut into columns comes back as several).
    """
    items = sorted(
        (_Box.of(box, text) for box, text in zip(boxes, texts, strict=True) if text.strip()),
        key=lambda b: (b.top + b.bottom) / 2,
    )
    lines: list[list[_Box]] = []
    for item in items:
        if lines and _on_line(lines[-1], item):
            lines[-1].append(item)
        else:
            lines.append([item])
    return "\n".join(" ".join(b.text for b in sorted(line, key=lambda b: b.left)) for line in lines)


@dataclass(frozen=True, slots=True)
class _Box:
    top: float
    bottom: float
    left: float
    text: str

    @classmethod
    def of(cls, corners: Sequence[Sequence[float]], text: str) -> _Box:
        xs = [c[0] for c in corners]
        ys = [c[1] for c in corners]
        return cls(min(ys), max(ys), min(xs), text.strip())


def _on_line(line: list[_Box], box: _Box) -> bool:
    top = min(b.top for b in line)
    bottom = max(b.bottom for b in line)
    overlap = min(bottom, box.bottom) - max(top, box.top)
    return overlap >= 0.5 * max(box.bottom - box.top, 1.0)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


async def read_images(engine: OcrEngine, parts: Sequence[ImagePart]) -> list[OcrText] | RecordError:
    """Every image's text, or the record's error: a bad image is its fault, an OCR crash ours."""
    try:
        return list(await asyncio.gather(*(engine.read(p) for p in parts)))
    except RecordInvalid as exc:
        return RecordError(400, str(exc))
    except Exception as exc:  # a failure inside the OCR model fails this record only
        return RecordError(500, f"OCR failed: {type(exc).__name__}: {exc}", "ModelError")


def image_parts(request: ChatRequest) -> list[ImagePart]:
    return [p for m in request.messages for p in m.parts if isinstance(p, ImagePart)]


class OcrProvider(Provider):
    """The ``ocr`` model: its reply to a chat request is the text in the request's images.

    Each image's text comes in reading order, images separated by a blank line; text parts of the request
    are not read. ``max_tokens`` and stop sequences apply as for any chat model. Usage: input tokens are
    the images' (``OcrText.tokens``) plus the text's at 4 characters a token; output tokens are the
    reply's characters / 4.
    """

    capabilities = Capabilities(chat=True, images=True, needs_images=True)

    def __init__(self, spec: ModelSpec, engine: OcrEngine) -> None:
        self._spec = spec
        self._engine = engine

    @classmethod
    def load(cls, spec: ModelSpec) -> OcrProvider:
        workers = spec.options.get("workers")
        params = spec.options.get("params")
        return cls(spec, OcrEngine.load(int(workers) if workers else None, params))

    async def infer(self, requests: Sequence[Request]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def aclose(self) -> None:
        self._engine.close()

    async def _one(self, request: Request) -> Outcome:
        refusal = self.refusal(request)
        if refusal is not None or not isinstance(request, ChatRequest):
            return refusal or RecordError(400, "the ocr model answers chat requests")
        parts = image_parts(request)
        started = time.perf_counter()
        pages = await read_images(self._engine, parts)
        if isinstance(pages, RecordError):
            return pages
        latency = int((time.perf_counter() - started) * 1000)
        text, reason = _limit("\n\n".join(p.text for p in pages), request, self._spec.default_max_tokens)
        usage = Usage(sum(p.tokens for p in pages) + request.char_count() // 4, math.ceil(len(text) / 4))
        return ChatResult(text, reason, usage, self._spec.name, latency)


def _limit(text: str, request: ChatRequest, default_max_tokens: int) -> tuple[str, StopReason]:
    """The reply cut at the first stop sequence, and to max_tokens at 4 characters a token."""
    reason: StopReason = "end_turn"
    for stop in request.params.stop:
        cut = text.find(stop)
        if stop and cut >= 0:
            text, reason = text[:cut], "stop_sequence"
    limit = 4 * (request.params.max_tokens or default_max_tokens)
    if len(text) > limit:
        text, reason = text[:limit], "max_tokens"
    return text, reason
