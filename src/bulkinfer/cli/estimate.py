"""``bulkinfer estimate``: what a job would take, before it is run or submitted.

Exit codes: 0 when the input could be estimated (whatever its records' problems, which are listed);
2 for a usage error (no such input, an unknown model, an input no job could read), found before any
record is read; 1 for anything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bulkinfer.dialects.registry import get_dialect
from bulkinfer.engine.estimate import Estimate, estimate
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.engine.validate import check_inputs, format_of_files
from bulkinfer.errors import BulkinferError, UserError
from bulkinfer.formats.records import get_format
from bulkinfer.providers.catalog import Catalog
from bulkinfer.storage.files import list_inputs

EXIT_USAGE = 2
_WIDTH = None if sys.stdout.isatty() else 160
_out = Console(width=_WIDTH)
_err = Console(stderr=True, width=_WIDTH)


def estimate_command(
    input: Annotated[Path, typer.Argument(help="A .jsonl file or a folder of them.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name from `bulkinfer models`.")],
    models: Annotated[
        Path | None,
        typer.Option("--models", envvar="BULKINFER_MODELS", help="TOML catalog adding or overriding models."),
    ] = None,
    record_format: Annotated[
        str | None,
        typer.Option("--format", help="bedrock, openai or anthropic (default: found from the first line)."),
    ] = None,
    dialect: Annotated[
        str | None, typer.Option("--dialect", help="Read every modelInput in this dialect (default: detect).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as one JSON object.")] = False,
) -> None:
    """Estimate a job before running it: records, tokens (with the model's own tokenizer where one is
    installed), records the model would refuse or that exceed its context, cost, and duration."""
    try:
        result = estimate_input(input, model, models, record_format, dialect)
    except UserError as exc:
        _err.print(Text.assemble(("error:", "red"), " ", str(exc)), highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except Exception as exc:
        if os.environ.get("BULKINFER_DEBUG"):
            raise
        what = str(exc) if isinstance(exc, BulkinferError) else f"{type(exc).__name__}: {exc}"
        _err.print(Text.assemble(("estimate failed:", "red"), " ", what), highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_estimate(_out, result)


def estimate_input(
    input: Path, model: str, models: Path | None, record_format: str | None, dialect: str | None
) -> Estimate:
    """Check the usage first (the model, the input, its format), then read every record once."""
    spec = Catalog.load(models).get(model)
    forced = get_dialect(dialect) if dialect else None
    files, max_line = list_inputs(input), EngineSettings().max_line_bytes
    fmt = get_format(record_format or format_of_files(files, max_line))
    check_inputs(files, max_line, fmt)
    return estimate(files, spec, forced, max_line, fmt)


def print_estimate(console: Console, e: Estimate) -> None:
    r = e.report
    table = Table(title=f"Estimate for {e.model}: nothing was sent to a model", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    tokenizer = (
        f"counted as {e.model} counts them (its own tokenizer)"
        if e.own_tokenizer
        else (f"approximate (no tokenizer for {e.model}): about 4 characters a token")
    )
    rows = [
        ("records", f"{r.records:,} in {len(r.files)} file(s); {e.runnable:,} the model would run"),
        ("input tokens", f"{r.input_tokens:,} {tokenizer}"),
        ("output tokens", f"at most {r.output_tokens:,} (max_tokens of every record: an upper bound)"),
        ("cost on-demand", _usd(e.on_demand_usd, "at most")),
        ("cost batch", _usd(e.batch_usd, "at most")),
        ("duration", _duration(e)),
    ]
    for key, value in rows:
        table.add_row(key, Text(value))  # a model's name or a path: never markup
    console.print(table)
    for title, problems in (
        ("invalid records", e.other_invalid),
        ("records of the wrong kind for the model", r.refused),
        ("records over the model's context", r.over_context),
    ):
        if problems.count:
            console.print(Text(f"{title}: {problems.count:,} (error lines if run)", style="bold"))
            for message in problems.samples:
                console.print(Text(f"  {message}"))


def _usd(cost: float | None, prefix: str) -> str:
    """A cost, or ``unknown`` for a model with no price: never a made-up $0."""
    if cost is None:
        return "unknown (the model catalog has no price for this model)"
    return f"{prefix} ${cost:,.6f}"


def _duration(e: Estimate) -> str:
    seconds = e.duration.seconds
    if seconds is None:
        return e.duration.basis
    return f"about {_span(seconds)} ({e.duration.basis})"


def _span(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
