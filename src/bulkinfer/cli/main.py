"""``bulkinfer`` commands."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import itertools
import logging
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from bulkinfer import __version__, logs
from bulkinfer.cli import remote
from bulkinfer.cli.estimate import estimate_command
from bulkinfer.cli.options import (
    DEFAULT_DATA_DIR,
    Command,
    DataDirOption,
    Group,
    RunS3EndpointOption,
    S3EndpointOption,
)
from bulkinfer.cli.prepare import prepare_command
from bulkinfer.cli.progress import JobProgress
from bulkinfer.cli.retry import retry_request
from bulkinfer.cli.summary import GONE, print_catalog, print_dry_run, print_jobs, print_report
from bulkinfer.dialects.registry import get_dialect
from bulkinfer.domain.job import SERVICE_ENDED, TRANSITIONS, Counts, JobStatus
from bulkinfer.engine import history
from bulkinfer.engine.cluster import RayExecutor
from bulkinfer.engine.finalize import MANIFEST_NAME, error_message, merged_lines
from bulkinfer.engine.job import STATE_DIR, LocalJob, MediaSettings, RunRequest, lock_is_held
from bulkinfer.engine.retry import read_manifest
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.engine.validate import check_fit, check_inputs, check_some_valid, dry_run, format_of_files
from bulkinfer.errors import BulkinferError, ConfigError, UserError
from bulkinfer.formats.bedrock import output_text
from bulkinfer.formats.jsonl import Line, OversizeLine, split_lines
from bulkinfer.formats.records import ERRORS_SUFFIX, get_format
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.cost import cost_in, usd_text
from bulkinfer.providers.extras import require_client, require_model
from bulkinfer.storage.files import list_inputs, read_blocks
from bulkinfer.store.state import ChunkRecord, CorruptStateFile, JobRecord, StateStore

if TYPE_CHECKING:
    from bulkinfer.domain.tenant import Tenants
    from bulkinfer.settings import ServerSettings

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    cls=Group,
    help="Open, self-hosted batch inference: run every record of JSONL files through a model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (logs, CI) gets wide tables instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else 160
out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)
log = logging.getLogger(__name__)


def _print_version(wanted: bool) -> None:
    if wanted:
        out.print(f"bulkinfer {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    pass


ModelsOption = Annotated[
    Path | None,
    typer.Option("--models", envvar="BULKINFER_MODELS", help="TOML catalog adding or overriding models."),
]


class ExecutorName(enum.StrEnum):
    local = "local"
    ray = "ray"


ExecutorOption = Annotated[
    ExecutorName,
    typer.Option(
        "--executor",
        envvar="BULKINFER_EXECUTOR",
        help="Where records run: local (this process) or ray (a Ray cluster's actors; see --ray-address).",
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="The Ray cluster for --executor ray (e.g. 10.0.0.5:6379); default: a Ray started here.",
    ),
]
RayActorsOption = Annotated[
    int | None,
    typer.Option(
        "--ray-actors",
        envvar="BULKINFER_RAY_ACTORS",
        min=1,
        max=4096,
        help="Actors for --executor ray (default: one per GPU for a local model, else one per CPU).",
    ),
]


def executor_of(name: ExecutorName, address: str | None, actors: int | None) -> RayExecutor | None:
    """The executor the options name (None: this process); a usage problem exits 2 before any job."""
    if name == ExecutorName.local:
        if actors is not None:
            raise UserError("--ray-actors is for --executor ray")
        return None
    return RayExecutor(address, actors)


class RecordFormatName(enum.StrEnum):
    bedrock = "bedrock"
    openai = "openai"
    anthropic = "anthropic"


@app.command(cls=Command)
def run(
    input: Annotated[Path, typer.Argument(help="A .jsonl file or a folder of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Outputs land in OUTPUT/<job-id>/.")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Model name from `bulkinfer models` (with --retry-errors: the base's)."
        ),
    ] = None,
    job_id: Annotated[
        str | None, typer.Option("--job-id", help="Name the job; re-running with the same id resumes it.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Resume the most recent unfinished job in OUTPUT.")
    ] = False,
    retry_errors: Annotated[
        bool,
        typer.Option(
            "--retry-errors",
            help="A new job that keeps the successes of the newest ended job in OUTPUT over INPUT and runs "
            "its error lines and unrun records again; its output is the combined view.",
        ),
    ] = False,
    models: ModelsOption = None,
    dialect: Annotated[
        str | None, typer.Option("--dialect", help="Read every modelInput in this dialect (default: detect).")
    ] = None,
    record_format: Annotated[
        RecordFormatName | None,
        typer.Option(
            "--format",
            help="The input lines' format: bedrock {recordId, modelInput}, openai {custom_id, method, url, "
            "body} (OpenAI Batch API, vllm run-batch; writes output and error files) or anthropic "
            "{custom_id, params} (default: found from the first line).",
        ),
    ] = None,
    dry: Annotated[bool, typer.Option("--dry-run", help="Validate and count; run nothing.")] = False,
    allow_fetch: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-fetch",
            envvar="BULKINFER_FETCH_ALLOW",
            help="Host or CIDR that image URLs may point to although private or loopback (repeatable).",
        ),
    ] = None,
    s3_endpoint_url: RunS3EndpointOption = None,
    executor: ExecutorOption = ExecutorName.local,
    ray_address: RayAddressOption = None,
    ray_actors: RayActorsOption = None,
) -> None:
    """Run a batch job to completion (or resume one)."""
    media = MediaSettings(fetch_allow=tuple(allow_fetch or ()), s3_endpoint_url=s3_endpoint_url)
    request = RunRequest(input, model or "", output, job_id, models, dialect, media=media)
    if record_format is not None:
        request = replace(request, record_format=record_format.value)
    with _reported("job failed"), _rerun_named(request):
        if resume and retry_errors:
            raise UserError("--resume and --retry-errors cannot be used together: choose one")
        if not model and not retry_errors:
            raise UserError("Missing option '--model' / '-m'.")
        if retry_errors:  # first: the model to check may be the base job's
            with _state(output) as store:
                request = retry_request(request, store, None)
        request = _check_usage(request)
        chosen = executor_of(executor, ray_address, ray_actors)
        if chosen is not None:
            chosen.check(Catalog.load(request.catalog_file).get(request.model))
            request = replace(request, executor=chosen)
        if resume and job_id is None:
            request = replace(request, job_id=_latest_unfinished(output))
        if dry:
            _dry_run(request)
            return
        code = asyncio.run(_run(request))
    raise typer.Exit(code)


def _check_usage(request: RunRequest) -> RunRequest:
    """What makes a run impossible, found before a job exists (exit 2): an output that is a file, a
    model whose libraries are not installed, an input that is empty, a JSON array or another provider's
    batch lines (under --format bedrock), records none of which the model takes (read from the start of
    each file). The request, with its record format found where it names none."""
    if request.output.exists() and not request.output.is_dir():
        raise UserError(
            f"--output {request.output} is a file: give a folder (a job's outputs land in OUTPUT/<job-id>/)"
        )
    catalog = Catalog.load(request.catalog_file)
    spec = catalog.get(request.model)
    require_model(spec)
    files, max_line = list_inputs(request.input), EngineSettings().max_line_bytes
    fmt = get_format(request.record_format or format_of_files(files, max_line))
    check_inputs(files, max_line, fmt)
    forced = get_dialect(request.dialect) if request.dialect else None
    check_some_valid(files, spec, forced, max_line, fmt)
    check_fit(files, spec, forced, max_line, catalog, fmt)
    return replace(request, record_format=fmt.name)


@contextlib.contextmanager
def _rerun_named(request: RunRequest) -> Iterator[None]:
    """A damaged state file's message names the exact command that runs the job again."""
    try:
        yield
    except CorruptStateFile as exc:
        job_id = request.job_id or _only_job_with_chunks(request.output)
        rerun = _run_command(request, job_id)
        if job_id is None:
            rerun += " --job-id JOB_ID  (the job's folder under " + str(request.output / STATE_DIR) + ")"
        raise exc.with_rerun(rerun) from exc.__cause__


