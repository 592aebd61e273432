"""From a request as a dialect built it to one whose every image is checked bytes a model can take.

The engine calls ``MediaResolver.resolve`` for each request before the provider sees it. Referenced
images (http(s), ``s3://``, ``file://``, relative paths) are read once per reference and inline ones
decoded once per distinct content (sha256), however many records use them; an image that fails becomes
the record's error naming the part's field, never an exception.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from pathlib import Path

from bulkinfer.domain.request import ChatRequest, ImagePart, Message, RecordError, Request
from bulkinfer.domain.tally import MediaTally
from bulkinfer.media.cache import MediaCache
from bulkinfer.media.errors import MediaError
from bulkinfer.media.fetch import SCHEMES, Fetcher, GuardedFetcher
from bulkinfer.media.image import CheckedImage, check_image
from bulkinfer.media.policy import MediaPolicy, MiB
from bulkinfer.media.reader import FileReader, MediaReader

DEFAULT_DECODES = min(4, os.cpu_count() or 1)
"""Images decoded at once. Pillow's decoders release the GIL, so threads scale with cores, but each
decode may hold a few hundred MiB at the pixel limit, so no more than four."""
_HASH_IN_THREAD = 1 * MiB
"""Inline images larger than this are hashed off the event loop (sha256 runs at about 1 GB/s)."""


@dataclasses.dataclass(frozen=True, slots=True)
class MediaStats:
    """Counters since the resolver was built, for benchmarks and the job summary."""

    images: int
    """Image parts resolved (each record's parts, cached or not)."""
    fetches: int
    """References read from their source: HTTP fetches, s3:// objects and files."""
    decodes: int
    """Distinct images decoded and checked."""
    reencodes: int
    """Of those, images downscaled or converted."""
    cache_hits: int
    """Fetches and decodes saved: answers from the cache or from a load another record started."""
    cached_bytes: int


class MediaResolver:
    """Checks, fetches and downscales every image of a request, per one ``MediaPolicy``.

    Build one per job (the policy is the model's), or one per process and model policy: the cache holds
    checked images for that policy, and relative paths are keyed by the folder they resolve against. The
    resolver owns the fetcher it is given and closes it in ``aclose``.
    """

    def __init__(
        self,
        policy: MediaPolicy | None = None,
        *,
        fetcher: Fetcher | None = None,
        reader: MediaReader | None = None,
        cache_bytes: int = 256 * MiB,
        failure_ttl_s: float = 60.0,
        max_decodes: int = DEFAULT_DECODES,
        decode_slots: asyncio.Semaphore | None = None,
        tally: MediaTally | None = None,
    ) -> None:
        self.policy = policy or MediaPolicy()
        self._tally = tally or MediaTally()
        self._fetcher = fetcher or GuardedFetcher()
        self._reader = reader or FileReader(max_bytes=self.policy.max_bytes)
        self._cache: MediaCache[CheckedImage] = MediaCache(
            max_bytes=cache_bytes,
            failure_ttl_s=failure_ttl_s,
            size=lambda image: len(image.data),
            on_hit=self._tally.hit,
        )
        # shared between resolvers where many are made at once (one per on-demand call), so the process
        # decodes no more images at a time than one resolver would
        self._decode_slots = decode_slots or asyncio.Semaphore(max_decodes)
        self._images = self._fetches = self._decodes = self._reencodes = 0

    @property
    def stats(self) -> MediaStats:
        return MediaStats(
            self._images, self._fetches, self._decodes, self._reencodes, self._cache.hits, self._cache.bytes
        )

    async def resolve(self, request: Request, base_dir: Path | None = None) -> Request | RecordError:
        """``request`` with every image checked, or the record's error naming the first part that failed.

        Each image part of the result has ``data`` (checked, downscaled where the policy says),
        ``media_type`` as the bytes decode, ``url`` None, and its ``field``. A request whose images all
        stay as they came back is returned as it is; one where any changed also loses ``native``, so a
        provider builds its body from the checked images rather than sending the record's own.
        ``base_dir`` is the input file's folder, which relative paths resolve against.
        """
        if not isinstance(request, ChatRequest):
            return request
        parts = [p for m in request.messages for p in m.parts if isinstance(p, ImagePart)]
        if not parts:
            return request
        limit = self.policy.max_images_per_record
        if len(parts) > limit:
            return _error(
                parts[limit], MediaError(f"record has {len(parts)} images, over the limit of {limit}")
            )
        self._images += len(parts)
        outcomes = await asyncio.gather(*(self._outcome(p, base_dir) for p in parts))
        return _apply(request, parts, outcomes)

    async def aclose(self) -> None:
        """Stop loads in flight, drop the cache and close the fetcher."""
        await self._cache.aclose()
        await self._fetcher.aclose()

    async def _outcome(self, part: ImagePart, base_dir: Path | None) -> CheckedImage | RecordError:
        try:
            return await self._checked(part, base_dir)
        except MediaError as exc:
            return _error(part, exc)

    async def _checked(self, part: ImagePart, base_dir: Path | None) -> CheckedImage:
        if part.data is not None:
            return await self._by_content(part.data)
        ref = part.url or ""
        if not ref:
            raise MediaError("an image needs data or a url")
        scheme = ref.partition("://")[0] if "://" in ref else ""
        # A relative path means a different file under each input folder; a URL is the same everywhere.
        key = ("ref", ref) if scheme else ("ref", ref, str(base_dir))
        return await self._cache.get(key, lambda: self._load(ref, scheme, base_dir))

    async def _load(self, ref: str, scheme: str, base_dir: Path | None) -> CheckedImage:
        """Read one reference and check its bytes; failures name the reference."""
        try:
            self._fetches += 1
            self._tally.fetches += 1
            if scheme.lower() in SCHEMES:
                data = await self._fetcher.fetch(ref)
            else:
                data = await self._reader.read(ref, base_dir)
            return await self._by_content(data)
        except MediaError as exc:
            raise type(exc)(f"{ref}: {exc}") from None
        except (ValueError, OSError) as exc:  # a reference no path or URL can be made of ("a\0.png")
            raise MediaError(f"{ref}: cannot be read: {exc}") from None

    async def _by_content(self, data: bytes) -> CheckedImage:
        if len(data) > _HASH_IN_THREAD:
            digest = await asyncio.to_thread(_sha256, data)
        else:
            digest = _sha256(data)
        return await self._cache.get(("sha256", digest), lambda: self._decode(data))

    async def _decode(self, data: bytes) -> CheckedImage:
        async with self._decode_slots:
            self._decodes += 1
            image = await asyncio.to_thread(check_image, data, self.policy)
        self._reencodes += image.reencoded
        return image


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _error(part: ImagePart, exc: MediaError) -> RecordError:
    message = f"{part.field}: {exc}" if part.field else str(exc)
    return RecordError(exc.code, message, exc.kind)


def _apply(
    request: ChatRequest, parts: list[ImagePart], outcomes: list[CheckedImage | RecordError]
) -> ChatRequest | RecordError:
    """The first part's error, or ``request`` with its checked images (itself when none changed)."""
    checked: dict[int, ImagePart] = {}
    changed = False
    for part, outcome in zip(parts, outcomes, strict=True):
        if isinstance(outcome, RecordError):
            return outcome
        changed = (
            changed or part.url is not None or outcome.reencoded or outcome.media_type != part.media_type
        )
        checked[id(part)] = _checked_part(part, outcome)
    return _with_images(request, checked) if changed else request


def _checked_part(part: ImagePart, image: CheckedImage) -> ImagePart:
    # Bytes that passed unchanged stay the record's own object, not the cached copy of equal bytes.
    data = part.data if part.data is not None and not image.reencoded else image.data
    return ImagePart(media_type=image.media_type, data=data, url=None, field=part.field)


def _with_images(request: ChatRequest, checked: dict[int, ImagePart]) -> ChatRequest:
    """``request`` with each image part swapped for its checked one, and no ``native`` body: that body
    holds the images as they came, which the provider must not send instead of the checked ones."""
    messages = tuple(Message(m.role, tuple(checked.get(id(p), p) for p in m.parts)) for m in request.messages)
    return dataclasses.replace(request, messages=messages, native=None)
