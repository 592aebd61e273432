"""Errors on the wire as botocore reads them: ``x-amzn-ErrorType`` plus ``{"message", "__type"}``."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from bulkinfer.api.auth import AuthFailed
from bulkinfer.domain.tenant import NotGranted
from bulkinfer.errors import UserError
from bulkinfer.services.batch import JobConflict, JobNotEnded, JobNotFound
from bulkinfer.store.batch_jobs import TooManyActiveJobs
from bulkinfer.transient import is_transient_db

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"message": message[:2048] or code, "__type": code},
        status_code=status,
        headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4())},
    )


def refusal(exc: AuthFailed) -> JSONResponse:
    """The answer to a request refused before it reached a route."""
    return error_response(exc.status, exc.code, str(exc))


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path"))
        detail = str(first["msg"]).removeprefix("Value error, ")
        return error_response(400, "ValidationException", f"{where}: {detail}" if where else detail)

    @app.exception_handler(NotGranted)
    async def not_granted(_: Request, exc: NotGranted) -> JSONResponse:
        return error_response(403, "AccessDeniedException", str(exc))

    @app.exception_handler(TooManyActiveJobs)
    async def too_many(_: Request, exc: TooManyActiveJobs) -> JSONResponse:
        return error_response(400, "ServiceQuotaExceededException", str(exc))

    @app.exception_handler(JobNotFound)
    async def not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return error_response(404, "ResourceNotFoundException", str(exc))

    @app.exception_handler(JobNotEnded)
    async def not_ended(_: Request, exc: JobNotEnded) -> JSONResponse:
        return error_response(409, "ConflictException", str(exc))

    @app.exception_handler(JobConflict)
    async def conflict(_: Request, exc: JobConflict) -> JSONResponse:
        return error_response(400, "ValidationException", str(exc))

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        return error_response(400, "ValidationException", str(exc))

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        # The details (a database's SQL and parameters, paths) are the operator's, not the caller's:
        # logged under an id the caller is given.
        incident = uuid.uuid4().hex[:12]
        log.error("request failed (incident %s)", incident, exc_info=exc)
        if is_transient_db(exc):
            message = f"the job database is not answering; try again (incident {incident})"
            return error_response(503, "ServiceUnavailableException", message)
        return error_response(500, "InternalServerException", f"internal error (incident {incident})")
