"""Rows of a metadata table (CSV, JSON Lines or Parquet), read as a stream of dicts.

No reader loads a whole file: CSV and JSONL go line by line, Parquet a record batch at a time. A row that
cannot be read (a JSONL line that is not a JSON object, a CSV row with more fields than the header) comes
out as a ``Row`` with ``error`` set, so it is reported and the rest of the table goes on; a file that
cannot be read at all raises ``InputError``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bulkinfer.errors import InputError, UserError
from bulkinfer.storage.files import UTF8_BOM

PARQUET_BATCH_ROWS = 256
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})


@dataclass(frozen=True, slots=True)
class Row:
    number: int
    """1-based position among the table's data rows."""
    line: int | None
    """The file line the row starts on (CSV, JSONL); None for Parquet."""
    values: dict[str, Any]
    error: str | None = None
    """Why the row could not be read; ``values`` is then empty."""

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else f"row {self.number}"


class Table:
    """A table file: its column names (where the format declares them) and its rows, read lazily."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise InputError(f"table not found: {path}")
        self.path = path
        self.name = path.name
        suffix = path.suffix.lower()
        if suffix not in CSV_SUFFIXES and suffix not in JSONL_SUFFIXES and suffix not in PARQUET_SUFFIXES:
            raise UserError(f"{path}: not a table bulkinfer reads (.csv, .tsv, .jsonl, .ndjson, .parquet)")
        self._suffix = suffix
        self._delimiter = CSV_SUFFIXES.get(suffix, ",")
        self.columns: list[str] | None = self._read_columns()
        """The header (CSV) or schema (Parquet) names; None for JSONL, whose rows may differ."""

    def rows(self) -> Iterator[Row]:
        if self._suffix in CSV_SUFFIXES:
            return self._csv_rows()
        if self._suffix in JSONL_SUFFIXES:
            return self._jsonl_rows()
        return self._parquet_rows()

    def _read_columns(self) -> list[str] | None:
        if self._suffix in JSONL_SUFFIXES:
            return None
        if self._suffix in PARQUET_SUFFIXES:
            return list(_parquet_file(self.path).schema_arrow.names)
        with self._open_text() as f:
            try:
                header = next((fields for fields in csv.reader(f, delimiter=self._delimiter) if fields), None)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise InputError(f"{self.name}: the header row cannot be read: {exc}") from exc
        if not header:
            raise InputError(f"{self.name}: no header row")
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise InputError(f"{self.name} line 1: column {repeated[0]!r} appears more than once")
        return header

    def _open_text(self) -> Any:
        try:
            return self.path.open(encoding="utf-8-sig", newline="")
        except OSError as exc:
            raise InputError(f"cannot read {self.path}: {exc.strerror}") from exc

    def _csv_rows(self) -> Iterator[Row]:
        header = self.columns or []
        with self._open_text() as f:
            reader = csv.reader(f, delimiter=self._delimiter)
            ended = number = 0  # the last line of the previous row; data rows so far
            header_seen = False
            try:
                for fields in reader:
                    start, ended = ended + 1, reader.line_num
                    if not fields:  # a blank line
                        continue
                    if not header_seen:
                        header_seen = True
                        continue
                    number += 1
                    yield _csv_row(self.name, header, fields, number, start)
            except csv.Error as exc:
                raise InputError(f"{self.name} line {reader.line_num}: {exc}") from exc
            except UnicodeDecodeError as exc:
                raise InputError(f"{self.name} line {ended + 1}: not valid UTF-8 ({exc.reason})") from exc

    def _jsonl_rows(self) -> Iterator[Row]:
        number = 0
        try:
            f = self.path.open("rb")
        except OSError as exc:
            raise InputError(f"cannot read {self.path}: {exc.strerror}") from exc
        with f:
            for line, raw in enumerate(f, start=1):
                if line == 1:
                    raw = raw.removeprefix(UTF8_BOM)
                if not raw.strip():
                    continue
                number += 1
                try:
                    value = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    yield Row(number, line, {}, f"not valid JSON: {exc}")
                    continue
                if type(value) is not dict:
                    yield Row(number, line, {}, "expected a JSON object")
                    continue
                yield Row(number, line, value)

    def _parquet_rows(self) -> Iterator[Row]:
        number = 0
        for batch in _parquet_file(self.path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for values in batch.to_pylist():
                number += 1
                yield Row(number, None, values)


def _csv_row(name: str, header: list[str], fields: list[str], number: int, line: int) -> Row:
    if len(fields) > len(header):
        return Row(number, line, {}, f"{len(fields)} fields, but the header names {len(header)} columns")
    # A short row leaves its last columns out: a template naming one of them reports it as missing.
    return Row(number, line, dict(zip(header, fields, strict=False)))


def _parquet_file(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError('reading Parquet needs pyarrow: pip install "bulkinfer[parquet]"') from None
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise InputError(f"{path.name}: not a readable Parquet file: {exc}") from exc
