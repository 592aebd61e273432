"""Errors on the wire, in the shape the caller's SDK reads.

- Bedrock (botocore): ``x-amzn-ErrorType`` plus ``{"message", "__type"}``.
- OpenAI (``/v1/...``): ``{"error": {"message", "type", "param", "code"}}``.
- Anthropic (``/v1/messages...``, or any request with an ``anthropic-version`` header):
  ``{"type": "error", "error": {"type", "message"}, "request_id"}``.

Every exception is told by one table (`_REFUSALS`): its HTTP status and Bedrock code; the OpenAI and
Anthropic error types follow from the status.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from bulkinfer.api.auth import AuthFailed
from bulkinfer.domain.tenant import NotGranted
from bulkinfer.errors import UserError
from bulkinfer.services.batch import JobConflict, JobNotEnded, JobNotFound
from bulkinfer.services.files import FileNotFound, FileTooLarge
from bulkinfer.storage.blobs import StorageUnavailable
from bulkinfer.store.batch_jobs import TooManyActiveJobs
from bulkinfer.transient import is_transient_db

log = logging.getLogger(__name__)

BEDROCK, OPENAI, ANTHROPIC = "bedrock", "openai", "anthropic"
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def api_of(path: str, headers: Headers) -> str:
    """Which API a request speaks, so its errors come in that API's shape."""
    if path.startswith("/v1/messages") or "anthropic-version" in headers:
        return ANTHROPIC
    if path.startswith("/v1/"):
        return OPENAI
    return BEDROCK


def error_response(
    status: int, code: str, message: str, api: str = BEDROCK, param: str | None = None
) -> JSONResponse:
    """An error in ``api``'s shape; ``code`` is Bedrock's name for it."""
    message = message[:2048] or code
    request_id = str(uuid.uuid4())
    if api == OPENAI:
        kind = _OPENAI_TYPES.get(status, "server_error")
        openai_code = "invalid_api_key" if status == 401 else None
        error = {"message": message, "type": kind, "param": param, "code": openai_code}
        return JSONResponse({"error": error}, status_code=status, headers={"x-request-id": request_id})
    if api == ANTHROPIC:
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id,
        }
        return JSONResponse(body, status_code=status, headers={"request-id": request_id})
    return JSONResponse(
        {"message": message, "__type": code},
        status_code=status,
        headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": request_id},
    )


def refusal(exc: AuthFailed) -> ASGIApp:
    """The answer to a request refused before it reached a route, in its API's shape."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        api = api_of(scope["path"], Headers(scope=scope))
        await error_response(exc.status, exc.code, str(exc), api)(scope, receive, send)

    return answer


_REFUSALS: list[tuple[type[Exception], int, str]] = [
    (NotGranted, 403, "AccessDeniedException"),
    (TooManyActiveJobs, 400, "ServiceQuotaExceededException"),
    (JobNotFound, 404, "ResourceNotFoundException"),
    (FileNotFound, 404, "ResourceNotFoundException"),
    (FileTooLarge, 413, "ValidationException"),
    (StorageUnavailable, 503, "ServiceUnavailableException"),
    (JobNotEnded, 409, "ConflictException"),
    (JobConflict, 400, "ValidationException"),
    (UserError, 400, "ValidationException"),
]
"""Our exceptions as the errors botocore knows: HTTP status and ``__type``."""


def _answer(status: int, code: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def answer(request: Request, exc: Exception) -> JSONResponse:
        return error_response(status, code, str(exc), api_of(request.url.path, request.headers))

    return answer


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path"))
        detail = str(first["msg"]).removeprefix("Value error, ")
        message = f"{where}: {detail}" if where else detail
        api = api_of(request.url.path, request.headers)
        return error_response(400, "ValidationException", message, api, param=where or None)

    @app.exception_handler(HTTPException)
    async def unrouted(request: Request, exc: HTTPException) -> JSONResponse:
        # no route for the path or its method (404, 405): in the caller's API's shape, as any refusal
        if exc.status_code in (404, 405):
            message = f"{request.method} {request.url.path}: no such route on this server"
            code = "UnknownOperationException"
        else:
            message, code = str(exc.detail), "ValidationException"
        response = error_response(exc.status_code, code, message, api_of(request.url.path, request.headers))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(AuthFailed)
    async def refused(request: Request, exc: AuthFailed) -> JSONResponse:  # (an upload cut off midway)
        return error_response(exc.status, exc.code, str(exc), api_of(request.url.path, request.headers))

    for kind, status, code in _REFUSALS:  # (looked up by the exception's class, most specific first)
        app.add_exception_handler(kind, _answer(status, code))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # The details (a database's SQL and parameters, paths) are the operator's, not the caller's:
        # logged under an id the caller is given.
        incident = uuid.uuid4().hex[:12]
        log.error("request failed (incident %s)", incident, exc_info=exc)
        api = api_of(request.url.path, request.headers)
        if is_transient_db(exc):
            message = f"the job database is not answering; try again (incident {incident})"
            return error_response(503, "ServiceUnavailableException", message, api)
        return error_response(500, "InternalServerException", f"internal error (incident {incident})", api)
