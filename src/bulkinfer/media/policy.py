"""What images a model takes: formats, byte and pixel limits, images per record, and downscaling."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bulkinfer.errors import ConfigError

MiB = 2**20

FORMATS: dict[str, str] = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP"}
"""The formats a policy may allow, each with the name of its Pillow decoder."""

PILLOW_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``): a quarter GiB of RGB pixels."""


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    """The checks every image passes before a model sees it, and how it is downscaled.

    The defaults accept what the big hosted APIs accept at their most generous, so a record that one of
    them would take is not refused here; a model that takes less says so in its catalog entry and gets
    its images downscaled (``resize_*``) rather than refused.
    """

    formats: frozenset[str] = frozenset(FORMATS)
    """Allowed formats, identified by decoding the bytes (never by declared type or file name)."""
    max_bytes: int = 20 * MiB
    """OpenAI's per-image limit, the largest of the big APIs (Anthropic takes 5 MB, Bedrock 3.75 MB;
    those models downscale). A record line is at most 25 MB anyway, so base64 inline images stay under."""
    max_pixels: int = PILLOW_MAX_PIXELS
    """Decompression-bomb guard, checked from the header before any pixel is decoded. Pillow's own
    threshold: about 256 MiB of RGB per decode. Pillow refuses images over twice its
    ``Image.MAX_IMAGE_PIXELS`` whatever this says."""
    max_images_per_record: int = 20
    """Bedrock Converse's limit, the tightest of the big APIs (Anthropic allows 100, OpenAI 500)."""
    resize_max_side: int | None = None
    """Shrink so neither side is longer (aspect ratio kept; never enlarged). Anthropic: 1568 or 8000."""
    resize_max_pixels: int | None = None
    """Shrink so width × height is at most this (aspect ratio kept; never enlarged)."""
    resize_format: str | None = None
    """Re-encode every image to this format (one of ``FORMATS``); None keeps each image's own format."""
    quality: int = 85
    """JPEG and WebP quality when re-encoding: visually lossless for photos at a third of the bytes."""

    def __post_init__(self) -> None:
        unknown = (self.formats | {self.resize_format or "jpeg"}) - set(FORMATS)
        if unknown:
            raise ConfigError(f"unknown image formats {sorted(unknown)}; known: {', '.join(FORMATS)}")
        if not self.formats:
            raise ConfigError("an image policy must allow at least one format")
        for name in (
            "max_bytes",
            "max_pixels",
            "max_images_per_record",
            "resize_max_side",
            "resize_max_pixels",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"image policy {name} must be at least 1, not {value}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"image policy quality must be 1 to 100, not {self.quality}")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size an image of ``width`` × ``height`` is shrunk to; its own size when it fits."""
        scale = 1.0
        if self.resize_max_side is not None:
            scale = min(scale, self.resize_max_side / max(width, height))
        if self.resize_max_pixels is not None:
            scale = min(scale, math.sqrt(self.resize_max_pixels / (width * height)))
        if scale >= 1.0:
            return width, height
        # The tiny epsilon keeps 3000 × (1000/3000) from flooring to 999.
        new_w, new_h = (max(1, math.floor(side * scale + 1e-6)) for side in (width, height))
        if self.resize_max_pixels is not None and new_w * new_h > self.resize_max_pixels:
            new_w, new_h = (new_w - 1, new_h) if new_w >= new_h else (new_w, new_h - 1)
        return new_w, new_h

    def output_format(self, source: str) -> str:
        """The format an image decoded as ``source`` is sent in."""
        return self.resize_format or source


def describe_bytes(n: int) -> str:
    """``20 MiB`` for whole mebibytes, else ``1,500 bytes``."""
    return f"{n // MiB} MiB" if n % MiB == 0 else f"{n:,} bytes"
