"""Decode, check and downscale one image: what every image passes before any model sees it.

Everything here is CPU work on bytes already in memory, so it is synchronous; the resolver runs it in a
thread. The format is whatever the bytes decode as, never the declared type or a file name.

Animated GIF and WebP images are checked on their first frame, which is what vision models look at;
passed through unchanged they keep every frame, and downscaled or re-encoded they become that first
frame alone.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from bulkinfer.media.errors import ImageCorrupt, ImageTooLarge, NotAnImage
from bulkinfer.media.policy import FORMATS, MediaPolicy, describe_bytes

_NAMES = {pillow: name for name, pillow in FORMATS.items()} | {"MPO": "jpeg"}
"""Pillow's format names to ours. Pillow's JPEG decoder names camera photos that carry extra pictures
(multi-picture format) MPO; the bytes are a JPEG all the same."""
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass(frozen=True, slots=True)
class CheckedImage:
    """An image that passed every check: bytes to send, their true media type, and their size."""

    data: bytes
    media_type: str
    width: int
    height: int
    reencoded: bool = False
    """Downscaled or converted, so ``data`` is not the bytes that came in."""


def check_image(data: bytes, policy: MediaPolicy) -> CheckedImage:
    """Decode ``data`` fully, hold it to ``policy``, and downscale or convert it as the policy says.

    Raises ``MediaError`` naming the reason. The bytes come back untouched when nothing needs changing.
    """
    if len(data) > policy.max_bytes:
        limit = describe_bytes(policy.max_bytes)
        raise ImageTooLarge(f"image is {len(data):,} bytes, over the {limit} limit")
    with _open(data, policy) as img:
        _check_pixels(img.size, policy)
        _run(img.verify)  # PNG: every chunk's CRC and the end marker, which decoding alone skips
    with _open(data, policy) as img:
        _run(img.load)  # a truncated or corrupt body fails here
        name = _NAMES[str(img.format)]
        width, height = img.size
        target = policy.output_format(name)
        if target == name and policy.target_size(width, height) == (width, height):
            return CheckedImage(data, f"image/{name}", width, height)
        return _reencode(img, target, policy)


def _open(data: bytes, policy: MediaPolicy) -> ImageFile.ImageFile:
    """Read the header only; only the allowed formats' decoders ever see the bytes."""
    allowed = sorted(policy.formats)
    try:
        return Image.open(io.BytesIO(data), formats=[FORMATS[f] for f in allowed])
    except UnidentifiedImageError:
        names = ", ".join(allowed[:-1]) + " or " + allowed[-1] if len(allowed) > 1 else allowed[0]
        raise NotAnImage(f"not an image of an allowed format ({names})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (the warning only reaches here where warnings are errors, as in tests).
        raise ImageTooLarge(f"image has too many pixels to decode safely: {exc}") from None
    except Exception as exc:  # Pillow's parsers raise many types on corrupt headers
        raise ImageCorrupt(f"image is truncated or corrupt: {exc}") from None


def _check_pixels(size: tuple[int, int], policy: MediaPolicy) -> None:
    width, height = size
    if width * height > policy.max_pixels:
        raise ImageTooLarge(
            f"image is {width:,} × {height:,} = {width * height:,} pixels, "
            f"over the {policy.max_pixels:,}-pixel limit"
        )


def _run(step: Callable[[], object]) -> None:
    """Run a Pillow decoding step, naming truncated or corrupt data as the reason it fails."""
    try:
        step()
    except Exception as exc:  # OSError, SyntaxError, ValueError, struct.error...: all mean bad bytes
        raise ImageCorrupt(f"image is truncated or corrupt: {exc}") from None


def _reencode(img: Image.Image, target: str, policy: MediaPolicy) -> CheckedImage:
    """The first frame, upright, shrunk to the policy's size and encoded as ``target``."""
    frame = ImageOps.exif_transpose(img)  # the pixels as a viewer shows them, before measuring
    frame = _pixels(frame, keep_alpha=target != "jpeg")
    size = policy.target_size(*frame.size)
    if size != frame.size:
        frame = frame.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    options = {"quality": policy.quality} if target in ("jpeg", "webp") else {}
    frame.save(out, format=FORMATS[target], **options)
    return CheckedImage(out.getvalue(), f"image/{target}", size[0], size[1], reencoded=True)


def _pixels(img: Image.Image, *, keep_alpha: bool) -> Image.Image:
    """RGB, or RGBA where transparency matters: modes every encoder takes and resizes smoothly
    (palette images would only resize by nearest neighbour)."""
    has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    if not has_alpha:
        return img if img.mode == "RGB" else img.convert("RGB")
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    if keep_alpha:
        return rgba
    # JPEG has no alpha: put the image on white, as a viewer would, not on whatever the hidden pixels hold.
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat
