"""The job-state store: jobs, committed chunks, and first sightings of record ids."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event, func, insert, select, update

from bulkinfer.domain.job import Counts, JobStatus
from bulkinfer.domain.lineset import LineSet
from bulkinfer.store.migrate import upgrade
from bulkinfer.store.schema import chunks, jobs


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
    """Durable state of the jobs that share one state file."""

    def __init__(self, url: str) -> None:
        self._engine = make_engine(url)
        upgrade(self._engine)

    @classmethod
    def at(cls, path: Path) -> StateStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{path}")

    def close(self) -> None:
        self._engine.dispose()

    # jobs

    def create_job(self, job: JobRecord) -> None:
        with self._engine.begin() as conn:
            conn.execute(insert(jobs).values(**_job_row(job)))

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.job_id == job_id)).mappings().first()
        return None if row is None else _job_from_row(row)

    def update_job(self, job: JobRecord, **changes: Any) -> JobRecord:
        new = replace(job, **changes)
        row = _job_row(new)
        del row["job_id"]
        with self._engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.job_id == job.job_id).values(**row))
        return new

    # chunks

    def add_chunk(self, job_id: str, chunk: ChunkRecord) -> None:
        c = chunk.counts
        with self._engine.begin() as conn:
            conn.execute(
                insert(chunks).values(
                    job_id=job_id,
                    file_index=chunk.file_index,
                    path=chunk.path,
                    lines=str(chunk.lines),
                    first_line=chunk.first_line,
                    records=c.processed,
                    success=c.success,
                    errors=c.errors,
                    input_tokens=c.input_tokens,
                    output_tokens=c.output_tokens,
                    error_codes=orjson.dumps(c.error_codes).decode(),
                )
            )

    def chunks(self, job_id: str, file_index: int | None = None) -> list[ChunkRecord]:
        query = select(chunks).where(chunks.c.job_id == job_id)
        if file_index is not None:
            query = query.where(chunks.c.file_index == file_index)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(chunks.c.first_line, chunks.c.chunk_id)).mappings().all()
        return [_chunk_from_row(r) for r in rows]

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
        with self._engine.connect() as conn:
            processed, success, errors, tokens_in, tokens_out = conn.execute(sums).one()
            codes = (
                conn.execute(select(c.error_codes).where(c.job_id == job_id, c.errors > 0)).scalars().all()
            )
        error_codes: Counter[str] = Counter()
        for text in codes:
            error_codes.update(orjson.loads(text))
        return Counts(
            int(processed), int(success), int(errors), int(tokens_in), int(tokens_out), dict(error_codes)
        )

    def list_jobs(self) -> list[JobRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(jobs).order_by(jobs.c.created_at)).mappings().all()
        return [_job_from_row(r) for r in rows]

    def latest_unfinished(self) -> JobRecord | None:
        """The newest job a re-run would resume: any not Completed (a Failed one included)."""
        done = [JobStatus.COMPLETED.value, JobStatus.PARTIALLY_COMPLETED.value, JobStatus.EXPIRED.value]
        query = select(jobs).where(jobs.c.status.not_in(done)).order_by(jobs.c.created_at.desc())
        with self._engine.connect() as conn:
            row = conn.execute(query.limit(1)).mappings().first()
        return None if row is None else _job_from_row(row)


def make_engine(url: str) -> Engine:
    engine = create_engine(url)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # Wait for a lock rather than fail; first, since switching to WAL needs one too (several
            # processes may open a new database at once). WAL lets a reader watch progress while the
            # job writes; FULL makes each commit durable.
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

    return engine


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
