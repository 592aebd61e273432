"""`bulkinfer prepare` on the product-catalog example: records the engine's own parser accepts, a report of
the rows left out, tables from CSV and Parquet, images from a folder, a local bucket or an S3 server."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import boto3
import orjson
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from bulkinfer.cli.main import app
from bulkinfer.dialects.registry import get_dialect
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.engine.validate import DryRunReport, dry_run
from bulkinfer.providers.catalog import Catalog
from bulkinfer.storage.files import list_inputs
from bulkinfer.tables.builder import DIALECTS
from tests.conftest import read_jsonl
from tests.integration.test_bedrock_api import moto_s3  # noqa: F401  (a fixture)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "product-catalog"
IDS = [f"P{i:03d}" for i in range(1, 13)]
MAX_LINE_BYTES = EngineSettings().max_line_bytes


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def prepare(table: Path, output: Path, *extra: str | Path, images: str | Path = EXAMPLE / "images") -> Result:
    return cli(
        "prepare",
        table,
        "--template",
        EXAMPLE / "prompt.j2",
        "--images",
        images,
        "--image-column",
        "image",
        "--output",
        output,
        *extra,
    )


def checked(records: Path, dialect: str | None = None) -> DryRunReport:
    """The engine's own validation of a records file: through `bulkinfer run --model echo --dry-run`,
    then in-process for exact counts."""
    forced = ("--dialect", dialect) if dialect else ()
    result = cli("run", records, "--model", "echo", "--output", records.parent / "jobs", "--dry-run", *forced)
    assert result.exit_code == 0, result.output
    assert re.search(r"total\s*\S\s*12\s*\S\s*0\s", result.output), result.output
    spec = Catalog.load(None).get("echo")
    return dry_run(list_inputs(records), spec, get_dialect(dialect) if dialect else None, MAX_LINE_BYTES)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_example_prepares_into_records_the_engine_accepts(tmp_path: Path, dialect: str) -> None:
    output = tmp_path / "records.jsonl"
    result = prepare(EXAMPLE / "products.csv", output, "--id-column", "id", "--dialect", dialect)
    assert result.exit_code == 0, result.output
    assert "12 of 12 rows written" in result.output
    records = read_jsonl(output)
    assert [r["recordId"] for r in records] == IDS
    # An OpenAI chat body of only messages and max_tokens reads as Anthropic too: the run names its dialect.
    report = checked(output, dialect if dialect == "openai-chat" else None)
    assert (report.records, report.invalid, report.dialects) == (12, 0, {dialect: 12})


def test_referenced_images_are_paths_relative_to_the_records_file(tmp_path: Path) -> None:
    output = tmp_path / "batch" / "records.jsonl"
    result = prepare(EXAMPLE / "products.csv", output, "--reference", "--max-tokens", "99")
    assert result.exit_code == 0, result.output
    records = read_jsonl(output)
    assert records[0]["recordId"] == "ROW00000001"
    body = records[0]["modelInput"]
    assert body["max_tokens"] == 99
    url = body["messages"][0]["content"][0]["source"]["url"]
    assert (output.parent / url).resolve() == (EXAMPLE / "images" / "p001.png").resolve()
    assert checked(output).invalid == 0


def test_csv_and_parquet_tables_make_the_same_records(tmp_path: Path) -> None:
    parquet = tmp_path / "products.parquet"
    pq.write_table(pacsv.read_csv(EXAMPLE / "products.csv"), parquet)
    outputs = []
    for table in (EXAMPLE / "products.csv", parquet):
        output = tmp_path / f"{table.suffix[1:]}.jsonl"
        result = prepare(
            table, output, "--id-column", "id", "--system", "You sell {{ category }} at ${{ price }}."
        )
        assert result.exit_code == 0, result.output
        outputs.append(read_jsonl(output))
    from_csv, from_parquet = outputs
    assert from_csv == from_parquet  # the price 4.99 is a float in Parquet and renders the same
    assert from_csv[0]["modelInput"]["system"] == "You sell Breakfast cereal at $4.99."


def test_rows_with_problems_are_left_out_and_reported(tmp_path: Path) -> None:
    table = tmp_path / "products.csv"
    text = (EXAMPLE / "products.csv").read_text()
    table.write_text(text + "P013,nothing.png,Toys,1.00,Missing picture.\nP001,p002.png,Toys,1.00,Again.\n")
    output, report = tmp_path / "records.jsonl", tmp_path / "report.json"
    result = prepare(table, output, "--id-column", "id", "--report", report)
    assert result.exit_code == 1, result.output
    assert "12 of 14 rows written" in result.output
    assert "2 rows left out (duplicate-id: 1, image-missing: 1)" in result.output
    assert [r["recordId"] for r in read_jsonl(output)] == IDS
    problems = orjson.loads(report.read_bytes())["problems"]
    assert [(p["line"], p["column"], p["kind"]) for p in problems] == [
        (14, "image", "image-missing"),
        (15, "id", "duplicate-id"),
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--id-column", "sku"), "--id-column 'sku': products.csv has no such column"),
        (("--dialect", "converse", "--reference"), "Converse references images only by s3Location"),
        (("--dialect", "titan"), "Invalid value for '--dialect'"),
    ],
)
def test_usage_problems_exit_2_and_write_nothing(
    tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    output = tmp_path / "records.jsonl"
    result = prepare(EXAMPLE / "products.csv", output, *extra)
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ") or message in _plain(result)
    assert not output.exists()


def _plain(result: Result) -> str:
    return re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)


def test_images_from_a_local_bucket(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE / "images", data / "s3" / "catalog" / "shots")
    output = tmp_path / "records.jsonl"
    extra = ("--dialect", "converse", "--reference", "--data-dir", data, "--id-column", "id")
    result = prepare(EXAMPLE / "products.csv", output, *extra, images="s3://catalog/shots/")
    assert result.exit_code == 0, result.output
    first = read_jsonl(output)[0]["modelInput"]["messages"][0]["content"][0]
    assert first == {
        "image": {"format": "png", "source": {"s3Location": {"uri": "s3://catalog/shots/p001.png"}}}
    }
    assert checked(output).invalid == 0


def test_images_from_an_s3_protocol_server(
    tmp_path: Path,
    moto_s3: str,  # noqa: F811  (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    s3: Any = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    s3.create_bucket(Bucket="catalog")
    for path in sorted((EXAMPLE / "images").glob("*.png"))[:11]:  # p012.png is left out
        s3.put_object(Bucket="catalog", Key=f"shots/{path.name}", Body=path.read_bytes())
    output = tmp_path / "records.jsonl"
    extra = ("--s3-endpoint-url", moto_s3, "--id-column", "id")
    result = prepare(EXAMPLE / "products.csv", output, *extra, images="s3://catalog/shots")
    assert result.exit_code == 1, result.output
    assert "no such object: s3://catalog/shots/p012.png" in _plain(result)
    records = read_jsonl(output)
    assert [r["recordId"] for r in records] == IDS[:11]
    inlined = records[0]["modelInput"]["messages"][0]["content"][0]["source"]
    assert inlined["media_type"] == "image/png"
    assert orjson.loads(orjson.dumps(inlined))["data"].startswith("iVBORw0KGgo")  # base64 of a PNG header


def test_the_example_keeps_product_names_only_on_the_images() -> None:
    text = (EXAMPLE / "products.csv").read_text().lower()
    for name in ("granola", "lemon lime", "olive oil", "toothpaste", "dark roast", "puppy food"):
        assert name not in text
