"""Anthropic Message Batches lines: ``{custom_id, params}`` in, ``{custom_id, result}`` out.

``params`` is a Messages API body: its ``model`` names the model (the job's model runs it), the rest is
read by the anthropic dialect. A result is ``succeeded`` with the message, ``errored`` with Anthropic's
error object, or ``canceled`` / ``expired`` for a request its batch never ran.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from bulkinfer.domain.request import RecordError
from bulkinfer.formats.bedrock import InputRecord, generated_record_id, parse_object
from bulkinfer.formats.jsonl import Line

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
UNRUN = {"cancelled": "canceled", "expired": "expired"}
INPUT_FIELD = "params"
"""The field holding a request's body (the dialects' messages call it ``modelInput``)."""


def parse_line(raw: Line, line: int, *, source: str, seed: str) -> InputRecord:
    obj = parse_object(raw, line, source=source, seed=seed)
    if isinstance(obj, InputRecord):
        return obj
    where = f"{source} line {line}"
    custom_id = obj.get("custom_id")
    valid_id = type(custom_id) is str and CUSTOM_ID.fullmatch(custom_id) is not None
    record_id = str(custom_id) if valid_id else generated_record_id(seed, line)
    problem = request_problem(obj)
    if problem is not None:
        return InputRecord(line, record_id, None, _bad(f"{where}: {problem}"))
    return InputRecord(line, record_id, params_body(obj["params"]), dialect="anthropic")


def request_problem(obj: dict[str, Any]) -> str | None:
    """What is wrong with one request of a batch, or None; its fields as Anthropic names them."""
    custom_id = obj.get("custom_id")
    if custom_id is None:
        return "custom_id: field required"
    if type(custom_id) is not str or CUSTOM_ID.fullmatch(custom_id) is None:
        return "custom_id: must match ^[a-zA-Z0-9_-]{1,64}$"
    params = obj.get("params")
    if type(params) is not dict:
        return "params: expected a JSON object" if params is not None else "params: field required"
    if params.get("stream"):
        return "params.stream: streaming is not supported in a batch"
    if type(params.get("model")) is not str or not params["model"]:
        return "params.model: field required"
    return None


def params_body(params: dict[str, Any]) -> dict[str, Any]:
    """The body the anthropic dialect reads: the params without the model, which the job names, nor
    ``stream: false`` (what the SDK's non-streaming params may say; a true one is refused)."""
    return {key: value for key, value in params.items() if key not in ("model", "stream")}


def render_output(record: InputRecord, output: dict[str, Any], attempts: int = 0) -> bytes:
    return _line(record, {"type": "succeeded", "message": output})


def render_error(record: InputRecord, error: RecordError) -> bytes:
    message = error.message.replace("modelInput", INPUT_FIELD)
    kind = ERROR_TYPES.get(error.code, "invalid_request_error" if error.code < 500 else "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": None}
    return _line(record, {"type": "errored", "error": body})


def render_unrun(record: InputRecord, why: str) -> bytes:
    return _line(record, {"type": UNRUN[why]})


def _line(record: InputRecord, result: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": record.record_id, "result": result})


def _bad(message: str) -> RecordError:
    return RecordError(400, message, "invalid_request_error")
