"""From a parsed input line to a canonical request, and from an outcome to an output line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bulkinfer.dialects.base import Dialect
from bulkinfer.dialects.registry import detect, get_dialect
from bulkinfer.domain.request import ChatRequest, RecordError, Request, Result
from bulkinfer.engine.committer import Finished
from bulkinfer.errors import RecordInvalid
from bulkinfer.formats.bedrock import InputRecord
from bulkinfer.formats.records import BEDROCK, RecordFormat


@dataclass(slots=True)  # not frozen: built per record (see domain.request)
class Prepared:
    record: InputRecord
    dialect: Dialect[Any] | None = None
    request: Request | None = None
    error: RecordError | None = None


def prepare(
    record: InputRecord, *, source: str, default_dialect: str, forced: Dialect[Any] | None
) -> Prepared:
    """Translate a record's body; a body that does not fit becomes an error naming file, line and field."""
    if record.error is not None:
        return Prepared(record, error=record.error)
    try:
        named = get_dialect(record.dialect) if record.dialect else None
        dialect = forced or named or detect(record.model_input, default_dialect)
        return Prepared(record, dialect, dialect.to_request(record.model_input))
    except RecordInvalid as exc:
        message = f"{source} line {record.line}: {exc}"
        return Prepared(record, error=RecordError(400, message, "ValidationError"))
    except Exception as exc:  # a record must never stop the job, even one that trips a bug of ours
        message = f"{source} line {record.line}: could not read the record: {type(exc).__name__}: {exc}"
        return Prepared(record, error=RecordError(500, message, "InternalError"))


def with_error(item: Prepared, error: RecordError) -> Prepared:
    return Prepared(item.record, item.dialect, item.request, error)


def at_line(error: RecordError, source: str, line: int) -> RecordError:
    """An error that names the file and line of its record, as every error line does."""
    return RecordError(error.code, f"{source} line {line}: {error.message}", error.kind)


def finish(item: Prepared, outcome: Result | RecordError, fmt: RecordFormat = BEDROCK) -> Finished:
    """Render the output line for one record in its job's format; one that cannot be written becomes an
    error line."""
    record = item.record
    try:
        if isinstance(outcome, RecordError):
            return Finished(record.line, fmt.error(record, outcome), error_code=outcome.code)
        assert item.dialect is not None and item.request is not None
        body = outcome.native if outcome.native is not None else item.dialect.render(outcome, item.request)
        usage = outcome.usage
        line = fmt.output(record, body, outcome.attempts)
        return Finished(record.line, line, usage.input_tokens, usage.output_tokens)
    except (TypeError, ValueError) as exc:
        error = RecordError(500, f"could not write the output line: {exc}", "InternalError")
        bare = InputRecord(record.line, record.record_id, None)
        return Finished(record.line, fmt.error(bare, error), error_code=error.code)


def sampling_group(request: Request) -> tuple[float, float | None, int | None] | None:
    """Requests with different sampling settings cannot share one generate call."""
    if isinstance(request, ChatRequest):
        p = request.params
        return (p.temperature or 0.0, p.top_p, p.top_k) if p.temperature else (0.0, None, None)
    return None
