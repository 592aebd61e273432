"""OpenAI Batch API lines: ``{custom_id, method, url, body}`` in; output and error lines out.

The same lines ``vllm run-batch`` reads. A line that succeeded is written as OpenAI's output file has
it (``response.status_code`` 200, the endpoint's answer in ``response.body``); one that failed as its
error file has it (the status in ``response.status_code``, OpenAI's error object in ``response.body``);
a line that never ran, because its batch was cancelled or expired, has ``response: null`` and
``error: {code: batch_cancelled | batch_expired}``. Clients match lines on ``custom_id``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from bulkinfer.domain.request import RecordError
from bulkinfer.formats.bedrock import InputRecord, generated_record_id, parse_object
from bulkinfer.formats.jsonl import Line

ENDPOINTS = {
    "/v1/chat/completions": "openai-chat",
    "/v1/embeddings": "openai-embeddings",
    "/v1/completions": "openai-completions",
}
"""The endpoints a batch line may name, and the dialect each one's body is read in."""
MAX_CUSTOM_ID = 512
ERROR_TYPES = {400: "invalid_request_error", 408: "timeout", 429: "rate_limit_exceeded"}
UNRUN = {"cancelled": "batch_cancelled", "expired": "batch_expired"}
"""Why a line never ran, as OpenAI's error code for it."""
INPUT_FIELD = "body"
"""The field holding a line's request body (the dialects' messages call it ``modelInput``)."""


def parse_line(raw: Line, line: int, *, source: str, seed: str) -> InputRecord:
    """One batch line; every problem becomes the record's error, naming file, line and field."""
    obj = parse_object(raw, line, source=source, seed=seed)
    if isinstance(obj, InputRecord):
        return obj
    where = f"{source} line {line}"
    custom_id = obj.get("custom_id")
    record_id = str(custom_id) if _valid_id(custom_id) else generated_record_id(seed, line)
    problem = _problem(obj, custom_id)
    if problem is not None:
        return InputRecord(line, record_id, None, _bad(f"{where}: {problem}"))
    return InputRecord(line, record_id, obj["body"], dialect=ENDPOINTS[obj["url"]])


def _problem(obj: dict[str, Any], custom_id: Any) -> str | None:
    if custom_id is None:
        return "custom_id: field required"
    if not _valid_id(custom_id):
        return f"custom_id: must be a non-empty string of at most {MAX_CUSTOM_ID} characters"
    if obj.get("method") != "POST":
        return f"method: must be POST, not {_shown(obj.get('method'))}"
    url = obj.get("url")
    if type(url) is not str or url not in ENDPOINTS:  # (a list or object is no key: it would raise)
        return f"url: {_shown(url)} is not a batch endpoint; supported: {', '.join(ENDPOINTS)}"
    body = obj.get("body")
    if type(body) is not dict:
        return "body: expected a JSON object" if body is not None else "body: field required"
    if body.get("stream"):
        return "body.stream: streaming is not supported in a batch"
    return None


SHOWN_CHARS = 200
"""Most of a line's value an error message echoes (a url or model may be megabytes)."""


def _shown(value: Any) -> str:
    """A value as a message quotes it, cut to `SHOWN_CHARS`."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def _valid_id(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_CUSTOM_ID


def render_output(record: InputRecord, output: dict[str, Any], attempts: int = 0) -> bytes:
    response = {"status_code": 200, "request_id": _request_id(record), "body": output}
    return _line(record, response, None)


def render_error(record: InputRecord, error: RecordError) -> bytes:
    message = error.message.replace("modelInput", INPUT_FIELD)
    body = {"error": {"message": message, "type": _error_type(error.code), "param": None, "code": error.kind}}
    response = {"status_code": error.code, "request_id": _request_id(record), "body": body}
    return _line(record, response, None)


def render_unrun(record: InputRecord, why: str) -> bytes:
    """The line of a request that never ran: ``why`` is ``cancelled`` or ``expired``."""
    code = UNRUN[why]
    message = f"the batch was {why} before this request ran"
    return _line(record, None, {"code": code, "message": message})


def succeeded(line: bytes) -> bool:
    """Whether an output line of this format is a success (it goes to the output file, not the error
    file). Our own lines only: the key order is ours."""
    return b'"response":{"status_code":200,' in line


def _line(record: InputRecord, response: dict[str, Any] | None, error: dict[str, str] | None) -> bytes:
    line = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": record.record_id}
    return orjson.dumps({**line, "response": response, "error": error})


def _request_id(record: InputRecord) -> str:
    return f"req_{secrets.token_hex(12)}"


def _error_type(code: int) -> str:
    return ERROR_TYPES.get(code, "invalid_request_error" if code < 500 else "server_error")


def _bad(message: str) -> RecordError:
    return RecordError(400, message, "invalid_request")


MAX_LINES = 50_000
MAX_ERRORS = 1000
"""Most validation errors a batch keeps: enough to fix a file by; the count says how many there were."""


@dataclass(frozen=True, slots=True)
class BatchError:
    """One problem of a batch's input file, as OpenAI's ``errors.data`` lists it."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(slots=True)