def _only_job_with_chunks(output: Path) -> str | None:
    """The job whose committed chunks wait in OUTPUT's state folder, when there is exactly one."""
    jobs = [chunks.parent.name for chunks in (output / STATE_DIR).glob("*/chunks") if any(chunks.iterdir())]
    return jobs[0] if len(jobs) == 1 else None


async def _run(request: RunRequest) -> int:
    job = LocalJob.open(request)
    try:
        return await _execute(job)
    finally:
        job.close()


async def _execute(job: LocalJob) -> int:
    resumed = job.committed().processed
    if job.completed:
        _note(f"job {job.job_id} already completed")
    elif resumed:
        _note(f"resuming job {job.job_id}: {resumed:,} records already done")
    else:
        _note(f"job {job.job_id}")
    main = asyncio.current_task()
    assert main is not None
    interrupts = _install_interrupts(job, main)
    try:
        with JobProgress(err, job.estimated_total(), resumed) as progress:
            report = await job.execute(progress, status=_note)
    except asyncio.CancelledError:
        _say_resume(job, "stopped at once")
        return EXIT_INTERRUPTED
    except Exception as exc:  # any failure: say what and how to resume, never a bare traceback
        _error(_describe(exc), "job failed")
        _say_resume(job, "failed")
        if os.environ.get("BULKINFER_DEBUG"):
            raise
        return EXIT_FAILED
    finally:
        _remove_interrupts(interrupts)
    print_report(out, report)
    if report.manifest is not None:  # the model's throughput, for `bulkinfer estimate`
        history.remember(report.manifest)
    if report.job.status == JobStatus.STOPPED:
        _say_resume(job, "stopped")
        return EXIT_INTERRUPTED
    return 0


