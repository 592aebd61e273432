"""The record formats a job's input lines may be in, and how each writes its result lines.

- ``bedrock``: ``{recordId, modelInput}`` (Bedrock batch inference; the default).
- ``openai``: ``{custom_id, method, url, body}`` (OpenAI's Batch API, ``vllm run-batch``); successes
  and failures go to two files, as OpenAI's output and error files.
- ``anthropic``: ``{custom_id, params}`` (Anthropic's Message Batches).

A job's lines are all in one format: named, or found from the first line of its files.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from bulkinfer.domain.request import RecordError
from bulkinfer.formats import anthropic_batch, bedrock, openai_batch
from bulkinfer.formats.bedrock import InputRecord
from bulkinfer.formats.jsonl import Line, split_lines

ERRORS_SUFFIX = ".errors.out"
"""A split format's error file, beside its output file ``<input>.out``."""


@dataclass(frozen=True, slots=True)
class RecordFormat:
    name: str
    id_field: str
    """The key of a line's record id."""
    parse: Callable[..., InputRecord]
    """``parse(raw, line, *, source, seed)``: one input line."""
    output: Callable[[InputRecord, dict[str, Any], int], bytes]
    error: Callable[[InputRecord, RecordError], bytes]
    unrun: Callable[[InputRecord, str], bytes] | None = None
    """The line of a record a cancelled (``cancelled``) or expired (``expired``) job never ran, for
    formats whose results list every request; None where such records are left out (Bedrock)."""
    succeeded: Callable[[bytes], bool] | None = None
    """For formats that write successes and failures to two files (``<input>.out`` and
    `ERRORS_SUFFIX`): which result lines are successes."""
    input_field: str = "modelInput"
    """The key of a line's request body, as this format's messages name it."""

    def in_own_words(self, message: str) -> str:
        """A message about a record, its body's field named as this format's lines name it (the
        dialects say ``modelInput``)."""
        return message.replace("modelInput", self.input_field)


BEDROCK = RecordFormat("bedrock", "recordId", bedrock.parse_line, bedrock.render_output, bedrock.render_error)
OPENAI = RecordFormat(
    "openai",
    "custom_id",
    openai_batch.parse_line,
    openai_batch.render_output,
    openai_batch.render_error,
    openai_batch.render_unrun,
    openai_batch.succeeded,
    openai_batch.INPUT_FIELD,
)
ANTHROPIC = RecordFormat(
    "anthropic",
    "custom_id",
    anthropic_batch.parse_line,
    anthropic_batch.render_output,
    anthropic_batch.render_error,
    anthropic_batch.render_unrun,
    input_field=anthropic_batch.INPUT_FIELD,
)
FORMATS = {f.name: f for f in (BEDROCK, OPENAI, ANTHROPIC)}


def get_format(name: str | None) -> RecordFormat:
    """A format by name (None: Bedrock's)."""
    if name is None:
        return BEDROCK
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown record format {name!r}; known: {', '.join(FORMATS)}") from None


def format_of_line(raw: Line) -> str | None:
    """The format one line is in, by its keys; None for a line that says nothing (not a JSON object)."""
    if not isinstance(raw, bytes):
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    if "modelInput" in obj or "custom_id" not in obj:
        return "bedrock"
    if "params" in obj:
        return "anthropic"
    return "openai"


def results_of_unrun(
    blocks: Iterable[bytes],
    fmt: RecordFormat,
    render: Callable[[InputRecord], bytes],
    *,
    source: str,
    seed: str,
    max_line_bytes: int,
    done: Container[int] = (),
) -> Iterator[bytes]:
    """The result line ``render`` gives each record of an input (its bytes in ``blocks``) whose line is
    not ``done``: the records a cancelled, expired or failed job never ran."""
    for number, raw in split_lines(blocks, max_line_bytes):
        if number not in done:
            yield render(fmt.parse(raw, number, source=source, seed=seed))


def duplicate_id(fmt: RecordFormat, source: str, line: int, record_id: str, first_seen: str) -> str:
    """The message of a record whose id an earlier one of the job has (``first_seen``: where)."""
    return (
        f"{source} line {line}: {fmt.id_field}: duplicate of {record_id!r} first seen at {first_seen}; "
        "record ids must be unique in a job"
    )
