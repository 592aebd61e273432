"""Service jobs: what was asked for (the request as sent), where each job stands, and its counts.

Every status change is a compare-and-set from the status the caller saw, checked against the transition
table in `bulkinfer.domain.job` (a forbidden change is a bug and raises); a change another replica or
request made first wins, and the caller is told (None). Every other update writes only the columns it
names, so two writers never undo each other. Calls ride over a database restart: transient errors are
retried for a few seconds before they are raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, Engine, and_, case, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from bulkinfer.domain.job import SERVICE_ENDED, JobStatus, check_transition
from bulkinfer.errors import UserError
from bulkinfer.services.webhooks import Webhooks
from bulkinfer.store import job_events
from bulkinfer.store import webhooks as outbox
from bulkinfer.store.batcher import Batcher
from bulkinfer.store.migrate import current_revision, upgrade
from bulkinfer.store.notify import Listener, announce
from bulkinfer.store.rate_buckets import RateBuckets
from bulkinfer.store.schema import batch_jobs
from bulkinfer.store.state import make_engine
from bulkinfer.transient import is_transient_db, retrying_call

T = TypeVar("T")
K = TypeVar("K")
log = logging.getLogger(__name__)

DEFAULT_PATIENCE_S = 5.0
"""How long one store call retries a transient database error: long enough for a server restart, short
enough that a loop or a request sees a lasting outage soon (loops back off and try again)."""

LEASED = (JobStatus.VALIDATING, JobStatus.IN_PROGRESS, JobStatus.STOPPING)
"""The statuses a replica holds a job in under a lease."""

RUNNING = (JobStatus.IN_PROGRESS, JobStatus.STOPPING)
ACTIVE = (JobStatus.SUBMITTED, JobStatus.VALIDATING, JobStatus.SCHEDULED, *RUNNING)
"""The statuses a tenant's ``max_active_jobs`` counts."""

CAS_TRIES = 50
"""Times a compare-and-set of a job's details is tried against concurrent writers."""
DOWN_S = 2.0
"""After the database was found down, grouped calls fail at once for this long (then try again)."""
MAX_GROUP = 500
"""Most creates committed in one transaction, or reads made in one query."""
"""The statuses that take one of a model's job slots."""


@dataclass(frozen=True, slots=True)
class BatchJob:
    job_id: str
    tenant: str
    name: str
    model_id: str
    status: JobStatus
    submit_time: float
    last_modified: float
    request: dict[str, Any] = field(default_factory=dict)
    """The create request as validated: data configs, role, timeout, tags, invocation type."""
    client_token: str | None = None
    owner: str | None = None
    """The server replica holding the job (Validating, InProgress, Stopping), while its lease lasts."""
    lease_until: float | None = None
    expires_at: float | None = None
    """When the job times out (``timeoutDurationInHours`` after it was submitted)."""
    message: str | None = None
    start_time: float | None = None
    """When the job last got a slot (a resumed job: when it got one again)."""
    end_time: float | None = None
    total: int | None = None
    processed: int | None = None
    success: int | None = None
    errors: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    api: str = "bedrock"
    """The API that made the job: ``bedrock``, ``openai`` or ``anthropic``."""
    details: dict[str, Any] | None = None
    """What that API keeps beside Bedrock's fields (an OpenAI batch's validation errors, say)."""


@dataclass(frozen=True, slots=True)
class Tally:
    """Every job counted at once, for metrics: per status, model and API, the jobs and the sums of their
    stored counts (final for an ended job); and the jobs that have not ended but have run, whose committed
    counts are in the engine's state instead."""

    groups: list[tuple[str, str, str, int, int, int, int, int]]
    """(status, model, api, jobs, success, errors, input tokens, output tokens)."""
    started: list[tuple[str, str]]
    """(job id, model) of each job that has run and not ended."""


MAX_GROUPS = 100_000
"""Most rows one tally reads: statuses x models x APIs, plus the started unended jobs (about
jobs_per_model x models)."""