@contextlib.contextmanager
def _reported(failure: str = "error") -> Iterator[None]:
    """Turn errors into a message and an exit code: 2 for a usage problem, 1 for anything else."""
    try:
        yield
    except typer.Exit:
        raise
    except UserError as exc:  # never wrapped: a message may hold a command to copy
        _error(str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    except Exception as exc:
        if os.environ.get("BULKINFER_DEBUG"):
            raise
        _error(_describe(exc), failure)
        raise typer.Exit(EXIT_FAILED) from None


def _note(message: str) -> None:
    """A line of plain text on stderr (it may hold a job id, a path or a model's name: never markup)."""
    err.print(message, markup=False, highlight=False)


def _error(message: str, label: str = "error") -> None:
    """Say a problem on stderr: the label in red, the message as it is (a path, a server's or an
    exception's text is never read as markup)."""
    err.print(Text.assemble((f"{label}:", "red"), " ", message), highlight=False, soft_wrap=True)


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, BulkinferError) else f"{type(exc).__name__}: {exc}"


def _install_interrupts(job: LocalJob, main: asyncio.Task[int]) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    presses = 0

    def on_signal() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            err.print(
                "stopping: finishing the records in flight (press Ctrl-C again to stop at once)",
                highlight=False,
            )
            job.request_stop()
        elif job.writing is not None:  # a thread cannot be stopped: leaving it would leave it writing
            err.print(f"{job.writing}: the job stops as soon as that is done", highlight=False, markup=False)
        else:
            main.cancel()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    return installed


def _remove_interrupts(installed: list[signal.Signals]) -> None:
    loop = asyncio.get_running_loop()
    for sig in installed:
        loop.remove_signal_handler(sig)


def _say_resume(job: LocalJob, what: str) -> None:
    command = _run_command(job.request, job.job_id)
    try:
        kept: int | None = job.committed().processed
    except Exception:  # the state itself may be what failed
        kept = None
    if kept:
        said = f"{kept:,} finished records are kept. Resume with"
    elif kept == 0:
        said = "no record had finished, so nothing is kept. Run it again with"
    else:
        said = "resume with"
    err.print(f"job {job.job_id} {what}; {said}:\n  {command}", markup=False, highlight=False, soft_wrap=True)


def _run_command(r: RunRequest, job_id: str | None) -> str:
    """The ``bulkinfer run`` command line of a request, ready to paste into a shell."""
    args = ["bulkinfer", "run", str(r.input), "--model", r.model, "--output", str(r.output)]
    if job_id is not None:
        args += ["--job-id", job_id]
    if r.catalog_file is not None:
        args += ["--models", str(r.catalog_file)]
    if r.dialect is not None:
        args += ["--dialect", r.dialect]
    if r.record_format is not None:
        args += ["--format", r.record_format]
    if r.executor is not None:  # (a job resumes on either executor: the one it ran on, as asked)
        args += ["--executor", "ray"]
        args += ["--ray-address", r.executor.address] if r.executor.address else []
        args += ["--ray-actors", str(r.executor.actors)] if r.executor.actors else []
    return shlex.join(args)


def _latest_unfinished(output: Path) -> str:
    with _state(output) as store:
        job = store.latest_unfinished()
    if job is None:
        raise UserError(f"no unfinished job to resume in {output}")
    return job.job_id


@contextlib.contextmanager
def _state(output: Path) -> Iterator[StateStore]:
    """The state file of the jobs run into an output folder, which must already exist."""
    db = output / STATE_DIR / "state.db"
    if not db.is_file():
        raise UserError(f"no bulkinfer job has run into {output}")
    store = StateStore.at(db)
    try:
        yield store
    finally:
        store.close()


def _dry_run(request: RunRequest) -> None:
    spec = Catalog.load(request.catalog_file).get(request.model)
    files = list_inputs(request.input)
    forced = get_dialect(request.dialect) if request.dialect else None
    fmt = get_format(request.record_format)
    report = dry_run(files, spec, forced, EngineSettings().max_line_bytes, fmt=fmt)
    print_dry_run(out, report, spec.estimated_cost(report.input_tokens, report.output_tokens))


@app.command(cls=Command)
def status(
    target: Annotated[str, typer.Argument(help="An --output folder; with --server, a job id or ARN.")],
    job_id: Annotated[str | None, typer.Option("--job-id", help="Only this job of the folder.")] = None,
    server: Annotated[
        str | None, typer.Option("--server", envvar="BULKINFER_SERVER", help="Ask a running bulkinfer serve.")
    ] = None,
    models: ModelsOption = None,
) -> None:
    """Show jobs and their progress: of an output folder, or one job of a server. A local job's tokens
    and cost are its committed records' (what a kill would keep), at the catalog's price."""
    if server is not None:
        raise typer.Exit(_remote(lambda: _show_server_job(server, target)))
    output = Path(target)
    if job_id is None and not (output / STATE_DIR).is_dir() and (output.parent / STATE_DIR).is_dir():
        output, job_id = output.parent, output.name  # OUTPUT/<job-id>: that job of its output folder
    with _reported(), _state(output) as store:
        jobs = [j for j in store.list_jobs() if job_id is None or j.job_id == job_id]
        if job_id is not None and not jobs:
            raise UserError(f"no job {job_id!r} in {output}")
        gone = [j for j in jobs if _process_gone(output, j)]
        catalog = Catalog.load(models)
        rows = [(j, c, _committed_cost(catalog, j, c)) for j in jobs for c in [store.counts(j.job_id)]]
        print_jobs(out, rows, frozenset(j.job_id for j in gone))
    for job in gone:
        said = f"job {job.job_id}: {GONE}; resume with:\n  {_resume_command(job, output)}"
        out.print(said, markup=False, highlight=False, soft_wrap=True)


