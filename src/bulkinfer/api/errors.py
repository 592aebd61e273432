"""Errors on the wire as botocore reads them: ``x-amzn-ErrorType`` plus ``{"message", "__type"}``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

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


_REFUSALS: list[tuple[type[Exception], int, str]] = [
    (NotGranted, 403, "AccessDeniedException"),
    (TooManyActiveJobs, 400, "ServiceQuotaExceededException"),
    (JobNotFound, 404, "ResourceNotFoundException"),
    (JobNotEnded, 409, "ConflictException"),
    (JobConflict, 400, "ValidationException"),
    (UserError, 400, "ValidationException"),
]
"""Our exceptions as the errors botocore knows: HTTP status and ``__type``."""


def _answer(status: int, code: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def answer(_: Request, exc: Exception) -> JSONResponse:
        return error_response(status, code, str(exc))

    return answer


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path"))
        detail = str(first["msg"]).removeprefix("Value error, ")
        return error_response(400, "ValidationException", f"{where}: {detail}" if where else detail)

    for kind, status, code in _REFUSALS:  # (looked up by the exception's class, most specific first)
        app.add_exception_handler(kind, _answer(status, code))

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