class FileCheck:
    """What validating an OpenAI batch input file found: its errors (the first `MAX_ERRORS`), how many
    there were, its lines and the model they name."""

    errors: list[BatchError]
    error_count: int = 0
    lines: int = 0
    model: str | None = None

    def add(self, error: BatchError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(error)


def check_file(lines: Iterable[tuple[int, Line]], endpoint: str, usable: Callable[[str], bool]) -> FileCheck:
    """Validate a batch input file as OpenAI does while a batch is ``validating``: every line JSON with
    its fields, ``url`` the batch's endpoint, ``custom_id`` unique, one model (that ``usable`` says the
    caller may run), no streaming, at most `MAX_LINES` lines. Every error has its line number."""
    check = FileCheck([])
    seen: set[str] = set()
    for number, raw in lines:
        check.lines += 1
        if check.lines > MAX_LINES:
            check.add(BatchError("too_many_lines", f"a batch holds at most {MAX_LINES:,} requests", number))
            break
        error = _line_error(number, raw, endpoint, seen, check, usable)
        if error is not None:
            check.add(error)
    if check.lines == 0:
        check.add(BatchError("empty_file", "the input file holds no request"))
    return check


def _line_error(
    number: int,
    raw: Line,
    endpoint: str,
    seen: set[str],
    check: FileCheck,
    usable: Callable[[str], bool],
) -> BatchError | None:
    if not isinstance(raw, bytes):
        return BatchError("invalid_json_line", f"line is {raw.size:,} bytes, over the size limit", number)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return BatchError("invalid_json_line", f"this line is not valid JSON: {exc}", number)
    if type(obj) is not dict:
        return BatchError("invalid_json_line", "this line is not a JSON object", number)
    for field in ("custom_id", "method", "url", "body"):
        if field not in obj:
            message = f"missing required parameter: {field}"
            return BatchError("missing_required_parameter", message, number, field)
    problem = _problem(obj, obj["custom_id"])
    if obj["url"] != endpoint:
        message = f"the url {_shown(obj['url'])} does not match the batch's endpoint {endpoint!r}"
        return BatchError("invalid_url", message, number, "url")
    if problem is not None:
        field, _, message = problem.partition(": ")
        code = "streaming_unsupported" if field == "body.stream" else "invalid_request"
        return BatchError(code, message, number, field)
    custom_id = obj["custom_id"]
    if custom_id in seen:
        message = (
            f"The custom_id {custom_id!r} for this request is a duplicate of another request. The custom_id "
            "parameter must be unique for each request in a batch."
        )
        return BatchError("duplicate_custom_id", message, number, "custom_id")
    seen.add(custom_id)
    return _model_error(number, obj["body"].get("model"), check, usable)


def _model_error(
    number: int, model: Any, check: FileCheck, usable: Callable[[str], bool]
) -> BatchError | None:
    if type(model) is not str or not model:
        message = "missing required parameter: body.model"
        return BatchError("missing_required_parameter", message, number, "body.model")
    if check.model is None:
        if not usable(model):
            message = f"The model {_shown(model)} does not exist or you do not have access to it."
            return BatchError("model_not_found", message, number, "body.model")
        check.model = model
    elif model != check.model:
        message = (
            f"The model {_shown(model)} for this request does not match the rest of the batch. Each batch "
            "must contain requests for a single model."
        )
        return BatchError("mismatched_model", message, number, "body.model")
    return None


def first_model(lines: Iterable[tuple[int, Line]]) -> str | None:
    """The model the first line naming one names (a batch's lines must all name the same)."""
    for _, raw in lines:
        if isinstance(raw, bytes):
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            body = obj.get("body") if type(obj) is dict else None
            if type(body) is dict and type(body.get("model")) is str and body["model"]:
                return str(body["model"])
    return None