class TooManyActiveJobs(UserError):
    """The tenant has as many jobs active as it may."""


@dataclass(frozen=True, slots=True)
class _Create:
    job: BatchJob
    max_active: int | None
    """The tenant's limit on active jobs, if it has one."""


@dataclass(frozen=True, slots=True)
class JobFilter:
    tenant: str | None
    """Whose jobs; None for every tenant's (the dashboard in development mode, which shows all)."""
    api: str | None = None
    """Only the jobs one API made (None: every API's)."""
    status: JobStatus | None = None
    model: str | None = None
    name_contains: str | None = None
    submitted_after: float | None = None
    submitted_before: float | None = None
    ascending: bool = False
    past: tuple[float, str] | None = None
    """Only jobs after this one (its submit time and id) in the listing's order: keyset paging."""


class BatchJobStore:
    def __init__(
        self, url: str, patience_s: float = DEFAULT_PATIENCE_S, webhooks: Webhooks | None = None
    ) -> None:
        self._url = url
        self._webhooks = webhooks
        """Who is told of each status change: its webhooks are queued in the change's transaction."""
        self._patience_s = patience_s
        self._engine: Engine = make_engine(url)
        self._retry(lambda: upgrade(self._engine))
        self._down: tuple[float, DBAPIError] | None = None
        self._inserts = Batcher[_Create, BatchJob]("job-creates", self._insert_group, MAX_GROUP)
        self._reads = Batcher[str, BatchJob | None]("job-reads", self._read_group, MAX_GROUP)

    def _retry(self, fn: Callable[[], T]) -> T:
        return retrying_call(
            fn, what="the job database", transient=is_transient_db, patience_s=self._patience_s
        )

    def listen(self, on_change: Callable[[], None]) -> Listener | None:
        """Call ``on_change`` whenever another replica changes a job; None where only one process can
        use the store (SQLite), so there is no one else to hear from."""
        if self._engine.dialect.name != "postgresql":
            return None
        return Listener(self._url, on_change).start()

    @property
    def shared(self) -> bool:
        """Whether several replicas may use this store (PostgreSQL), so leases decide who holds a job."""
        return self._engine.dialect.name == "postgresql"

    def close(self) -> None:
        self._engine.dispose()

    def rate_buckets(self) -> RateBuckets:
        """The remote models' rate limits, shared by every replica on this store."""
        return RateBuckets(self._engine)

    def revision(self) -> str | None:
        """The database's schema revision, asked once, with no retry (a readiness check wants to know
        now); raises what the database driver raises when it does not answer."""
        return current_revision(self._engine)

    def create(self, job: BatchJob, max_active: int | None = None) -> BatchJob:
        """Insert a job; a job of the same tenant and client token already there is returned instead
        (the database's unique index decides between concurrent creates). With ``max_active``, a tenant
        that has that many jobs active already gets `TooManyActiveJobs` (counted in the insert's own
        transaction, under a per-tenant lock on PostgreSQL, so concurrent creates cannot pass it).

        Creates from many requests are committed together, one transaction for all those waiting
        (group commit): a commit costs a disk flush, and a burst would queue behind one flush each.
        """
        return self._inserts.submit(_Create(job, max_active)).result()

    async def create_async(self, job: BatchJob, max_active: int | None = None) -> BatchJob:
        """`create` for a coroutine: waits for its group's commit without blocking the event loop."""
        return await asyncio.wrap_future(self._inserts.submit(_Create(job, max_active)))

    async def get_async(self, job_id: str) -> BatchJob | None:
        """`get` for a coroutine: read together with the other reads waiting, in one query."""
        return await asyncio.wrap_future(self._reads.submit(job_id))

    def _insert_group(self, creates: Sequence[_Create]) -> list[BatchJob | BaseException]:
        try:
            return self._while_up(lambda: self._insert_together(creates))
        except DBAPIError as exc:
            if is_transient_db(exc):
                raise  # the database is away: every caller is told so
            # a token repeated, or one row refused: each on its own, so only that one fails
            return [_outcome(self._insert_one, create) for create in creates]

    def _insert_together(self, creates: Sequence[_Create]) -> list[BatchJob | BaseException]:
        with self._engine.begin() as conn:
            outcomes = _within_limits(conn, creates)
            new = [c.job for c, o in zip(creates, outcomes, strict=True) if o is c.job]
            if new:
                conn.execute(insert(batch_jobs), [_row(job) for job in new])
                job_events.save(conn, [job_events.of_submit(job) for job in new])
                for job in new:
                    outbox.enqueue(conn, self._webhooks, job, job.submit_time)
                announce(conn, new[0].job_id)
        for job in new:
            job_events.submitted(job)
        return outcomes

    def _read_group(self, job_ids: Sequence[str]) -> list[BatchJob | None]:
        query = select(batch_jobs).where(batch_jobs.c.job_id.in_(sorted(set(job_ids))))

        def read() -> list[BatchJob]:
            with self._engine.connect() as conn:
                return [_job(r) for r in conn.execute(query).mappings().all()]

        found = {job.job_id: job for job in self._while_up(read)}
        return [found.get(job_id) for job_id in job_ids]

    def _while_up(self, fn: Callable[[], T]) -> T:
        """A grouped call, retried through a blip; once the database has been found down, the groups
        that follow within `DOWN_S` are answered at once with that error, so a burst during an outage
        gets its 503s in about one retry's patience instead of one patience per group."""
        down = self._down
        if down is not None and time.monotonic() < down[0]:
            raise down[1]
        try:
            result = self._retry(fn)
        except DBAPIError as exc:
            if is_transient_db(exc):
                self._down = (time.monotonic() + DOWN_S, exc)
            raise
        self._down = None
        return result

    def _insert_one(self, create: _Create) -> BatchJob:
        return self._retry(lambda: self._insert_or_find(create))

    def _insert_or_find(self, create: _Create) -> BatchJob:
        job = create.job
        try:
            (outcome,) = self._insert_together([create])
        except IntegrityError:
            # the same client token, or this very job: a commit whose answer was lost, then retried
            existing = self.by_token(job.tenant, job.client_token) if job.client_token else None
            existing = existing or self.get(job.job_id)
            if existing is None or existing.tenant != job.tenant:
                raise
            return existing
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def claim_webhooks(self, limit: int, hold_s: float) -> list[outbox.Delivery]:
        """Due webhook deliveries, held for this sender for ``hold_s`` (see `bulkinfer.store.webhooks`)."""

        def write() -> list[outbox.Delivery]:
            with self._engine.begin() as conn:
                return outbox.claim(conn, limit, hold_s)

        return self._retry(write)

    def webhook_sent(self, delivery: outbox.Delivery, error: str | None, base_s: float) -> float | None:
        """Record an attempt (``error`` None: delivered); when a failed one is tried again, or None."""

        def write() -> float | None:
            with self._engine.begin() as conn:
                if error is None:
                    outbox.delivered(conn, delivery)
                    return None
                return outbox.failed(conn, delivery, error, base_s)

        return self._retry(write)

    def prune_webhooks(self, before: float) -> int:
        """Remove deliveries done with (delivered or given up) for events older than ``before``."""

        def write() -> int:
            with self._engine.begin() as conn:
                return outbox.prune(conn, before)

        return self._retry(write)

    def get(self, job_id: str) -> BatchJob | None:
        return self._one(select(batch_jobs).where(batch_jobs.c.job_id == job_id))

    def delete(self, job: BatchJob) -> bool:
        """Remove an ended job's row; False when it changed meanwhile (or is gone)."""
        c = batch_jobs.c
        query = batch_jobs.delete().where(c.job_id == job.job_id, c.status == job.status.value)

        def write() -> int:
            with self._engine.begin() as conn:
                deleted = int(conn.execute(query).rowcount)
                if deleted:
                    job_events.forget(conn, job.job_id)
                return deleted

        return self._retry(write) == 1

    def events(self, job_id: str, limit: int = 200) -> list[job_events.JobEvent]:
        """A job's timeline: its newest ``limit`` events, oldest first."""

        def read() -> list[job_events.JobEvent]:
            with self._engine.connect() as conn:
                return job_events.read(conn, job_id, limit)

        return self._retry(read)

    def note(self, job: BatchJob, name: str, reason: str) -> None:
        """Store an event that changes no status (``job.paused``, ``job.answering``) and log it."""
        noted = job_events.of_note(job, name, reason, time.time())

        def write() -> None:
            with self._engine.begin() as conn:
                job_events.save(conn, [noted])

        self._retry(write)
        job_events.noted(job, name, reason)

    def by_token(self, tenant: str, token: str) -> BatchJob | None:
        c = batch_jobs.c
        return self._one(select(batch_jobs).where(c.tenant == tenant, c.client_token == token))

    def _one(self, query: Any) -> BatchJob | None:
        def read() -> BatchJob | None:
            with self._engine.connect() as conn:
                row = conn.execute(query).mappings().first()
            return None if row is None else _job(row)

        return self._retry(read)

    def _many(self, query: Any) -> list[BatchJob]:
        def read() -> list[BatchJob]:
            with self._engine.connect() as conn:
                return [_job(r) for r in conn.execute(query).mappings().all()]

        return self._retry(read)

    def transition(
        self, job: BatchJob, new: JobStatus, *, held_by: str | None = None, **changes: Any
    ) -> BatchJob | None:
        """Move a job from the status it had when read to ``new`` (and set ``changes``), if it still has
        that status (and, with ``held_by``, is still held by that replica); None when it moved on.

        Raises `IllegalTransition` when the table forbids the move: a bug, not a race.
        """
        check_transition(job.status, new, job.job_id)
        c = batch_jobs.c
        now = time.time()
        values = {**_columns(changes), "status": new.value, "last_modified": now}
        query = update(batch_jobs).where(c.job_id == job.job_id, c.status == job.status.value)
        if held_by is not None:
            query = query.where(c.owner == held_by)

        changed = job_events.of_change(job, new, changes, now)
        after = replace(job, status=new, last_modified=now, **changes)

        def write() -> bool:
            with self._engine.begin() as conn:
                if conn.execute(query.values(**values)).rowcount != 1:
                    return False
                job_events.save(conn, [changed])
                outbox.enqueue(conn, self._webhooks, after, now)
                announce(conn, job.job_id)
                return True

        if not self._retry(write):
            return None
        job_events.changed(job, new, changes)
        return after

    def update(self, job: BatchJob, *, held_by: str | None = None, **changes: Any) -> BatchJob | None:
        """Set some columns of a job (never its status: see `transition`); with ``held_by``, only while
        that replica holds it. Returns the job as changed, or None when nothing matched."""
        if "status" in changes:
            raise TypeError("a status changes through transition()")
        c = batch_jobs.c
        now = time.time()
        query = update(batch_jobs).where(c.job_id == job.job_id)
        if held_by is not None:
            query = query.where(c.owner == held_by)
        values = {**_columns(changes), "last_modified": now}

        def write() -> int:
            with self._engine.begin() as conn:
                return int(conn.execute(query.values(**values)).rowcount)

        if self._retry(write) != 1:
            return None
        return replace(job, last_modified=now, **changes)

    def merge_details(self, job_id: str, more: dict[str, Any], keep: bool = False) -> BatchJob | None:
        """Merge ``more`` into a job's details (``keep``: where a key is there already, it stays), as a
        compare-and-set on what was there, so two requests noting different keys at once both stay."""
        c = batch_jobs.c
        for _ in range(CAS_TRIES):
            current = self.get(job_id)
            if current is None:
                return None
            stored = self._raw_details(job_id)  # what is merged into, and compared with when writing
            had = orjson.loads(stored) if stored else {}
            merged = {**more, **had} if keep else {**had, **more}
            if merged == had:
                return replace(current, details=had)
            seen = c.details.is_(None) if stored is None else c.details == stored
            now = time.time()
            query = update(batch_jobs).where(c.job_id == job_id, seen)
            values = {"details": _details_text(merged), "last_modified": now}

            def write(query: Any = query, values: dict[str, Any] = values) -> int:
                with self._engine.begin() as conn:
                    return int(conn.execute(query.values(**values)).rowcount)

            if self._retry(write) == 1:
                return replace(current, details=merged, last_modified=now)
        raise RuntimeError(f"job {job_id}: its details kept changing while they were noted")

    def _raw_details(self, job_id: str) -> str | None:
        def read() -> str | None:
            with self._engine.connect() as conn:
                query = select(batch_jobs.c.details).where(batch_jobs.c.job_id == job_id)
                return conn.execute(query).scalar_one_or_none()

        return self._retry(read)

    def find(self, wanted: JobFilter, offset: int = 0, limit: int | None = None) -> list[BatchJob]:
        c = batch_jobs.c
        query = select(batch_jobs)
        if wanted.tenant is not None:
            query = query.where(c.tenant == wanted.tenant)
        if wanted.model is not None:
            query = query.where(c.model_id == wanted.model)
        if wanted.api is not None:
            query = query.where(c.api == wanted.api)
        if wanted.status is not None:
            query = query.where(c.status == wanted.status.value)
        if wanted.name_contains:
            query = query.where(c.name.contains(wanted.name_contains, autoescape=True))
        if wanted.submitted_after is not None:
            query = query.where(c.submit_time > wanted.submitted_after)
        if wanted.submitted_before is not None:
            query = query.where(c.submit_time < wanted.submitted_before)
        if wanted.past is not None:
            at, job_id = wanted.past
            if wanted.ascending:
                query = query.where(or_(c.submit_time > at, and_(c.submit_time == at, c.job_id > job_id)))
            else:
                query = query.where(or_(c.submit_time < at, and_(c.submit_time == at, c.job_id < job_id)))
        order = (
            (c.submit_time.asc(), c.job_id.asc())
            if wanted.ascending
            else (c.submit_time.desc(), c.job_id.desc())
        )
        return self._many(query.order_by(*order).offset(offset).limit(limit))

    def claim(self, model: str, owner: str, slots: int, lease_s: float) -> BatchJob | None:
        """Take the oldest Scheduled job of a model if fewer than ``slots`` of its jobs run anywhere.

        Safe across replicas: on PostgreSQL a per-model advisory lock makes count-then-claim atomic and
        ``SKIP LOCKED`` keeps replicas off each other's rows; SQLite serves a single replica.
        """
        check_transition(JobStatus.SCHEDULED, JobStatus.IN_PROGRESS)
        return self._retry(lambda: self._claim(model, owner, slots, lease_s))

    def _claim(self, model: str, owner: str, slots: int, lease_s: float) -> BatchJob | None:
        c = batch_jobs.c
        now = time.time()
        with self._engine.begin() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(model))))
            if _running(conn, model) >= slots:
                return None
            query = (
                select(batch_jobs)
                .where(c.model_id == model, c.status == JobStatus.SCHEDULED.value)
                .order_by(c.submit_time, c.job_id)
                .limit(1)
            )
            row = (
                conn.execute(query.with_for_update(skip_locked=True) if postgres else query)
                .mappings()
                .first()
            )
            if row is None:
                return None
            changes: dict[str, Any] = {
                "owner": owner,
                "lease_until": now + lease_s,
                "start_time": now,
                "last_modified": now,
            }
            claimed = update(batch_jobs).where(
                c.job_id == row["job_id"], c.status == JobStatus.SCHEDULED.value
            )
            if conn.execute(claimed.values(status=JobStatus.IN_PROGRESS.value, **changes)).rowcount != 1:
                return None
            job = _job(row)
            job_events.save(conn, [job_events.of_change(job, JobStatus.IN_PROGRESS, changes, now)])
            outbox.enqueue(conn, self._webhooks, replace(job, status=JobStatus.IN_PROGRESS, **changes), now)
            announce(conn, row["job_id"])
        job_events.changed(job, JobStatus.IN_PROGRESS, changes)
        return replace(job, status=JobStatus.IN_PROGRESS, **changes)

    def adopt(self, job: BatchJob, owner: str, lease_s: float) -> BatchJob | None:
        """Take up a leased job (Validating or Stopping) that no replica holds any more."""
        c = batch_jobs.c
        now = time.time()
        lease_until = now + lease_s
        query = (
            update(batch_jobs)
            .where(c.job_id == job.job_id, c.status == job.status.value, c.owner.is_(None))
            .values(owner=owner, lease_until=lease_until)
        )
        reason = "its replica stopped"
        adopted = job_events.of_note(job, "job.resumed", f"taken up again ({reason})", now)

        def write() -> int:
            with self._engine.begin() as conn:
                taken = int(conn.execute(query).rowcount)
                if taken:
                    job_events.save(conn, [adopted])
                return taken

        if self._retry(write) != 1:
            return None
        job_events.taken_up(job, reason)
        return replace(job, owner=owner, lease_until=lease_until)

    def renew(self, owner: str, job_ids: list[str], lease_s: float) -> list[BatchJob]:
        """Extend the leases this replica still holds; returns those jobs as stored (a job missing from
        the answer, or held by someone else, is no longer this replica's to work on)."""
        if not job_ids:
            return []
        c = batch_jobs.c

        def write() -> list[BatchJob]:
            with self._engine.begin() as conn:
                conn.execute(
                    update(batch_jobs)
                    .where(c.owner == owner, c.job_id.in_(job_ids), c.status.in_([s.value for s in LEASED]))
                    .values(lease_until=time.time() + lease_s)
                )
                rows = conn.execute(select(batch_jobs).where(c.job_id.in_(job_ids))).mappings().all()
            return [_job(r) for r in rows]

        return self._retry(write)

    def rename_tenants(self, renames: dict[str, str]) -> int:
        """Jobs from before tenants (each access key id was a tenant) move to the tenant their key now
        belongs to, once: only jobs the migration marked are moved, so a later job whose tenant name
        happens to be a key id never is. A key whose jobs would repeat a client token of the tenant's
        keeps them (logged), rather than lose either."""
        moved = 0
        c = batch_jobs.c
        for old, new in sorted(renames.items()):
            if old == new:
                continue
            change = (
                update(batch_jobs)
                .where(c.tenant == old, c.keyed_by_access_key.is_(True))
                .values(tenant=new, keyed_by_access_key=False)
            )

            def write(change: Any = change) -> int:
                with self._engine.begin() as conn:
                    return int(conn.execute(change).rowcount)

            try:
                moved += self._retry(write)
            except IntegrityError:
                log.warning(
                    "jobs of access key %s repeat a client token of tenant %s: left as they are", old, new
                )
        return moved

    def release_expired(self, everyone: bool = False) -> int:
        """Let go of the jobs whose replica stopped renewing its lease (all leased jobs with
        ``everyone``: a single replica's restart). InProgress goes back to Scheduled, to resume from its
        committed chunks; Validating and Stopping keep their status without an owner, to be adopted."""
        c = batch_jobs.c
        now = time.time()
        lapsed = c.owner.is_not(None) if everyone else c.lease_until < now
        check_transition(JobStatus.IN_PROGRESS, JobStatus.SCHEDULED)
        held = [JobStatus.VALIDATING.value, JobStatus.STOPPING.value]

        def write() -> list[BatchJob]:
            with self._engine.begin() as conn:
                requeued = (
                    conn.execute(
                        update(batch_jobs)
                        .where(c.status == JobStatus.IN_PROGRESS.value, lapsed)
                        .values(
                            status=JobStatus.SCHEDULED.value, owner=None, lease_until=None, last_modified=now
                        )
                        .returning(batch_jobs)
                    )
                    .mappings()
                    .all()
                )
                orphaned = (
                    conn.execute(
                        update(batch_jobs)
                        .where(c.status.in_(held), lapsed)
                        .values(owner=None, lease_until=None, last_modified=now)
                        .returning(batch_jobs)
                    )
                    .mappings()
                    .all()
                )
                released = [_job(r) for r in (*requeued, *orphaned)]
                if released:
                    notes = [job_events.of_note(j, "job.let_go", reason, now) for j in released]
                    job_events.save(conn, notes)
                    for row in requeued:  # (InProgress -> Scheduled: a change of status, told)
                        outbox.enqueue(conn, self._webhooks, _job(row), now)
                    announce(conn, "*")
            return released

        reason = "the server restarted" if everyone else "its replica stopped renewing its lease"
        released = self._retry(write)
        for job in released:
            job_events.let_go(job, reason)
        return len(released)

    def with_status(self, *statuses: JobStatus, limit: int | None = None) -> list[BatchJob]:
        """Jobs in these statuses, oldest first (the order they are served in)."""
        c = batch_jobs.c
        query = select(batch_jobs).where(c.status.in_([s.value for s in statuses]))
        return self._many(query.order_by(c.submit_time, c.job_id).limit(limit))

    def expired(self, now: float, *statuses: JobStatus) -> list[BatchJob]:
        """Jobs in these statuses whose deadline has passed."""
        c = batch_jobs.c
        query = select(batch_jobs).where(c.status.in_([s.value for s in statuses]), c.expires_at <= now)
        return self._many(query.order_by(c.expires_at))

    def next_expiry(self, after: float, *statuses: JobStatus) -> float | None:
        """The soonest deadline after ``after`` of the jobs in these statuses."""
        c = batch_jobs.c
        query = select(func.min(c.expires_at)).where(
            c.status.in_([s.value for s in statuses]), c.expires_at > after
        )

        def read() -> float | None:
            with self._engine.connect() as conn:
                value = conn.execute(query).scalar_one()
            return None if value is None else float(value)

        return self._retry(read)

    def models_with(self, status: JobStatus) -> list[str]:
        """The models that have a job in this status."""
        c = batch_jobs.c
        query = select(c.model_id).where(c.status == status.value).distinct().order_by(c.model_id)

        def read() -> list[str]:
            with self._engine.connect() as conn:
                return [str(m) for m in conn.execute(query).scalars().all()]

        return self._retry(read)

    def unowned(self, *statuses: JobStatus) -> list[BatchJob]:
        """Jobs in these statuses that no replica holds, oldest first."""
        c = batch_jobs.c
        query = select(batch_jobs).where(c.status.in_([s.value for s in statuses]), c.owner.is_(None))
        return self._many(query.order_by(c.submit_time, c.job_id))

    def tally(self) -> Tally:
        """Counts of every job in one aggregate query: one statement, so a job that ends meanwhile is
        seen either running or ended, never both nor neither. A started unended job is a group of its
        own (its stored counts are stale; its committed ones are in the engine's state)."""
        c = batch_jobs.c
        ended = [s.value for s in SERVICE_ENDED]
        started = case((and_(c.status.not_in(ended), c.start_time.is_not(None)), c.job_id), else_=None)
        sums = [
            func.coalesce(func.sum(col), 0) for col in (c.success, c.errors, c.input_tokens, c.output_tokens)
        ]
        query = (
            select(c.status, c.model_id, c.api, started, func.count(), *sums)
            .group_by(c.status, c.model_id, c.api, started)
            .limit(MAX_GROUPS)
        )

        def read() -> Tally:
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
            groups = [(str(r[0]), str(r[1]), str(r[2]), *(int(v) for v in r[4:])) for r in rows]
            return Tally(groups, [(str(r[3]), str(r[1])) for r in rows if r[3] is not None])  # type: ignore[arg-type]

        return self._retry(read)

    def running(self, model: str) -> int:
        """How many of a model's jobs hold a slot now."""

        def read() -> int:
            with self._engine.connect() as conn:
                return _running(conn, model)

        return self._retry(read)


