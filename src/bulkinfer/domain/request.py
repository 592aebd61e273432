"""The canonical request every dialect translates into, and the results providers give back.

Dialects turn a record's ``modelInput`` into one of these; providers only ever see these; the result is
translated back into the dialect the record came in.

These values are never mutated after construction, but they are not ``frozen``: several are built per
record, and a frozen dataclass costs about four times as much to construct (0.50 vs 0.13 us measured),
which showed up as a tenth of the per-record cost on the echo overhead benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence"]


@dataclass(slots=True)
class TextPart:
    text: str


@dataclass(slots=True)
class ImagePart:
    """An image given inline (``data``) or by reference (``url``: http(s)://, s3://, file:// or a path
    relative to the input file). Before any model sees it, the engine fetches a referenced image and
    checks every one, so providers get ``data`` of an allowed format and size."""

    media_type: str
    data: bytes | None = None
    url: str | None = None
    field: str = ""
    """Where the part is in the record (``modelInput.messages.0.content.1``), for error lines."""


Part = TextPart | ImagePart


@dataclass(slots=True)
class Message:
    role: Role
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        """The message's text parts joined, images left out."""
        parts = self.parts
        if len(parts) == 1 and type(parts[0]) is TextPart:
            return parts[0].text
        return "".join(p.text for p in parts if isinstance(p, TextPart))


@dataclass(slots=True)
class GenerationParams:
    max_tokens: int | None = None
    """None means the model's default from the catalog."""
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(slots=True)
class Native:
    """A record's body as written, for a provider that speaks its dialect and so takes it untouched."""

    dialect: str
    body: dict[str, Any]


@dataclass(slots=True)
class ChatRequest:
    messages: tuple[Message, ...]
    system: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    native: Native | None = None
    key: str | None = None
    """Names the record to a remote provider (``Idempotency-Key``): the same in every retry and run."""

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return ""

    def char_count(self) -> int:
        return len(self.system or "") + sum(len(m.text) for m in self.messages)


@dataclass(slots=True)
class EmbeddingRequest:
    texts: tuple[str, ...]
    dimensions: int | None = None
    normalize: bool = True
    native: Native | None = None
    key: str | None = None

    def char_count(self) -> int:
        return sum(len(t) for t in self.texts)


Request = ChatRequest | EmbeddingRequest


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class ChatResult:
    text: str
    stop_reason: StopReason
    usage: Usage
    model: str = ""
    latency_ms: int = 0
    native: dict[str, Any] | None = None
    """The provider's response body as sent, when it answered a ``Native`` request: the record's output."""
    attempts: int = 0
    """Calls made for this record (remote providers); 0 where calls are not counted."""


@dataclass(slots=True)
class EmbeddingResult:
    vectors: tuple[tuple[float, ...], ...]
    usage: Usage
    model: str = ""
    latency_ms: int = 0
    native: dict[str, Any] | None = None
    attempts: int = 0


Result = ChatResult | EmbeddingResult


@dataclass(slots=True)
class RecordError:
    """Why one record produced no output. Written as the record's ``error`` object, never raised.

    ``code`` follows HTTP semantics as Bedrock's error lines do: 400 for a record that cannot be valid,
    408 for a timeout, 429 for throttling, 500 for a model failure.
    """

    code: int
    message: str
    kind: str = "ValidationError"
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Unsent:
    """A request its provider gave up before sending it because the job is stopping. Not an outcome of
    the record: it is not finished, and runs when the job resumes (or never, for a stopped job)."""


UNSENT = Unsent()

Outcome = Result | RecordError | Unsent
