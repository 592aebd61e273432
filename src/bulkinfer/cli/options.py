"""Options several commands share, declared once so their flags, variables and help agree; and the
command classes that render flags as flags in help."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

if TYPE_CHECKING:
    from typer._click import Context, HelpFormatter

S3EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--s3-endpoint-url",
        envvar="BULKINFER_S3_ENDPOINT_URL",
        help="S3-protocol server for s3:// URIs; unset, serve and prepare use local buckets in --data-dir.",
    ),
]
RunS3EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--s3-endpoint-url",
        envvar="BULKINFER_S3_ENDPOINT_URL",
        help="S3-protocol server the records' s3:// images are read from (unset: AWS S3, which needs the "
        "serve extra's s3fs).",
    ),
]
DataDirOption = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="BULKINFER_DATA_DIR",
        help="State, work files and the local buckets s3:// maps to.",
    ),
]
DEFAULT_DATA_DIR = Path("bulkinfer-data")


def _flags_without_types(command: TyperCommand | TyperGroup, ctx: Context) -> None:
    """Typer's rich help prints every option's type, flags included (``--dry-run <bool>``, even
    ``--help <bool>``); a flag takes no value, so it gets an empty type, which the help leaves out."""
    for param in command.get_params(ctx):
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


class Command(TyperCommand):
    """A command whose help shows flags as flags."""

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        _flags_without_types(self, ctx)
        super().format_help(ctx, formatter)


class Group(TyperGroup):
    """The command group, whose help shows flags as flags."""

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        _flags_without_types(self, ctx)
        super().format_help(ctx, formatter)
