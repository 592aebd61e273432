"""What the dashboard shows of jobs and models: cost says "unknown", never $0, where no price is set."""

from __future__ import annotations

from pathlib import Path

from bulkinfer.api.ui.history import Throughput
from bulkinfer.api.ui.routes import TEMPLATES, Wanted
from bulkinfer.api.ui.views import cost, job_row, model_rows, prices_text
from bulkinfer.domain.job import JobStatus
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.cost import cost_in
from bulkinfer.providers.remote.limits import LimitRegistry
from bulkinfer.store.batch_jobs import BatchJob

CATALOG = """
[models.priced]
provider = "openai"
remote_model = "m"
requests_per_minute = 600
max_concurrency = 16
price = { input_per_million = 1.0, output_per_million = 2.0 }
[models.unpriced]
provider = "openai"
remote_model = "m"
"""


def catalog(tmp_path: Path) -> Catalog:
    path = tmp_path / "models.toml"
    path.write_text(CATALOG)
    return Catalog.load(path)


def test_cost_is_unknown_without_a_price_and_in_dollars_with_one(tmp_path: Path) -> None:
    models = catalog(tmp_path)
    assert cost(models, "priced", 1_000_000, 500_000) == "$2.000000"
    assert cost(models, "unpriced", 1_000_000, 500_000) == "unknown"
    assert cost(models, "no-longer-in-the-catalog", 10, 10) == "unknown"
    assert cost(models, "echo", 10, 10) == "$0.000000"  # a local model is free, and known to be


def test_the_job_page_says_the_prices_its_cost_is_worked_out_with(tmp_path: Path) -> None:
    models = catalog(tmp_path)
    priced = prices_text(cost_in(models, "priced", 0, 0).prices)
    assert priced.startswith("$1.0000 in, $2.0000 out per 1M tokens") and "catalog" in priced
    assert prices_text(cost_in(models, "unpriced", 0, 0).prices).startswith("unknown")
    assert "local model" in prices_text(cost_in(models, "echo", 0, 0).prices)


def test_a_job_row_shows_progress_and_an_ended_jobs_average_rate(tmp_path: Path) -> None:
    job = BatchJob(
        "j1", "alpha", "<b>name</b>", "unpriced", JobStatus.COMPLETED, 100.0, 150.0,
        start_time=110.0, end_time=130.0, total=400, processed=200, errors=3,
    )  # fmt: skip
    row = job_row(job, catalog(tmp_path), Throughput(), 200.0)
    assert row["percent"] == 50.0 and row["processed"] == "200" and row["total"] == "400"
    assert row["rate"] == "10.0" and row["errors"] == "3" and row["cost"] == "unknown"
    assert row["name"] == "<b>name</b>"  # raw here: the templates escape, the script sets textContent


def test_a_model_row_shows_its_limits_slots_and_queue(tmp_path: Path) -> None:
    models = catalog(tmp_path)
    (row,) = model_rows(models, ["priced"], {"priced": (1, 4)}, 2, LimitRegistry())
    assert row["slots"] == "1 / 2" and row["queue"] == "4"
    assert row["limits"] == "600 rpm, at most 16 calls" and row["state"] == "not called yet"


def test_pages_escape_every_text_they_show(tmp_path: Path) -> None:
    job = BatchJob(
        "j1", "<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "echo", JobStatus.FAILED, 1, 2
    )
    row = job_row(job, catalog(tmp_path), Throughput(), 3.0)
    page = TEMPLATES.get_template("jobs.html").render(
        viewer="<b>",
        jobs=[row],
        statuses=[],
        models=["</option><script>"],
        query=Wanted("", "", 'x"y'),
        more=None,
    )
    assert "<script>alert" not in page and "<img" not in page and "</option><script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;" in page
