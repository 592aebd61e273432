"""Jobs: their status lifecycle and the counts a manifest reports."""

from __future__ import annotations

import enum
import secrets
import string
from collections import Counter
from dataclasses import dataclass, field

JOB_ID_ALPHABET = string.ascii_lowercase + string.digits
JOB_ID_LENGTH = 12


class JobStatus(enum.StrEnum):
    """Bedrock's ModelInvocationJobStatus values."""

    SUBMITTED = "Submitted"
    VALIDATING = "Validating"
    SCHEDULED = "Scheduled"
    IN_PROGRESS = "InProgress"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    COMPLETED = "Completed"
    PARTIALLY_COMPLETED = "PartiallyCompleted"
    FAILED = "Failed"
    EXPIRED = "Expired"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {JobStatus.COMPLETED, JobStatus.PARTIALLY_COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED}
)

#: A service job in one of these has ended and written all the outputs it will (the service never
#: resumes a Stopped job; a local run may).
SERVICE_ENDED = _TERMINAL | {JobStatus.STOPPED}

#: Which status may follow which, for service jobs and local runs alike. The stores enforce it on every
#: status change: a refused transition is a bug and raises. Updates that keep the status are not
#: transitions. Each non-terminal status has an owner (a replica holding a lease) or a recovery rule:
#:
#: - Submitted: no owner; any replica's validation loop takes it.
#: - Validating: leased; a lapsed lease leaves it Validating without an owner, and the next replica to find
#:   it validates it again from the start (staging its input again). Validation is never skipped.
#: - Scheduled: no owner; the model's next free slot takes it. Stopped, one that ran before (its replica
#:   died) becomes Stopping, so its partial output is written.
#: - InProgress: leased; a lapsed lease sends it back to Scheduled, to resume from its committed chunks
#:   (a job publishing its outputs resumes publishing).
#: - Stopping: leased; a lapsed lease leaves it Stopping without an owner, and the next replica to find it
#:   writes its partial output and manifest, then ends it Stopped.
#: - Stopped and Failed are final for the service; a local run (``bulkinfer run``) resumes them.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.SUBMITTED: frozenset(
        {JobStatus.VALIDATING, JobStatus.IN_PROGRESS, JobStatus.STOPPED, JobStatus.FAILED, JobStatus.EXPIRED}
    ),
    JobStatus.VALIDATING: frozenset(
        {JobStatus.SCHEDULED, JobStatus.STOPPED, JobStatus.FAILED, JobStatus.EXPIRED}
    ),
    JobStatus.SCHEDULED: frozenset(
        {JobStatus.IN_PROGRESS, JobStatus.STOPPING, JobStatus.STOPPED, JobStatus.FAILED, JobStatus.EXPIRED}
    ),
    JobStatus.IN_PROGRESS: frozenset(
        {
            JobStatus.SCHEDULED,
            JobStatus.STOPPING,
            JobStatus.STOPPED,
            JobStatus.COMPLETED,
            JobStatus.PARTIALLY_COMPLETED,
            JobStatus.FAILED,
        }
    ),
    JobStatus.STOPPING: frozenset(
        {JobStatus.STOPPED, JobStatus.COMPLETED, JobStatus.PARTIALLY_COMPLETED, JobStatus.FAILED}
    ),
    JobStatus.STOPPED: frozenset({JobStatus.IN_PROGRESS}),
    JobStatus.FAILED: frozenset({JobStatus.IN_PROGRESS}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.PARTIALLY_COMPLETED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A status change the transition table forbids: a bug in bulkinfer, never a user's mistake."""


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new == current or new in TRANSITIONS[current]


def check_transition(current: JobStatus, new: JobStatus, job_id: str = "") -> None:
    if not can_transition(current, new):
        raise IllegalTransition(f"job {job_id}: {current.value} may not become {new.value}")


def predecessors(new: JobStatus) -> frozenset[JobStatus]:
    """The statuses a job may be in to move to ``new`` (``new`` itself included)."""
    return frozenset(s for s in JobStatus if can_transition(s, new))


def new_job_id() -> str:
    """A Bedrock-style job id: 12 characters of ``[a-z0-9]``."""
    # one read of the system's randomness, not one per character (a burst of creates makes many)
    number = int.from_bytes(secrets.token_bytes(10))  # 80 bits > 36**12 (62 bits), so close to uniform
    characters = []
    for _ in range(JOB_ID_LENGTH):
        number, digit = divmod(number, len(JOB_ID_ALPHABET))
        characters.append(JOB_ID_ALPHABET[digit])
    return "".join(characters)


@dataclass(frozen=True, slots=True)
class Counts:
    """Record and token counts; additive, so chunk counts sum to job counts."""

    processed: int = 0
    success: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: Counts) -> Counts:
        codes = Counter(self.error_codes)
        codes.update(other.error_codes)
        return Counts(
            processed=self.processed + other.processed,
            success=self.success + other.success,
            errors=self.errors + other.errors,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            error_codes=dict(codes),
        )
