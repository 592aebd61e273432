"""Bedrock batch record lines: ``{"recordId", "modelInput"}`` in, ``modelOutput`` or ``error`` out."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Any

import orjson

from bulkinfer.domain.request import RecordError
from bulkinfer.formats.jsonl import Line, OversizeLine

MAX_DEPTH = 200
"""orjson writes at most 255 levels of nesting; deeper input could be read but never written back."""
RECORD_ID_ALPHABET = string.ascii_uppercase + string.digits
RECORD_ID_LENGTH = 11
MAX_RECORD_ID_LENGTH = 256


@dataclass(slots=True)  # not frozen: built per record (see domain.request)
class InputRecord:
    """One input line, parsed. ``error`` is set when the line itself is unusable."""

    line: int
    record_id: str
    model_input: Any
    error: RecordError | None = None
    dialect: str | None = None
    """The dialect its body is in, where its line says (an OpenAI batch line's ``url``); else found
    from the body."""


def generated_record_id(seed: str, line: int) -> str:
    """An 11-character ``[A-Z0-9]`` id, stable for the same job, file and line so resumes agree."""
    digest = hashlib.blake2b(f"{seed}:{line}".encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "big")
    chars = []
    for _ in range(RECORD_ID_LENGTH):
        value, index = divmod(value, len(RECORD_ID_ALPHABET))
        chars.append(RECORD_ID_ALPHABET[index])
    return "".join(chars)


def parse_object(raw: Line, line: int, *, source: str, seed: str) -> dict[str, Any] | InputRecord:
    """One line's JSON object, or the invalid record it is (not JSON, not an object, too big or deep),
    in any record format."""
    if isinstance(raw, OversizeLine):
        return _invalid(seed, line, f"{source} line {line}: line is {raw.size} bytes, over the size limit")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _invalid(seed, line, f"{source} line {line}: {_json_problem(raw, exc)}")
    if type(obj) is not dict:
        return _invalid(seed, line, f"{source} line {line}: expected a JSON object, got {_type_name(obj)}")
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth(obj) > MAX_DEPTH:
        return _invalid(seed, line, f"{source} line {line}: nested deeper than {MAX_DEPTH} levels")
    return obj


def parse_line(raw: Line, line: int, *, source: str, seed: str) -> InputRecord:
    """Parse one input line; every problem becomes an ``error`` naming file, line and field."""
    obj = parse_object(raw, line, source=source, seed=seed)
    if isinstance(obj, InputRecord):
        return obj
    record_id = obj.get("recordId")
    if record_id is None:
        record_id = generated_record_id(seed, line)
    elif type(record_id) is not str or not record_id or len(record_id) > MAX_RECORD_ID_LENGTH:
        message = f"{source} line {line}: recordId: must be a non-empty string of at most 256 characters"
        return _invalid(seed, line, message)
    model_input = obj.get("modelInput")
    if type(model_input) is dict:
        return InputRecord(line, record_id, model_input)
    if model_input is None:
        said = foreign_batch_line(obj) or "modelInput: field required"
        return InputRecord(line, record_id, None, _bad(f"{source} line {line}: {said}"))
    message = f"{source} line {line}: modelInput: expected a JSON object, got {_type_name(model_input)}"
    return InputRecord(line, record_id, model_input, _bad(message))


_FOREIGN = {
    "body": ("an OpenAI Batch API input line", "put body as modelInput", ".body"),
    "params": (
        "an Anthropic Message Batches input line",
        "put params, without model and with anthropic_version, as modelInput",
        '(.params | del(.model) + {anthropic_version: "bedrock-2023-05-31"})',
    ),
}
"""Another provider's batch line, by the key holding its request: what it is, and how to convert it
(in words and as the ``jq`` expression of its ``modelInput``)."""


def foreign_batch_line(obj: dict[str, Any]) -> str | None:
    """What a line of another provider's batch format is and how to run it here; ``None`` for any other
    line. Such a line has ``custom_id`` and its request under ``body`` (OpenAI) or ``params`` (Anthropic)."""
    if "modelInput" in obj or "custom_id" not in obj:
        return None
    for key, (what, how, expression) in _FOREIGN.items():
        if key in obj:
            return (
                f"this is {what}; bulkinfer reads Bedrock batch records {{recordId, modelInput}}: {how} "
                f"and custom_id as recordId, e.g. "
                f"jq -c '{{recordId: .custom_id, modelInput: {expression}}}' IN.jsonl > records.jsonl"
            )
    return None


def render_output(record: InputRecord, output: dict[str, Any], attempts: int = 0) -> bytes:
    line = {"recordId": record.record_id, "modelInput": record.model_input, "modelOutput": output}
    if attempts:  # our own key: how many calls a remote provider took for this record
        line["attempts"] = attempts
    return orjson.dumps(line)


def render_error(record: InputRecord, error: RecordError) -> bytes:
    body = {"errorCode": error.code, "errorMessage": error.message}
    line = {"recordId": record.record_id, "modelInput": record.model_input, "error": body}
    if error.attempts:
        line["attempts"] = error.attempts
    return orjson.dumps(line)


def _invalid(seed: str, line: int, message: str) -> InputRecord:
    return InputRecord(line, generated_record_id(seed, line), None, _bad(message))


def _bad(message: str) -> RecordError:
    return RecordError(400, message, "ValidationError")


def _json_problem(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"line is not valid UTF-8 (byte {err.start})"
    return f"invalid JSON: {exc}"


def _depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (iteratively: it may be deeper than Python's stack)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def _type_name(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def output_text(model_output: dict[str, Any]) -> str:
    """A short human-readable form of any dialect's ``modelOutput``, for previews."""
    if "content" in model_output:  # Anthropic
        return "".join(b.get("text", "") for b in model_output["content"] if isinstance(b, dict))
    if "output" in model_output:  # Converse
        blocks = model_output["output"].get("message", {}).get("content", [])
        return "".join(b.get("text", "") for b in blocks if isinstance(b, dict))
    if "choices" in model_output:  # OpenAI chat
        return str(model_output["choices"][0]["message"]["content"])
    if "embedding" in model_output:  # Titan
        return f"embedding of {len(model_output['embedding'])} dimensions"
    if "data" in model_output:  # OpenAI embeddings
        return f"{len(model_output['data'])} embedding(s)"
    return orjson.dumps(model_output).decode()[:200]
