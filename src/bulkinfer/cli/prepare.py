"""``bulkinfer prepare``: Bedrock batch records from a metadata table, images and a prompt template.

Exit codes: 0 when every row became a record; 1 when some rows were left out (each is in the printed
report, and in ``--report FILE`` as JSON); 2 for a usage problem (a missing file, an unknown column, a
template that does not parse), in which case nothing is written.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from bulkinfer.cli.options import DEFAULT_DATA_DIR, DataDirOption, S3EndpointOption
from bulkinfer.errors import BulkinferError, UserError
from bulkinfer.storage.files import write_durably
from bulkinfer.tables import DEFAULT_MAX_TOKENS

if TYPE_CHECKING:  # tables (Jinja2, Pillow, the media checks) load only when prepare runs
    from bulkinfer.tables.images import ImageStore
    from bulkinfer.tables.report import ProblemLog, Summary
    from bulkinfer.tables.source import Table
    from bulkinfer.tables.template import PromptTemplate

EXIT_SKIPPED = 1
EXIT_USAGE = 2

_WIDTH = None if sys.stdout.isatty() else 160
_out = Console(width=_WIDTH)
_err = Console(stderr=True, width=_WIDTH)


class DialectChoice(StrEnum):
    anthropic = "anthropic"
    converse = "converse"
    openai_chat = "openai-chat"


def prepare_command(
    table: Annotated[Path, typer.Argument(help="Metadata table: .csv, .tsv, .jsonl or .parquet.")],
    template: Annotated[
        Path, typer.Option("--template", "-t", help="Jinja2 prompt template; each column is a variable.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .jsonl file of records to write.")],
    images: Annotated[
        str | None,
        typer.Option(help="Image folder or s3://bucket/prefix/ (default: the table's folder)."),
    ] = None,
    image_column: Annotated[
        str | None, typer.Option(help="Column naming each row's images: a name, a;b, or a JSON list.")
    ] = None,
    id_column: Annotated[
        str | None, typer.Option(help="Column holding the recordId (default: ROW00000001, ...).")
    ] = None,
    dialect: Annotated[DialectChoice, typer.Option(help="The modelInput shape.")] = DialectChoice.anthropic,
    inline: Annotated[
        bool, typer.Option("--inline/--reference", help="Embed images as base64, or reference them.")
    ] = True,
    absolute_refs: Annotated[
        bool,
        typer.Option(help="Reference local images by file:// URI, not relative to the output's folder."),
    ] = False,
    system: Annotated[str | None, typer.Option(help="System prompt (a template, like --template).")] = None,
    system_file: Annotated[Path | None, typer.Option(help="System prompt template file.")] = None,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="Most tokens each answer may have.")
    ] = DEFAULT_MAX_TOKENS,
    report: Annotated[
        Path | None, typer.Option(help="Also write the validation report as JSON here.")
    ] = None,
    s3_endpoint_url: S3EndpointOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Build Bedrock batch records from a table of rows, their images and a prompt template.

    Rows with a problem (a missing or bad image, a template error, a missing or repeated id) are left
    out and listed. Exit code 0: every row written; 1: some rows left out; 2: a usage error, nothing
    written.
    """
    from bulkinfer.tables.builder import RecordSpec
    from bulkinfer.tables.preparation import prepare_table
    from bulkinfer.tables.report import ProblemLog
    from bulkinfer.tables.source import Table
    from bulkinfer.tables.template import PromptTemplate

    try:
        source = Table(table)
        store = _image_store(source, images, image_column, output, data_dir, s3_endpoint_url, absolute_refs)
        spec = RecordSpec(
            prompt=PromptTemplate.load(template),
            dialect=dialect.value,
            max_tokens=max_tokens,
            system=_system(system, system_file),
            image_column=image_column,
            id_column=id_column,
            images=store,
            inline=inline,
        )
        with ProblemLog() as log:
            summary = prepare_table(source, spec, output, log)
            _print_problems(log)
            if report is not None:
                write_durably(report, log.report(summary))
            _print_summary(summary, log, report)
            code = EXIT_SKIPPED if summary.skipped else 0
    except UserError as exc:
        _err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except Exception as exc:
        if os.environ.get("BULKINFER_DEBUG"):
            raise
        what = str(exc) if isinstance(exc, BulkinferError) else f"{type(exc).__name__}: {exc}"
        _err.print(f"[red]prepare failed:[/red] {escape(what)}", highlight=False)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def _image_store(
    table: Table,
    images: str | None,
    image_column: str | None,
    output: Path,
    data_dir: Path,
    endpoint_url: str | None,
    absolute: bool,
) -> ImageStore | None:
    if image_column is None:
        if images is not None:
            raise UserError("--images needs --image-column: the column that names each row's images")
        return None
    from bulkinfer.tables.images import open_images

    location = images if images is not None else str(table.path.parent)
    return open_images(
        location, output.parent, data_dir=data_dir, endpoint_url=endpoint_url, absolute=absolute
    )


def _system(text: str | None, file: Path | None) -> PromptTemplate | None:
    if text is not None and file is not None:
        raise UserError("give --system or --system-file, not both")
    from bulkinfer.tables.template import PromptTemplate

    if file is not None:
        return PromptTemplate.load(file)
    return PromptTemplate(text, "--system") if text is not None else None


def _print_problems(log: ProblemLog) -> None:
    if not log.total:
        return
    table = RichTable(title="Rows left out", title_justify="left")
    for column in ("where", "column", "problem", "what"):
        table.add_column(column, overflow="fold")
    for p in log.first:
        table.add_row(escape(p.where), escape(p.column or ""), p.kind, escape(p.message))
    _out.print(table)
    if log.total > len(log.first):
        _out.print(f"... and {log.total - len(log.first):,} more problems", highlight=False)


def _print_summary(summary: Summary, log: ProblemLog, report: Path | None) -> None:
    _out.print(
        f"{summary.written:,} of {summary.rows:,} rows written to {escape(summary.output)}", highlight=False
    )
    if summary.skipped:
        kinds = ", ".join(f"{kind}: {n:,}" for kind, n in sorted(log.counts.items()))
        _out.print(f"{summary.skipped:,} rows left out ({kinds})", highlight=False)
    if report is not None:
        _out.print(f"report: {escape(str(report))}", highlight=False)
