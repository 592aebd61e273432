"""Images checked before any model sees them: formats, truncation, limits, downscaling, the content cache.

Every image is made by Pillow in memory; nothing here touches the network or the disk.
"""

from __future__ import annotations

import asyncio
import io
import pickle
import random
import struct
import warnings
import zlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from PIL import Image

from bulkinfer.domain.request import (
    ChatRequest,
    EmbeddingRequest,
    ImagePart,
    Message,
    Native,
    Part,
    RecordError,
    Request,
    TextPart,
)
from bulkinfer.errors import BulkinferError, ConfigError
from bulkinfer.media import CheckedImage, MediaError, MediaPolicy, MediaResolver, MediaTimeout, check_image
from bulkinfer.media.cache import MediaCache

FIELD = "modelInput.messages.0.content.1"


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB", **save: object) -> bytes:
    """A small image with varied pixels (so encoders cannot make it trivially short)."""
    noise = random.Random(0).randbytes(size[0] * size[1] * 3)
    img = Image.frombytes("RGB", size, noise).convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height``: how a decompression bomb looks up front."""
    data = bytearray(image_bytes("PNG", (1, 1), "L"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def chat(*parts: Part, native: Native | None = None) -> ChatRequest:
    return ChatRequest(messages=(Message("user", (TextPart("look"), *parts)),), native=native)


def image_part(data: bytes, media_type: str = "image/png", field: str = FIELD) -> ImagePart:
    return ImagePart(media_type=media_type, data=data, field=field)


def images_of(request: Request | RecordError) -> list[ImagePart]:
    assert isinstance(request, ChatRequest), request
    return [p for m in request.messages for p in m.parts if isinstance(p, ImagePart)]


async def resolve(request: Request, policy: MediaPolicy | None = None) -> Request | RecordError:
    media = MediaResolver(policy)
    try:
        return await media.resolve(request)
    finally:
        await media.aclose()


# --- formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpeg", "png", "gif", "webp"])
def test_each_allowed_format_passes_untouched(fmt: str) -> None:
    data = image_bytes(fmt.upper())
    image = check_image(data, MediaPolicy())
    assert image == CheckedImage(data, f"image/{fmt}", 64, 48)
    assert image.data is data


def test_a_camera_jpeg_with_extra_pictures_is_a_jpeg() -> None:
    first, second = (Image.new("RGB", (40, 30), color) for color in ("red", "blue"))
    out = io.BytesIO()
    first.save(out, format="MPO", save_all=True, append_images=[second])
    assert check_image(out.getvalue(), MediaPolicy()).media_type == "image/jpeg"
    small = check_image(out.getvalue(), MediaPolicy(resize_max_side=20))
    assert (small.media_type, decoded(small.data).format) == ("image/jpeg", "JPEG")


@pytest.mark.parametrize(
    ("fmt", "mode"), [("BMP", "RGB"), ("TIFF", "RGB"), ("PDF", "RGB"), ("ICO", "RGBA"), ("TGA", "RGB")]
)
def test_a_format_pillow_knows_but_the_policy_does_not_allow_is_refused(fmt: str, mode: str) -> None:
    with pytest.raises(MediaError, match=r"^not an image of an allowed format \(gif, jpeg, png or webp\)$"):
        check_image(image_bytes(fmt, mode=mode), MediaPolicy())


@pytest.mark.parametrize(
    "data", [b"hello, this is text", b"", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", b"\x89PNG\r\n"]
)
def test_bytes_that_are_no_image_are_refused(data: bytes) -> None:
    with pytest.raises(MediaError, match="not an image of an allowed format"):
        check_image(data, MediaPolicy())


def test_a_policy_narrower_than_the_default_refuses_the_rest() -> None:
    policy = MediaPolicy(formats=frozenset({"jpeg", "png"}))
    with pytest.raises(MediaError, match=r"allowed format \(jpeg or png\)"):
        check_image(image_bytes("GIF"), policy)
    with pytest.raises(MediaError, match=r"allowed format \(png\)"):
        check_image(image_bytes("GIF"), MediaPolicy(formats=frozenset({"png"})))


async def test_a_declared_type_that_disagrees_with_the_bytes_is_corrected() -> None:
    jpeg = image_bytes("JPEG")
    request = chat(image_part(jpeg, "image/png"), native=Native("anthropic", {"messages": []}))
    resolved = await resolve(request)
    assert isinstance(resolved, ChatRequest)
    [part] = images_of(resolved)
    assert (part.media_type, part.data, part.url, part.field) == ("image/jpeg", jpeg, None, FIELD)
    # The record's own body names the wrong type, so the provider must build its body from the parts.
    assert resolved.native is None


async def test_a_request_whose_images_need_no_change_comes_back_as_it_is() -> None:
    request = chat(image_part(image_bytes("PNG")), native=Native("anthropic", {"messages": []}))
    assert await resolve(request) is request
    embedding = EmbeddingRequest(texts=("a",))
    assert await resolve(embedding) is embedding
    text_only = chat()
    assert await resolve(text_only) is text_only


# --- broken and oversize images ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "keep"),
    [("JPEG", 0.5), ("JPEG", -2), ("PNG", 0.5), ("PNG", -10), ("GIF", 0.5), ("WEBP", 0.5), ("WEBP", -4)],
)
def test_a_truncated_file_is_refused(fmt: str, keep: float) -> None:
    data = image_bytes(fmt)
    cut = data[: int(len(data) * keep)] if keep > 0 else data[: int(keep)]
    with pytest.raises(MediaError, match=r"^image is truncated or corrupt: "):
        check_image(cut, MediaPolicy())


async def test_a_truncated_image_becomes_the_records_error_naming_its_field() -> None:
    data = image_bytes("JPEG")
    outcome = await resolve(chat(image_part(data[: len(data) // 2], "image/jpeg")))
    assert isinstance(outcome, RecordError)
    assert (outcome.code, outcome.kind) == (400, "ValidationError")
    assert outcome.message.startswith(f"{FIELD}: image is truncated or corrupt: image file is truncated")


async def test_an_image_over_the_byte_limit_is_refused_before_decoding() -> None:
    outcome = await resolve(chat(image_part(b"\xff\xd8" + bytes(20 * 2**20))))
    assert outcome == RecordError(400, f"{FIELD}: image is 20,971,522 bytes, over the 20 MiB limit")
    with pytest.raises(MediaError, match=r"^image is 1,001 bytes, over the 1,000 bytes limit$"):
        check_image(bytes(1001), MediaPolicy(max_bytes=1000))


def test_an_image_over_the_pixel_limit_is_refused_from_its_header() -> None:
    with pytest.raises(
        MediaError, match=r"^image is 200 × 100 = 20,000 pixels, over the 10,000-pixel limit$"
    ):
        check_image(image_bytes("PNG", (200, 100)), MediaPolicy(max_pixels=10_000))


def test_a_decompression_bomb_is_refused_before_its_pixels_are_decoded() -> None:
    bomb = png_claiming(100_000, 100_000)  # 10 G pixels in 70 bytes
    assert len(bomb) < 100
    with pytest.raises(MediaError, match="too many pixels to decode safely"):
        check_image(bomb, MediaPolicy())


def test_a_bomb_pillow_only_warns_about_is_refused_by_the_policy() -> None:
    bomb = png_claiming(10_000, 10_000)  # over Pillow's warning threshold, under its hard limit
    with pytest.raises(MediaError, match="too many pixels to decode safely"):
        check_image(bomb, MediaPolicy())  # pytest makes warnings errors, as a strict deployment may
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MediaError, match=r"10,000 × 10,000 = 100,000,000 pixels, over the 89,478,485"):
            check_image(bomb, MediaPolicy())


async def test_too_many_images_in_one_record_name_the_first_one_over() -> None:
    png = image_bytes("PNG", (4, 4))
    parts = [image_part(png, field=f"modelInput.messages.0.content.{i}") for i in range(21)]
    outcome = await resolve(chat(*parts))
    assert outcome == RecordError(
        400, "modelInput.messages.0.content.20: record has 21 images, over the limit of 20"
    )
    assert isinstance(await resolve(chat(*parts[:20])), ChatRequest)
    assert isinstance(await resolve(chat(*parts[:3]), MediaPolicy(max_images_per_record=2)), RecordError)


async def test_the_first_failing_part_in_record_order_is_named() -> None:
    good, bad = image_bytes("PNG"), b"not an image"
    request = chat(image_part(good, field="a.0"), image_part(bad, field="a.1"), image_part(bad, field="a.2"))
    outcome = await resolve(request)
    assert isinstance(outcome, RecordError)
    assert outcome.message.startswith("a.1: not an image")


# --- downscaling ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_side", "max_pixels", "expected"),
    [
        ((3000, 1000), 1000, None, (1000, 333)),
        ((1000, 3000), 1000, None, (333, 1000)),
        ((400, 300), None, 30_000, (200, 150)),
        ((1001, 999), None, 1000, (31, 31)),
        ((100, 50), 1000, 1_000_000, (100, 50)),  # never enlarged
        ((5000, 1), 100, None, (100, 1)),  # never below one pixel
    ],
)
def test_target_size_keeps_the_aspect_ratio_and_only_shrinks(
    size: tuple[int, int], max_side: int | None, max_pixels: int | None, expected: tuple[int, int]
) -> None:
    policy = MediaPolicy(resize_max_side=max_side, resize_max_pixels=max_pixels)
    target = policy.target_size(*size)
    assert target == expected
    assert max_pixels is None or target[0] * target[1] <= max_pixels


@pytest.mark.parametrize("fmt", ["jpeg", "png", "gif", "webp"])
def test_a_large_image_is_downscaled_in_its_own_format(fmt: str) -> None:
    data = image_bytes(fmt.upper(), (300, 100))
    image = check_image(data, MediaPolicy(resize_max_side=60))
    assert (image.media_type, image.width, image.height, image.reencoded) == (f"image/{fmt}", 60, 20, True)
    img = decoded(image.data)
    assert (img.format, img.size) == (fmt.upper(), (60, 20))


def test_an_image_within_the_resize_limits_is_not_touched() -> None:
    data = image_bytes("PNG", (60, 20))
    assert check_image(data, MediaPolicy(resize_max_side=60, resize_max_pixels=1200)).data is data


def test_resize_format_converts_even_when_no_shrinking_is_needed() -> None:
    image = check_image(image_bytes("PNG", (30, 20)), MediaPolicy(resize_format="webp", resize_max_side=1000))
    assert (image.media_type, image.reencoded, decoded(image.data).format) == ("image/webp", True, "WEBP")


def test_transparency_becomes_white_in_a_jpeg_and_stays_in_a_png() -> None:
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    out = io.BytesIO()
    clear.save(out, format="PNG")
    as_jpeg = check_image(out.getvalue(), MediaPolicy(resize_format="jpeg"))
    assert decoded(as_jpeg.data).convert("RGB").getpixel((20, 20)) == (255, 255, 255)
    as_png = check_image(out.getvalue(), MediaPolicy(resize_max_side=20))
    assert decoded(as_png.data).getpixel((10, 10)) == (0, 0, 0, 0)


def test_an_animated_gif_passes_whole_but_is_downscaled_to_its_first_frame() -> None:
    frames = [Image.new("RGB", (80, 40), color) for color in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert check_image(out.getvalue(), MediaPolicy()).data == out.getvalue()
    small = decoded(check_image(out.getvalue(), MediaPolicy(resize_max_side=40)).data)
    assert (small.size, getattr(small, "n_frames", 1)) == ((40, 20), 1)
    assert small.convert("RGB").getpixel((5, 5)) == (255, 0, 0)


def test_a_rotated_photo_is_measured_and_sent_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    data = image_bytes("JPEG", (200, 100), exif=exif.tobytes())
    image = check_image(data, MediaPolicy(resize_max_side=50))
    assert (image.width, image.height) == (25, 50)
    assert decoded(image.data).size == (25, 50)


async def test_a_resized_image_reaches_the_request_with_its_new_type() -> None:
    policy = MediaPolicy(resize_max_side=32, resize_format="jpeg")
    resolved = await resolve(chat(image_part(image_bytes("PNG", (128, 64)))), policy)
    [part] = images_of(resolved)
    assert part.media_type == "image/jpeg"
    assert decoded(part.data or b"").size == (32, 16)


# --- the content cache ------------------------------------------------------------------------------


async def test_an_inline_image_shared_by_100_records_is_decoded_once() -> None:
    png = image_bytes("PNG")
    media = MediaResolver(MediaPolicy(resize_max_side=32))
    try:
        # Each record carries its own copy of the bytes, as each decoded its own base64.
        outcomes = await asyncio.gather(*(media.resolve(chat(image_part(bytes(png)))) for _ in range(100)))
        assert all(isinstance(o, ChatRequest) for o in outcomes)
        stats = media.stats
        assert (stats.images, stats.decodes, stats.reencodes, stats.cache_hits, stats.fetches) == (
            100,
            1,
            1,
            99,
            0,
        )
        assert stats.cached_bytes == len(images_of(outcomes[0])[0].data or b"")
    finally:
        await media.aclose()


async def test_a_broken_image_shared_by_100_records_is_decoded_once_and_fails_each() -> None:
    broken = image_bytes("JPEG")[:300]
    media = MediaResolver()
    try:
        outcomes = await asyncio.gather(
            *(media.resolve(chat(image_part(broken, field=f"r{i}"))) for i in range(100))
        )
        assert media.stats.decodes == 1
        assert all(
            isinstance(o, RecordError) and o.message.startswith(f"r{i}: image is truncated")
            for i, o in enumerate(outcomes)
        )
    finally:
        await media.aclose()


async def test_the_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    loads: list[str] = []
    cache: MediaCache[bytes] = MediaCache(max_bytes=250, failure_ttl_s=60, size=len)

    def loader(key: str, size: int = 100) -> Callable[[], Coroutine[Any, Any, bytes]]:
        async def load() -> bytes:
            loads.append(key)
            return bytes(size)

        return load

    for key in ("a", "b", "a", "c", "a", "b"):
        await cache.get(key, loader(key))
    # a and b kept; a used again; c pushes out b, the least recently used; b comes back, pushing out c.
    assert loads == ["a", "b", "c", "b"]
    assert cache.bytes == 200
    await cache.get("huge", loader("huge", 1000))
    assert cache.bytes == 200  # too big to keep at all, and nothing was evicted for it


async def test_failures_are_kept_only_for_their_ttl() -> None:
    calls = 0

    async def failing() -> bytes:
        nonlocal calls
        calls += 1
        raise MediaError("HTTP 503 Service Unavailable")

    cache: MediaCache[bytes] = MediaCache(max_bytes=1000, failure_ttl_s=0.05, size=len)
    for _ in range(3):
        with pytest.raises(MediaError, match="503"):
            await cache.get("k", failing)
    assert calls == 1
    await asyncio.sleep(0.06)
    with pytest.raises(MediaError):
        await cache.get("k", failing)
    assert calls == 2


async def test_a_cancelled_caller_leaves_the_shared_load_to_the_others() -> None:
    release = asyncio.Event()

    async def slow() -> bytes:
        await release.wait()
        return b"done"

    cache: MediaCache[bytes] = MediaCache(max_bytes=1000, failure_ttl_s=60, size=len)
    first = asyncio.create_task(cache.get("k", slow))
    second = asyncio.create_task(cache.get("k", slow))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == b"done"
    assert (cache.loads, cache.hits) == (1, 1)
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_closing_cancels_loads_in_flight() -> None:
    never = asyncio.Event()

    async def stuck() -> bytes:
        await never.wait()
        return b""

    cache: MediaCache[bytes] = MediaCache(max_bytes=1000, failure_ttl_s=60, size=len)
    waiter = asyncio.create_task(cache.get("k", stuck))
    await asyncio.sleep(0)
    await cache.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiter


# --- policy and errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"formats": frozenset({"bmp"})},
        {"formats": frozenset()},
        {"resize_format": "tiff"},
        {"max_bytes": 0},
        {"resize_max_side": 0},
        {"quality": 101},
    ],
)
def test_a_policy_that_makes_no_sense_is_a_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        MediaPolicy(**kwargs)  # type: ignore[arg-type]


def test_media_errors_sit_under_the_root_and_pickle() -> None:
    for error in (MediaError("image is truncated"), MediaTimeout("no answer")):
        assert isinstance(error, BulkinferError)
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.code) == (type(error), str(error), error.code)
    assert (MediaError.code, MediaTimeout.code, MediaTimeout.kind) == (400, 408, "Timeout")


async def test_an_image_with_neither_data_nor_url_is_the_records_error() -> None:
    outcome = await resolve(chat(ImagePart(media_type="image/png", field=FIELD)))
    assert outcome == RecordError(400, f"{FIELD}: an image needs data or a url")
