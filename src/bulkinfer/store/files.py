"""Files of the OpenAI Files API: one row per file, uploaded or written by a batch (an output file).

A row says whose the file is, what it is for, how big it is, until when it is kept and where its bytes
are (``uri``); the bytes themselves live in the files bucket. Every read is scoped to one tenant, so a
file id of another tenant is as absent as one never made. Adding a row whose id is there already for
the same tenant returns that row (a batch registers its output files under ids of its own making,
perhaps twice). Calls ride over a database restart, as `BatchJobStore`'s do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import Engine, and_, delete, insert, or_, select
from sqlalchemy.exc import IntegrityError

from bulkinfer.store.batch_jobs import DEFAULT_PATIENCE_S
from bulkinfer.store.migrate import upgrade
from bulkinfer.store.schema import files
from bulkinfer.store.state import make_engine
from bulkinfer.transient import is_transient_db, retrying_call

T = TypeVar("T")
Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class StoredFile:
    file_id: str
    tenant: str
    filename: str
    """As the uploader named it: shown back, never used in a path."""
    purpose: str
    bytes: int
    created_at: float
    expires_at: float | None
    """When the file is deleted; None to keep it until someone deletes it."""
    uri: str
    """Where its bytes are: ``s3://<files-bucket>/<tenant>/files/<file-id>.jsonl``."""


class FileStore:
    def __init__(self, url: str, patience_s: float = DEFAULT_PATIENCE_S) -> None:
        self._patience_s = patience_s
        self._engine: Engine = make_engine(url)
        self._retry(lambda: upgrade(self._engine))

    def _retry(self, fn: Callable[[], T]) -> T:
        return retrying_call(
            fn, what="the file database", transient=is_transient_db, patience_s=self._patience_s
        )

    def close(self) -> None:
        self._engine.dispose()

    def add(self, stored: StoredFile) -> StoredFile:
        """Insert a row; the row already there under its id, when it is the same tenant's, is returned
        instead. An id another tenant holds raises `IntegrityError`."""

        def write() -> StoredFile:
            try:
                with self._engine.begin() as conn:
                    conn.execute(insert(files).values(**asdict(stored)))
            except IntegrityError:
                existing = self.get(stored.tenant, stored.file_id)
                if existing is None:
                    raise
                return existing
            return stored

        return self._retry(write)

    def get(self, tenant: str, file_id: str) -> StoredFile | None:
        c = files.c
        return self._first(select(files).where(c.tenant == tenant, c.file_id == file_id))

    def find(
        self,
        tenant: str,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10_000,
        order: Order = "desc",
        alive_at: float | None = None,
    ) -> list[StoredFile]:
        """A tenant's files in creation order (ties by id), from just past the file ``after`` (none when
        ``after`` is not one of them); with ``alive_at``, only files not expired by then."""
        c = files.c
        query = select(files).where(c.tenant == tenant)
        if purpose is not None:
            query = query.where(c.purpose == purpose)
        if alive_at is not None:
            query = query.where(or_(c.expires_at.is_(None), c.expires_at > alive_at))
        if after is not None:
            cursor = self.get(tenant, after)
            if cursor is None:
                return []
            if order == "asc":
                past = or_(
                    c.created_at > cursor.created_at,
                    and_(c.created_at == cursor.created_at, c.file_id > cursor.file_id),
                )
            else:
                past = or_(
                    c.created_at < cursor.created_at,
                    and_(c.created_at == cursor.created_at, c.file_id < cursor.file_id),
                )
            query = query.where(past)
        by = (
            (c.created_at.asc(), c.file_id.asc())
            if order == "asc"
            else (c.created_at.desc(), c.file_id.desc())
        )
        return self._all(query.order_by(*by).limit(limit))

    def delete(self, tenant: str, file_id: str) -> StoredFile | None:
        """Remove a tenant's file row and return it; None when it had no such file."""
        c = files.c

        def write() -> StoredFile | None:
            with self._engine.begin() as conn:
                row = (
                    conn.execute(select(files).where(c.tenant == tenant, c.file_id == file_id))
                    .mappings()
                    .first()
                )
                if row is None:
                    return None
                gone = conn.execute(delete(files).where(c.tenant == tenant, c.file_id == file_id))
                return StoredFile(**row) if gone.rowcount == 1 else None

        return self._retry(write)

    def expired(self, now: float, limit: int = 500) -> list[StoredFile]:
        """Files of every tenant whose time ran out by ``now``, the longest expired first."""
        c = files.c
        query = select(files).where(c.expires_at <= now).order_by(c.expires_at.asc(), c.file_id.asc())
        return self._all(query.limit(limit))

    def _first(self, query: Any) -> StoredFile | None:
        def read() -> StoredFile | None:
            with self._engine.connect() as conn:
                row = conn.execute(query).mappings().first()
            return None if row is None else StoredFile(**row)

        return self._retry(read)

    def _all(self, query: Any) -> list[StoredFile]:
        def read() -> list[StoredFile]:
            with self._engine.connect() as conn:
                return [StoredFile(**row) for row in conn.execute(query).mappings().all()]

        return self._retry(read)