def _outcome(fn: Callable[[K], T], item: K) -> T | BaseException:
    try:
        return fn(item)
    except Exception as exc:
        return exc


def _within_limits(conn: Connection, creates: Sequence[_Create]) -> list[BatchJob | BaseException]:
    """Each create's job when its tenant is under its limit of active jobs (counting the ones before it
    in the group); else the job already stored under its client token (a retried create), or
    `TooManyActiveJobs`."""
    c = batch_jobs.c
    limited = sorted({k.job.tenant for k in creates if k.max_active is not None})
    if not limited:
        return [k.job for k in creates]
    if conn.dialect.name == "postgresql":  # replicas count one tenant's jobs one at a time
        for tenant in limited:
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"bulkinfer-active:{tenant}"))))
    active = [s.value for s in ACTIVE]
    query = (
        select(c.tenant, func.count()).where(c.tenant.in_(limited), c.status.in_(active)).group_by(c.tenant)
    )
    counts: dict[str, int] = {str(t): int(n) for t, n in conn.execute(query).all()}
    outcomes: list[BatchJob | BaseException] = []
    taken: dict[tuple[str, str], BatchJob] = {}  # tokens already taken in this group: one job each
    for create in creates:
        job, limit = create.job, create.max_active
        earlier = taken.get((job.tenant, job.client_token)) if job.client_token else None
        if earlier is not None:
            outcomes.append(earlier)
            continue
        if limit is None or counts.get(job.tenant, 0) < limit:
            counts[job.tenant] = counts.get(job.tenant, 0) + 1
            outcomes.append(job)
            if job.client_token:
                taken[(job.tenant, job.client_token)] = job
            continue
        same = (c.client_token == job.client_token) if job.client_token else (c.job_id == job.job_id)
        row = conn.execute(select(batch_jobs).where(c.tenant == job.tenant, same)).mappings().first()
        outcomes.append(_job(row) if row is not None else TooManyActiveJobs(_over(job.tenant, limit)))
    return outcomes