def _committed_cost(catalog: Catalog, job: JobRecord, committed: Counts) -> float | None:
    """The cost of a local job's own committed records (a retry job's: not its base's); None where
    its model's price is unknown, or its model is not in this catalog."""
    return cost_in(catalog, job.model, committed.input_tokens, committed.output_tokens).usd


def _process_gone(output: Path, job: JobRecord) -> bool:
    """Whether a job's state says it runs (it has not ended, nor stopped or failed) but no process holds
    its lock: the process running it was killed, or its machine went down."""
    return job.status not in SERVICE_ENDED and not lock_is_held(output / STATE_DIR / job.job_id)


def _resume_command(job: JobRecord, output: Path) -> str:
    """The ``bulkinfer run`` command that resumes a local job, from what its state file recorded."""
    request = RunRequest(
        Path(job.input_uri),
        job.model,
        output,
        job.job_id,
        None,
        job.options.get("dialect"),
        record_format=job.options.get("format"),
    )
    command = _run_command(request, job.job_id)
    if job.model not in {spec.name for spec in Catalog.load()}:
        command += " --models FILE  (the catalog file that names its model)"
    return command


def _show_server_job(server: str, target: str) -> None:
    job, found = remote.job_events(server, target)
    out.print(remote.job_table(job))
    out.print(remote.events_table(found["events"]))
    if found.get("providerJobs"):
        out.print(remote.provider_jobs_table(found["providerJobs"]))


@app.command(cls=Command)
def submit(
    input_uri: Annotated[str, typer.Argument(help="s3:// URI of a .jsonl object or a prefix of them.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name from the server's catalog.")],
    output_uri: Annotated[
        str, typer.Option("--output", "-o", help="s3:// URI; outputs go to <it>/<job-id>/.")
    ],
    server: remote.ServerOption,
    name: Annotated[str | None, typer.Option("--name", help="Job name (default: bulkinfer-<time>).")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job to its end with a progress bar.")
    ] = False,
    dry: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Estimate a local copy of the input as `bulkinfer estimate` does; submit nothing.",
        ),
    ] = False,
) -> None:
    """Submit a job to a running server (prints its ARN)."""
    if dry:
        _submit_dry_run(input_uri, model)
    code = _remote(lambda: remote.submit(out, err, server, input_uri, model, output_uri, name, wait))
    raise typer.Exit(code)


def _submit_dry_run(input_uri: str, model: str) -> NoReturn:
    """A dry run reads every record here, so it needs the input on this machine, not on the server."""
    if "://" in input_uri and not input_uri.startswith("file://"):
        _usage(
            f"a dry run reads every record on this machine: copy {input_uri} here (aws s3 cp "
            f"--recursive {input_uri} DIR) and run: bulkinfer estimate DIR --model {model}"
        )
    estimate_command(Path(input_uri.removeprefix("file://")), model, models=_env_path("BULKINFER_MODELS"))
    raise typer.Exit(0)


def _env_path(name: str) -> Path | None:
    return Path(value) if (value := os.environ.get(name)) else None


