"""The dialect seam and the helpers every dialect shares."""

from __future__ import annotations

import base64
import itertools
import time
import uuid
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from bulkinfer.domain.request import Request, Result
from bulkinfer.errors import RecordInvalid

Kind = Literal["chat", "embedding"]
MAX_DIMENSIONS = 16384
"""No embedding model has more; a larger request is an error, not a giant allocation."""
BodyT = TypeVar("BodyT", bound=BaseModel)


class Body(BaseModel):
    """Base of every dialect's request body model."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class StrictBody(Body):
    """A body that, like Bedrock's own validation, rejects fields it does not know."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Dialect(ABC, Generic[BodyT]):
    """One ``modelInput`` shape: parse it into a canonical request, render a result back."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    body_model: ClassVar[type[BaseModel]]

    def to_request(self, body: dict[str, Any]) -> Request:
        return self.build_request(validate(self.body_model, body))  # type: ignore[arg-type]

    @abstractmethod
    def build_request(self, body: BodyT) -> Request:
        """Turn a validated body into the canonical request."""

    @abstractmethod
    def render(self, result: Result, request: Request) -> dict[str, Any]:
        """The ``modelOutput`` for a result, shaped as this dialect's response."""


def validate(model: type[BaseModel], body: dict[str, Any]) -> BaseModel:
    """Validate a body; the deepest problem becomes a ``RecordInvalid`` naming its field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = [(_field_path(e["loc"]), e["msg"]) for e in exc.errors()]
        path, message = max(problems, key=lambda p: len(p[0]))  # the deepest is the most specific
        raise RecordInvalid(message, field=".".join(str(p) for p in ("modelInput", *path))) from None


def _field_path(loc: tuple[int | str, ...]) -> list[int | str]:
    """A pydantic error location without its union labels (``str``, ``list[...]``, tag values)."""
    path: list[int | str] = []
    tag_next = False
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in _TYPE_LABELS):
            tag_next = "tagged-union[" in part
            continue
        if tag_next and isinstance(part, str):
            tag_next = False  # the discriminator value pydantic inserts after a tagged union
            continue
        path.append(part)
    return path


_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


_ID_PREFIX = uuid.uuid4().hex[:12]
_id_counter = itertools.count()


def decode_base64(data: str, field: str) -> bytes:
    """Inline image bytes; bad base64 is the record's error, naming the field."""
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise RecordInvalid("not valid base64", field=field) from None


def new_id(prefix: str) -> str:
    """A response id unique across processes (random per process) and cheap (a counter within one)."""
    return f"{prefix}{_ID_PREFIX}{next(_id_counter):012x}"


def now() -> int:
    return int(time.time())
