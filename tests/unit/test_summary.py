"""Unit tests for ``cli.summary``: what the run summary, the dry run and ``bulkinfer models`` print.

A price or a limit the catalog does not know is shown as unknown, never as a made-up number.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from bulkinfer.cli.summary import print_catalog, print_dry_run, print_report
from bulkinfer.domain.job import Counts, JobStatus
from bulkinfer.engine.job import JobReport
from bulkinfer.engine.validate import DryRunReport
from bulkinfer.providers.catalog import Catalog
from bulkinfer.store.state import JobRecord

MODELS = """
[models.remote-bare]
provider = "openai"

[models.remote-known]
provider = "anthropic"
context_length = 200000
[models.remote-known.price]
input_per_million = 3
output_per_million = 15
batch_discount = 0.5
"""


def console() -> Console:
    return Console(width=250, record=True, color_system=None)


def cells(out: Console) -> dict[str, list[str]]:
    """The body rows of the table printed, each row's cells by its first."""
    rows = [line.split("│")[1:-1] for line in out.export_text().splitlines() if line.startswith("│")]
    return {row[0].strip(): [cell.strip() for cell in row] for row in rows}


def catalog_rows(tmp_path: Path) -> dict[str, list[str]]:
    """``bulkinfer models`` as printed, each row's cells by model name."""
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    out = console()
    print_catalog(out, Catalog.load(path))
    return cells(out)


def test_a_remote_model_with_no_price_or_context_shows_them_as_unknown(tmp_path: Path) -> None:
    rows = catalog_rows(tmp_path)
    # columns: name, provider, kind, dialects, context, batch / limit, $/1M in, $/1M out, batch off
    assert rows["remote-bare"][4] == "—"
    assert rows["remote-bare"][6:] == ["unknown", "unknown", "—"]
    assert "2,048" not in rows["remote-bare"] and "0" not in rows["remote-bare"][6:]


def test_a_remote_model_shows_the_price_and_context_its_entry_sets(tmp_path: Path) -> None:
    rows = catalog_rows(tmp_path)
    assert rows["remote-known"][4] == "200,000"
    assert rows["remote-known"][6:] == ["3", "15", "50%"]


def test_a_local_model_shows_its_context_and_a_free_price(tmp_path: Path) -> None:
    rows = catalog_rows(tmp_path)
    assert rows["echo"][4] == "1,000,000"  # enforced here, so known
    assert rows["echo"][6:] == ["0", "0", "0%"]  # runs on this machine: free, not unknown
    assert rows["smollm2-135m-instruct"][6:] == ["0.02", "0.04", "50%"]


def report(cost: float | None) -> JobReport:
    job = JobRecord("j1", "remote-bare", "in", "out", JobStatus.COMPLETED, created_at=0.0)
    counts = Counts(processed=2, success=2, input_tokens=10, output_tokens=4)
    return JobReport(job, counts, 2, Path("out"), estimated_cost_usd=cost)


def summary_rows(cost: float | None) -> dict[str, str]:
    out = console()
    print_report(out, report(cost))
    return {key: row[1] for key, row in cells(out).items()}


def test_the_run_summary_says_unknown_for_a_cost_with_no_price() -> None:
    assert summary_rows(None)["estimated cost"].startswith("unknown")
    assert "$" not in summary_rows(None)["estimated cost"]


def test_the_run_summary_shows_a_known_cost_even_when_zero() -> None:
    assert summary_rows(0.0)["estimated cost"] == "$0.000000"
    assert summary_rows(0.0123456789)["estimated cost"] == "$0.012346"


def test_the_dry_run_says_unknown_for_a_cost_with_no_price() -> None:
    unknown, known = console(), console()
    print_dry_run(unknown, DryRunReport(), None)
    print_dry_run(known, DryRunReport(), 0.5)
    assert "estimated cost at most: unknown" in unknown.export_text()
    assert "estimated cost at most: $0.500000" in known.export_text()