def _over(tenant: str, limit: int) -> str:
    return (
        f"tenant {tenant!r} has {limit} jobs active (Submitted to Stopping), its max_active_jobs; "
        "submit more once some have ended"
    )


def _running(conn: Connection, model: str) -> int:
    c = batch_jobs.c
    query = (
        select(func.count())
        .select_from(batch_jobs)
        .where(c.model_id == model, c.status.in_([s.value for s in RUNNING]))
    )
    return int(conn.execute(query).scalar_one())


def _columns(changes: dict[str, Any]) -> dict[str, Any]:
    """Changed fields as column values."""
    values = dict(changes)
    if "request" in values:
        values["request"] = orjson.dumps(values["request"]).decode()
    if values.get("details") is not None:
        values["details"] = _details_text(values["details"])
    if isinstance(values.get("status"), JobStatus):
        values["status"] = values["status"].value
    return values


def _row(job: BatchJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "tenant": job.tenant,
        "name": job.name,
        "model_id": job.model_id,
        "client_token": job.client_token,
        "status": job.status.value,
        "message": job.message,
        "submit_time": job.submit_time,
        "last_modified": job.last_modified,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "request": orjson.dumps(job.request).decode(),
        "owner": job.owner,
        "lease_until": job.lease_until,
        "expires_at": job.expires_at,
        "total": job.total,
        "processed": job.processed,
        "success": job.success,
        "errors": job.errors,
        "input_tokens": job.input_tokens,
        "output_tokens": job.output_tokens,
        "api": job.api,
        "details": None if job.details is None else _details_text(job.details),
    }


def _details_text(details: dict[str, Any]) -> str:
    """Details as stored: the same dict always gives the same text (merge_details compares texts)."""
    return orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()


def _job(row: Any) -> BatchJob:
    values = dict(row)
    values.pop("keyed_by_access_key", None)
    values["status"] = JobStatus(values["status"])
    values["request"] = orjson.loads(values["request"])
    if values.get("details") is not None:
        values["details"] = orjson.loads(values["details"])
    return BatchJob(**values)
