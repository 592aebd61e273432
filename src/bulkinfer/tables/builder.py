"""One table row -> one Bedrock batch record, ``{"recordId", "modelInput"}``, in the chosen dialect.

The prompt (and optional system prompt) is the row rendered through its template; the row's images go
before the text, inlined as base64 or referenced by path or URI. Every problem of a row is collected, so
the report names all of them at once, and a row with any problem yields no record.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import orjson

from bulkinfer.engine.seen import SeenIds, id_hash
from bulkinfer.formats.bedrock import MAX_RECORD_ID_LENGTH
from bulkinfer.tables import DEFAULT_MAX_TOKENS
from bulkinfer.tables.images import ImageProblem, ImageStore, check_image, safe_name, suffix_format
from bulkinfer.tables.report import Problem, ProblemKind
from bulkinfer.tables.source import Row
from bulkinfer.tables.template import PromptTemplate, TemplateProblem

DialectName = Literal["anthropic", "converse", "openai-chat"]
DIALECTS: tuple[DialectName, ...] = get_args(DialectName)
ANTHROPIC_VERSION = "bedrock-2023-05-31"
GENERATED_ID_PREFIX = "ROW"
"""Generated ids are ``ROW`` and the row number in 8 digits: 11 characters of ``[A-Z0-9]``, as Bedrock's
own generated ids, and stable, so outputs join back to table rows."""


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """How every row becomes a record."""

    prompt: PromptTemplate
    dialect: DialectName = "anthropic"
    max_tokens: int = DEFAULT_MAX_TOKENS
    system: PromptTemplate | None = None
    image_column: str | None = None
    """The column naming each row's image files: one name, several joined by ``;``, or a JSON list."""
    id_column: str | None = None
    """The column holding each row's recordId; None generates ``ROW00000001``-style ids."""
    images: ImageStore | None = None
    inline: bool = True
    """Base64 image bytes in the record; False writes a reference (path or URI) instead."""


@dataclass(frozen=True, slots=True)
class RecordImage:
    format: str
    """``png``, ``jpeg``, ``gif`` or ``webp``."""
    data: str | None = None
    """Base64, when inlined."""
    ref: str | None = None
    """Path or URI, when referenced."""


class _Reporter(Protocol):
    def __call__(self, kind: ProblemKind, message: str, column: str | None = None) -> None: ...


class RecordBuilder:
    """Builds the records of one table, remembering record ids to report duplicates."""

    def __init__(self, spec: RecordSpec, table: str) -> None:
        if spec.image_column is not None and spec.images is None:
            raise ValueError("an image column needs an image store")
        self.spec = spec
        self.table = table
        self._seen = SeenIds()

    def build(self, row: Row) -> dict[str, Any] | list[Problem]:
        """The row's record, or every problem that keeps it out."""
        problems: list[Problem] = []

        def problem(kind: ProblemKind, message: str, column: str | None = None) -> None:
            problems.append(Problem(self.table, row.number, row.line, kind, message, column))

        if row.error is not None:
            problem("unreadable-row", row.error)
            return problems
        spec = self.spec
        record_id = self._record_id(row, problem)
        prompt = self._render(spec.prompt, row, problem)
        system = self._render(spec.system, row, problem) if spec.system is not None else None
        images = self._images(row, problem) if spec.image_column is not None else []
        if problems or record_id is None or prompt is None:
            return problems
        return {"recordId": record_id, "modelInput": model_input(spec, prompt, system, images)}

    def _record_id(self, row: Row, problem: _Reporter) -> str | None:
        column = self.spec.id_column
        if column is None:
            return f"{GENERATED_ID_PREFIX}{row.number:08d}"
        value = row.values.get(column)
        if value is None or value == "":
            problem("id-missing", f"no recordId: column {column!r} is empty or missing", column)
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            problem("id-invalid", f"recordId must be text or a whole number, not {value!r}", column)
            return None
        record_id = str(value).strip()
        if not record_id or len(record_id) > MAX_RECORD_ID_LENGTH:
            message = f"recordId must be 1 to {MAX_RECORD_ID_LENGTH} characters, not {len(record_id)}"
            problem("id-invalid", message, column)
            return None
        here = row.line if row.line is not None else row.number
        first = self._seen.first([id_hash(record_id)], [here])[0]
        if first != here:
            unit = "line" if row.line is not None else "row"
            problem("duplicate-id", f"recordId {record_id!r} is already used on {unit} {first}", column)
            return None
        return record_id

    def _render(self, template: PromptTemplate, row: Row, problem: _Reporter) -> str | None:
        try:
            text = template.render(row.values)
        except TemplateProblem as exc:
            problem("template", exc.message, exc.column)
            return None
        if not text:
            problem("template", f"{template.name}: renders to empty text for this row")
            return None
        return text

    def _images(self, row: Row, problem: _Reporter) -> list[RecordImage]:
        column = self.spec.image_column
        assert column is not None
        if column not in row.values:
            problem("image-list", f"column {column!r} is missing from the row", column)
            return []
        try:
            names = image_names(row.values[column])
        except ValueError as exc:
            problem("image-list", str(exc), column)
            return []
        found = []
        for name in names:
            try:
                found.append(self._image(name))
            except ImageProblem as exc:
                problem(exc.kind, f"{name}: {exc.message}", column)
        return found

    def _image(self, name: str) -> RecordImage:
        store = self.spec.images
        assert store is not None
        name = safe_name(name)
        if self.spec.inline:
            data = store.read(name)
            return RecordImage(check_image(data), data=base64.b64encode(data).decode("ascii"))
        short = suffix_format(name)
        store.check_exists(name)
        return RecordImage(short, ref=store.reference(name))


