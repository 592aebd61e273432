"""Options several commands share, declared once so their flags, variables and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

S3EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--s3-endpoint-url",
        envvar="BULKINFER_S3_ENDPOINT_URL",
        help="S3-protocol server for s3:// URIs; unset, serve and prepare use local buckets in --data-dir.",
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
