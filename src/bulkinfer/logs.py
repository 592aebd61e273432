"""The server's log: one line per event, keyed by a stable ``event`` name, as text or as JSON.

A line that matters to an operator is logged through `event` with its name (``http.request``,
``job.started``, ...) and its context as fields (``tenant``, ``job_id``, ...); dashboards and alerts key
on the name and the fields, never on the message's wording. A line logged the plain way (a library's, a
warning of ours) gets its logger's name as its event, so every line has one.

`configure` sets this up once, when ``bulkinfer serve`` starts: a single handler on stderr.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal

import orjson

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

QUIET_LOGGERS: Final = (
    "alembic.runtime.plugins",
    "uvicorn.access",
    "uvicorn.error",
    "botocore",
    "s3fs",
    "aiobotocore",
    "httpx",
)
"""Libraries whose lines below warning say nothing an operator of bulkinfer needs."""

_RECORD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
_RESERVED: Final = _RECORD | {"message", "asctime", "color_message"}
"""The attributes every log record has (and uvicorn's coloured copy of its message): what is left of a
record's are the fields given with it."""


def event(
    logger: logging.Logger, name: str, message: str, /, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log one event: its stable name, a sentence for people, and its context fields (None left out).
    A field may not take the name of a log record's own attribute (``message``, ``name``, ...)."""
    if logger.isEnabledFor(level):
        given = {key: value for key, value in fields.items() if value is not None}
        logger.log(level, "%s", message, extra={"event": name, **given})


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The context fields a record was logged with (``event`` apart)."""
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and k != "event"}


def event_of(record: logging.LogRecord) -> str:
    return str(getattr(record, "event", None) or record.name)


def _time(record: logging.LogRecord) -> str:
    at = datetime.fromtimestamp(record.created, UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``event``, ``message``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "event": event_of(record),
            "message": record.getMessage(),
            **fields_of(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """``TIME LEVEL EVENT message key=value ...`` on one line (a traceback follows on its own lines)."""

    def format(self, record: logging.LogRecord) -> str:
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in record.getMessage())
        context = " ".join(f"{key}={_text_value(value)}" for key, value in fields_of(record).items())
        line = f"{_time(record)} {record.levelname:<7} {event_of(record)} {message}"
        line += f" {context}" if context else ""
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=\\' for c in text) or not text.isprintable():
        return orjson.dumps(text).decode()
    return text


def configure(level: LogLevel = "info", fmt: LogFormat = "text", stream: IO[str] | None = None) -> None:
    """Send every logger's lines at ``level`` and above to ``stream`` (stderr), in ``fmt``; replaces any
    handlers the root logger had, so calling it again reconfigures rather than doubles the lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
