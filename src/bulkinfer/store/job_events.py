"""The job log: one line per change of a service job, written by the store once the change is committed.

Every status change goes through `BatchJobStore` (a compare-and-set), so logging there gives each change
exactly one line, on the replica that made it, whichever loop or request asked for it. The event names
are stable (alerts and dashboards key on them):

========================  ======================================================================
``job.submitted``         the job was stored (Submitted)
``job.validating``        a replica is checking its input
``job.scheduled``         it passed validation and waits for one of its model's slots
``job.started``           it got a slot: InProgress
``job.resumed``           it got a slot again after it was let go, or a replica took it up again
``job.let_go``            its replica gave it up (or stopped renewing its lease): back to Scheduled
``job.stopping``          a stop (or its timeout) is writing what it finished
``job.ended``             Completed, PartiallyCompleted, Stopped or Expired (``status`` says which)
``job.failed``            Failed, with the message the API shows
========================  ======================================================================

Each line carries ``tenant``, ``job_id``, ``model``, ``api`` and ``status`` (the new one), and where
there is one the ``reason`` (an ended or failed job's: the message the API shows).

Each change is also stored, as a `JobEvent` row written in the transaction that makes the change (so no
change is ever stored without its event, nor an event without its change): the job's timeline, with a
reason for each step (which slots it waits for, why it was let go, why it ended). Two events change no
status: ``job.paused`` (its provider stopped answering; the job waits) and ``job.answering`` (it
answers again). A job's events go with it when it is deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select

from bulkinfer.domain.job import JobStatus
from bulkinfer.logs import event
from bulkinfer.store.schema import job_events as events_table

if TYPE_CHECKING:
    from bulkinfer.store.batch_jobs import BatchJob

log = logging.getLogger("bulkinfer.jobs")

_BY_STATUS = {
    JobStatus.SUBMITTED: "job.submitted",
    JobStatus.VALIDATING: "job.validating",
    JobStatus.SCHEDULED: "job.scheduled",
    JobStatus.IN_PROGRESS: "job.started",
    JobStatus.STOPPING: "job.stopping",
    JobStatus.STOPPED: "job.ended",
    JobStatus.COMPLETED: "job.ended",
    JobStatus.PARTIALLY_COMPLETED: "job.ended",
    JobStatus.EXPIRED: "job.ended",
    JobStatus.FAILED: "job.failed",
}
_COUNTS = ("total", "processed", "success", "errors")


def event_name(before: JobStatus, after: JobStatus, ran_before: bool) -> str:
    """The event of a change from ``before`` to ``after``; ``ran_before``: the job had had a slot."""
    if before == JobStatus.IN_PROGRESS and after == JobStatus.SCHEDULED:
        return "job.let_go"
    if after == JobStatus.IN_PROGRESS and (ran_before or before in (JobStatus.STOPPED, JobStatus.FAILED)):
        return "job.resumed"
    return _BY_STATUS[after]


MAX_REASON = 2000
"""Longest reason stored (a failure's message can quote a long provider error)."""

_REASONS = {
    "job.validating": "checking its input",
    "job.stopping": "a stop was asked (or its time ran out): writing what it finished",
}


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One step of a job's timeline, as stored."""

    job_id: str
    tenant: str
    at: float
    """When it happened (epoch seconds)."""
    name: str
    """The stable event name (``job.scheduled``, ``job.paused``, ...)."""
    status: str
    """The job's status after it."""
    reason: str | None


def of_submit(job: BatchJob) -> JobEvent:
    reason = f"submitted through the {job.api} API for model {job.model_id}"
    return _event(job, job.submit_time, "job.submitted", job.status, reason)


def of_change(before: BatchJob, after: JobStatus, changes: Mapping[str, Any], at: float) -> JobEvent:
    """The event of a change of ``before`` to ``after`` that set ``changes``."""
    name = event_name(before.status, after, before.start_time is not None)
    model = before.model_id
    default = {
        "job.scheduled": f"its input is valid; it waits for one of {model}'s job slots",
        "job.started": f"it got one of {model}'s job slots",
        "job.resumed": f"it got one of {model}'s job slots again; it goes on from its committed records",
        "job.let_go": "its replica gave it up; it is taken up again from its committed records",
    }.get(name, _REASONS.get(name))
    reason = None
    if after.is_terminal or after == JobStatus.STOPPED:
        reason = changes.get("message") or _tally(changes)
    return _event(before, at, name, after, reason or default)


def _tally(changes: Mapping[str, Any]) -> str | None:
    """An ended job's counts, said: what it did, when no message says why it ended."""
    if changes.get("processed") is None:
        return None
    said = f"{changes['processed']} records processed: {changes.get('success') or 0} succeeded"
    return f"{said}, {changes.get('errors') or 0} failed"


def of_note(job: BatchJob, name: str, reason: str, at: float) -> JobEvent:
    """An event that changes no status (a job taken up or let go by a replica, a provider's pause)."""
    return _event(job, at, name, job.status, reason)


def _event(job: BatchJob, at: float, name: str, status: JobStatus, reason: str | None) -> JobEvent:
    return JobEvent(job.job_id, job.tenant, at, name, status.value, reason and reason[:MAX_REASON])


def save(conn: Connection, events: Sequence[JobEvent]) -> None:
    """Store events in the caller's transaction."""
    if events:
        conn.execute(insert(events_table), [asdict(e) for e in events])


def read(conn: Connection, job_id: str, limit: int) -> list[JobEvent]:
    """A job's newest ``limit`` events, oldest first."""
    c = events_table.c
    newest = select(events_table).where(c.job_id == job_id).order_by(c.seq.desc()).limit(limit)
    rows = conn.execute(newest).mappings().all()
    return [JobEvent(**{k: v for k, v in row.items() if k != "seq"}) for row in reversed(rows)]


def forget(conn: Connection, job_id: str) -> None:
    conn.execute(delete(events_table).where(events_table.c.job_id == job_id))


def submitted(job: BatchJob) -> None:
    _log("job.submitted", job, f"job {job.job_id} submitted ({job.api}, model {job.model_id})")


def changed(before: BatchJob, after: JobStatus, changes: Mapping[str, Any]) -> None:
    """Log a committed change of ``before`` to ``after``, with the columns it set that say how it ended."""
    name = event_name(before.status, after, before.start_time is not None)
    fields: dict[str, Any] = {"status": after.value, "previous": before.status.value}
    if name == "job.let_go":
        fields["reason"] = "its replica gave it up; it is taken up again from its committed records"
    said = f"job {before.job_id}: {before.status.value} -> {after.value}"
    if after.is_terminal or after == JobStatus.STOPPED:
        fields["reason"] = changes.get("message")
        fields.update({key: changes[key] for key in _COUNTS if changes.get(key) is not None})
        said += f": {fields['reason']}" if fields["reason"] else ""
    _log(name, before, said, logging.WARNING if after == JobStatus.FAILED else logging.INFO, **fields)


def taken_up(job: BatchJob, reason: str) -> None:
    """A replica took up a job no one held any more, in the status it was in (no change of status)."""
    _log("job.resumed", job, f"job {job.job_id}: taken up again ({reason})", reason=reason)


def let_go(job: BatchJob, reason: str) -> None:
    """A job's replica let it go without a compare-and-set of its own (its lease lapsed)."""
    _log("job.let_go", job, f"job {job.job_id}: let go ({reason})", reason=reason)


def noted(job: BatchJob, name: str, reason: str) -> None:
    """An event that changed no status (a provider's pause, say)."""
    _log(name, job, f"job {job.job_id}: {reason}", reason=reason)


def _log(name: str, job: BatchJob, said: str, level: int = logging.INFO, **fields: Any) -> None:
    fields.setdefault("status", job.status.value)
    event(
        log,
        name,
        said,
        level=level,
        tenant=job.tenant,
        job_id=job.job_id,
        model=job.model_id,
        api=job.api,
        **fields,
    )
