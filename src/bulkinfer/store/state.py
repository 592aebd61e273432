"""The job-state store: jobs and their committed chunks.

Every call rides over a database that goes away for a while (a PostgreSQL restart, a SQLite lock held
by another process): transient errors are retried for ``patience_s`` before the last one is raised, and
writes are safe to repeat when a commit's answer was lost. A status change is checked against the
transition table, with the status as stored. A full disk and a damaged state file are named as such
(`DiskFull`, `CorruptStateFile`) rather than left as driver errors.
"""

from __future__ import annotations

import shlex
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import Engine, create_engine, delete, event, func, insert, make_url, select, update
from sqlalchemy.exc import DBAPIError

from bulkinfer.domain.job import Counts, JobStatus, check_transition
from bulkinfer.domain.lineset import LineSet
from bulkinfer.errors import UserError
from bulkinfer.storage.files import DiskFull
from bulkinfer.store.migrate import upgrade
from bulkinfer.store.provider_jobs import ProviderJobs
from bulkinfer.store.rate_buckets import RateBuckets
from bulkinfer.store.schema import chunks, jobs
from bulkinfer.transient import is_transient_db, retrying_call

T = TypeVar("T")

DEFAULT_PATIENCE_S = 300.0
"""How long a state call retries a transient database error before it fails the job: a database
restart or a long lock passes unnoticed, a lasting outage still ends the job with its error."""

_DISK_FULL = "SQLITE_FULL"
_DAMAGED = ("SQLITE_NOTADB", "SQLITE_CORRUPT")
_READ_ONLY = "SQLITE_READONLY"
_BATCH = 500
_WAL_SWITCH_S = 30.0


