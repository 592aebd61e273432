"""Why an image could not be used. The resolver turns each into the record's error line, never a crash::

    BulkinferError
    └── MediaError         the image is invalid, too large, or could not be read (400)
        ├── NotAnImage     not an image of an allowed format
        ├── ImageTooLarge  over the byte or pixel limit
        ├── ImageCorrupt   truncated or corrupt data
        ├── MediaRefused   the guard would not go there: a private address, a scheme, a path (400)
        └── MediaTimeout   the image did not arrive within the time cap (408)

Messages are the reason alone (``image is truncated``); the resolver puts the record field and the
reference in front.
"""

from __future__ import annotations

from typing import ClassVar

from bulkinfer.errors import BulkinferError


class MediaError(BulkinferError):
    """The image is invalid, too large, or could not be read."""

    code: ClassVar[int] = 400
    kind: ClassVar[str] = "ValidationError"


class NotAnImage(MediaError):
    """The bytes are not an image of an allowed format."""


class ImageTooLarge(MediaError):
    """The image has more bytes or pixels than allowed."""


class ImageCorrupt(MediaError):
    """The image is truncated or corrupt."""


class MediaRefused(MediaError):
    """Fetching or reading this reference is not allowed."""


class MediaTimeout(MediaError):
    """The image did not arrive in time."""

    code: ClassVar[int] = 408
    kind: ClassVar[str] = "Timeout"
