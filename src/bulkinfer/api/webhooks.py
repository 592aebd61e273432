"""``GET /webhooks/secret``: the key a tenant verifies its own jobs' webhooks with.

A job's own webhook URL (a Bedrock tag, an OpenAI batch's metadata) is signed with a key derived from
the server's for that tenant alone, so the tenant can verify what it gets without holding a key that
the operator's targets, or another tenant's, trust. Any caller of the tenant (signed request or API
key) may read it; a server that sends no webhooks has none (404).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from bulkinfer.api.bedrock.routes import CallerDep
from bulkinfer.api.errors import api_of, error_response
from bulkinfer.services import webhooks as hooks

router = APIRouter()

NONE_SENT = "this server sends no webhooks (it was started without --webhook-secret-env)"


@router.get("/webhooks/secret")
def tenant_secret(request: Request, who: CallerDep) -> Response:
    config: hooks.Webhooks | None = request.app.state.webhooks
    if config is None:
        return error_response(
            404, "ResourceNotFoundException", NONE_SENT, api_of(request.url.path, request.headers)
        )
    key = hooks.tenant_key(config.secret, who.tenant.name)
    return JSONResponse({"tenant": who.tenant.name, "secret": hooks.secret_text(key)})
