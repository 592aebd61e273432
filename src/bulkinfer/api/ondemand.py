"""What the OpenAI and Anthropic on-demand routes share: the body read as a JSON object, the catalog
model it names, one call through `InvokeService`, and each failure told in the caller's API's shape.

The routes stay thin: the dialect, the images and the model's answer are `InvokeService`'s, exactly as
for bedrock-runtime's InvokeModel. The bodies' field names are the APIs' own, so Bedrock's name for a
body (``modelInput``) is left out of the messages here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse

from bulkinfer.api.auth import Caller
from bulkinfer.api.errors import error_response
from bulkinfer.domain.tenant import NotGranted
from bulkinfer.errors import RecordInvalid, UnknownModelError
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.registry import capabilities_of
from bulkinfer.services.invoke import InvokeService, ModelFailed

Kind = Literal["chat", "embedding"]
Finish = Callable[[dict[str, Any]], dict[str, Any]]
"""What a route does to the dialect's answer before it is sent."""
Adapt = Callable[[dict[str, Any]], Finish]
"""Takes a route's own fields (the API's, not the dialect's) out of a body; says how to finish the answer."""
_BEDROCK_CODES = {408: "ModelTimeoutException", 429: "ThrottlingException"}


def invoke_service(request: Request) -> InvokeService:
    service: InvokeService = request.app.state.invoke
    return service


def model_or_404(request: Request, who: Caller, name: str, api: str) -> ModelSpec | JSONResponse:
    """A model the caller's tenant may use, or a 404 (a model it may not use is not there for it)."""
    try:
        return invoke_service(request).model(who.tenant, name)
    except (UnknownModelError, NotGranted) as exc:
        return error_response(404, "ResourceNotFoundException", str(exc), api, param="model")


async def answer_body(
    request: Request,
    who: Caller,
    api: str,
    dialect: str,
    kind: Kind,
    *,
    model_in_body: bool = True,
    adapt: Adapt | None = None,
) -> Response:
    """Run the request's body through the model its ``model`` names, in ``dialect``; the response is
    that dialect's rendering. ``model_in_body=False``: the dialect has no ``model`` key (Anthropic's)."""
    body = await _json_body(request, api)
    if isinstance(body, Response):
        return body
    model = body.get("model") if model_in_body else body.pop("model", None)
    if not isinstance(model, str) or not model:
        return error_response(400, "ValidationException", "model: a model name is required", api, "model")
    if body.get("stream") not in (None, False):
        message = "stream: streaming is not supported; send the request without stream (or stream=false)"
        return error_response(400, "ValidationException", message, api, param="stream")
    body.pop("stream", None)
    finish = adapt(body) if adapt is not None else None
    spec = model_or_404(request, who, model, api)
    if isinstance(spec, Response):
        return spec
    mismatch = _kind_mismatch(spec, kind)
    if mismatch is not None:
        return error_response(400, "ValidationException", mismatch, api, param="model")
    answer = await _invoke(request, who, api, model, body, dialect)
    if isinstance(answer, Response):
        return answer
    return Response(orjson.dumps(finish(answer) if finish else answer), media_type="application/json")


async def _json_body(request: Request, api: str) -> dict[str, Any] | Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return error_response(400, "ValidationException", f"body is not valid JSON: {exc}", api)
    if not isinstance(body, dict):
        return error_response(400, "ValidationException", "body must be a JSON object", api)
    return body


def _kind_mismatch(spec: ModelSpec, kind: Kind) -> str | None:
    """Why this model cannot do what the route does (told from its catalog entry, before it loads)."""
    capabilities = capabilities_of(spec)
    if kind == "chat" and not capabilities.chat:
        return f"model {spec.name!r} only produces embeddings: call POST /v1/embeddings with it"
    if kind == "embedding" and not capabilities.embeddings:
        return (
            f"model {spec.name!r} is a chat model and produces no embeddings: call "
            "POST /v1/chat/completions or POST /v1/messages with it"
        )
    return None


async def _invoke(
    request: Request, who: Caller, api: str, model: str, body: dict[str, Any], dialect: str
) -> dict[str, Any] | Response:
    try:
        answer = await invoke_service(request).invoke(who.tenant, model, body, dialect)
    except (UnknownModelError, NotGranted) as exc:
        return error_response(404, "ResourceNotFoundException", str(exc), api, param="model")
    except RecordInvalid as exc:
        message = _in_api_terms(str(exc))
        return error_response(400, "ValidationException", message, api, param=_param(exc.field))
    except ModelFailed as exc:
        return _failure(exc, model, api)
    return answer


def _failure(exc: ModelFailed, model: str, api: str) -> JSONResponse:
    """A request the model could not answer: the request's fault (400), throttling or a timeout (kept,
    so the SDK retries), or the model's (500, with ``x-should-retry: false``: it was already retried)."""
    code = exc.error.code
    message = f"model {model!r}: {_in_api_terms(exc.error.message)}"
    if code in _BEDROCK_CODES:
        return error_response(code, _BEDROCK_CODES[code], message, api)
    if 400 <= code < 500:
        return error_response(400, "ValidationException", message, api)
    response = error_response(500, "ModelErrorException", message, api)
    response.headers["x-should-retry"] = "false"
    return response


def _param(field: str | None) -> str | None:
    """A dialect's field path (``modelInput.messages.0``) as the API's parameter (``messages.0``)."""
    return (field or "").removeprefix("modelInput").lstrip(".") or None


def _in_api_terms(text: str) -> str:
    return text.replace("modelInput.", "").replace("modelInput", "the request")
