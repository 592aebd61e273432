"""Routes of the on-demand runtime API."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import unquote

import orjson
from fastapi import APIRouter, Depends, Request, Response

from bulkinfer.api.auth import Caller
from bulkinfer.api.bedrock.routes import caller
from bulkinfer.api.errors import error_response
from bulkinfer.errors import RecordInvalid, UnknownModelError
from bulkinfer.services.invoke import InvokeService, ModelFailed

router = APIRouter()


def _service(request: Request) -> InvokeService:
    service: InvokeService = request.app.state.invoke
    return service


async def _body(request: Request) -> dict[str, Any] | Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return error_response(400, "ValidationException", f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error_response(400, "ValidationException", "body must be a JSON object")
    return body


async def _answer(request: Request, who: Caller, model: str, dialect: str | None) -> Response:
    body = await _body(request)
    if isinstance(body, Response):
        return body
    if dialect == "converse":
        body.pop("modelId", None)  # Converse carries the model in the path only
    try:
        answer = await _service(request).invoke(who.tenant, unquote(model), body, dialect)
    except UnknownModelError as exc:
        return error_response(404, "ResourceNotFoundException", str(exc))
    except RecordInvalid as exc:
        return error_response(400, "ValidationException", str(exc))
    except ModelFailed as exc:
        if exc.error.code == 400:
            return error_response(400, "ValidationException", exc.error.message)
        return error_response(424, "ModelErrorException", exc.error.message)
    return Response(orjson.dumps(answer), media_type="application/json")


@router.post("/model/{model:path}/invoke")
async def invoke_model(model: str, request: Request, who: Annotated[Caller, Depends(caller)]) -> Response:
    return await _answer(request, who, model, None)


@router.post("/model/{model:path}/converse")
async def converse(model: str, request: Request, who: Annotated[Caller, Depends(caller)]) -> Response:
    return await _answer(request, who, model, "converse")
