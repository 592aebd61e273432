"""Unit tests for the OpenAI and Anthropic batch record formats (``formats.openai_batch``,
``formats.anthropic_batch``) and the registry that picks one (``formats.records``): parsing input lines,
rendering result lines in the providers' own shapes, telling successes from failures."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkinfer.domain.job import Counts
from bulkinfer.domain.lineset import LineSet
from bulkinfer.domain.request import RecordError
from bulkinfer.engine.finalize import write_output
from bulkinfer.formats import anthropic_batch, openai_batch
from bulkinfer.formats.bedrock import InputRecord
from bulkinfer.formats.jsonl import OversizeLine
from bulkinfer.formats.records import (
    ANTHROPIC,
    BEDROCK,
    FORMATS,
    OPENAI,
    duplicate_id,
    format_of_line,
    get_format,
)
from bulkinfer.store.state import ChunkRecord

SOURCE = "batch-2024.jsonl"
SEED = "job123:batch-2024.jsonl"
LINE = 17
GENERATED_ID = re.compile(r"^[A-Z0-9]{11}$")

CHAT_BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
OPENAI_LINE: dict[str, Any] = {
    "custom_id": "req-1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": CHAT_BODY,
}
PARAMS: dict[str, Any] = {
    "model": "claude-x",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hi"}],
}
ANTHROPIC_LINE: dict[str, Any] = {"custom_id": "req-1", "params": PARAMS}


def openai(obj: Any, line: int = LINE) -> InputRecord:
    raw = obj if isinstance(obj, bytes | OversizeLine) else orjson.dumps(obj)
    return openai_batch.parse_line(raw, line, source=SOURCE, seed=SEED)


def anthropic(obj: Any, line: int = LINE) -> InputRecord:
    raw = obj if isinstance(obj, bytes | OversizeLine) else orjson.dumps(obj)
    return anthropic_batch.parse_line(raw, line, source=SOURCE, seed=SEED)


def assert_error(record: InputRecord, *fragments: str) -> str:
    """The record is invalid (400) with a message naming the file, the line and ``fragments``."""
    assert record.error is not None, record
    assert record.error.code == 400
    assert record.model_input is None
    message = record.error.message
    assert message.startswith(f"{SOURCE} line {record.line}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- OpenAI: input lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("/v1/chat/completions", "openai-chat"),
        ("/v1/embeddings", "openai-embeddings"),
        ("/v1/completions", "openai-completions"),
    ],
)
def test_an_openai_line_is_read_in_the_dialect_its_url_names(url: str, dialect: str) -> None:
    body = {"model": "m", "input": "a"} if "embeddings" in url else CHAT_BODY
    record = openai({**OPENAI_LINE, "url": url, "body": body})
    assert record.error is None
    assert (record.line, record.record_id, record.model_input, record.dialect) == (
        LINE,
        "req-1",
        body,
        dialect,
    )


def test_extra_keys_and_stream_false_are_fine() -> None:
    record = openai({**OPENAI_LINE, "body": {**CHAT_BODY, "stream": False}, "extra": 1})
    assert record.error is None
    assert record.model_input == {**CHAT_BODY, "stream": False}


BAD_OPENAI: dict[str, tuple[dict[str, Any], str]] = {
    "no custom_id": ({k: v for k, v in OPENAI_LINE.items() if k != "custom_id"}, "custom_id: field required"),
    "null custom_id": ({**OPENAI_LINE, "custom_id": None}, "custom_id: field required"),
    "int custom_id": ({**OPENAI_LINE, "custom_id": 7}, "custom_id: must be a non-empty string"),
    "list custom_id": ({**OPENAI_LINE, "custom_id": ["a"]}, "custom_id: must be a non-empty string"),
    "empty custom_id": ({**OPENAI_LINE, "custom_id": ""}, "custom_id: must be a non-empty string"),
    "long custom_id": ({**OPENAI_LINE, "custom_id": "x" * 513}, "custom_id: must be a non-empty string"),
    "GET": ({**OPENAI_LINE, "method": "GET"}, "method: must be POST, not 'GET'"),
    "post": ({**OPENAI_LINE, "method": "post"}, "method: must be POST"),
    "no method": ({k: v for k, v in OPENAI_LINE.items() if k != "method"}, "method: must be POST"),
    "responses url": (
        {**OPENAI_LINE, "url": "/v1/responses"},
        "url: '/v1/responses' is not a batch endpoint",
    ),
    "full url": ({**OPENAI_LINE, "url": "https://api.openai.com/v1/chat/completions"}, "url: "),
    "no url": ({k: v for k, v in OPENAI_LINE.items() if k != "url"}, "url: None is not a batch endpoint"),
    "list url": ({**OPENAI_LINE, "url": ["/v1/chat/completions"]}, "url: "),
    "object url": ({**OPENAI_LINE, "url": {"path": "/v1/embeddings"}}, "url: "),
    "no body": ({k: v for k, v in OPENAI_LINE.items() if k != "body"}, "body: field required"),
    "null body": ({**OPENAI_LINE, "body": None}, "body: field required"),
    "list body": ({**OPENAI_LINE, "body": [CHAT_BODY]}, "body: expected a JSON object"),
    "string body": ({**OPENAI_LINE, "body": "{}"}, "body: expected a JSON object"),
    "stream": (
        {**OPENAI_LINE, "body": {**CHAT_BODY, "stream": True}},
        "body.stream: streaming is not supported",
    ),
}


@pytest.mark.parametrize("case", list(BAD_OPENAI))
def test_a_bad_openai_line_is_an_error_naming_file_line_and_field(case: str) -> None:
    obj, said = BAD_OPENAI[case]
    record = openai(obj)
    assert_error(record, said)
    assert record.error is not None and record.error.kind == "invalid_request"
    assert record.dialect is None


def test_a_bad_openai_line_keeps_its_custom_id_where_it_is_a_valid_one() -> None:
    assert openai({**OPENAI_LINE, "method": "GET"}).record_id == "req-1"
    for bad in (7, "", "x" * 513):
        record = openai({**OPENAI_LINE, "custom_id": bad})
        assert GENERATED_ID.match(record.record_id), record.record_id
    assert openai({**OPENAI_LINE, "custom_id": "x" * 512}).record_id == "x" * 512


@pytest.mark.parametrize("parse", [openai, anthropic], ids=["openai", "anthropic"])
@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (OversizeLine(2_000_000), "line is 2000000 bytes, over the size limit"),
        (b'{"custom_id": "a", ', "invalid JSON"),
        (b"[1, 2]", "expected a JSON object, got array"),
        (b"42", "expected a JSON object, got number"),
        (b'"custom_id"', "expected a JSON object, got string"),
        (b"null", "expected a JSON object, got null"),
        (b'{"custom_id": "a", "x": ' + b"[" * 300 + b"]" * 300 + b"}", "nested deeper than"),
    ],
)
def test_a_line_that_is_no_json_object_is_an_error_naming_file_and_line(
    raw: Any, said: str, parse: Any
) -> None:
    record = parse(raw)
    assert record.error is not None
    assert record.error.message.startswith(f"{SOURCE} line {LINE}: "), record.error.message
    assert said in record.error.message
    assert GENERATED_ID.match(record.record_id)


# --- OpenAI: result lines --------------------------------------------------------------------------

RECORD = InputRecord(LINE, "req-1", CHAT_BODY, dialect="openai-chat")
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def test_an_openai_output_line_has_openais_shape() -> None:
    raw = openai_batch.render_output(RECORD, COMPLETION, 0)
    line = orjson.loads(raw)
    assert list(line) == ["id", "custom_id", "response", "error"]
    assert line["id"].startswith("batch_req_")
    assert line["custom_id"] == "req-1"
    assert line["error"] is None
    response = line["response"]
    assert set(response) == {"status_code", "request_id", "body"}
    assert response["status_code"] == 200
    assert response["request_id"].startswith("req_")
    assert response["body"] == COMPLETION
    assert openai_batch.succeeded(raw)
    again = orjson.loads(openai_batch.render_output(RECORD, COMPLETION, 3))
    assert again["id"] != line["id"]  # each line written has an id of its own (another batch's differs)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, "invalid_request_error"),
        (404, "invalid_request_error"),
        (408, "timeout"),
        (429, "rate_limit_exceeded"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
def test_an_openai_error_line_has_openais_shape(code: int, kind: str) -> None:
    error = RecordError(code, f"{SOURCE} line {LINE}: modelInput.messages: too short", "ValidationError")
    raw = openai_batch.render_error(RECORD, error)
    line = orjson.loads(raw)
    assert list(line) == ["id", "custom_id", "response", "error"]
    assert line["custom_id"] == "req-1"
    assert line["error"] is None  # as OpenAI writes an HTTP-level failure (see the reference, §1.5)
    response = line["response"]
    assert set(response) == {"status_code", "request_id", "body"}
    assert response["status_code"] == code
    assert response["body"] == {
        "error": {
            "message": f"{SOURCE} line {LINE}: body.messages: too short",  # its field, as OpenAI names it
            "type": kind,
            "param": None,
            "code": "ValidationError",
        }
    }
    assert not openai_batch.succeeded(raw)


@pytest.mark.parametrize(("why", "code"), [("cancelled", "batch_cancelled"), ("expired", "batch_expired")])
def test_an_openai_line_that_never_ran_has_response_null_and_an_error_code(why: str, code: str) -> None:
    raw = openai_batch.render_unrun(RECORD, why)
    line = orjson.loads(raw)
    assert list(line) == ["id", "custom_id", "response", "error"]
    assert line["custom_id"] == "req-1"
    assert line["response"] is None
    assert set(line["error"]) == {"code", "message"}
    assert line["error"]["code"] == code
    assert why in line["error"]["message"]
    assert not openai_batch.succeeded(raw)


def test_line_ids_differ_between_records_and_lines() -> None:
    ids = {
        orjson.loads(openai_batch.render_output(r, COMPLETION, 0))["id"]
        for r in (RECORD, InputRecord(LINE + 1, "req-1", None), InputRecord(LINE, "req-2", None))
    }
    assert len(ids) == 3


def test_succeeded_is_not_fooled_by_what_an_error_line_quotes() -> None:
    trick = '"response":{"status_code":200,'
    raw = openai_batch.render_error(InputRecord(1, trick, None), RecordError(400, trick, trick))
    assert not openai_batch.succeeded(raw)


# --- Anthropic -----------------------------------------------------------------------------------


def test_an_anthropic_request_is_read_without_its_model() -> None:
    record = anthropic(ANTHROPIC_LINE)
    assert record.error is None
    assert record.record_id == "req-1"
    assert record.dialect == "anthropic"
    assert record.model_input == {k: v for k, v in PARAMS.items() if k != "model"}
    assert PARAMS["model"] == "claude-x"  # the line's own params are left as they were


@pytest.mark.parametrize("custom_id", ["a", "A-b_9", "x" * 64, "0" * 10])
def test_an_anthropic_custom_id_may_be_1_to_64_letters_digits_dashes_underscores(custom_id: str) -> None:
    record = anthropic({**ANTHROPIC_LINE, "custom_id": custom_id})
    assert record.error is None
    assert record.record_id == custom_id


@pytest.mark.parametrize("custom_id", ["", "x" * 65, "a b", "a.b", "a/b", "caf\u00e9", "a\n", 5, ["a"], True])
def test_any_other_anthropic_custom_id_is_refused(custom_id: Any) -> None:
    record = anthropic({**ANTHROPIC_LINE, "custom_id": custom_id})
    assert_error(record, "custom_id: must match ^[a-zA-Z0-9_-]{1,64}$")
    assert GENERATED_ID.match(record.record_id)


BAD_ANTHROPIC: dict[str, tuple[dict[str, Any], str]] = {
    "no custom_id": ({"params": PARAMS}, "custom_id: field required"),
    "no params": ({"custom_id": "a"}, "params: field required"),
    "list params": ({"custom_id": "a", "params": [PARAMS]}, "params: expected a JSON object"),
    "no model": ({"custom_id": "a", "params": {**PARAMS, "model": None}}, "params.model: field required"),
    "empty model": ({"custom_id": "a", "params": {**PARAMS, "model": ""}}, "params.model: field required"),
    "int model": ({"custom_id": "a", "params": {**PARAMS, "model": 3}}, "params.model: field required"),
    "stream": ({"custom_id": "a", "params": {**PARAMS, "stream": True}}, "params.stream: streaming is not"),
}


@pytest.mark.parametrize("case", list(BAD_ANTHROPIC))
def test_a_bad_anthropic_request_is_an_error_naming_file_line_and_field(case: str) -> None:
    obj, said = BAD_ANTHROPIC[case]
    record = anthropic(obj)
    assert_error(record, said)
    assert record.error is not None and record.error.kind == "invalid_request_error"


def test_an_anthropic_succeeded_result() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    raw = anthropic_batch.render_output(RECORD, message, 0)
    assert orjson.loads(raw) == {"custom_id": "req-1", "result": {"type": "succeeded", "message": message}}


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (408, "timeout_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_an_anthropic_errored_result_has_the_error_type_of_its_status(code: int, kind: str) -> None:
    error = RecordError(code, f"{SOURCE} line {LINE}: modelInput.max_tokens: required", "ValidationError")
    line = orjson.loads(anthropic_batch.render_error(RECORD, error))
    assert list(line) == ["custom_id", "result"]
    assert line["custom_id"] == "req-1"
    assert line["result"]["type"] == "errored"
    body = line["result"]["error"]
    assert set(body) == {"type", "error", "request_id"}
    assert body["type"] == "error"
    assert body["error"] == {"type": kind, "message": f"{SOURCE} line {LINE}: params.max_tokens: required"}


@pytest.mark.parametrize(("why", "kind"), [("cancelled", "canceled"), ("expired", "expired")])
def test_an_anthropic_request_that_never_ran(why: str, kind: str) -> None:
    line = orjson.loads(anthropic_batch.render_unrun(RECORD, why))
    assert line == {"custom_id": "req-1", "result": {"type": kind}}


# --- The registry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (orjson.dumps({"recordId": "a", "modelInput": {}}), "bedrock"),
        (orjson.dumps({"modelInput": {}}), "bedrock"),
        (orjson.dumps({"custom_id": "a", "modelInput": {}}), "bedrock"),
        (orjson.dumps({"recordId": "a"}), "bedrock"),
        (orjson.dumps(OPENAI_LINE), "openai"),
        (orjson.dumps({"custom_id": "a"}), "openai"),
        (orjson.dumps(ANTHROPIC_LINE), "anthropic"),
        (b"not json", None),
        (b"[1]", None),
        (b'"custom_id"', None),
        (OversizeLine(10**7), None),
    ],
)
def test_format_of_line(raw: Any, name: str | None) -> None:
    assert format_of_line(raw) == name


def test_formats_by_name() -> None:
    assert get_format(None) is BEDROCK
    assert [get_format(n) for n in ("bedrock", "openai", "anthropic")] == [BEDROCK, OPENAI, ANTHROPIC]
    with pytest.raises(ValueError, match="unknown record format 'csv'; known: bedrock, openai, anthropic"):
        get_format("csv")
    assert OPENAI.succeeded is openai_batch.succeeded  # OpenAI's successes and failures: two files
    assert ANTHROPIC.succeeded is None and BEDROCK.succeeded is None  # one file
    assert BEDROCK.unrun is None  # Bedrock leaves out what never ran
    assert ANTHROPIC.unrun is not None and OPENAI.unrun is not None


def test_each_format_names_a_records_body_as_its_lines_do() -> None:
    said = "f line 2: modelInput.messages: too short"
    assert BEDROCK.in_own_words(said) == said
    assert OPENAI.in_own_words(said) == "f line 2: body.messages: too short"
    assert ANTHROPIC.in_own_words(said) == "f line 2: params.messages: too short"


@pytest.mark.parametrize(
    ("fmt", "field"), [(BEDROCK, "recordId"), (OPENAI, "custom_id"), (ANTHROPIC, "custom_id")]
)
def test_a_duplicate_id_is_named_by_its_formats_field(fmt: Any, field: str) -> None:
    said = duplicate_id(fmt, SOURCE, 9, "a", "line 2")
    tail = "record ids must be unique in a job"
    assert said == f"{SOURCE} line 9: {field}: duplicate of 'a' first seen at line 2; {tail}"


# --- Error messages in the run summary and manifest ------------------------------------------------


@pytest.mark.parametrize("name", ["openai", "anthropic", "bedrock"])
def test_error_messages_are_sampled_in_every_format(tmp_path: Path, name: str) -> None:
    fmt = FORMATS[name]
    record = InputRecord(1, "a", {"messages": [{"role": "user", "content": '"error":{'}]})
    lines = [
        fmt.output(record, {"content": '"error":{"errorMessage": "not me"}'}, 0),
        fmt.error(record, RecordError(400, "bad one", "ValidationError")),
    ]
    (tmp_path / "c.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    chunk = ChunkRecord(0, "c.jsonl", LineSet.of([1, 2]), 1, Counts(processed=2, errors=1))
    errors: list[str] = []
    write_output([chunk], tmp_path, tmp_path / "c.out", 2, errors)
    assert errors == ["bad one"]


# --- Properties ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
KEYS = st.sampled_from(["custom_id", "method", "url", "body", "params", "recordId", "modelInput", "x"])
LIKELY = {
    "custom_id": st.sampled_from(["a", "", "x" * 65, "a b"]),
    "method": st.just("POST"),
    "url": st.sampled_from(list(openai_batch.ENDPOINTS)),
    "body": st.fixed_dictionaries({}, optional={"stream": JSON, "messages": JSON, "model": JSON}),
    "params": st.fixed_dictionaries({}, optional={"stream": JSON, "model": JSON, "max_tokens": JSON}),
}
LINE_OBJECTS = st.dictionaries(KEYS, JSON, max_size=6).flatmap(
    lambda obj: st.fixed_dictionaries(
        {k: (st.one_of(LIKELY[k], st.just(v)) if k in LIKELY else st.just(v)) for k, v in obj.items()}
    )
)


@settings(max_examples=150, deadline=None)
@given(LINE_OBJECTS, st.integers(1, 10**6))
def test_any_json_object_line_parses_to_a_record_or_an_error_and_renders(
    obj: dict[str, Any], line: int
) -> None:
    raw = json.dumps(obj).encode()  # (orjson refuses integers past 64 bits; a line may hold them)
    for fmt in (OPENAI, ANTHROPIC, BEDROCK):
        record = fmt.parse(raw, line, source=SOURCE, seed=SEED)
        assert record.line == line
        assert isinstance(record.record_id, str) and record.record_id
        if record.error is None:
            assert type(record.model_input) is dict
            if fmt is not BEDROCK:
                assert record.dialect is not None
                assert record.record_id == obj["custom_id"]
        else:
            assert record.error.message.startswith(f"{SOURCE} line {line}: "), record.error.message
        error_line = orjson.loads(fmt.error(record, record.error or RecordError(500, "x", "y")))
        assert isinstance(error_line, dict)
        if fmt.succeeded is not None:
            assert fmt.succeeded(fmt.output(record, {"ok": True}, 0))
            assert not fmt.succeeded(fmt.error(record, RecordError(400, "no", "x")))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_parse_to_a_record_or_an_error(raw: bytes) -> None:
    for fmt in (OPENAI, ANTHROPIC):
        record = fmt.parse(raw, 3, source=SOURCE, seed=SEED)
        assert record.error is not None or type(record.model_input) is dict