@app.command(cls=Command)
def jobs(
    server: remote.ServerOption,
    status_equals: Annotated[str | None, typer.Option("--status", help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many, newest first.")] = 50,
) -> None:
    """List a server's jobs."""
    raise typer.Exit(
        _remote(lambda: out.print(remote.jobs_table(remote.client(server), status_equals, limit)))
    )


@app.command(cls=Command)
def stop(
    job: Annotated[str, typer.Argument(help="Job id or ARN.")],
    server: remote.ServerOption,
) -> None:
    """Stop a job on a running server; it keeps and writes what it finished."""
    raise typer.Exit(_remote(lambda: remote.client(server).stop_model_invocation_job(jobIdentifier=job)))


RETRY_HELP = (
    "Retry what failed: a new job that keeps an ended job's successes and runs the rest again.\n\n"
    "It runs the ended job's error lines and unrun records; its output is the combined view, each "
    "record once, and its manifest counts both jobs."
)


@app.command("retry", cls=Command, help=RETRY_HELP, short_help=RETRY_HELP.split("\n")[0])
def retry_command(
    target: Annotated[
        str,
        typer.Argument(help="A local job's output folder, OUTPUT/<job-id>; with --server, a job id or ARN."),
    ],
    server: Annotated[
        str | None,
        typer.Option("--server", envvar="BULKINFER_SERVER", help="Retry a job of a running server."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="With --server: follow the job to its end with a progress bar.")
    ] = False,
    job_id: Annotated[str | None, typer.Option("--job-id", help="Name the local retry job.")] = None,
    models: ModelsOption = None,
) -> None:
    """Retry what failed: a new job that keeps an ended job's successes and runs the rest again."""
    if server is not None:
        raise typer.Exit(_remote(lambda: remote.retry(out, err, server, target, wait)))
    folder = Path(target)
    output = folder.parent
    request = RunRequest(folder, "", output, job_id, models)
    with _reported("job failed"), _rerun_named(request):
        with _state(output) as store:
            request = retry_request(request, store, folder.name)
        _check_usage(request)
        code = asyncio.run(_run(request))
    raise typer.Exit(code)


def _remote(call: Callable[[], object]) -> int:
    """Run a client call; a refusal from the server is a message and exit code 2, never a traceback."""
    try:
        require_client()
    except UserError as exc:
        _error(str(exc))
        return EXIT_USAGE
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        result = call()
    except UserError as exc:  # the command's own arguments, as a server URL without a scheme
        _error(str(exc))
        return EXIT_USAGE
    except ClientError as exc:
        error = exc.response.get("Error", {})
        _error(f"{error.get('Code')}: {error.get('Message')}")
        return EXIT_USAGE
    except BotoCoreError as exc:
        _error(str(exc))
        return EXIT_FAILED
    if isinstance(result, dict) and result.get("status") not in (None, "Completed"):
        return EXIT_FAILED
    return 0


class LogLevelName(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormatName(enum.StrEnum):
    text = "text"
    json = "json"


class WebhookFormat(enum.StrEnum):
    eventbridge = "eventbridge"
    openai = "openai"


@app.command(cls=Command)
def serve(
    host: Annotated[str, typer.Option(envvar="BULKINFER_HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="BULKINFER_PORT", help="Port (0 picks a free one).")] = 8080,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    database_url: Annotated[
        str | None, typer.Option(envvar="BULKINFER_DATABASE_URL", help="Job store (default: SQLite).")
    ] = None,
    models: ModelsOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    jobs_per_model: Annotated[
        int, typer.Option(envvar="BULKINFER_JOBS_PER_MODEL", help="Jobs of one model running at once.")
    ] = 3,
    insecure_dev: Annotated[
        bool, typer.Option(envvar="BULKINFER_INSECURE_DEV", help="Accept any credentials.")
    ] = False,
    access_keys: Annotated[
        str | None,
        typer.Option(
            envvar="BULKINFER_ACCESS_KEYS",
            help="KEY:SECRET,...: one team's keys, granted everything (the environment variable keeps "
            "secrets off the command line).",
        ),
    ] = None,
    api_keys_env: Annotated[
        str | None,
        typer.Option(
            envvar="BULKINFER_API_KEYS_ENV",
            help="Name of the environment variable holding API keys (comma-separated) for the openai and "
            "anthropic SDKs: one team, granted everything (with --access-keys, the same team).",
        ),
    ] = None,
    tenants: Annotated[
        Path | None,
        typer.Option(
            envvar="BULKINFER_TENANTS",
            help="TOML file of tenants: access keys (by the variable holding each secret), granted s3:// "
            "prefixes, models, limits.",
        ),
    ] = None,
    watch: Annotated[
        str | None,
        typer.Option(envvar="BULKINFER_WATCH", help="s3://bucket/prefix: its to-process/ files become jobs."),
    ] = None,
    watch_model: Annotated[
        str | None, typer.Option(envvar="BULKINFER_WATCH_MODEL", help="Model for watch-folder jobs.")
    ] = None,
    watch_tenant: Annotated[
        str | None,
        typer.Option(envvar="BULKINFER_WATCH_TENANT", help="Tenant the watch folder's jobs belong to."),
    ] = None,
    lease_seconds: Annotated[
        float,
        typer.Option(
            envvar="BULKINFER_LEASE_SECONDS", min=0.5, help="A replica silent this long loses its jobs."
        ),
    ] = 10.0,
    outage_seconds: Annotated[
        float,
        typer.Option(
            envvar="BULKINFER_OUTAGE_SECONDS",
            min=1.0,
            help="How long a job waits out a database or S3 outage before it fails, naming it.",
        ),
    ] = 6 * 3600.0,
    max_request_bytes: Annotated[
        int,
        typer.Option(
            envvar="BULKINFER_MAX_REQUEST_BYTES",
            min=1024,
            help="Largest request body; more is refused unread.",
        ),
    ] = 32 * 2**20,
    docs: Annotated[
        bool, typer.Option(envvar="BULKINFER_DOCS", help="Serve /docs and /openapi.json (unauthenticated).")
    ] = False,
    metrics_token_env: Annotated[
        str | None,
        typer.Option(
            envvar="BULKINFER_METRICS_TOKEN_ENV",
            help="Name of the environment variable holding the bearer token that /metrics needs (it "
            "counts every tenant's jobs); without one, /metrics is open only under --insecure-dev.",
        ),
    ] = None,
    webhook: Annotated[
        list[str] | None,
        typer.Option(
            "--webhook",
            help="URL told of every job's status changes (repeatable); needs --webhook-secret-env.",
        ),
    ] = None,
    webhook_secret_env: Annotated[
        str | None,
        typer.Option(
            envvar="BULKINFER_WEBHOOK_SECRET_ENV",
            help="Name of the environment variable holding the webhook signing secret (whsec_<base64>, "
            "Standard Webhooks); without one no webhook is sent, a job's own included.",
        ),
    ] = None,
    webhook_format: Annotated[
        WebhookFormat,
        typer.Option(
            envvar="BULKINFER_WEBHOOK_FORMAT",
            help="Payload of the --webhook URLs: eventbridge (every status change) or openai (batch.* "
            "when a job ends).",
        ),
    ] = WebhookFormat.eventbridge,
    webhook_retry_base_s: Annotated[
        float,
        typer.Option(
            envvar="BULKINFER_WEBHOOK_RETRY_BASE_S", min=0.01, help="Wait before a webhook's first retry."
        ),
    ] = 5.0,
    log_level: Annotated[
        LogLevelName, typer.Option(envvar="BULKINFER_LOG_LEVEL", help="Least severe log lines written.")
    ] = LogLevelName.info,
    log_format: Annotated[
        LogFormatName,
        typer.Option(envvar="BULKINFER_LOG_FORMAT", help="Log lines (stderr): text, or a JSON object each."),
    ] = LogFormatName.text,
    executor: ExecutorOption = ExecutorName.local,
    ray_address: RayAddressOption = None,
    ray_actors: RayActorsOption = None,
) -> None:
    """Serve the Bedrock, OpenAI and Anthropic batch APIs (boto3, openai and anthropic SDKs with their
    endpoint or base URL) and run their jobs."""
    try:
        import uvicorn

        from bulkinfer.api.app import create_app
        from bulkinfer.settings import ServerSettings
    except ImportError as exc:
        _error(f"{exc.name} is missing: pip install 'bulkinfer[serve]'")
        raise typer.Exit(EXIT_USAGE) from None
    try:
        settings = ServerSettings(
            host=host,
            port=port,
            data_dir=data_dir,
            database_url=database_url,
            models=models,
            s3_endpoint_url=s3_endpoint_url,
            jobs_per_model=jobs_per_model,
            insecure_dev=insecure_dev,
            access_keys=access_keys,
            api_keys_env=api_keys_env,
            tenants=tenants,
            watch=watch,
            watch_model=watch_model,
            watch_tenant=watch_tenant,
            lease_seconds=lease_seconds,
            outage_seconds=outage_seconds,
            max_request_bytes=max_request_bytes,
            docs=docs,
            metrics_token_env=metrics_token_env,
            log_level=log_level.value,
            log_format=log_format.value,
            webhooks=webhook or [],
            webhook_secret_env=webhook_secret_env,
            webhook_format=webhook_format.value,
            webhook_retry_base_s=webhook_retry_base_s,
            executor=executor.value,
            ray_address=ray_address,
            ray_actors=ray_actors,
        )
        chosen = executor_of(executor, ray_address, ray_actors)
        if chosen is not None:
            chosen.importable()
            chosen.reachable()
        settings.webhook_config()  # (a URL without a secret, or not http(s): said before anything starts)
    except (ConfigError, UserError) as exc:
        _usage(str(exc))
    except ValidationError as exc:  # (an option typer cannot check by its type alone)
        first = exc.errors()[0]
        _usage(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}")
    if (watch is None) != (watch_model is None):
        _error("--watch and --watch-model go together")
        raise typer.Exit(EXIT_USAGE)
    if watch is not None:
        _check_watch(watch, data_dir)
    logs.configure(settings.log_level, settings.log_format)
    who = _callers(settings)
    _private_data_dir(data_dir)
    try:
        application = create_app(settings, who)
    except UserError as exc:  # the catalog, or a tenant's models that match none of it
        _usage(str(exc))
    # uvicorn's own lines go through the log configured above; its access log is ours (api.access_log)
    config = uvicorn.Config(
        application, host=host, port=port, log_level="warning", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)

    async def announce_and_serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()
            out.print(f"bulkinfer serving on http://{bound[0]}:{bound[1]}", markup=False, highlight=False)
        await task

    asyncio.run(announce_and_serve())


def _callers(settings: ServerSettings) -> Tenants:
    """The tenants that may call, said on stderr; any problem with them is a usage error now."""
    from bulkinfer.api.app import tenants_of, watch_tenant

    given = {
        "--insecure-dev": settings.insecure_dev,
        "--tenants": settings.tenants is not None,
        "--access-keys": settings.access_keys is not None or settings.api_keys_env is not None,
    }
    chosen = [flag for flag, on in given.items() if on]
    if not chosen:
        _usage(
            "give --tenants FILE (several teams), --access-keys KEY:SECRET,... (one team) or --insecure-dev"
        )
    if len(chosen) > 1:
        _usage(f"{' and '.join(chosen)} cannot be used together: choose one")
    try:
        tenants = tenants_of(settings)
        if settings.watch is not None:
            watch_tenant(tenants, settings)
    except UserError as exc:
        _usage(str(exc))
    if tenants.open:
        said = "insecure dev mode: any credentials are accepted; do not expose this server"
        logs.event(log, "serve.insecure_dev", said, level=logging.WARNING)
    elif settings.tenants is None:
        where = "on the S3 endpoint" if settings.s3_endpoint_url else "under the data dir"
        said = (
            f"--access-keys: {len(tenants.keys) + len(tenants.api_keys)} key(s) form one tenant, granted "
            f"every bucket {where}; several teams need --tenants FILE"
        )
        logs.event(log, "serve.tenants", said)
    else:
        names = ", ".join(f"{t.name} ({len(t.grants.read_write)} grants)" for t in tenants.by_name.values())
        logs.event(log, "serve.tenants", f"tenants: {names}")
    return tenants


def _private_data_dir(data_dir: Path) -> None:
    """Everything the server writes (its database, job state, staged copies, outputs) is its user's
    alone: 0600 files and 0700 folders. The data dir itself keeps the mode it has (others may drop input
    files into its local buckets); a new one is 0700. Files of an older version are made private too."""
    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True)
    for own in (*data_dir.glob("bulkinfer.db*"), data_dir / "engine", data_dir / "staging"):
        with contextlib.suppress(OSError):  # missing, or not the server's own
            own.chmod(0o700 if own.is_dir() else 0o600)


def _usage(message: str) -> NoReturn:
    _error(message)
    raise typer.Exit(EXIT_USAGE)


def _check_watch(watch: str, data_dir: Path) -> None:
    """A watch folder URI that could never match anything is a usage error now, not silence forever."""
    from bulkinfer.storage.uris import LocalBuckets

    try:
        LocalBuckets(data_dir).path(f"{watch.rstrip('/')}/to-process/", must_exist=False)
    except UserError as exc:
        _error(f"--watch {exc}")
        raise typer.Exit(EXIT_USAGE) from None


@app.command("models", cls=Command)
def list_models(models: ModelsOption = None) -> None:
    """List the models in the catalog."""
    with _reported():
        print_catalog(out, Catalog.load(models))


@app.command(cls=Command)
def results(
    target: Annotated[
        str, typer.Argument(help="A job's output folder, OUTPUT/<job-id>; with --server, a job id or ARN.")
    ],
    limit: Annotated[int, typer.Option("--limit", "-n", help="Records to show; 0 for all.")] = 10,
    server: Annotated[
        str | None, typer.Option("--server", envvar="BULKINFER_SERVER", help="Ask a running bulkinfer serve.")
    ] = None,
    models: ModelsOption = None,
) -> None:
    """Show a job's records: id and model text, or the error (of a running local job, those committed);
    then its tokens and cost."""
    if server is not None:
        raise typer.Exit(_remote(lambda: _server_results(server, target, limit)))
    with _reported():
        job_dir = _one_job(Path(target))
        if _committed_so_far(job_dir, limit, models):
            return
        files = sorted(job_dir.rglob(f"*{remote.RECORDS_SUFFIX}")) if job_dir.is_dir() else []
        files += sorted(job_dir.rglob(f"*{ERRORS_SUFFIX}")) if job_dir.is_dir() else []  # OpenAI's
        if not files:
            raise UserError(f"no {remote.RECORDS_SUFFIX} file in {job_dir}")
        _print_records([read_blocks(path) for path in files], limit)
        _say_usage(read_manifest(job_dir))


def _say_usage(job: dict[str, Any] | None) -> None:
    """A job's tokens and cost, from its manifest or its server's Get (whose members have the same
    names); nothing where neither says them."""
    if job is None or "inputTokenCount" not in job:
        return
    said = f"tokens in/out: {remote.tokens_of(job)}; cost: {remote.cost_of(job)}"
    err.print(said, markup=False, highlight=False, soft_wrap=True)


def _one_job(target: Path) -> Path:
    """The job folder a ``results`` target names: itself, or the only job of an output folder; an output
    folder of several jobs is a usage error listing them, never their records merged."""
    if (target / MANIFEST_NAME).is_file():
        return target
    jobs = _job_folders(target)
    if len(jobs) == 1:
        return jobs[0]
    if len(jobs) > 1:
        listing = "".join(f"\n  {job}" for job in jobs)
        raise UserError(
            f"{target} holds {len(jobs)} jobs; show one with `bulkinfer results {target / '<job-id>'}`:"
            + listing
        )
    return target


def _job_folders(output: Path) -> list[Path]:
    """The jobs of an output folder: those its state file knows, and any folder with a manifest."""
    found = {manifest.parent for manifest in output.rglob(MANIFEST_NAME) if manifest.parent != output}
    if (output / STATE_DIR / "state.db").is_file():
        with _state(output) as store:
            found |= {output / job.job_id for job in store.list_jobs()}
    return sorted(found)


def _committed_so_far(job_dir: Path, limit: int, models: Path | None) -> bool:
    """For a job of this output folder's state file that has not ended (running, stopped, failed): say
    how far it got and show its committed records, in input order, file by file. False for any other."""
    output = job_dir.parent
    if not (output / STATE_DIR / "state.db").is_file():
        return False
    with _state(output) as store:
        job = store.get_job(job_dir.name)
        if job is None or not TRANSITIONS[job.status]:
            return False  # an ended job's output files hold every record
        chunks = store.chunks(job.job_id)
    counts = sum((c.counts for c in chunks), Counts())  # counted from the very chunks shown
    total = job.total_records or job.options.get("estimated_records")
    of = f"{total:,}" if total is not None else "?"
    cost = usd_text(_committed_cost(Catalog.load(models), job, counts))
    err.print(
        f"job {job.job_id} is {job.status.value}: {counts.processed:,} of {of} records committed so far, "
        f"{counts.errors:,} errors, tokens in/out {counts.input_tokens:,} / {counts.output_tokens:,}, "
        f"cost {cost}; its output files are written when it ends",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    folder = output / STATE_DIR / job.job_id / "chunks"
    by_file: dict[int, list[ChunkRecord]] = {}
    for chunk in chunks:
        by_file.setdefault(chunk.file_index, []).append(chunk)
    lines = [_lines_of(by_file[index], folder) for index in sorted(by_file)]
    try:
        _print_records(lines, limit)
    except FileNotFoundError:  # it ended meanwhile, and its chunks were merged into its outputs
        raise UserError(f"job {job.job_id} ended while its records were read: run this again") from None
    return True


def _lines_of(chunks: list[ChunkRecord], folder: Path) -> Iterator[bytes]:
    """One input file's committed output lines, in input order."""
    for _, data in merged_lines(chunks, folder):
        yield data + b"\n"


def _server_results(server: str, target: str, limit: int) -> None:
    job, files = remote.output_files(server, target)
    if files is None:
        err.print(
            f"job {target} is still running (State is: {job['status']}): {remote.records_of(job)} records "
            f"processed so far, {job.get('errorRecordCount', 0):,} errors. Its records can be read once it "
            f"ends; follow it with: bulkinfer status {target} --server {server}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_USAGE)
    if not files:
        why = f"{job['status']}: {job['message']}" if job.get("message") else job["status"]
        _error(f"job {target} has no records ({why})")
        raise typer.Exit(EXIT_USAGE)
    _print_records(files, limit)
    _say_usage(job)


def _print_records(files: Sequence[Iterator[bytes]], limit: int) -> None:
    """Each output line's record id, then the model's text or the error, for the first ``limit``."""
    most = 4 * EngineSettings().max_line_bytes  # an output line holds its input line and the answer
    lines = (line for blocks in files for _, line in split_lines(blocks, most))
    for line in itertools.islice(lines, limit or None):
        out.print(*_record_texts(line))


def _record_texts(line: Line) -> tuple[Text, Text]:
    if isinstance(line, OversizeLine):
        return Text("?", style="bold red"), Text(f"a line of {line.size:,} bytes, too long to show")
    record = orjson.loads(line)
    record_id = Text(_inert(str(record.get("recordId", record.get("custom_id")))), style="bold")
    if (answer := _answer(record)) is not None:
        return record_id, Text(_inert(output_text(answer)))
    record_id.stylize("red")
    said = error_message(record) or str(record.get("result", {}).get("type"))  # Anthropic's canceled/expired
    return record_id, Text(_inert(said))


_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _inert(text: str) -> str:
    """A record's text as a terminal may be sent it: control characters (ESC sequences that would clear,
    retitle or rewrite the terminal; NUL) shown as escapes, line breaks kept."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def _answer(record: dict[str, Any]) -> Any:
    """A result line's model answer, in any record format (Bedrock's, OpenAI's, Anthropic's); None for
    an error line."""
    if "modelOutput" in record:
        return record["modelOutput"]
    response, result = record.get("response"), record.get("result")
    if isinstance(response, dict) and response.get("status_code") == 200:
        return response.get("body")
    if isinstance(result, dict) and result.get("type") == "succeeded":
        return result.get("message")
    return None


app.command("prepare", cls=Command)(prepare_command)
app.command("estimate", cls=Command)(estimate_command)


def main() -> None:
    # Records are acyclic and freed by reference counting; the cyclic collector only rescans the
    # long-lived objects of the libraries loaded at start-up. Freezing those and collecting less often
    # cut the per-record cost of the echo benchmark by about half.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
