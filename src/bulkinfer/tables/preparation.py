"""One ``prepare`` pass: every row of a table through the builder, good records written durably.

The output is written as the rows stream by (temp file, fsync, rename), so a table of any size takes
memory for one row at a time; rows with problems go to the ``ProblemLog`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from bulkinfer.errors import UserError
from bulkinfer.storage.files import write_durably
from bulkinfer.tables.builder import RecordBuilder, RecordSpec
from bulkinfer.tables.report import ProblemLog, Summary
from bulkinfer.tables.source import Table


def check_spec(table: Table, spec: RecordSpec, output: Path) -> None:
    """Refuse, before reading any row, what can never work: raises ``UserError``."""
    if output.suffix != ".jsonl":
        raise UserError(f"--output {output}: the engine reads .jsonl files; name the output *.jsonl")
    if output.resolve() == table.path.resolve():
        raise UserError("--output would overwrite the table")
    if table.columns is not None:
        for option, column in (("--id-column", spec.id_column), ("--image-column", spec.image_column)):
            if column is not None and column not in table.columns:
                known = ", ".join(table.columns)
                raise UserError(f"{option} {column!r}: {table.name} has no such column (it has: {known})")
    if (
        spec.dialect == "converse"
        and not spec.inline
        and spec.images is not None
        and spec.images.kind != "s3"
    ):
        raise UserError(
            "Converse references images only by s3Location: use --inline, or --images s3://bucket/prefix/"
        )


def prepare_table(table: Table, spec: RecordSpec, output: Path, log: ProblemLog) -> Summary:
    """Write the records of every good row to ``output``; log the problems of the others."""
    check_spec(table, spec, output)
    builder = RecordBuilder(spec, table.name)
    counts = {"rows": 0, "written": 0}

    def lines() -> Iterator[bytes]:
        for row in table.rows():
            counts["rows"] += 1
            built = builder.build(row)
            if isinstance(built, list):
                log.add(built)
                continue
            counts["written"] += 1
            yield orjson.dumps(built) + b"\n"

    write_durably(output, lines())
    return Summary(table.name, str(output), counts["rows"], counts["written"])
