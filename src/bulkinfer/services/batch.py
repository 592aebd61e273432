"""Submit, read, list and stop service jobs."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from bulkinfer.domain.job import SERVICE_ENDED, JobStatus, new_job_id
from bulkinfer.domain.tenant import Tenant
from bulkinfer.errors import BulkinferError, UserError
from bulkinfer.faults import failpoint
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.cost import JobCost, cost_in
from bulkinfer.scheduler.scheduler import Scheduler, deadline, input_uri, output_uri
from bulkinfer.services import webhooks as hooks
from bulkinfer.store.batch_jobs import BatchJob, BatchJobStore, JobFilter
from bulkinfer.store.job_events import JobEvent
from bulkinfer.store.provider_jobs import ProviderJob, ProviderJobs


class JobNotFound(BulkinferError):
    """No such job."""


class JobConflict(BulkinferError):
    """The job is not in a state that allows this."""


class JobNotEnded(BulkinferError):
    """The job has not ended, so its outputs are not final."""


DEDUPE_WINDOW_S = 600
"""Creates of the same request this close together are one job (see `BatchService.dedupe_token`)."""
STOP_TRIES = 5
"""Times a stop looks at a job that keeps moving before it gives up."""

ENDED = SERVICE_ENDED
INTERNAL_REQUEST_KEYS = frozenset({"stagedInput"})
"""What the scheduler adds to a job's request: not part of a retry job's."""
RETRY_NAME = re.compile(r"(?P<root>.*?)-retry-(?P<n>\d+)")
MAX_NAME = 63


@dataclass(frozen=True, slots=True)
class NewJob:
    tenant: Tenant
    name: str
    model_id: str
    client_token: str | None
    request: dict[str, Any]
    api: str = "bedrock"
    details: dict[str, Any] | None = None
    check_model: bool = True
    """Refuse at once a model the catalog lacks or the tenant may not use; an OpenAI batch's model is
    checked while it validates instead, naming the lines (as OpenAI does)."""


Jobs = list[BatchJob]  # (named here: inside BatchService, ``list`` is its method)


@dataclass(frozen=True, slots=True)
class Page:
    jobs: list[BatchJob]
    next_token: str | None


class BatchService:
    def __init__(
        self,
        store: BatchJobStore,
        scheduler: Scheduler,
        catalog: Catalog,
        webhooks: hooks.Webhooks | None = None,
        provider_jobs: ProviderJobs | None = None,
    ) -> None:
        self._store = store
        self._provider_jobs = provider_jobs
        self._webhooks = webhooks
        self._scheduler = scheduler
        self._catalog = catalog

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def cost(self, job: BatchJob) -> JobCost:
        """A job's cost from the tokens it reports: an ended job's final ones; a running job's finished
        records' (reset to its committed records' whenever it is taken up again, so a job resumed after
        a kill counts each record once). A retry job's ended tokens hold its base's too."""
        return cost_in(self._catalog, job.model_id, job.input_tokens or 0, job.output_tokens or 0)

    def submit(self, new: NewJob) -> BatchJob:
        """Record a job (Submitted) and wake the scheduler; a repeated client token returns the first job
        (the store's unique index finds it, also between concurrent creates)."""
        return self._submitted(self._store.create(self._new(new), new.tenant.max_active_jobs))

    async def submit_async(self, new: NewJob) -> BatchJob:
        """`submit` for a request handler: waits for its group's commit off the event loop. A webhook URL
        the job names is checked first (the SSRF guard resolves its host)."""
        await hooks.check_job_url(self._webhooks, new.request, new.details)
        return self._submitted(await self._store.create_async(self._new(new), new.tenant.max_active_jobs))

    def _submitted(self, stored: BatchJob) -> BatchJob:
        failpoint("submitted")
        self._scheduler.notify()
        return stored

    def _new(self, new: NewJob) -> BatchJob:
        """The job to store, once the tenant may use its model and touch its input and output."""
        tenant = new.tenant
        if new.check_model:  # unknown: a UserError naming the tenant's models
            self._catalog.get(new.model_id, tenant.may_use)
        tenant.check_read(input_uri(new.request), "inputDataConfig.s3InputDataConfig.s3Uri")
        tenant.check_write(output_uri(new.request), "outputDataConfig.s3OutputDataConfig.s3Uri")
        now = time.time()
        return BatchJob(
            job_id=new_job_id(),
            tenant=tenant.name,
            name=new.name,
            model_id=new.model_id,
            status=JobStatus.SUBMITTED,
            submit_time=now,
            last_modified=now,
            request=new.request,
            client_token=new.client_token,
            expires_at=deadline(now, new.request),
            api=new.api,
            details=new.details,
        )

    def retry(self, tenant: Tenant, job_id: str, name: str | None, client_token: str | None) -> BatchJob:
        """Submit the retry job of one of the tenant's ended jobs: same input, output and model; it keeps
        the base's successes and runs its error lines and unrun records again (see engine.retry).

        Someone else's job is not found; one that has not ended is a conflict. The tenant must still
        be granted the base's input, output (where the base's outputs are read from) and model.
        Without a client token, a base has one retry job: asking again (a client that timed out, two
        requests at once) returns it rather than bill the same records twice; retry that one to go on.
        """
        base = self.ended(tenant.name, job_id)
        tenant.check_read(output_uri(base.request), "outputDataConfig.s3OutputDataConfig.s3Uri")
        complete = base.total is not None and (base.success or 0) >= base.total
        if base.status == JobStatus.COMPLETED and complete:
            raise UserError(f"nothing to retry: all {base.total:,} records of job {job_id} succeeded")
        seed = base.request.get("retryOf", {}).get("seed", base.job_id)
        request = {key: value for key, value in base.request.items() if key not in INTERNAL_REQUEST_KEYS}
        name = name or retry_name(base.name)
        request |= {"jobName": name, "retryOf": {"jobId": base.job_id, "seed": seed}}
        token = client_token or f"retry-{base.job_id}"  # the store's unique index: one job per token
        job = self.submit(NewJob(tenant, name, base.model_id, token, request))
        if job.request.get("retryOf", {}).get("jobId") != base.job_id:  # the token named another job
            raise JobConflict(
                f"clientRequestToken {token} was given for job {job.job_id}, which is not a retry of "
                f"{job_id}: give another token, or none"
            )
        return job

    def by_token(self, tenant: str, token: str) -> BatchJob | None:
        """The tenant's job created with this client token, if any."""
        return self._store.by_token(tenant, token)

    def get(self, tenant: str, job_id: str) -> BatchJob:
        return self._visible(tenant, job_id, self._store.get(job_id))

    async def get_async(self, tenant: str, job_id: str) -> BatchJob:
        """`get` for a request handler: read together with other requests' reads, off the event loop."""
        return self._visible(tenant, job_id, await self._store.get_async(job_id))

    def _visible(self, tenant: str, job_id: str, job: BatchJob | None) -> BatchJob:
        if job is None or job.tenant != tenant:
            raise JobNotFound(f"Could not find job {job_id}")
        return self._with_live_counts(job)

    def get_any(self, job_id: str, tenant: str | None = None) -> BatchJob:
        """A job of ``tenant``, or of any tenant with None (the dashboard in development mode)."""
        job = self._store.get(job_id)
        owner = job.tenant if job is not None and tenant is None else tenant
        return self._visible(owner or "", job_id, job)

    def events(self, tenant: str, job_id: str) -> list[JobEvent]:
        """A tenant's job's timeline (another tenant's job is not found)."""
        self.get(tenant, job_id)
        return self._store.events(job_id)

    def provider_jobs(self, tenant: str, job_id: str) -> list[ProviderJob]:
        """The provider batch jobs a tenant's job ran as (a ``*-batch`` model's), oldest first."""
        self.get(tenant, job_id)
        return [] if self._provider_jobs is None else self._provider_jobs.of_job(job_id)

    def ended(self, tenant: str, job_id: str) -> BatchJob:
        """One of the caller's jobs whose outputs can be read: it must have ended."""
        job = self.get(tenant, job_id)
        if job.status not in ENDED:
            raise JobNotEnded(
                f"Job {job_id} has not ended, so its outputs are not final. State is: {job.status.value}"
            )
        return job

    def _with_live_counts(self, job: BatchJob) -> BatchJob:
        """A running job's counts as of now, not as of its last stored update."""
        live = self._scheduler.live_counts(job.job_id)
        if live is None or job.status not in (JobStatus.IN_PROGRESS, JobStatus.STOPPING):
            return job
        return replace(
            job,
            processed=live.processed,
            errors=live.errors,
            success=live.processed - live.errors,
            input_tokens=live.input_tokens,
            output_tokens=live.output_tokens,
            message=self._scheduler.activity(job.job_id) or job.message,
        )

    def list(self, wanted: JobFilter, page_size: int, token: str | None) -> Page:
        offset = _decode_token(token) if token else 0
        jobs = self._store.find(wanted, offset, page_size + 1)
        more = len(jobs) > page_size
        jobs = [self._with_live_counts(j) for j in jobs[:page_size]]
        return Page(jobs, _encode_token(offset + page_size) if more else None)

    def page(
        self, wanted: JobFilter, limit: int, after: str | None = None, before: str | None = None
    ) -> tuple[Jobs, bool]:
        """Newest first, by keyset: the ``limit`` jobs after the job ``after`` (older ones), or just before
        the job ``before`` (newer ones), and whether more follow in that direction. A job id that is not
        the caller's is not found."""
        if after is not None or before is not None:
            anchor = self.get_any(after or before or "", wanted.tenant)
            wanted = replace(wanted, past=(anchor.submit_time, anchor.job_id), ascending=before is not None)
        jobs = self._store.find(wanted, 0, limit + 1)
        more = len(jobs) > limit
        jobs = [self._with_live_counts(j) for j in jobs[:limit]]
        return (jobs[::-1] if before is not None else jobs), more

    def delete(self, tenant: str, job_id: str) -> BatchJob:
        """Forget one of the tenant's ended jobs (its files are the caller's to remove)."""
        job = self.ended(tenant, job_id)
        if not self._store.delete(job):
            raise JobConflict(f"Job {job_id} changed while it was being deleted; try again")
        return job

    def dedupe_token(self, tenant: str, key: str | None, request: bytes) -> str:
        """A create's token for an API whose SDK sends none: the client's ``Idempotency-Key``, else a
        hash of the request and of the ten minutes it came in (or of the ten before, if a job has that
        one: a retry across the boundary), so a create the SDK sends again after a timeout makes no
        second job."""
        if key:
            return f"key:{key}"
        digest = hashlib.sha256(request).hexdigest()[:32]
        window = int(time.time() // DEDUPE_WINDOW_S)
        earlier = f"auto:{digest}:{window - 1}"
        if self._store.by_token(tenant, earlier) is not None:
            return earlier
        return f"auto:{digest}:{window}"

    def note(self, job: BatchJob, keep: bool = False, **details: Any) -> BatchJob:
        """Keep more of what the job's API shows beside Bedrock's fields, merged into its details as
        they are now (``keep``: a key noted already keeps its first value)."""
        return self._store.merge_details(job.job_id, details, keep) or job

    def stop(self, tenant: str, job_id: str) -> None:
        """Stop a job. One that has run writes what it finished (Stopping, then Stopped with its partial
        output and manifest, wherever it is held); one that never ran ends Stopped at once."""
        for _ in range(STOP_TRIES):  # a job that moves on meanwhile is looked at again
            job = self.get(tenant, job_id)
            if job.status in ENDED or job.status == JobStatus.STOPPING:
                raise JobConflict(f"Job {job_id} cannot be stopped. State was: {job.status.value}")
            ran = job.status == JobStatus.IN_PROGRESS or job.start_time is not None
            if ran:
                stopped = self._store.transition(job, JobStatus.STOPPING)
            else:
                stopped = self._store.transition(
                    job, JobStatus.STOPPED, end_time=time.time(), owner=None, lease_until=None
                )
            if stopped is not None:
                if ran:
                    failpoint("stopping")
                self._scheduler.stopped(job_id)
                return
        raise JobConflict(f"Job {job_id} kept changing while it was being stopped; try again")


def retry_name(base: str) -> str:
    """A retry job's default name: ``<name>-retry-1``, then ``-retry-2`` for a retry of that one."""
    match = RETRY_NAME.fullmatch(base)
    root, n = (match["root"], int(match["n"]) + 1) if match else (base, 1)
    suffix = f"-retry-{n}"
    return root[: MAX_NAME - len(suffix)] + suffix


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


MAX_OFFSET = 2**31 - 1
"""Past any real listing, and within every database's OFFSET."""


def _decode_token(token: str) -> int:
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "offset" and value.isdigit() and len(value) <= 10 and int(value) <= MAX_OFFSET:
            return int(value)
    except ValueError:
        pass
    raise UserError("nextToken: not a token this server gave out")