class CorruptStateFile(UserError):
    """The state file is damaged and cannot be read."""

    def __init__(self, path: Path, reason: str = "", rerun: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.rerun = rerun
        self.aside = moving_aside(path)
        why = f" ({reason})" if reason else ""
        again = f":\n  {rerun}" if rerun else ""
        super().__init__(
            f"the state file {path} is damaged{why}. Move it aside with:\n  {self.aside}\n"
            f"then run the same command again (finished records are taken back from the chunk files){again}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (CorruptStateFile, (self.path, self.reason, self.rerun))

    def with_rerun(self, rerun: str) -> CorruptStateFile:
        """The same error, naming the command to run again."""
        return CorruptStateFile(self.path, self.reason, rerun)


def moving_aside(path: Path) -> str:
    """The shell command that moves a state file, and the journal files SQLite keeps beside it, aside."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    files = [path, *(p for p in _sidecars(path) if p.exists())]
    return " && ".join(f"mv {shlex.quote(str(p))} {shlex.quote(f'{p}.corrupt-{stamp}')}" for p in files)


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _sqlite_name(exc: BaseException) -> str:
    return str(getattr(getattr(exc, "orig", None), "sqlite_errorname", ""))


def _transient(exc: BaseException) -> bool:
    """A database error worth waiting out; a full disk or a read-only file will not pass by itself."""
    return is_transient_db(exc) and _sqlite_name(exc) not in (_DISK_FULL, _READ_ONLY, *_DAMAGED)


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    model: str
    input_uri: str
    output_uri: str
    status: JobStatus
    created_at: float
    options: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    total_records: int | None = None


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    file_index: int
    path: str
    lines: LineSet
    first_line: int
    counts: Counts


class StateStore:
    """Durable state of the jobs that share one state file (or one database)."""

    def __init__(self, url: str, *, patience_s: float = DEFAULT_PATIENCE_S) -> None:
        self._patience_s = patience_s
        database = make_url(url).database if url.startswith("sqlite") else None
        self._file = Path(database) if database and database != ":memory:" else None
        self._what = f"the state file {self._file}" if self._file else "the job-state database"
        self._engine = make_engine(url)
        try:
            self._call(lambda: upgrade(self._engine))
        except BaseException:
            self._engine.dispose()
            raise

    @classmethod
    def at(cls, path: Path, *, patience_s: float = DEFAULT_PATIENCE_S) -> StateStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _set_aside_stale_journals(path)
        return cls(f"sqlite:///{path}", patience_s=patience_s)

    def close(self) -> None:
        self._engine.dispose()

    def provider_jobs(self) -> ProviderJobs:
        """The provider batch jobs of this store's jobs, through the same retries."""
        return ProviderJobs(self._engine, self._call)

    def rate_buckets(self) -> RateBuckets:
        """The rate limits shared by every process on this store (their callers wait out outages)."""
        return RateBuckets(self._engine)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one unit of work, retrying transient errors; name a full disk or a damaged file."""
        try:
            return retrying_call(fn, what=self._what, transient=_transient, patience_s=self._patience_s)
        except DBAPIError as exc:
            name = _sqlite_name(exc)
            if self._file is not None and name == _DISK_FULL:
                raise DiskFull(self._file.parent) from exc
            if self._file is not None and name in _DAMAGED:
                raise CorruptStateFile(self._file, str(getattr(exc, "orig", exc))) from exc
            raise

    # jobs

    def create_job(self, job: JobRecord) -> None:
        def write() -> None:
            with self._engine.begin() as conn:
                # A retry after a commit whose answer was lost finds the row already there.
                if conn.execute(select(jobs.c.job_id).where(jobs.c.job_id == job.job_id)).first() is None:
                    conn.execute(insert(jobs).values(**_job_row(job)))

        self._call(write)

    def get_job(self, job_id: str) -> JobRecord | None:
        def read() -> JobRecord | None:
            with self._engine.connect() as conn:
                row = conn.execute(select(jobs).where(jobs.c.job_id == job_id)).mappings().first()
            return None if row is None else _job_from_row(row)

        return self._call(read)

    def update_job(self, job: JobRecord, **changes: Any) -> JobRecord:
        """Write the fields named in ``changes`` (only those) and return ``job`` with them.

        A status change is checked against the status as stored, in the same transaction: a change the
        transition table forbids raises `IllegalTransition` and writes nothing.
        """
        new = replace(job, **changes)
        values = {k: v for k, v in _job_row(new).items() if k in changes}
        status: JobStatus | None = changes.get("status")
        if not values:
            return new

        def write() -> None:
            where = jobs.c.job_id == job.job_id
            with self._engine.begin() as conn:
                if status is not None:
                    stored = conn.execute(select(jobs.c.status).where(where).with_for_update()).scalar()
                    if stored is None:
                        raise LookupError(f"job {job.job_id} is not in the state store")
                    check_transition(JobStatus(stored), status, job.job_id)
                conn.execute(update(jobs).where(where).values(**values))

        self._call(write)
        return new

    # chunks

    def add_chunk(self, job_id: str, chunk: ChunkRecord) -> None:
        self.add_chunks(job_id, [chunk])

    def add_chunks(self, job_id: str, added: Sequence[ChunkRecord]) -> None:
        """Record committed chunks, all in one transaction.

        A chunk's path is unique, so a retry after a commit whose answer was lost adds nothing twice.
        """

        def write() -> None:
            with self._engine.begin() as conn:
                for start in range(0, len(added), _BATCH):
                    batch = added[start : start + _BATCH]
                    paths = [c.path for c in batch]
                    query = select(chunks.c.path).where(chunks.c.job_id == job_id, chunks.c.path.in_(paths))
                    present = set(conn.execute(query).scalars())
                    rows = [_chunk_row(job_id, c) for c in batch if c.path not in present]
                    if rows:
                        conn.execute(insert(chunks), rows)

        self._call(write)

    def forget_chunk(self, job_id: str, path: str) -> None:
        """Delete a chunk's row: its lines count as not done and run again."""

        def write() -> None:
            with self._engine.begin() as conn:
                conn.execute(delete(chunks).where(chunks.c.job_id == job_id, chunks.c.path == path))

        self._call(write)

    def chunks(self, job_id: str, file_index: int | None = None) -> list[ChunkRecord]:
        query = select(chunks).where(chunks.c.job_id == job_id)
        if file_index is not None:
            query = query.where(chunks.c.file_index == file_index)
        query = query.order_by(chunks.c.first_line, chunks.c.chunk_id)

        def read() -> list[ChunkRecord]:
            with self._engine.connect() as conn:
                return [_chunk_from_row(r) for r in conn.execute(query).mappings().all()]

        return self._call(read)

    def counts(self, job_id: str) -> Counts:
        """The job's committed counts, summed in the database (no chunk's line ranges are read)."""
        c = chunks.c
        sums = select(
            func.coalesce(func.sum(c.records), 0),
            func.coalesce(func.sum(c.success), 0),
            func.coalesce(func.sum(c.errors), 0),
            func.coalesce(func.sum(c.input_tokens), 0),
            func.coalesce(func.sum(c.output_tokens), 0),
        ).where(c.job_id == job_id)
        codes_query = select(c.error_codes).where(c.job_id == job_id, c.errors > 0)

        def read() -> tuple[Any, Sequence[str]]:
            with self._engine.connect() as conn:
                return conn.execute(sums).one(), conn.execute(codes_query).scalars().all()

        (processed, success, errors, tokens_in, tokens_out), codes = self._call(read)
        error_codes: Counter[str] = Counter()
        for text in codes:
            error_codes.update(orjson.loads(text))
        return Counts(
            int(processed), int(success), int(errors), int(tokens_in), int(tokens_out), dict(error_codes)
        )

    def committed_sums(self, job_ids: Sequence[str]) -> dict[str, tuple[int, int, int, int]]:
        """Committed (success, errors, input tokens, output tokens) of each of these jobs that has any,
        in one aggregate query per thousand jobs."""
        c = chunks.c
        found: dict[str, tuple[int, int, int, int]] = {}
        ids = sorted(set(job_ids))
        for at in range(0, len(ids), 1000):
            cols = (c.success, c.errors, c.input_tokens, c.output_tokens)
            query = (
                select(c.job_id, *(func.coalesce(func.sum(col), 0) for col in cols))
                .where(c.job_id.in_(ids[at : at + 1000]))
                .group_by(c.job_id)
            )

            def read(query: Any = query) -> Sequence[Any]:
                with self._engine.connect() as conn:
                    return conn.execute(query).all()

            for row in self._call(read):
                found[str(row[0])] = (int(row[1]), int(row[2]), int(row[3]), int(row[4]))
        return found

    def list_jobs(self) -> list[JobRecord]:
        def read() -> list[JobRecord]:
            with self._engine.connect() as conn:
                rows = conn.execute(select(jobs).order_by(jobs.c.created_at)).mappings().all()
            return [_job_from_row(r) for r in rows]

        return self._call(read)

    def latest_unfinished(self) -> JobRecord | None:
        """The newest job a re-run would resume: any not Completed (a Failed one included)."""
        done = [JobStatus.COMPLETED.value, JobStatus.PARTIALLY_COMPLETED.value, JobStatus.EXPIRED.value]
        query = select(jobs).where(jobs.c.status.not_in(done)).order_by(jobs.c.created_at.desc())

        def read() -> JobRecord | None:
            with self._engine.connect() as conn:
                row = conn.execute(query.limit(1)).mappings().first()
            return None if row is None else _job_from_row(row)

        return self._call(read)


def _set_aside_stale_journals(path: Path) -> None:
    """Journal files left beside a state file that is gone (moved aside, deleted) belong to the old
    file: SQLite would replay them into the new one, so they are renamed out of its way."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for stale in _sidecars(path):
        if stale.exists():
            stale.rename(stale.with_name(f"{stale.name}.orphan-{stamp}"))


POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def make_engine(url: str) -> Engine:
    # A pooled PostgreSQL connection may have died with a server restart: test it before use. A server
    # that stops answering (a network black hole) is noticed by connect timeouts and TCP keepalives, so
    # a call fails (and is retried) instead of hanging its thread for good.
    if url.startswith("sqlite"):
        engine = create_engine(url)
    else:
        engine = create_engine(url, pool_pre_ping=True, connect_args=POSTGRES_CONNECT_ARGS)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # Wait for a lock rather than fail; first, since switching to WAL needs one too (several
            # processes may open a new database at once). WAL lets a reader watch progress while the
            # job writes; FULL makes each commit durable.
            cursor.execute("PRAGMA busy_timeout=30000")
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

    return engine


def _switch_to_wal(cursor: Any) -> None:
    """Put the database in WAL mode, waiting out other connections that hold it.

    SQLite answers a journal-mode change with "database is locked" at once, without its busy
    handler, while another connection is using the file (several replicas or threads opening a new
    database together), so the wait is here. A database already in WAL mode (the mode is kept in the
    file) needs no lock at all.
    """
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + _WAL_SWITCH_S
    pause = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _job_row(job: JobRecord) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "model": job.model,
        "input_uri": job.input_uri,
        "output_uri": job.output_uri,
        "status": job.status.value,
        "message": job.message,
        "options": orjson.dumps(job.options).decode(),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "total_records": job.total_records,
    }


def _job_from_row(row: Any) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"],
        model=row["model"],
        input_uri=row["input_uri"],
        output_uri=row["output_uri"],
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        options=orjson.loads(row["options"]),
        message=row["message"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        total_records=row["total_records"],
    )


def _chunk_row(job_id: str, chunk: ChunkRecord) -> dict[str, Any]:
    c = chunk.counts
    return {
        "job_id": job_id,
        "file_index": chunk.file_index,
        "path": chunk.path,
        "lines": str(chunk.lines),
        "first_line": chunk.first_line,
        "records": c.processed,
        "success": c.success,
        "errors": c.errors,
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "error_codes": orjson.dumps(c.error_codes).decode(),
    }


def _chunk_from_row(row: Any) -> ChunkRecord:
    return ChunkRecord(
        file_index=row["file_index"],
        path=row["path"],
        lines=LineSet.parse(row["lines"]),
        first_line=row["first_line"],
        counts=Counts(
            processed=row["records"],
            success=row["success"],
            errors=row["errors"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            error_codes=orjson.loads(row["error_codes"]),
        ),
    )


def now() -> float:
    return time.time()
