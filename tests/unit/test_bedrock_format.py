"""Unit tests for ``formats.bedrock``: parsing Bedrock input lines and rendering output lines."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from bulkinfer.dialects.registry import DIALECTS
from bulkinfer.domain.request import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    Message,
    RecordError,
    TextPart,
    Usage,
)
from bulkinfer.formats.bedrock import (
    MAX_RECORD_ID_LENGTH,
    InputRecord,
    generated_record_id,
    output_text,
    parse_line,
    render_error,
    render_output,
)
from bulkinfer.formats.jsonl import OversizeLine

SOURCE = "prompts-2024.jsonl"
SEED = "job123:prompts-2024.jsonl"
LINE = 17
RECORD_ID_RE = re.compile(r"^[A-Z0-9]{11}$")

BODY: dict[str, Any] = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Summarise: caf\u00e9"}]}],
}


def parse(raw: bytes | OversizeLine, line: int = LINE) -> InputRecord:
    return parse_line(raw, line, source=SOURCE, seed=SEED)


def line_of(obj: Any) -> bytes:
    return orjson.dumps(obj)


def assert_error(record: InputRecord, *fragments: str) -> str:
    assert record.error is not None
    assert record.error.code == 400
    assert record.error.kind == "ValidationError"
    message = record.error.message
    assert SOURCE in message
    assert f"line {record.line}" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# valid lines


def test_valid_line() -> None:
    record = parse(line_of({"recordId": "CALL0000001", "modelInput": BODY}))
    assert record == InputRecord(LINE, "CALL0000001", BODY, None)


def test_extra_top_level_fields_are_ignored() -> None:
    record = parse(line_of({"recordId": "r1", "modelInput": BODY, "note": "x", "modelId": "m"}))
    assert record.error is None
    assert record.record_id == "r1"
    assert record.model_input == BODY


def test_key_order_does_not_matter_and_whitespace_is_allowed() -> None:
    raw = b'  {\n "modelInput" : {"inputText": "hi"} , "recordId": "r-1" }  '
    assert parse(raw) == InputRecord(LINE, "r-1", {"inputText": "hi"}, None)


def test_non_ascii_record_id_and_body_are_kept() -> None:
    record = parse(line_of({"recordId": "\u00e9t\u00e9-1", "modelInput": {"inputText": "\u2713"}}))
    assert record.error is None
    assert record.record_id == "\u00e9t\u00e9-1"
    assert record.model_input == {"inputText": "\u2713"}


def test_record_id_of_max_length_is_accepted() -> None:
    record_id = "R" * MAX_RECORD_ID_LENGTH
    record = parse(line_of({"recordId": record_id, "modelInput": BODY}))
    assert record.error is None
    assert record.record_id == record_id


def test_empty_model_input_object_is_not_a_line_error() -> None:
    # Validation against the model's body shape is the dialect's job, not the line parser's.
    record = parse(line_of({"recordId": "r", "modelInput": {}}))
    assert record.error is None
    assert record.model_input == {}


# generated record ids


def test_missing_record_id_is_generated() -> None:
    record = parse(line_of({"modelInput": BODY}))
    assert record.error is None
    assert RECORD_ID_RE.match(record.record_id)
    assert record.record_id == generated_record_id(SEED, LINE)
    assert record.model_input == BODY


def test_null_record_id_is_treated_as_missing() -> None:
    record = parse(line_of({"recordId": None, "modelInput": BODY}))
    assert record.error is None
    assert record.record_id == generated_record_id(SEED, LINE)


def test_generated_record_id_shape_and_stability() -> None:
    for line in (0, 1, 2, 99, 10**9):
        value = generated_record_id(SEED, line)
        assert RECORD_ID_RE.match(value), value
        assert generated_record_id(SEED, line) == value


def test_generated_record_id_differs_per_line() -> None:
    ids = {generated_record_id(SEED, line) for line in range(1, 2001)}
    assert len(ids) == 2000


def test_generated_record_id_differs_per_seed() -> None:
    assert generated_record_id("job-a:x.jsonl", 1) != generated_record_id("job-b:x.jsonl", 1)
    assert generated_record_id("a.jsonl", 1) != generated_record_id("b.jsonl", 1)


def test_generated_record_id_is_pinned() -> None:
    # Resumed jobs join on these ids; a change of algorithm would orphan old outputs.
    assert generated_record_id("s", 7) == "CNRLN4IGHLA"


def test_generated_ids_use_the_whole_alphabet() -> None:
    chars = set("".join(generated_record_id("seed", line) for line in range(500)))
    assert chars == set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def test_same_line_number_parses_to_the_same_id_twice() -> None:
    raw = line_of({"modelInput": BODY})
    assert parse(raw).record_id == parse(raw).record_id
    assert parse(raw, 1).record_id != parse(raw, 2).record_id


# line errors


def test_bad_json() -> None:
    record = parse(b'{"recordId": "r1", "modelInput": {')
    message = assert_error(record, "invalid JSON")
    assert record.model_input is None
    assert RECORD_ID_RE.match(record.record_id)
    assert record.record_id == generated_record_id(SEED, LINE)
    assert "UTF-8" not in message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"recordId": "r1", "modelInput": {"inputText": "\xff\xfe"}}',
        b'{"recordId": "caf\xe9", "modelInput": {}}',  # latin-1, not UTF-8
        b"\xc3\x28",
    ],
)
def test_non_utf8_bytes(raw: bytes) -> None:
    record = parse(raw)
    assert_error(record, "UTF-8")
    assert record.model_input is None


def test_non_utf8_message_gives_the_byte_offset() -> None:
    raw = b'{"recordId": "\xff"}'
    offset = raw.index(b"\xff")
    assert_error(parse(raw), f"byte {offset}")


@pytest.mark.parametrize(
    ("raw", "type_name"),
    [
        (b"[1, 2]", "array"),
        (b"[]", "array"),
        (b"42", "number"),
        (b"4.5", "number"),
        (b'"text"', "string"),
        (b"true", "boolean"),
        (b"null", "null"),
    ],
)
def test_json_that_is_not_an_object(raw: bytes, type_name: str) -> None:
    record = parse(raw)
    assert_error(record, "expected a JSON object", type_name)
    assert record.model_input is None


@pytest.mark.parametrize("payload", [{"recordId": "r9"}, {"recordId": "r9", "modelInput": None}])
def test_missing_model_input(payload: dict[str, Any]) -> None:
    record = parse(line_of(payload))
    assert_error(record, "modelInput", "required")
    assert record.record_id == "r9"  # the id is still known, so the error line can carry it


@pytest.mark.parametrize(
    ("model_input", "type_name"),
    [([BODY], "array"), ("hello", "string"), (3, "number"), (1.5, "number"), (False, "boolean")],
)
def test_model_input_of_the_wrong_type(model_input: Any, type_name: str) -> None:
    record = parse(line_of({"recordId": "r2", "modelInput": model_input}))
    assert_error(record, "modelInput", "expected a JSON object", type_name)
    assert record.record_id == "r2"
    assert record.model_input == model_input  # echoed back on the error line


@pytest.mark.parametrize(
    "record_id",
    [5, 1.5, True, ["a"], {"id": "a"}, "", "R" * (MAX_RECORD_ID_LENGTH + 1)],
)
def test_bad_record_id(record_id: Any) -> None:
    record = parse(line_of({"recordId": record_id, "modelInput": BODY}))
    assert_error(record, "recordId", "non-empty string", str(MAX_RECORD_ID_LENGTH))
    assert RECORD_ID_RE.match(record.record_id)
    assert record.model_input is None


def test_oversize_line() -> None:
    record = parse(OversizeLine(2_000_001))
    assert_error(record, "2000001 bytes", "size limit")
    assert record.record_id == generated_record_id(SEED, LINE)
    assert record.model_input is None


def test_every_error_names_its_own_line_number() -> None:
    for line in (1, 9, 12345):
        record = parse(b"nope", line)
        assert record.line == line
        assert_error(record, f"line {line}:")


# output lines


def test_render_output_round_trips_with_exactly_the_bedrock_keys() -> None:
    record = parse(line_of({"recordId": "CALL0000001", "modelInput": BODY}))
    output = {"content": [{"type": "text", "text": "ok \u2713"}], "usage": {"input_tokens": 3}}
    data = orjson.loads(render_output(record, output))
    assert list(data) == ["recordId", "modelInput", "modelOutput"]
    assert data == {"recordId": "CALL0000001", "modelInput": BODY, "modelOutput": output}


def test_render_output_is_one_line() -> None:
    record = parse(line_of({"recordId": "r", "modelInput": {"inputText": "a\nb"}}))
    rendered = render_output(record, {"text": "x\ny"})
    assert b"\n" not in rendered


def test_render_error_round_trips_with_exactly_the_bedrock_keys() -> None:
    record = parse(line_of({"recordId": "r5", "modelInput": {"inputText": "Hello world"}}))
    data = orjson.loads(render_error(record, RecordError(400, "bad request")))
    assert list(data) == ["recordId", "modelInput", "error"]
    assert data == {
        "recordId": "r5",
        "modelInput": {"inputText": "Hello world"},
        "error": {"errorCode": 400, "errorMessage": "bad request"},
    }
    assert isinstance(data["error"]["errorCode"], int)
    assert list(data["error"]) == ["errorCode", "errorMessage"]


def test_render_error_for_an_unparseable_line() -> None:
    record = parse(b"{broken")
    assert record.error is not None
    data = orjson.loads(render_error(record, record.error))
    assert data["recordId"] == record.record_id
    assert data["modelInput"] is None
    assert data["error"]["errorCode"] == 400
    assert SOURCE in data["error"]["errorMessage"]


@pytest.mark.parametrize("code", [400, 408, 429, 500])
def test_render_error_keeps_the_code(code: int) -> None:
    record = parse(line_of({"recordId": "r", "modelInput": {}}))
    data = orjson.loads(render_error(record, RecordError(code, "m", "ModelError")))
    assert data["error"] == {"errorCode": code, "errorMessage": "m"}


# output_text previews


def _chat_request() -> ChatRequest:
    return ChatRequest(messages=(Message("user", (TextPart("hi"),)),))


@pytest.mark.parametrize("dialect", ["anthropic", "converse", "openai-chat"])
def test_output_text_of_chat_dialects(dialect: str) -> None:
    result = ChatResult("Hello there", "end_turn", Usage(3, 2), model="m")
    assert output_text(DIALECTS[dialect].render(result, _chat_request())) == "Hello there"


def test_output_text_of_titan_embedding() -> None:
    result = EmbeddingResult(((0.1, 0.2, 0.3),), Usage(2, 0))
    rendered = DIALECTS["titan-embed"].render(result, EmbeddingRequest(("x",)))
    assert output_text(rendered) == "embedding of 3 dimensions"


def test_output_text_of_openai_embeddings() -> None:
    result = EmbeddingResult(((0.1,), (0.2,)), Usage(2, 0))
    rendered = DIALECTS["openai-embeddings"].render(result, EmbeddingRequest(("x", "y")))
    assert output_text(rendered) == "2 embedding(s)"


def test_output_text_joins_anthropic_blocks_and_skips_junk() -> None:
    output = {"content": [{"type": "text", "text": "a"}, "junk", {"type": "text", "text": "b"}]}
    assert output_text(output) == "ab"


def test_output_text_of_unknown_shape_is_truncated_json() -> None:
    text = output_text({"something": "x" * 500})
    assert len(text) == 200
    assert text.startswith('{"something":"xxx')
