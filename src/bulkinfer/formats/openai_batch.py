"""OpenAI Batch API lines: ``{custom_id, method, url, body}`` in; output and error lines out.

The same lines ``vllm run-batch`` reads. A line that succeeded is written as OpenAI's output file has
it (``response.status_code`` 200, the endpoint's answer in ``response.body``); one that failed as its
error file has it (the status in ``response.status_code``, OpenAI's error object in ``response.body``);
a line that never ran, because its batch was cancelled or expired, has ``response: null`` and
``error: {code: batch_cancelled | batch_expired}``. Clients match lines on ``custom_id``.
"""

from __future__ import annotations

import hashlib
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
        return f"method: must be POST, not {obj.get('method')!r}"
    url = obj.get("url")
    if type(url) is not str or url not in ENDPOINTS:  # (a list or object is no key: it would raise)
        return f"url: {url!r} is not a batch endpoint; supported: {', '.join(ENDPOINTS)}"
    body = obj.get("body")
    if type(body) is not dict:
        return "body: expected a JSON object" if body is not None else "body: field required"
    if body.get("stream"):
        return "body.stream: streaming is not supported in a batch"
    return None


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
    line = {"id": f"batch_req_{_digest(record, 'line')}", "custom_id": record.record_id}
    return orjson.dumps({**line, "response": response, "error": error})


def _request_id(record: InputRecord) -> str:
    return f"req_{_digest(record, 'request')}"


def _digest(record: InputRecord, what: str) -> str:
    return hashlib.blake2b(f"{what}:{record.line}:{record.record_id}".encode(), digest_size=12).hexdigest()


def _error_type(code: int) -> str:
    return ERROR_TYPES.get(code, "invalid_request_error" if code < 500 else "server_error")


def _bad(message: str) -> RecordError:
    return RecordError(400, message, "invalid_request")
