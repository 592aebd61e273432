"""The dialect seam and the helpers every dialect shares."""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from bulkinfer.domain.request import Request, Result
from bulkinfer.errors import RecordInvalid

Kind = Literal["chat", "embedding"]
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
    """Validate a body; the first problem becomes a ``RecordInvalid`` naming its field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in ("modelInput", *first["loc"]))
        raise RecordInvalid(first["msg"], field=field) from None


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
