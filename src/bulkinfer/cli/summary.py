"""Tables the CLI prints: the job summary, the dry-run report, the model catalog."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bulkinfer.domain.job import Counts
from bulkinfer.engine.finalize import MANIFEST_NAME
from bulkinfer.engine.job import JobReport
from bulkinfer.engine.validate import DryRunReport
from bulkinfer.formats.manifest import iso
from bulkinfer.providers.catalog import Catalog, ModelSpec
from bulkinfer.providers.cost import usd_text
from bulkinfer.store.state import JobRecord

UNKNOWN = "unknown"
NOT_SET = "—"


def print_report(console: Console, report: JobReport) -> None:
    job, c = report.job, report.counts
    title = Text(f"Job {job.job_id}: {job.status.value}")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    manifest = report.manifest or {}
    rows = [
        ("model", job.model),
        ("records", f"{c.processed:,} of {report.total_records:,} processed"),
        ("succeeded", f"{c.success:,}"),
        ("errors", f"{c.errors:,}" + (f"  {_codes(c.error_codes)}" if c.error_codes else "")),
        ("input tokens", f"{c.input_tokens:,}"),
        ("output tokens", f"{c.output_tokens:,}"),
    ]
    if "durationSeconds" in manifest:
        rows += [
            ("duration", f"{manifest['durationSeconds']:,.1f} s"),
            (
                "throughput",
                f"{manifest['recordsPerSecond']:,.2f} rec/s, {manifest['tokensPerSecond']:,.1f} tok/s",
            ),
        ]
    if "retry" in manifest:  # a retry job: its counts are the combined view, its tokens both jobs'
        retry = manifest["retry"]
        carried, retried = retry["carriedRecordCount"], retry["retriedRecordCount"]
        rows.append(("retry of", f"{retry['of']}: {carried:,} successes kept, {retried:,} records run again"))
    rows.append(("estimated cost", _usd(report.estimated_cost_usd)))
    if report.manifest is not None:
        rows.append(("output", str(report.output_dir)))
        rows.append(("manifest", str(report.output_dir / MANIFEST_NAME)))
    for key, value in rows:
        table.add_row(key, Text(value))  # a model's name or a path: never markup
    console.print(table)
    if report.error_samples:
        console.print("[bold]First errors:[/bold]")
        for message in report.error_samples[:5]:
            console.print(f"  {message}", highlight=False, markup=False)


def _codes(codes: dict[str, int]) -> str:
    return "(" + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())) + ")"


def _usd(cost: float | None) -> str:
    """A cost, or ``unknown`` for a model with no price: never a made-up $0."""
    return f"{UNKNOWN} (the model catalog has no price for this model)" if cost is None else usd_text(cost)


def print_dry_run(console: Console, report: DryRunReport, cost: float | None) -> None:
    table = Table(title="Dry run: nothing was sent to a model", title_justify="left")
    for column in ("file", "records", "invalid"):
        table.add_column(column, justify="right" if column != "file" else "left")
    for f in report.files:
        table.add_row(Text(f.name), f"{f.records:,}", f"{f.invalid:,}")
    table.add_row("[bold]total", f"[bold]{report.records:,}", f"[bold]{report.invalid:,}")
    console.print(table)
    dialects = ", ".join(f"{name}: {n:,}" for name, n in sorted(report.dialects.items())) or "none"
    console.print(f"dialects: {dialects}")
    console.print(f"estimated input tokens: {report.input_tokens:,} (about 4 characters a token)")
    console.print(f"most output tokens: {report.output_tokens:,} (max_tokens of every record)")
    console.print(f"estimated cost at most: {_usd(cost)}")
    for message in report.samples:
        console.print(f"  {message}", highlight=False, markup=False)


GONE = "the process running it is gone (killed?)"
"""What `status` says of a job whose state says it runs but whose lock no process holds."""


def print_jobs(
    console: Console,
    rows: list[tuple[JobRecord, Counts, float | None]],
    gone: frozenset[str] = frozenset(),
) -> None:
    """The jobs' table, with each job's committed counts and their cost (``None``: unknown); those in
    ``gone`` are said to have lost their process, whatever their state says."""
    table = Table(title="Jobs")
    columns = ("job", "model", "status", "records", "errors", "tokens in/out", "cost", "started", "ended")
    for column in columns:
        table.add_column(column)
    for job, c, cost in rows:
        total = job.total_records if job.total_records is not None else job.options.get("estimated_records")
        cells = (
            job.job_id,
            job.model,
            _status(job, job.job_id in gone),
            f"{c.processed:,}" + (f" of {total:,}" if total is not None else ""),
            f"{c.errors:,}",
            f"{c.input_tokens:,} / {c.output_tokens:,}",
            usd_text(cost),
            iso(job.started_at) if job.started_at else "",
            iso(job.ended_at) if job.ended_at else "",
        )
        table.add_row(*map(Text, cells))  # a job's message may quote anything: never markup
    console.print(table)


def _status(job: JobRecord, gone: bool) -> str:
    if gone:
        return f"{job.status.value}: {GONE}"
    return job.status.value + (f" ({job.message})" if job.message else "")


def _pace(spec: ModelSpec) -> str:
    """Micro-batch size of a local model; the request limit of a remote one."""
    if spec.remote is None:
        return f"{spec.batch_size}"
    rpm = spec.remote.requests_per_minute
    return f"{rpm:g} req/min" if rpm else "adaptive"


def _context(spec: ModelSpec) -> str:
    """A local model's context is enforced here; a remote one's only by its provider, so it is shown
    only where the entry states it."""
    if not spec.context_known:
        return NOT_SET
    return f"{spec.context_length:,}"


def _prices(spec: ModelSpec) -> tuple[str, str, str]:
    p = spec.price
    if not spec.price_known:
        return UNKNOWN, UNKNOWN, NOT_SET
    return f"{p.input_per_million:g}", f"{p.output_per_million:g}", f"{p.batch_discount:.0%}"


def print_catalog(console: Console, catalog: Catalog) -> None:
    table = Table(title="Models")
    for column in (
        "name",
        "provider",
        "kind",
        "dialects",
        "context",
        "batch / limit",
        "$/1M in",
        "$/1M out",
        "batch off",
    ):
        table.add_column(column)
    for spec in catalog:
        cells = (
            spec.name,
            spec.provider,
            spec.kind,
            ", ".join(spec.dialects),
            _context(spec),
            _pace(spec),
            *_prices(spec),
        )
        table.add_row(*map(Text, cells))  # names from a user's catalog file: never markup
    console.print(table)
