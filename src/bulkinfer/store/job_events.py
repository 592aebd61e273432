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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bulkinfer.domain.job import JobStatus
from bulkinfer.logs import event

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
