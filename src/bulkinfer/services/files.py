"""The OpenAI Files API's use-cases: upload, get, list, delete and read a tenant's files, register the
files a batch writes, and delete files whose time is up.

A file's bytes are at ``s3://<files-bucket>/<tenant>/files/<file-id>.jsonl`` (the tenant's own folder,
see `own_area`), its row in `FileStore`. An upload is written whole before its row is added, and a
delete removes the row before the bytes, so a file listed is always readable (a crash in between leaves
bytes no row names, never a row without bytes). Every call is scoped to the caller's tenant: another
tenant's file id is `FileNotFound`, exactly as an id never made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import string
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bulkinfer.domain.tenant import is_plain_key, own_area
from bulkinfer.errors import UserError
from bulkinfer.storage.blobs import Blobs, blobs_for, blocks_of
from bulkinfer.storage.files import remove_quietly
from bulkinfer.store.files import FileStore, Order, StoredFile

log = logging.getLogger(__name__)

UPLOAD_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
"""What a file may be uploaded for (the output files of batches are ``batch_output``, never uploaded)."""
MIN_EXPIRY_S = 3600
MAX_EXPIRY_S = 30 * 24 * 3600
BATCH_EXPIRY_S = 30 * 24 * 3600
"""How long a ``batch`` file is kept when its upload names no expiry."""
MAX_LIST = 10_000
MAX_FILENAME = 512
FILE_ID = re.compile(r"file-[A-Za-z0-9]{1,59}")
_ID_CHARS = string.ascii_letters + string.digits
SWEEP_GROUP = 500
"""Most expired files one sweep deletes; the loop sweeps again at once while there are more."""


class FileNotFound(UserError):
    """No such file."""


class FileTooLarge(UserError):
    """The file is over the size limit."""


@dataclass(frozen=True, slots=True)
class FilePage:
    files: list[StoredFile]
    has_more: bool


def new_file_id() -> str:
    return "file-" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


def check_file_id(file_id: str, what: str = "file_id") -> str:
    """A file id as we make them (``file-`` then letters and digits), refused otherwise before it is
    looked up anywhere."""
    if not FILE_ID.fullmatch(file_id):
        raise UserError(f"{what}: {file_id[:80]!r} is not a file id ('file-' then letters or digits)")
    return file_id


class FileService:
    def __init__(
        self,
        store: FileStore,
        blobs: Blobs,
        bucket: str,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._bucket = bucket
        self._max_bytes = max_bytes
        self._clock = clock

    @classmethod
    def of_server(
        cls, store: FileStore, data_dir: Path, s3_endpoint_url: str | None, bucket: str, max_bytes: int
    ) -> FileService:
        return cls(store, blobs_for(data_dir, s3_endpoint_url), bucket, max_bytes)

    def uri_of(self, tenant: str, file_id: str) -> str:
        """Where a tenant's file is kept (an uploaded one; a batch's output file may be anywhere)."""
        if "/" in tenant or not is_plain_key(tenant) or not tenant:
            raise UserError(f"tenant {tenant!r} cannot own files (its name is not a plain folder name)")
        return f"{own_area(self._bucket, tenant)}files/{check_file_id(file_id)}.jsonl"

    async def keep(self, uri: str, lines: list[bytes]) -> None:
        """Write lines as the object ``uri`` (a batch's requests sent inline, kept as its input)."""

        def write() -> None:
            spooled = self._blobs.spool_path(uri)
            try:
                with spooled.open("wb") as f:
                    f.writelines(line + b"\n" for line in lines)
                    _sync(f)
                self._blobs.put(uri, spooled)
            finally:
                remove_quietly(spooled)

        await asyncio.to_thread(write)

    async def discard(self, *uris: str) -> None:
        """Remove objects the service wrote (a deleted batch's input and results); gone ones are fine."""
        for uri in uris:
            await asyncio.to_thread(self._blobs.delete, uri)

    def read(self, uri: str) -> Iterator[bytes]:
        """The bytes of an object the service wrote, in blocks (``FileNotFoundError`` when gone)."""
        return blocks_of(self._blobs.open(uri))

    async def upload(
        self,
        tenant: str,
        filename: str,
        purpose: str,
        blocks: AsyncIterator[bytes],
        expires_after_s: int | None = None,
    ) -> StoredFile:
        """Store the bytes ``blocks`` yields as a new file of the tenant; refused (`FileTooLarge`) once
        they pass the size limit, with nothing kept."""
        _check_upload(filename, purpose, expires_after_s)
        if expires_after_s is None and purpose == "batch":
            expires_after_s = BATCH_EXPIRY_S
        file_id = new_file_id()
        uri = self.uri_of(tenant, file_id)
        spooled = await asyncio.to_thread(self._blobs.spool_path, uri)
        try:
            size = await self._spool(blocks, spooled)
            await asyncio.to_thread(self._blobs.put, uri, spooled)
        finally:
            await asyncio.to_thread(remove_quietly, spooled)  # (gone already once put)
        now = self._clock()
        expires_at = None if expires_after_s is None else now + expires_after_s
        row = StoredFile(file_id, tenant, filename, purpose, size, now, expires_at, uri)
        try:
            return await asyncio.to_thread(self._store.add, row)
        except BaseException:
            await asyncio.to_thread(self._blobs.delete, uri)  # no row will ever name these bytes
            raise

    async def _spool(self, blocks: AsyncIterator[bytes], path: Path) -> int:
        size = 0
        with path.open("wb") as f:
            async for block in blocks:
                size += len(block)
                if size > self._max_bytes:
                    raise FileTooLarge(f"file: over the {self._max_bytes:,}-byte limit for a file")
                await asyncio.to_thread(f.write, block)
            await asyncio.to_thread(_sync, f)
        return size

    async def get(self, tenant: str, file_id: str) -> StoredFile:
        check_file_id(file_id)
        found = await asyncio.to_thread(self._store.get, tenant, file_id)
        if found is None or _expired(found, self._clock()):
            raise FileNotFound(f"No such File object: {file_id}")
        return found

    async def list(
        self,
        tenant: str,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = MAX_LIST,
        order: Order = "desc",
    ) -> FilePage:
        if after is not None:
            check_file_id(after, "after")
        if not 1 <= limit <= MAX_LIST:
            raise UserError(f"limit: must be 1 to {MAX_LIST:,}")
        found = await asyncio.to_thread(
            self._store.find, tenant, purpose, after, limit + 1, order, self._clock()
        )
        return FilePage(found[:limit], has_more=len(found) > limit)

    async def delete(self, tenant: str, file_id: str) -> StoredFile:
        check_file_id(file_id)
        gone = await asyncio.to_thread(self._store.delete, tenant, file_id)
        if gone is None:
            raise FileNotFound(f"No such File object: {file_id}")
        await asyncio.to_thread(self._blobs.delete, gone.uri)
        return gone

    async def content(self, tenant: str, file_id: str) -> tuple[StoredFile, Iterator[bytes]]:
        """A file and its bytes in blocks (the file is opened before this returns, so a missing one is
        told now, not midway through an answer)."""
        found = await self.get(tenant, file_id)
        try:
            opened = await asyncio.to_thread(self._blobs.open, found.uri)
        except FileNotFoundError:
            raise FileNotFound(f"{file_id}: its content is gone") from None
        return found, blocks_of(opened)

    async def register(
        self,
        tenant: str,
        file_id: str,
        filename: str,
        purpose: str,
        uri: str,
        bytes: int,
        expires_at: float | None = None,
    ) -> StoredFile:
        """Add a file whose bytes are at ``uri`` already (a batch's output file). Registering an id the
        tenant has already returns the file as it was first registered."""
        check_file_id(file_id)
        row = StoredFile(file_id, tenant, filename, purpose, bytes, self._clock(), expires_at, uri)
        return await asyncio.to_thread(self._store.add, row)

    async def sweep_expired(self) -> int:
        """Delete files whose time is up (at most `SWEEP_GROUP`): each row, then its bytes. Returns how
        many were deleted."""
        expired = await asyncio.to_thread(self._store.expired, self._clock(), SWEEP_GROUP)
        deleted = 0
        for stored in expired:
            gone = await asyncio.to_thread(self._store.delete, stored.tenant, stored.file_id)
            if gone is None:
                continue  # deleted meanwhile, by its tenant or another replica
            await asyncio.to_thread(self._blobs.delete, gone.uri)
            deleted += 1
        if deleted:
            log.info("deleted %d expired files", deleted, extra={"action": "files_expired", "count": deleted})
        return deleted

    async def expiry_step(self, every_s: float) -> None:
        """One turn of the expiry loop: sweep, then wait (not while a full group was swept)."""
        if await self.sweep_expired() < SWEEP_GROUP:
            await asyncio.sleep(every_s)

    def close(self) -> None:
        self._store.close()


def _check_upload(filename: str, purpose: str, expires_after_s: int | None) -> None:
    if purpose not in UPLOAD_PURPOSES:
        allowed = ", ".join(sorted(UPLOAD_PURPOSES))
        raise UserError(f"purpose: {purpose[:80]!r} is not one of {allowed}")
    if not filename or len(filename) > MAX_FILENAME:
        raise UserError(f"file: give the file a name of 1 to {MAX_FILENAME} characters")
    if expires_after_s is not None and not MIN_EXPIRY_S <= expires_after_s <= MAX_EXPIRY_S:
        raise UserError(f"expires_after[seconds]: must be {MIN_EXPIRY_S} to {MAX_EXPIRY_S:,}")


def _expired(stored: StoredFile, now: float) -> bool:
    return stored.expires_at is not None and stored.expires_at <= now


def _sync(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())
