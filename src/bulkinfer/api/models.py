"""``GET /v1/models``: the catalog models the caller's tenant may use, for both SDKs on the one path.

The openai SDK reads ``{object: "list", data: [{id, object: "model", created, owned_by}]}``; the
anthropic SDK (it always sends ``anthropic-version``) reads ``{data: [{id, type: "model", display_name,
created_at}], has_more, first_id, last_id}``, paged with ``limit``, ``after_id`` and ``before_id``.
Models are listed by name, and a page's cursors are names, so a model added between two pages is no
trouble. A catalog entry has no release date: it is given as the epoch, as Anthropic does for an
unknown one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from bulkinfer.api.bedrock.routes import CallerDep
from bulkinfer.api.errors import ANTHROPIC, api_of, error_response
from bulkinfer.api.ondemand import invoke_service, model_or_404
from bulkinfer.providers.catalog import ModelSpec

router = APIRouter()

UNKNOWN_DATE = "1970-01-01T00:00:00Z"


@router.get("/v1/models")
async def list_models(
    request: Request,
    who: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after_id: str | None = None,
    before_id: str | None = None,
) -> Response:
    specs = invoke_service(request).models(who.tenant)
    if api_of(request.url.path, request.headers) != ANTHROPIC:
        return JSONResponse({"object": "list", "data": [_openai_model(s) for s in specs]})
    if after_id is not None and before_id is not None:
        message = "give after_id or before_id, not both"
        return error_response(400, "ValidationException", message, ANTHROPIC, param="before_id")
    if before_id is not None:
        earlier = [s for s in specs if s.name < before_id]
        page, has_more = earlier[-limit:], len(earlier) > limit
    else:
        later = [s for s in specs if after_id is None or s.name > after_id]
        page, has_more = later[:limit], len(later) > limit
    return JSONResponse(
        {
            "data": [_anthropic_model(s) for s in page],
            "has_more": has_more,
            "first_id": page[0].name if page else None,
            "last_id": page[-1].name if page else None,
        }
    )


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, who: CallerDep) -> Response:
    api = api_of(request.url.path, request.headers)
    spec = model_or_404(request, who, model_id, api)
    if isinstance(spec, Response):
        return spec
    return JSONResponse(_anthropic_model(spec) if api == ANTHROPIC else _openai_model(spec))


def _openai_model(spec: ModelSpec) -> dict[str, Any]:
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": spec.provider}


def _anthropic_model(spec: ModelSpec) -> dict[str, Any]:
    return {
        "id": spec.name,
        "type": "model",
        "display_name": spec.name,
        "created_at": UNKNOWN_DATE,
        "lifecycle": "active",
        "max_input_tokens": spec.context_length if spec.context_known else None,
    }
