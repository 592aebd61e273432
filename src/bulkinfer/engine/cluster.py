"""The Ray executor: one job's shards run by Ray actors across a cluster, exactly once.

The process that runs the job (``bulkinfer run``, or a service's replica) plans the shards, then keeps
every actor fed with one shard at a time. Each actor loads the model once (on a GPU of its own where
the cluster has GPUs and the model is local) and runs each shard through the same `RecordPipeline` a
local job uses, committing its chunks to the job's chunk folder and state store as a local job does; so
the outputs, written by the same finalize step, do not depend on the executor.

- **Exactly once.** A shard skips the lines already committed. An actor that dies (its worker process
  or its node killed) is restarted by Ray and its shard sent again, so its records that were in flight
  run again; those committed stay committed once.
- **Shared state.** The chunk folder and the state store must be reachable by every node: on one machine
  the defaults are; on several, a shared filesystem for ``--output`` and PostgreSQL (``--database-url``
  for ``serve``). Remote models' rate limits are kept in the state store, for all actors together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bulkinfer.engine.committer import Committer
from bulkinfer.engine.progress import NoProgress
from bulkinfer.engine.runner import EngineSettings, RecordPipeline
from bulkinfer.engine.shards import Shard, ShardPlan
from bulkinfer.errors import BulkinferError, UserError
from bulkinfer.providers.base import Provider
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.storage.files import InputFile

log = logging.getLogger(__name__)

DEFAULT_RAY_PORT = 6379
PROBE_S = 5.0
CONNECT_S = 60.0
CLOSE_S = 10.0
SHUTDOWN_S = 30.0
SHARDS_PER_ACTOR = 4
"""Shards planned per actor: enough that a slow shard or a restarted actor leaves no actor idle long."""
MAX_SHARD_LINES = 100_000
ACTOR_RESTARTS = 4
"""Times one actor is restarted (and its shard sent again) after its process dies, before it is lost."""
SHARD_LOSSES = 2
"""Actors a shard may lose for good (each after its restarts) before the job fails with it."""
PLACEMENT_SAY_S = 10.0
"""After how long actors the cluster has not placed are said (a model's load takes a while too)."""
CPU_PER_ACTOR = 0.5
"""A fraction, so that actors never take every CPU of a small node (Ray's own tasks need one)."""


class ClusterError(BulkinferError):
    """The Ray cluster could not run the job (an actor failing again and again)."""


class ClusterUnavailable(ClusterError):
    """The Ray cluster is not there now (not reachable, or lost while the job ran): it may be back later,
    so a service takes the job up again then rather than fail it."""


class _Connection:
    """This process's one connection to Ray (Ray allows one), lent to the jobs that run on it.

    It is held only while a job uses it: a driver left connected to a cluster whose head went away
    exits its whole process a minute later (Ray's rule), and one reused after the head came back
    crashes it. So the last job to give it back disconnects, and one found lost is lent to no new job
    until then."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._lost = False

    def take(self, address: str | None) -> Any:
        """Ray, connected to ``address`` for one more user (blocks: call it in a thread)."""
        import ray

        with self._lock:  # (jobs of a service start in threads of their own)
            if self._lost:
                raise ClusterUnavailable(
                    "the connection to the Ray cluster was lost; it is made anew once "
                    "the jobs that were on it have ended"
                )
            if not ray.is_initialized():
                _init(ray, address)
            self._users += 1
            return ray

    def lost(self) -> None:
        self._lost = True

    def give_back(self) -> None:
        """One user less; the last one disconnects (blocks a while at most: call it in a thread)."""
        import ray

        with self._lock:
            self._users -= 1
            if self._users > 0 or not ray.is_initialized():
                return
            ending = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
            ending.start()
            ending.join(SHUTDOWN_S)  # (with the head gone, Ray takes some 15 s to let go)
            if ending.is_alive():
                log.warning("Ray did not disconnect within %g s; going on without waiting", SHUTDOWN_S)
            self._lost = False


_CONNECTION = _Connection()


@dataclass(frozen=True, slots=True)
class ShardWork:
    """What every actor needs to run any shard of one job; sent to each actor once."""

    job_id: str
    id_seed: str
    spec: ModelSpec
    settings: EngineSettings
    record_format: str
    dialect: str | None
    files: tuple[InputFile, ...]
    chunk_dir: Path
    state_url: str | None
    state_file: Path
    store_patience_s: float
    media: Any
    """The job's `MediaSettings` (its tally left behind: it counts in the job's own process)."""


@dataclass(frozen=True, slots=True)
class ShardDone:
    shard: Shard
    ran_everything: bool


class ShardWorker:
    """A Ray actor's body: the model, loaded once, and the shards sent to it, one at a time."""

    def __init__(self, work: ShardWork) -> None:
        self._work = work
        self._store: Any = None
        self._provider: Provider | None = None
        self._opening = asyncio.Lock()
        self._pipelines: set[RecordPipeline] = set()
        self._shards: dict[str, asyncio.Future[ShardDone]] = {}
        self._stopped = False

    async def placed(self) -> None:
        """Answers once the actor runs (while `warm` loads the model beside it)."""

    async def warm(self) -> None:
        """Load the model, and what a shard's first records would otherwise wait for."""
        await self._open()
        work = self._work
        _dialect(work.dialect)
        _format(work.record_format)
        await work.media.resolver(_media_policy(work.spec)).aclose()

    async def run(self, shard: Shard, firsts: dict[int, int]) -> ShardDone:
        """Run a shard; ``firsts``: where its repeated record ids were first seen (see ``engine.shards``).

        A shard sent again while it runs here (Ray resends a call to an actor it could not reach for a
        while, and it "may or may not have been executed") is answered by the run under way: two runs
        at once would both run its uncommitted lines, and commit them twice."""
        underway = self._shards.get(shard.name)
        if underway is None:
            underway = self._shards[shard.name] = asyncio.ensure_future(self._run(shard, firsts))
            underway.add_done_callback(lambda _: self._shards.pop(shard.name, None))
        return await asyncio.shield(underway)

    async def _run(self, shard: Shard, firsts: dict[int, int]) -> ShardDone:
        work = self._work
        provider, store = await self._open()
        committer = Committer(
            store, work.job_id, work.chunk_dir, work.settings.chunk_records, work.settings.commit_interval_s
        )
        media = work.media.resolver(_media_policy(work.spec))
        pipeline = RecordPipeline(
            job_id=work.job_id,
            spec=work.spec,
            provider=provider,
            store=store,
            committer=committer,
            progress=NoProgress(),
            settings=work.settings,
            forced_dialect=_dialect(work.dialect),
            media=media,
            id_seed=work.id_seed,
            record_format=_format(work.record_format),
        )
        if self._stopped:
            pipeline.request_stop()
        self._pipelines.add(pipeline)
        timer = asyncio.create_task(committer.run_timer())
        try:
            await pipeline.run_shard(work.files, shard, firsts)
        finally:
            timer.cancel()
            self._pipelines.discard(pipeline)
            await media.aclose()
        return ShardDone(shard, pipeline.ran_everything)

    async def stop(self) -> None:
        """Start nothing more; shards under way commit what their calls under way answer."""
        self._stopped = True
        for pipeline in self._pipelines:
            pipeline.request_stop()

    async def close(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()
        if self._store is not None:
            self._store.close()

    async def _open(self) -> tuple[Provider, Any]:
        async with self._opening:
            if self._provider is None:
                from bulkinfer.providers.registry import load_provider
                from bulkinfer.providers.remote.limits import LimitRegistry
                from bulkinfer.store.state import StateStore

                work = self._work
                if work.state_url:
                    self._store = StateStore(work.state_url, patience_s=work.store_patience_s)
                else:
                    self._store = StateStore.at(work.state_file, patience_s=work.store_patience_s)
                limits = LimitRegistry(shared=self._store.rate_buckets())  # (one limit for every actor)
                self._provider = await asyncio.to_thread(load_provider, work.spec, limits)
            return self._provider, self._store


def _media_policy(spec: ModelSpec) -> Any:
    from bulkinfer.engine.job import media_policy

    return media_policy(spec.images)


def _dialect(name: str | None) -> Any:
    from bulkinfer.dialects.registry import get_dialect

    return get_dialect(name) if name else None


def _format(name: str) -> Any:
    from bulkinfer.formats.records import get_format

    return get_format(name)


class RayExecutor:
    """Runs a job's shards on a Ray cluster (``address``: a running cluster's; None: ``RAY_ADDRESS``,
    or a Ray started in this process for this machine)."""

    def __init__(self, address: str | None = None, actors: int | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.actors = actors
        self._stopping = False
        self._handles: list[Any] = []
        self._warming: list[concurrent.futures.Future[None]] = []
        self._placed: list[concurrent.futures.Future[None]] = []
        self._running: dict[asyncio.Future[Any], tuple[Any, Shard]] = {}
        """The shards sent and not yet answered, with the actor running each."""
        self._ray: Any = None
        """Ray, while this executor holds a use of the process's connection (see `_Connection`)."""
        self._ended: set[Any] = set()
        """Actors this job ended itself: at a stop before they were placed, or lost for good."""

    @staticmethod
    def takes(spec: ModelSpec) -> bool:
        """Whether a job on this model can run on Ray (a service runs the others in its own process)."""
        return spec.remote is None or spec.remote.batch is None

    def check(self, spec: ModelSpec) -> None:
        """What makes a job impossible on Ray, said before the job exists (all as `UserError`)."""
        try:
            self.ready(spec)
        except ClusterError as exc:
            raise UserError(str(exc)) from None

    def ready(self, spec: ModelSpec) -> None:
        """Connect for a job (blocks: call it in a thread). `UserError` or `ClusterError` for what no
        wait mends (a model Ray cannot run, more actors than the cluster holds), `ClusterUnavailable`
        for a cluster not there now."""
        if not self.takes(spec):
            raise UserError(
                f"model {spec.name} runs through its provider's batch API, which runs the job's records at "
                "the provider: run it with the local executor (leave out --executor ray)"
            )
        self.importable()
        self._probe()
        self._connect()
        self._actor_count(spec)  # (more actors than the cluster can place: said now)

    def reachable(self) -> None:
        """Whether the cluster's address answers at all (`UserError` if not)."""
        try:
            self._probe()
        except ClusterUnavailable as exc:
            raise UserError(str(exc)) from None

    def _probe(self) -> None:
        """``ray.init`` waits for ever for an address that does not answer: it is tried first."""
        if self.address in (None, "auto", "local"):
            return
        assert self.address is not None
        where = self.address.removeprefix("ray://").rstrip("/")
        host, _, port = where.rpartition(":") if ":" in where else (where, "", str(DEFAULT_RAY_PORT))
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S):
                return
        except (OSError, ValueError) as exc:
            raise ClusterUnavailable(
                f"cannot reach the Ray cluster at {self.address} ({exc}): start it (`ray start --head`) "
                "or give its address with --ray-address HOST:PORT"
            ) from None

    @staticmethod
    def importable() -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'bulkinfer[ray]'") from None

    def request_stop(self) -> None:
        """Start no more shards; those under way commit what their calls under way answer. Actors not
        placed yet (the cluster is full) are ended: waiting for room would hold the stop up."""
        self._stopping = True
        for handle, placed in zip(self._handles, self._placed, strict=True):
            if handle in self._ended:
                continue
            if placed.done():
                handle.stop.remote().future()  # (a future: an actor gone meanwhile is not logged)
            else:
                self._ended.add(handle)
                self._ray.kill(handle, no_restart=True)

    async def start(self, work: ShardWork) -> int:
        """Start the job's actors, which load the model while the job's shards are planned (call
        `close` in the end, whatever happens); how many there are."""
        ray = await asyncio.to_thread(self._connect)
        worker = ray.remote(ShardWorker).options(**self._actor_options(ray, work.spec))
        self._handles = [worker.remote(work) for _ in range(self._actor_count(work.spec))]
        # A failure to load shows again, and is said, at the first shard: its future here only keeps Ray
        # from logging it as an error nobody read.
        self._warming = [handle.warm.remote().future() for handle in self._handles]
        self._placed = [handle.placed.remote().future() for handle in self._handles]
        if self._stopping:
            self.request_stop()
        return len(self._handles)

    async def run(self, work: ShardWork, plan: ShardPlan, status: Callable[[str], None]) -> bool:
        """Run every shard on the started actors; whether every record of every shard was run.
        ``status`` is told while actors wait for the cluster to place them."""
        log.info("job %s: %d shards on %d Ray actors", work.job_id, len(plan.shards), len(self._handles))
        placing = asyncio.create_task(self._watch_placement(work.job_id, status))
        try:
            return await self._feed(self._handles, deque(plan.shards), plan.firsts)
        finally:
            placing.cancel()

    async def _watch_placement(self, job_id: str, status: Callable[[str], None]) -> None:
        """Say when actors are not placed after a while (the cluster's CPUs or GPUs are taken by other
        work: the job makes no progress until they are), and when they all are."""
        await asyncio.sleep(PLACEMENT_SAY_S)
        said = 0
        while waiting := sum(not placed.done() for placed in self._placed):
            if waiting != said:
                log.warning("job %s: %d Ray actors not placed after %g s", job_id, waiting, PLACEMENT_SAY_S)
                status(
                    f"waiting for the Ray cluster to place {waiting} of {len(self._placed)} actors "
                    "(its CPUs or GPUs are taken by other work)"
                )
                said = waiting
            await asyncio.sleep(1.0)
        if said:
            status(f"running on {len(self._placed)} Ray actors")

    async def close(self) -> None:
        """End the actors: their providers closed first once every shard sent has answered, else at
        once (the job was cancelled: a service's shutdown, or a fence because its lease may have
        lapsed, where nothing more may be committed for it here; what was under way runs again).
        Then give back the connection to Ray."""
        handles, self._handles, self._warming, self._placed = self._handles, [], [], []
        abandoned, self._running = list(self._running), {}
        for answer in abandoned:
            answer.cancel()  # (its actor is killed: nobody will read what it says)
        ray, self._ray = self._ray, None
        if ray is None:
            return
        try:
            if handles:
                await _closed(ray, handles, gracefully=not abandoned)
        finally:
            await asyncio.to_thread(_CONNECTION.give_back)

    async def _feed(self, handles: list[Any], shards: deque[Shard], firsts: dict[int, int]) -> bool:
        """Keep every actor running a shard until none is left (or the job stops)."""
        idle = list(handles)
        running = self._running
        everything = True
        losses: dict[str, int] = {}
        """Actors lost for good while running each shard."""
        while running or (shards and not self._stopping):
            if not idle and not running:
                raise ClusterError(f"every Ray actor of the job was lost; {len(shards)} shards were left")
            while idle and shards and not self._stopping:
                handle, shard = idle.pop(), shards.popleft()
                sent = handle.run.remote(shard, shard.firsts_in(firsts))
                running[asyncio.wrap_future(sent.future())] = (handle, shard)
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                handle, shard = running.pop(future)
                try:
                    result: ShardDone = future.result()
                except Exception as exc:
                    if handle in self._ended:  # ended at a stop before it was placed
                        everything = False
                        continue
                    if self._lost_for_good(handle, shard, exc, losses):
                        shards.appendleft(shard)  # (to the next actor free: what it committed stays)
                        continue
                    self.request_stop()
                    await asyncio.gather(*running, return_exceptions=True)
                    running.clear()
                    raise self._failure(shard, exc) from exc
                everything = everything and result.ran_everything
                idle.append(handle)
        return everything and not shards

    def _lost_for_good(self, handle: Any, shard: Shard, exc: BaseException, losses: dict[str, int]) -> bool:
        """Whether ``exc`` is an actor dead after all its restarts (its node gone, say) whose shard can
        go to another actor: not when the shard has now lost `SHARD_LOSSES` actors (something in it
        kills them)."""
        import ray.exceptions as rex

        if not isinstance(exc, rex.ActorDiedError):
            return False
        losses[shard.name] = losses.get(shard.name, 0) + 1
        if losses[shard.name] >= SHARD_LOSSES:
            return False
        self._ended.add(handle)  # (it is sent nothing more)
        with contextlib.suppress(Exception):
            self._ray.kill(handle, no_restart=True)
        log.warning(
            "a Ray actor was lost for good running shard %s (%s); the shard goes to another one",
            shard.name,
            _cause(exc).splitlines()[0],
        )
        return True

    def _failure(self, shard: Shard, exc: BaseException) -> ClusterError:
        """What a shard's failure means for the job: an error of its own (raised in the actor: the
        model, the store) or actors dying again and again fail it; the cluster gone is transient."""
        import ray.exceptions as rex

        why = f"shard {shard.name} failed on the Ray cluster: {_cause(exc)}"
        if isinstance(exc, rex.RayTaskError | rex.ActorDiedError):
            return ClusterError(why)
        _CONNECTION.lost()  # (unreachable actors, a system error: the head or its node went away)
        return ClusterUnavailable(why)

    def _connect(self) -> Any:
        """Ray, connected, this executor holding one use of the connection (given back by `close`)."""
        self.importable()
        if self._ray is None:
            self._ray = _CONNECTION.take(self.address)
        return self._ray

    def _actor_count(self, spec: ModelSpec) -> int:
        """The actors to start: as asked, if the cluster can place them all (an actor it cannot place
        would be sent shards it never runs), else by the cluster's GPUs or CPUs."""
        ray = self._connect()
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        on_gpus = gpus > 0 and spec.remote is None
        room = gpus if on_gpus else int(resources.get("CPU", 0) / CPU_PER_ACTOR)
        if self.actors:
            if self.actors > room:
                what = f"{gpus} GPUs" if on_gpus else f"{resources.get('CPU', 0):g} CPUs"
                raise ClusterError(
                    f"--ray-actors {self.actors}: the Ray cluster has {what}, room for {room} actors of "
                    f"{'1 GPU' if on_gpus else f'{CPU_PER_ACTOR:g} CPU'} each; ask for at most {room}"
                )
            return self.actors
        return gpus if on_gpus else max(1, room // 2)

    def _actor_options(self, ray: Any, spec: ModelSpec) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_restarts": ACTOR_RESTARTS,
            "max_task_retries": ACTOR_RESTARTS,
            "max_concurrency": 4,  # a shard, and a stop beside it
        }
        if spec.remote is None and ray.cluster_resources().get("GPU", 0) >= 1:
            options["num_gpus"] = 1
        else:
            options["num_cpus"] = CPU_PER_ACTOR
        return options


def shard_lines(total_records: int, parts: int, spec: ModelSpec) -> int:
    """Lines a shard holds: the job cut into about ``parts`` shards, none smaller than a model batch."""
    return max(spec.batch_size, min(MAX_SHARD_LINES, math.ceil(total_records / max(1, parts))))


async def _closed(ray: Any, handles: list[Any], gracefully: bool) -> None:
    """Close the actors' providers, if ``gracefully`` (a while at most: an actor may be gone or never
    placed), then end the actors."""
    if gracefully:
        closing = [asyncio.wrap_future(h.close.remote().future()) for h in handles]
        done, late = await asyncio.wait(closing, timeout=CLOSE_S)
        for answer in done:
            answer.exception()  # (an actor gone: nothing to close; read, so it is not logged as lost)
        for answer in late:
            answer.cancel()
    for handle in handles:
        try:
            ray.kill(handle)
        except Exception:  # (an actor already gone)
            log.debug("a Ray actor was already gone", exc_info=True)


def _init(ray: Any, address: str | None) -> None:
    """Connect to the cluster at ``address``, or start one here (None)."""
    failure: list[BaseException] = []
    factory = logging.getLogRecordFactory()

    def init() -> None:
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=False,
            )
        except BaseException as exc:
            failure.append(exc)

    # ray.init waits for ever for an address that answers but is not Ray: in a thread of its own,
    # which this process need not wait for, given up after a while (Ray's SIGTERM handler is not
    # wanted there: it would exit rather than stop the job as bulkinfer's does, so its warning is
    # left out)
    logging.getLogger("ray._private.worker").addFilter(_no_sigterm_warning)
    connecting = threading.Thread(target=init, name="ray-init", daemon=True)
    connecting.start()
    connecting.join(CONNECT_S)
    logging.setLogRecordFactory(factory)  # (Ray's adds a field to every record this process logs)
    where = address or "a Ray started here"
    if connecting.is_alive():
        raise ClusterUnavailable(
            f"no Ray cluster answered at {where} within {CONNECT_S:g} s: is it Ray's port?"
        )
    if failure:
        why = f"cannot connect to the Ray cluster at {where}: {failure[0]}"
        raise ClusterUnavailable(why) from failure[0]


def _no_sigterm_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("SIGTERM handler is not set")


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {cause}"[:2000]


def absolute_url(url: str | None) -> str | None:
    """A state store URL that means the same in any working directory (a SQLite file's path made
    absolute)."""
    if url is None or not url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.database or parsed.database == ":memory:" or Path(parsed.database).is_absolute():
        return url
    return parsed.set(database=str(Path(parsed.database).absolute())).render_as_string(hide_password=False)


def without_tally(media: Any) -> Any:
    """Media settings to send to actors: a service's tally counts in its own process."""
    return replace(media, tally=None)
