"""Images in records: decoded and checked before any model call, fetched safely, cached by content.

``MediaResolver`` is the one entry point the engine uses; the rest is its parts, public so a deployment
can configure or replace them (a ``MediaReader`` for another store, a ``Fetcher`` with another client).
"""

from __future__ import annotations

from bulkinfer.media.errors import (
    ImageCorrupt,
    ImageTooLarge,
    MediaError,
    MediaRefused,
    MediaTimeout,
    NotAnImage,
)
from bulkinfer.media.fetch import Fetcher, FetchPolicy, GuardedFetcher
from bulkinfer.media.guard import METADATA_ADDRESSES, AddressGuard, refusal
from bulkinfer.media.image import CheckedImage, check_image
from bulkinfer.media.policy import FORMATS, MediaPolicy
from bulkinfer.media.reader import (
    FileReader,
    MediaReader,
    ObjectGet,
    granted_only,
    local_buckets,
    object_reader,
    s3fs_objects,
)
from bulkinfer.media.resolver import MediaResolver, MediaStats

__all__ = [
    "FORMATS",
    "METADATA_ADDRESSES",
    "AddressGuard",
    "CheckedImage",
    "FetchPolicy",
    "Fetcher",
    "FileReader",
    "GuardedFetcher",
    "ImageCorrupt",
    "ImageTooLarge",
    "MediaError",
    "MediaPolicy",
    "MediaReader",
    "MediaRefused",
    "MediaResolver",
    "MediaStats",
    "MediaTimeout",
    "NotAnImage",
    "ObjectGet",
    "check_image",
    "granted_only",
    "local_buckets",
    "object_reader",
    "refusal",
    "s3fs_objects",
]