def image_names(value: Any) -> list[str]:
    """The image names in a cell: None or empty for none, a list, a JSON list, or names split by ``;``."""
    if value is None:
        return []
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not a valid JSON list of image names: {exc}") from None
    if isinstance(value, list | tuple):
        if not all(isinstance(v, str) for v in value):
            raise ValueError("a list of image names must hold only text")
        return [v.strip() for v in value if v.strip()]
    if isinstance(value, str):
        return [v.strip() for v in value.split(";") if v.strip()]
    raise ValueError(f"expected image names, got {type(value).__name__}")


def model_input(
    spec: RecordSpec, prompt: str, system: str | None, images: list[RecordImage]
) -> dict[str, Any]:
    """The ``modelInput`` body of one record in ``spec.dialect``."""
    if spec.dialect == "anthropic":
        return _anthropic(spec.max_tokens, prompt, system, images)
    if spec.dialect == "converse":
        return _converse(spec.max_tokens, prompt, system, images)
    return _openai_chat(spec.max_tokens, prompt, system, images)


def _anthropic(max_tokens: int, prompt: str, system: str | None, images: list[RecordImage]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "image", "source": {"type": "url", "url": i.ref}}
        if i.ref is not None
        else {
            "type": "image",
            "source": {"type": "base64", "media_type": f"image/{i.format}", "data": i.data},
        }
        for i in images
    ]
    content.append({"type": "text", "text": prompt})
    body: dict[str, Any] = {"anthropic_version": ANTHROPIC_VERSION, "max_tokens": max_tokens}
    if system is not None:
        body["system"] = system
    body["messages"] = [{"role": "user", "content": content}]
    return body


def _converse(max_tokens: int, prompt: str, system: str | None, images: list[RecordImage]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"image": {"format": i.format, "source": {"s3Location": {"uri": i.ref}}}}
        if i.ref is not None
        else {"image": {"format": i.format, "source": {"bytes": i.data}}}
        for i in images
    ]
    content.append({"text": prompt})
    body: dict[str, Any] = {"messages": [{"role": "user", "content": content}]}
    if system is not None:
        body["system"] = [{"text": system}]
    body["inferenceConfig"] = {"maxTokens": max_tokens}
    return body


def _openai_chat(
    max_tokens: int, prompt: str, system: str | None, images: list[RecordImage]
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": i.ref or f"data:image/{i.format};base64,{i.data}"}}
        for i in images
    ]
    content.append({"type": "text", "text": prompt})
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": content})
    return {"messages": messages, "max_tokens": max_tokens}
