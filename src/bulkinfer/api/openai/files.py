"""Routes of the OpenAI Files API: ``/v1/files`` (upload, list), ``/v1/files/{id}`` (retrieve, delete)
and ``/v1/files/{id}/content``.

An upload comes as ``multipart/form-data`` (parts ``purpose`` and ``file``, and optionally the
bracket-named ``expires_after[anchor]`` and ``expires_after[seconds]``). Its body passes the `Gate`
unbuffered; starlette spools the file part to disk, and it is copied to its place in blocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from bulkinfer.api.auth import Caller
from bulkinfer.api.bedrock.routes import caller
from bulkinfer.errors import UserError
from bulkinfer.services.files import MAX_LIST, FileService, check_file_id
from bulkinfer.store.files import StoredFile

router = APIRouter(prefix="/v1")

READ_BYTES = 1 << 20
MAX_FIELD_BYTES = 64 * 1024
"""Largest form field other than the file (a purpose, an expiry)."""


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    expires_at: int | None
    status_details: str | None = None

    @classmethod
    def of(cls, stored: StoredFile) -> FileObject:
        expires_at = None if stored.expires_at is None else int(stored.expires_at)
        return cls(
            id=stored.file_id,
            bytes=stored.bytes,
            created_at=int(stored.created_at),
            filename=stored.filename,
            purpose=stored.purpose,
            expires_at=expires_at,
        )


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


async def service(request: Request) -> FileService:
    files: FileService = request.app.state.files
    return files


CallerDep = Annotated[Caller, Depends(caller)]
FilesDep = Annotated[FileService, Depends(service)]


@router.post("/files")
async def create_file(request: Request, who: CallerDep, files: FilesDep) -> FileObject:
    try:
        async with request.form(max_files=1, max_fields=8, max_part_size=MAX_FIELD_BYTES) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise UserError("file: send the file as a multipart/form-data part named 'file'")
            purpose = _text(form.get("purpose"), "purpose")
            expires = _expires_after(form.get("expires_after[anchor]"), form.get("expires_after[seconds]"))
            stored = await files.upload(
                who.tenant.name, upload.filename or "", purpose, _blocks(upload), expires
            )
    except HTTPException as exc:  # starlette's refusal of a malformed multipart body
        raise UserError(f"the upload is not valid multipart/form-data: {exc.detail}") from None
    except ClientDisconnect:  # (no one is left to read the answer; nothing was kept)
        raise UserError("the upload was cut off before its end") from None
    return FileObject.of(stored)


async def _blocks(upload: UploadFile) -> AsyncIterator[bytes]:
    while block := await upload.read(READ_BYTES):
        yield block


def _text(value: str | UploadFile | None, name: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{name}: required, as a form field")
    return value


def _expires_after(anchor: str | UploadFile | None, seconds: str | UploadFile | None) -> int | None:
    if anchor is None and seconds is None:
        return None
    if _text(anchor, "expires_after[anchor]") != "created_at":
        raise UserError("expires_after[anchor]: must be 'created_at'")
    text = _text(seconds, "expires_after[seconds]")
    if not text.isdigit() or len(text) > 12:
        raise UserError("expires_after[seconds]: must be a whole number of seconds")
    return int(text)


@router.get("/files")
async def list_files(
    who: CallerDep,
    files: FilesDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = MAX_LIST,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> FileList:
    page = await files.list(who.tenant.name, purpose, after, limit, order)
    data = [FileObject.of(f) for f in page.files]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


@router.get("/files/{file_id}")
async def retrieve_file(file_id: str, who: CallerDep, files: FilesDep) -> FileObject:
    return FileObject.of(await files.get(who.tenant.name, file_id))


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, who: CallerDep, files: FilesDep) -> FileDeleted:
    gone = await files.delete(who.tenant.name, file_id)
    return FileDeleted(id=gone.file_id)


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, who: CallerDep, files: FilesDep) -> StreamingResponse:
    stored, blocks = await files.content(who.tenant.name, check_file_id(file_id))
    return StreamingResponse(
        blocks,
        media_type="application/octet-stream",
        headers={"content-length": str(stored.bytes)},
    )
