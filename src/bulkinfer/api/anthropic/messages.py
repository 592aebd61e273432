"""Anthropic Messages on demand (``POST /v1/messages``), non-streaming: the body's ``model`` names the
catalog model and the rest is the anthropic dialect's body."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from bulkinfer.api.bedrock.routes import CallerDep
from bulkinfer.api.errors import ANTHROPIC
from bulkinfer.api.ondemand import answer_body

router = APIRouter()


@router.post("/v1/messages")
async def create_message(request: Request, who: CallerDep) -> Response:
    return await answer_body(request, who, ANTHROPIC, "anthropic", "chat", model_in_body=False)
