"""``run --retry-errors`` and ``retry OUTPUT/JOB``: the retry job of a finished local job.

The base is a finished job of the output folder (Completed, PartiallyCompleted, Expired, Stopped or
Failed): the one named, or the newest over the same input. The retry job is new, ``<root>-retry-<n>``
(``root`` is the first job of a retry chain), unless one of the same base is unfinished (killed): the
same command then resumes it. What could not run is refused before a job exists.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from bulkinfer.domain.job import JobStatus
from bulkinfer.engine.job import STATE_DIR, RunRequest
from bulkinfer.engine.retry import RetryBase, manifest_usage, read_manifest
from bulkinfer.errors import BulkinferError, UserError
from bulkinfer.providers.catalog import Catalog
from bulkinfer.store.state import JobRecord, StateStore

FINISHED = frozenset(
    {
        JobStatus.COMPLETED,
        JobStatus.PARTIALLY_COMPLETED,
        JobStatus.EXPIRED,
        JobStatus.STOPPED,
        JobStatus.FAILED,
    }
)
"""A job in one of these has ended: a retry job may take what it finished."""
RETRY_ID_ROOT_CHARS = 50
"""A retry id is ``<root>-retry-<n>``; a job id holds 64 characters at most."""


def retry_request(request: RunRequest, store: StateStore, base_id: str | None) -> RunRequest:
    """``request`` made the retry job of ``base_id``, or of the newest finished job over its input."""
    base = _named_base(store, base_id) if base_id else _latest_base(store, request.input)
    seed = _seed(base)
    manifest = read_manifest(request.output / base.job_id)
    _check_something_left(base, manifest, store)
    input_tokens, output_tokens, cost = _base_usage(base, manifest, store, request.catalog_file)
    retry_of = RetryBase(
        job_id=base.job_id,
        seed=seed,
        outputs=str((request.output / base.job_id).resolve()),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        estimated_cost_usd=cost,
        chunks=str((request.output / STATE_DIR / base.job_id / "chunks").resolve()),
    )
    return replace(
        request,
        input=request.input if base_id is None else Path(base.input_uri),
        model=request.model or base.model,
        dialect=request.dialect or base.options.get("dialect"),
        job_id=request.job_id or _retry_job_id(store, base, seed),
        retry_of=retry_of,
    )


def _named_base(store: StateStore, base_id: str) -> JobRecord:
    base = store.get_job(base_id)
    if base is None:
        raise UserError(f"no job {base_id!r} in this output folder")
    if base.status not in FINISHED:
        raise UserError(f"job {base_id} is {base.status.value}: only a job that has ended can be retried")
    return _holding_results(store, base)


def _latest_base(store: StateStore, input: Path) -> JobRecord:
    same_input = [j for j in store.list_jobs() if j.input_uri == str(input.resolve())]
    finished = [j for j in same_input if j.status in FINISHED]
    if not finished:
        raise UserError(f"nothing to retry: no job over {input} has ended in this output folder")
    latest = finished[-1]  # list_jobs is oldest first
    retried = latest.options.get("retry")
    if retried and latest.status == JobStatus.STOPPED:  # a stopped retry: the same command resumes it
        latest = store.get_job(str(retried.get("of"))) or latest
    return _holding_results(store, latest)


def _holding_results(store: StateStore, job: JobRecord) -> JobRecord:
    """``job``, or, when it is a retry that ended before it had carried its own base's successes over
    (it failed or was stopped while its model loaded), that base: what it holds, this one lacks."""
    while (retried := job.options.get("retry")) and retried.get("carried") is None:
        base = store.get_job(str(retried.get("of")))
        if base is None:
            break
        job = base
    return job


def _seed(base: JobRecord) -> str:
    retried = base.options.get("retry")
    return str(retried["seed"]) if retried else base.job_id


def _check_something_left(base: JobRecord, manifest: dict[str, Any] | None, store: StateStore) -> None:
    if manifest is not None:
        total, success = manifest.get("totalRecordCount"), manifest.get("successRecordCount")
        if type(total) is not int or type(success) is not int:
            return  # a manifest changed since: let the retry run what it cannot keep
    else:
        total, success = base.total_records, store.counts(base.job_id).success
    if total is not None and success >= total and base.status != JobStatus.FAILED:
        raise UserError(f"nothing to retry: all {total:,} records of job {base.job_id} succeeded")


def _base_usage(
    base: JobRecord, manifest: dict[str, Any] | None, store: StateStore, catalog_file: Path | None
) -> tuple[int, int, float | None]:
    """The base's tokens and cost: its manifest's, or (no manifest: stopped) its committed records'."""
    if manifest is not None:
        return manifest_usage(manifest, base.job_id)
    counts = store.counts(base.job_id)
    try:
        cost = (
            Catalog.load(catalog_file)
            .get(base.model)
            .estimated_cost(counts.input_tokens, counts.output_tokens)
        )
    except BulkinferError:  # its model is not in this catalog: its price is not known
        cost = None
    return counts.input_tokens, counts.output_tokens, cost


def _retry_job_id(store: StateStore, base: JobRecord, seed: str) -> str:
    """A retry job of the same base that can go on (killed, or stopped by Ctrl-C), to resume, so that
    what it ran is not run again; else ``<root>-retry-<n>``, new."""
    jobs = store.list_jobs()
    for job in reversed(jobs):
        retried = job.options.get("retry") or {}
        can_go_on = job.status not in FINISHED or job.status == JobStatus.STOPPED
        if retried.get("of") == base.job_id and can_go_on:
            return job.job_id
    taken = {j.job_id for j in jobs}
    root = seed[:RETRY_ID_ROOT_CHARS]
    return next(f"{root}-retry-{n}" for n in range(1, len(taken) + 2) if f"{root}-retry-{n}" not in taken)
