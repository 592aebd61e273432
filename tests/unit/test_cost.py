"""Unit tests for ``providers.cost``: a job's cost and the prices used, and how the CLI shows them.

A local model with no price costs $0 (no per-token charge); a remote one with no price, or a model the
catalog no longer has, costs ``unknown``: null in JSON, never $0.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from rich.console import Console

from bulkinfer.cli.remote import cost_of, job_table
from bulkinfer.cli.summary import print_jobs
from bulkinfer.domain.job import Counts, JobStatus
from bulkinfer.formats.manifest import ManifestInfo, build_manifest
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.cost import (
    FROM_CATALOG,
    LOCAL_FREE,
    NO_PRICE,
    NOT_IN_CATALOG,
    PRICE_UNIT,
    cost_in,
    job_cost,
    usd_text,
)
from bulkinfer.store.state import JobRecord

MODELS = """
[models.remote-bare]
provider = "openai"

[models.remote-priced]
provider = "anthropic"
[models.remote-priced.price]
input_per_million = 3
output_per_million = 15
batch_discount = 0.5

[models.local-free]
provider = "echo"
"""


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    return Catalog.load(path)


def test_a_priced_model_costs_its_tokens_at_the_batch_price(catalog: Catalog) -> None:
    cost = job_cost(catalog.get("remote-priced"), 1_000_000, 100_000)
    assert cost.usd == pytest.approx((3 + 1.5) * 0.5)
    assert cost.prices.as_json() == {
        "unit": PRICE_UNIT,
        "inputPerMillion": 3,
        "outputPerMillion": 15,
        "batchDiscount": 0.5,
        "batchDiscountApplied": True,
        "source": FROM_CATALOG,
    }


def test_a_local_model_with_no_price_costs_nothing_known(catalog: Catalog) -> None:
    cost = job_cost(catalog.get("local-free"), 5_000, 7_000)
    assert cost.usd == 0.0
    assert cost.prices.source == LOCAL_FREE
    assert cost.prices.as_json()["inputPerMillion"] == 0.0


def test_a_remote_model_with_no_price_costs_unknown_not_zero(catalog: Catalog) -> None:
    cost = job_cost(catalog.get("remote-bare"), 5_000, 7_000)
    assert cost.usd is None
    shown = cost.prices.as_json()
    assert shown["source"] == NO_PRICE
    assert shown["inputPerMillion"] is None and shown["outputPerMillion"] is None
    assert shown["batchDiscountApplied"] is False


def test_a_model_not_in_the_catalog_costs_unknown(catalog: Catalog) -> None:
    cost = job_cost(None, 5_000, 7_000)
    assert cost.usd is None and cost.prices.source == NOT_IN_CATALOG
    assert cost_in(catalog, "gone", 5_000, 7_000) == cost
    assert cost_in(catalog, "local-free", 5_000, 7_000).usd == 0.0


def test_the_estimated_cost_the_dashboard_uses_agrees(catalog: Catalog) -> None:
    for name in ("remote-priced", "remote-bare", "local-free"):
        spec = catalog.get(name)
        assert job_cost(spec, 123_456, 7_890).usd == spec.estimated_cost(123_456, 7_890)


def test_the_manifest_says_the_prices_used(catalog: Catalog) -> None:
    cost = job_cost(catalog.get("remote-bare"), 10, 4)
    counts = Counts(processed=2, success=2, input_tokens=10, output_tokens=4)
    info = ManifestInfo(
        "j1", "remote-bare", "Completed", 2, counts, 0.0, 1.0, ["in.jsonl"], cost.usd, 1.0,
        prices=cost.prices.as_json(),
    )  # fmt: skip
    written = orjson.dumps(build_manifest(info))
    assert b'"estimatedCostUSD":null' in written
    assert orjson.loads(written)["prices"]["source"] == NO_PRICE


def test_a_cost_is_shown_in_dollars_or_as_unknown() -> None:
    assert usd_text(0.0123) == "$0.012300"
    assert usd_text(0.0) == "$0.000000"  # known and free
    assert usd_text(None) == "unknown"


def test_a_server_job_shows_its_cost_or_unknown() -> None:
    assert cost_of({"estimatedCostUSD": 0.5}) == "$0.500000"
    assert cost_of({"estimatedCostUSD": None}) == "unknown"
    assert cost_of({}) == "unknown"  # a server that does not say it
    job = {
        "jobArn": "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc",
        "status": "InProgress",
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/out/"}},
        "inputTokenCount": 1200,
        "outputTokenCount": 34,
        "estimatedCostUSD": None,
    }
    out = Console(width=200, record=True, color_system=None)
    out.print(job_table(job))
    text = out.export_text()
    assert "tokens in/out │ 1,200 / 34" in text and "cost          │ unknown" in text


def test_the_local_jobs_table_shows_each_jobs_cost() -> None:
    out = Console(width=250, record=True, color_system=None)
    job = JobRecord("j1", "m", "in", "out", JobStatus.IN_PROGRESS, created_at=0.0)
    counts = Counts(processed=2, input_tokens=10, output_tokens=4)
    print_jobs(out, [(job, counts, None), (job, counts, 0.25)])
    text = out.export_text()
    assert "10 / 4" in text and "unknown" in text and "$0.250000" in text
    assert "$0.00 " not in text
