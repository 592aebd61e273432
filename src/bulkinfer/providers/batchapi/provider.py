"""A job run through a provider's batch API, as a `Provider` the record pipeline drives like any other.

The pipeline hands ``infer`` a provider job's worth of records (the catalog's ``max_records_per_job``
is the model's batch size). They are cut by the provider's byte limit, and each part becomes a provider
job once a slot of the model is free (slots are rows of the state store, shared by every job and replica
on the model). Each provider job is recorded before it is created and followed until it ends, polled
more slowly while nothing changes; its answers are handed back in request order, and the pipeline
commits them as it commits any model's.

- **Restarts.** Every record key of every recorded provider job is indexed when the provider opens, so
  a record that was sent before a kill is answered from that provider job (followed again, or created
  again under the same token if the kill came before the provider answered the create), never sent
  twice.
- **Failures.** A record the provider failed for a reason that may pass (a 5xx, a throttle, the job
  expiring or failing as a whole) is sent again in a new provider job, up to ``max_attempts``; then its
  error line says the provider's reason.
- **Stop.** The provider jobs are cancelled and what they finished is kept; the rest is ``UNSENT``.
- **On demand.** A part smaller than ``min_records_per_job``, or any part once the job's deadline is
  nearer than ``turnaround_hours``, runs on the ``on_demand`` model instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from bulkinfer.domain.request import UNSENT, Outcome, RecordError, Request, Unsent
from bulkinfer.providers.base import Capabilities, Provider
from bulkinfer.providers.batchapi.api import Answer, BatchApi, SlotsFull, retryable
from bulkinfer.providers.batchapi.polling import Bell, next_poll
from bulkinfer.providers.catalog import BatchSpec, ModelSpec
from bulkinfer.providers.remote.call import CallFailed, Permanent
from bulkinfer.stopping import STOPPED, Stopped, StopSignal
from bulkinfer.store.provider_jobs import CREATING, ENDED, RUNNING, ProviderJob, ProviderJobs, new_token
from bulkinfer.transient import is_transient_db

log = logging.getLogger(__name__)
T = TypeVar("T")

STALE_POLLS = 10
"""A provider job not polled for this many ``poll_seconds`` holds no slot (its follower is gone)."""
SLOT_RECHECK_S = 2.0
"""How often a part waiting for a slot looks again, for slots freed by other processes."""
OUTAGE_BACKOFF_MAX_S = 60.0
STOPPING_TRIES = 3
"""Tries a call gets once the job is stopping (a cancel, a last poll) before it is given up."""
STOPPING_CALL_S = 10.0
"""How long one such try may take (a provider that hangs must not hold a stop for its full timeout)."""
CREATE_TRIES = 3
"""Tries a create gets, under its one token, when it fails in a way nobody expected (our own bug, an
SDK's surprise): it may have reached the provider, so it is sent again to be found before it is given up."""
CANCELLED_POLL_S = 5.0
"""The longest wait between polls of a provider job that was cancelled."""
HEARTBEAT_MAX_S = 30.0
CREDENTIALS = frozenset({401, 403})
"""A provider's refusals that a new key or a fixed role ends: the job pauses, as for an outage."""
FAILED_WHOLE = frozenset({"failed", "Failed"})
"""Provider job states of a job that failed as a whole (its input, its role): sent again once only."""
# Why a provider job ended without its provider's answers
REFUSED = "refused"
"""The provider refused the create: the records' error lines say why."""
NOT_CREATED = "not created"
"""Nothing was sent (a kill or a stop came first): its records go again."""
NOT_SENT_AGAIN = "not sent again"
"""A create a kill cut short could not be sent again (its inputs were not kept): its records go again."""
FAILED_HERE = "failed here"
"""The create failed here, in a way nobody expected: the records' error lines say why, and they go again."""


class Abandoned(Exception):
    """A call given up because the job is stopping while its provider (or database) does not answer."""


class BatchProvider(Provider):
    """One bulkinfer job's records through one model's batch API."""

    def __init__(
        self,
        spec: ModelSpec,
        api: BatchApi,
        jobs: ProviderJobs,
        job_id: str,
        bell: Bell,
        *,
        deadline: float | None = None,
        on_demand: Callable[[], Provider] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert spec.remote is not None and spec.remote.batch is not None
        self._spec = spec
        self._batch: BatchSpec = spec.remote.batch
        self._max_attempts = spec.remote.max_attempts
        self._api = api
        self._jobs = jobs
        self._job_id = job_id
        self._bell = bell
        self._deadline = deadline
        self._load_on_demand = on_demand
        self._on_demand: Provider | None = None
        self._clock = clock
        embeddings = spec.kind == "embedding"
        self.capabilities = Capabilities(
            chat=not embeddings,
            embeddings=embeddings,
            images=True,
            native_dialects=api.native_dialects & frozenset(spec.dialects),
            keyed=True,
        )
        self._rows: dict[str, ProviderJob] = {}
        self._home: dict[str, str] = {}
        """Each record key sent before, to the token of the last provider job it was sent in."""
        self._follows: dict[str, asyncio.Task[dict[str, Answer]]] = {}
        self._waiting: dict[str, set[str]] = {}
        """The keys not yet handed back of each followed provider job: once none is left, its answers
        are let go."""
        self._beating: asyncio.Task[None] | None = None
        self._seq = 0
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._stop = StopSignal()
        self._down: tuple[float, str] | None = None
        self._rng = random.Random()

    # the Provider seam

    async def infer(self, requests: Sequence[Request]) -> list[Outcome]:
        try:
            await self._load()
        except Abandoned:
            return [UNSENT] * len(requests)
        outcomes: list[Outcome | None] = [None] * len(requests)
        sent_before: dict[str, list[int]] = {}
        fresh = []
        for i, request in enumerate(requests):
            token = self._home.get(request.key or "")
            if token is not None:
                sent_before.setdefault(token, []).append(i)
            else:
                fresh.append(i)
        steps = [self._collect(self._rows[t], idx, requests, outcomes) for t, idx in sent_before.items()]
        steps.append(self._send(fresh, 1, requests, outcomes))
        with contextlib.suppress(Abandoned):  # a stop's: what it was for is left unsent
            await _all(steps)
        return [UNSENT if o is None else o for o in outcomes]  # (None: unsent, or given up at a stop)

    def stop(self) -> None:
        self._stop.set()
        if self._on_demand is not None:
            self._on_demand.stop()

    def paused(self) -> str | None:
        if self._down is None:
            return None
        since, why = self._down
        at = time.strftime("%H:%M:%S", time.localtime(since))
        return f"paused: {self._spec.name}'s batch API not answering since {at} ({why}); retrying"

    def activity(self) -> str | None:
        """The provider jobs behind this job, as its message shows them."""
        rows = sorted(self._rows.values(), key=lambda r: r.seq)
        if not rows:
            return None
        live = [r for r in rows if not r.ended]
        states = Counter(r.provider_status or r.state for r in rows if r.ended)
        shown = ", ".join(
            f"{r.provider_id or r.token} {r.provider_status or r.state} {r.done}/{r.total}" for r in live
        )
        ended = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        parts = [f"{len(live)} running" + (f" ({shown})" if shown else "")]
        if ended:
            parts.append(f"ended: {ended}")
        return f"provider jobs: {'; '.join(parts)}"

    async def aclose(self) -> None:
        tasks = [*self._follows.values(), *([self._beating] if self._beating else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._on_demand is not None:
            await self._on_demand.aclose()
        await self._api.aclose()

    # what was sent before

    async def _load(self) -> None:
        async with self._load_lock:
            if self._loaded:
                return
            rows = await asyncio.to_thread(self._jobs.of_job, self._job_id)
            for row in rows:
                if row.state == CREATING and row.provider_file is None:
                    # killed before anything was sent: its records are sent afresh
                    row = await self._end(row, provider_status=NOT_CREATED)
                self._rows[row.token] = row
                if row.provider_status in (NOT_CREATED, NOT_SENT_AGAIN):
                    continue
                for key in row.keys:
                    self._home[key] = row.token
                self._waiting[row.token] = set(row.keys)
            self._seq = max((r.seq for r in rows), default=0)
            self._loaded = True
            self._beating = asyncio.create_task(self._beat())
            for row in self._rows.values():  # live ones hold slots: follow them now, not when asked
                if not row.ended and (row.provider_id is not None or self._api.keeps_inputs):
                    self._follows[row.token] = asyncio.create_task(self._follow(row, None))
            if rows:
                log.info("job %s: %d provider jobs found from an earlier run", self._job_id, len(rows))

    # sending

    async def _send(
        self, indexes: list[int], attempt: int, requests: Sequence[Request], outcomes: list[Outcome | None]
    ) -> None:
        """Answer these requests through new provider jobs (or on demand), resubmitting failures."""
        if not indexes:
            return
        if self._stop.is_set:
            return  # left None: UNSENT
        lines: list[bytes] = []
        sendable: list[int] = []
        for i in indexes:
            try:
                lines.append(self._api.line(str(len(sendable)), requests[i]))
            except Permanent as exc:
                outcomes[i] = RecordError(exc.code, str(exc), exc.kind, attempt)
                continue
            sendable.append(i)
        if not sendable:
            return
        if self._too_late():
            await self._run_on_demand(sendable, requests, outcomes)
            return
        parts = _cut(sendable, lines, self._batch.max_records_per_job, self._batch.max_bytes_per_job)
        small = [i for part in parts if self._too_small(part) for i, _ in part]
        big = [part for part in parts if not self._too_small(part)]
        sends = [self._send_part(part, attempt, requests, outcomes) for part in big]
        await _all([self._run_on_demand(small, requests, outcomes), *sends])

    async def _send_part(
        self,
        part: list[tuple[int, bytes]],
        attempt: int,
        requests: Sequence[Request],
        outcomes: list[Outcome | None],
    ) -> None:
        indexes = [i for i, _ in part]
        # the custom ids are the records' places in this provider job
        lines = [self._api.line(str(n), requests[i]) for n, i in enumerate(indexes)]
        keys = tuple(requests[i].key or f"#{i}" for i in indexes)
        row = await self._claim(keys, attempt)
        if row is None:  # stopped while waiting for a slot
            return
        self._follows[row.token] = asyncio.create_task(self._follow(row, lines))
        await self._collect(row, indexes, requests, outcomes)

    async def _claim(self, keys: tuple[str, ...], attempt: int) -> ProviderJob | None:
        """Record a provider job for these records once the model has a free slot; None if stopped."""
        self._seq += 1
        now = self._clock()
        row = ProviderJob(
            token=new_token(),
            job_id=self._job_id,
            model=self._spec.name,
            seq=self._seq,
            attempt=attempt,
            keys=keys,
            state=CREATING,
            created_at=now,
            heartbeat_at=now,
            total=len(keys),
        )
        stale = STALE_POLLS * self._batch.poll_seconds
        slots = self._batch.max_provider_jobs
        while not await self._outage_safe(lambda: asyncio.to_thread(self._jobs.claim, row, slots, stale)):
            if await self._stop.unless_stopped(self._bell.wait(SLOT_RECHECK_S)) is STOPPED:
                return None
        self._rows[row.token] = row
        self._waiting[row.token] = set(keys)
        for key in keys:
            self._home[key] = row.token
        return row

    async def _collect(
        self,
        row: ProviderJob,
        indexes: list[int],
        requests: Sequence[Request],
        outcomes: list[Outcome | None],
    ) -> None:
        """Wait for a provider job's answers to these requests; send again those that may yet succeed."""
        follow = self._follows.get(row.token)
        if follow is None:  # sent by an earlier run: follow it again
            lines = self._lines_again(row, indexes, requests) if row.provider_id is None else None
            follow = self._follows[row.token] = asyncio.create_task(self._follow(row, lines))
        answers = await asyncio.shield(follow)
        self._handed_back(row.token, [requests[i].key or "" for i in indexes])
        row = self._rows.get(row.token, row)
        again: list[int] = []
        same: list[int] = []
        for i in indexes:
            answer = answers.get(requests[i].key or "")
            if answer is None and row.cancelled and not self._stop.is_set:
                same.append(i)  # our own stop cancelled it: no attempt of the record's
                continue
            outcome = self._outcome(answer, requests[i], row)
            if isinstance(outcome, RecordError) and self._may_retry(outcome, row):
                again.append(i)
                continue
            outcomes[i] = outcome
        # (a stop leaves them None: UNSENT, unfinished, like records never sent)
        await _all(
            [
                self._send(again, row.attempt + 1, requests, outcomes),
                self._send(same, row.attempt, requests, outcomes),
            ]
        )

    def _handed_back(self, token: str, keys: list[str]) -> None:
        waiting = self._waiting.get(token)
        if waiting is None:
            return
        waiting.difference_update(keys)
        if not waiting:  # every record of it answered: let its answers go
            del self._waiting[token]
            self._follows.pop(token, None)

    def _lines_again(
        self, row: ProviderJob, indexes: list[int], requests: Sequence[Request]
    ) -> list[bytes] | None:
        """A provider job's lines written again, for a create a kill interrupted (an adapter that did not
        keep them at the provider needs them), where every record of it is among these requests."""
        place = {requests[i].key: i for i in indexes}
        if not all(key in place for key in row.keys):
            return None
        try:
            return [self._api.line(str(n), requests[place[key]]) for n, key in enumerate(row.keys)]
        except Permanent:
            return None

    def _outcome(self, answer: Answer | None, request: Request, row: ProviderJob) -> Outcome:
        if answer is None:
            if self._stop.is_set:
                return UNSENT
            status = row.provider_status or row.state
            if status in FAILED_WHOLE:
                message = f"provider job {row.provider_id} failed: {row.message or 'no reason given'}"
                return RecordError(502, message, "ProviderJobFailed", row.attempt)
            why = f"; the provider job ended {status}" + (f": {row.message}" if row.message else "")
            return RecordError(500, f"{row.provider_id or row.token} did not answer this record{why}",
                               "ProviderJobEnded", row.attempt)  # fmt: skip
        if answer.error is not None:
            error = answer.error
            return RecordError(error.code, error.message, error.kind, row.attempt)
        assert answer.body is not None
        try:
            result = self._api.outcome(answer.body, request)
        except Exception as exc:  # a body the provider garbled is that record's failure, sent again
            return RecordError(
                502, f"malformed answer from the provider: {exc}", "ProviderError", row.attempt
            )
        if not isinstance(result, RecordError | Unsent):
            result.attempts = row.attempt
        return result

    def _may_retry(self, error: RecordError, row: ProviderJob) -> bool:
        if self._stop.is_set or row.attempt >= self._max_attempts:
            return False
        if error.kind == "ProviderJobFailed":  # the whole provider job failed: once more at most
            return row.attempt == 1
        return retryable(error)

    # following one provider job

    async def _follow(self, row: ProviderJob, lines: list[bytes] | None) -> dict[str, Answer]:
        """Create the provider job if it is not there yet, poll it until it ends, and read its answers
        (by record key). A record with no answer (the job lost, never made) is sent again."""
        if row.ended and row.provider_id is None:  # ended by an earlier run before it was made
            return _never_made(row)
        if row.provider_id is None:
            try:
                row = await self._create(row, lines)
            except Permanent as exc:
                if lines is None:  # not the records' fault: they go again, in a job of their own
                    await self._end(row, provider_status=NOT_SENT_AGAIN, message=str(exc))
                    return {}
                row = await self._end(row, provider_status=REFUSED, message=str(exc))
                return _refused(row, exc.code, str(exc), exc.kind)
            except (Abandoned, asyncio.CancelledError):
                raise
            except Exception as exc:  # our own failure: said on the records, which go again (bounded)
                log.exception("job %s: creating a provider job failed", self._job_id)
                why = f"{type(exc).__name__}: {exc}"
                row = await self._end(row, provider_status=FAILED_HERE, message=why)
                return _refused(row, 502, why, "ProviderError")
            if row.provider_id is None:  # stopped before it was created
                await self._end(row, provider_status=NOT_CREATED)
                return {}
        try:
            if not row.ended:
                row = await self._until_ended(row)
            answers = await self._outage_safe(lambda: self._api.results(row))
        except (Abandoned, asyncio.CancelledError):
            raise
        except Exception as exc:
            return await self._lost(row, exc)
        return {row.keys[n]: answer for n, answer in answers.items() if 0 <= n < len(row.keys)}

    async def _lost(self, row: ProviderJob, exc: Exception) -> dict[str, Answer]:
        """A provider job that can no longer be followed: lost by its provider (404: its records go
        again), or refused or failed here for another reason (its records' error lines say so)."""
        if isinstance(exc, Permanent) and exc.code == 404:
            log.warning("job %s: provider job %s is gone: %s", self._job_id, row.provider_id, exc)
            await self._end(row, provider_status="lost", message=str(exc))
            return {}
        log.error("job %s: provider job %s cannot be followed: %s", self._job_id, row.provider_id, exc)
        if row.provider_id is not None and not row.ended:
            with contextlib.suppress(Exception):  # (best effort: it is not followed any more)
                await self._api.cancel(row.provider_id)
        why = f"{type(exc).__name__}: {exc}"
        row = await self._end(row, provider_status="unfollowed", message=why)
        return _refused(
            row, 502, f"bulkinfer could not follow provider job {row.provider_id}: {why}", "ProviderError"
        )

    async def _create(self, row: ProviderJob, lines: list[bytes] | None) -> ProviderJob:
        """Create the provider job; ``lines`` is None for a create a kill interrupted whose lines the
        adapter kept at the provider (it raises ``Permanent`` if it did not: the records go again)."""
        token, save = row.token, self._save_as(row)

        def create() -> Awaitable[str]:  # as the row is now: a try may have saved the input's id
            return self._api.create(self._rows.get(token, row), lines, save)

        surprises = 0
        while True:
            if self._stop.is_set and self._rows.get(token, row).provider_file is None:
                return row  # nothing of it was sent: it need not be made (a create that may have
                # reached the provider is sent again, to be found and cancelled)
            try:
                provider_id = await self._outage_safe(create)
            except SlotsFull:
                await self._stop.unless_stopped(self._bell.wait(SLOT_RECHECK_S * 5))
                continue
            except (Permanent, Abandoned):
                raise
            except Exception:
                surprises += 1
                if surprises >= CREATE_TRIES:
                    raise
                log.warning("job %s: a create failed unexpectedly; sending it again under its token",
                            self._job_id, exc_info=True)  # fmt: skip
                await self._stop.unless_stopped(asyncio.sleep(self._rng.uniform(0.5, 1.0) * surprises))
                continue
            row = await self._save(self._rows.get(token, row), provider_id=provider_id, state=RUNNING)
            log.info("job %s: provider job %s created (%d records)", self._job_id, provider_id, row.total)
            return row

    async def _until_ended(self, row: ProviderJob) -> ProviderJob:
        assert row.provider_id is not None
        provider_id = row.provider_id
        interval = self._batch.poll_seconds
        cancelled = False
        last: tuple[Any, ...] | None = None
        while True:
            if self._stop.is_set and not cancelled:
                await self._outage_safe(lambda: self._api.cancel(provider_id))
                row = await self._save(row, cancelled=True)
                cancelled = True
            status = await self._outage_safe(lambda: self._api.status(provider_id))
            seen = (status.state, status.done, status.failed)
            changes = {"provider_status": status.state, "done": status.done, "failed": status.failed}
            if status.total:
                changes["total"] = status.total
            if status.message:
                changes["message"] = status.message
            if status.ended:
                return await self._end(row, **changes)
            row = await self._save(row, **changes)
            near_done = status.total > 0 and status.done + status.failed >= 0.9 * status.total
            interval = next_poll(interval, seen != last, near_done, self._batch.poll_seconds)
            last = seen
            if not cancelled:
                await self._stop.unless_stopped(asyncio.sleep(interval))
            else:  # cancelled: soon to end
                await asyncio.sleep(min(interval, CANCELLED_POLL_S))

    async def _end(self, row: ProviderJob, **changes: Any) -> ProviderJob:
        row = await self._save(row, state=ENDED, ended_at=self._clock(), **changes)
        self._bell.ring()
        return row

    def _save_as(self, row: ProviderJob) -> Callable[..., Awaitable[ProviderJob]]:
        async def save(**changes: Any) -> ProviderJob:
            return await self._save(self._rows.get(row.token, row), **changes)

        return save

    async def _save(self, row: ProviderJob, **changes: Any) -> ProviderJob:
        saved = await self._outage_safe(lambda: asyncio.to_thread(self._jobs.save, row, **changes))
        self._rows[row.token] = saved
        return saved

    async def _beat(self) -> None:
        """Keep this job's live provider jobs' slots while they are followed, however long a wait
        (a slow create, an outage) keeps their rows from being written otherwise."""
        every = min(HEARTBEAT_MAX_S, self._batch.poll_seconds)
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self._jobs.beat, self._job_id)
            except Exception:  # (the next beat tries again; a row goes stale only after many)
                log.warning("job %s: could not mark its provider jobs followed", self._job_id, exc_info=True)

    # on demand

    def _too_small(self, part: list[tuple[int, bytes]]) -> bool:
        """A part too small for a provider job, where an on-demand model can run it instead."""
        return self._load_on_demand is not None and len(part) < self._batch.min_records_per_job

    def _too_late(self) -> bool:
        """Whether the job's deadline is nearer than a provider job's turnaround (and an on-demand
        model can run its records instead)."""
        if self._load_on_demand is None or self._deadline is None:
            return False
        return self._clock() + self._batch.turnaround_hours * 3600 > self._deadline

    async def _run_on_demand(
        self, indexes: list[int], requests: Sequence[Request], outcomes: list[Outcome | None]
    ) -> None:
        if not indexes:
            return
        if self._on_demand is None:
            assert self._load_on_demand is not None
            self._on_demand = await asyncio.to_thread(self._load_on_demand)
            if self._stop.is_set:
                self._on_demand.stop()
        answered = await self._on_demand.infer([requests[i] for i in indexes])
        for i, outcome in zip(indexes, answered, strict=True):
            outcomes[i] = outcome

    # outages

    async def _outage_safe(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call``, retrying with backoff whatever may pass (the provider or the database down,
        a throttle, a 5xx); a ``Permanent`` refusal or ``SlotsFull`` is raised. The job's message says
        while it waits (`paused`). Once the job is stopping, a few tries are all it gets: then it
        raises `Abandoned`, and what it was for is left to a resume (unsent, or followed again)."""
        failures = 0
        while True:
            try:
                value = await self._within_stop(call)
            except Exception as exc:
                if not _passes(exc):
                    raise
                failures += 1
                if self._stop.is_set and failures >= STOPPING_TRIES:
                    raise Abandoned(str(exc)) from exc
                if self._down is None:
                    self._down = (self._clock(), f"{type(exc).__name__}: {exc}"[:300])
                    log.warning("job %s: %s's batch API: %s; retrying", self._job_id, self._spec.name, exc)
                ceiling = min(OUTAGE_BACKOFF_MAX_S, 0.5 * 2 ** min(failures, 10))
                pause = self._rng.uniform(ceiling / 2, ceiling)
                if self._stop.is_set:
                    await asyncio.sleep(min(pause, 1.0))
                else:
                    await self._stop.unless_stopped(asyncio.sleep(pause))
                continue
            if self._down is not None:
                log.info("job %s: %s's batch API answers again", self._job_id, self._spec.name)
                self._down = None
            return value

    async def _within_stop(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call``; once the job is stopping, for ``STOPPING_CALL_S`` at most (then
        ``TimeoutError``), so a provider that hangs cannot hold a stop for its full timeout. (Unlike a
        record's call, a call given up here loses nothing: a create is sent again under its token, a
        provider job is followed again when the job resumes.)"""
        if self._stop.is_set:
            async with asyncio.timeout(STOPPING_CALL_S):
                return await call()
        task = asyncio.ensure_future(call())
        try:
            got = await self._stop.unless_stopped(_shielded(task))
        except BaseException:
            task.cancel()
            raise
        if not isinstance(got, Stopped):
            return got
        async with asyncio.timeout(STOPPING_CALL_S):  # (cancels the call if it passes)
            return await task


async def _shielded(task: asyncio.Future[T]) -> T:
    return await asyncio.shield(task)


def _passes(exc: Exception) -> bool:
    """Whether a failure may pass if the call is made again: an outage (provider or database), a
    throttle, a 5xx, a credential the operator can renew. A refusal, our own bug or a config mistake
    will not, and is raised."""
    if isinstance(exc, Permanent):
        return exc.code in CREDENTIALS
    if isinstance(exc, CallFailed):
        return True
    return isinstance(exc, OSError) or is_transient_db(exc)


def _never_made(row: ProviderJob) -> dict[str, Answer]:
    """The answers of a provider job an earlier run ended before it was made."""
    if row.provider_status == REFUSED:
        return _refused(row, 400, str(row.message))
    if row.provider_status == FAILED_HERE:  # not the records' fault: they go again
        return _refused(row, 502, str(row.message), "ProviderError")
    return {}  # never sent: they go again


def _refused(row: ProviderJob, code: int, message: str, kind: str = "ValidationError") -> dict[str, Answer]:
    """Every record of the provider job answered with the same error."""
    error = RecordError(
        code, f"the provider batch job was refused: {message}" if code < 500 else message, kind
    )
    return dict.fromkeys(row.keys, Answer(error=error))


async def _all(steps: Sequence[Awaitable[Any]]) -> None:
    """Await every step, even when one fails (none is left running), then raise the first failure,
    preferring one that is not `Abandoned` (a stop's)."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise next((f for f in failures if not isinstance(f, Abandoned)), failures[0])


def _cut(
    indexes: list[int], lines: list[bytes], max_records: int, max_bytes: int
) -> list[list[tuple[int, bytes]]]:
    """Consecutive parts of at most ``max_records`` lines and ``max_bytes`` bytes (a line alone over
    the byte limit is a part of its own: the provider judges it)."""
    parts: list[list[tuple[int, bytes]]] = []
    part: list[tuple[int, bytes]] = []
    size = 0
    for i, line in zip(indexes, lines, strict=True):
        if part and (len(part) >= max_records or size + len(line) + 1 > max_bytes):
            parts.append(part)
            part, size = [], 0
        part.append((i, line))
        size += len(line) + 1
    if part:
        parts.append(part)
    return parts
