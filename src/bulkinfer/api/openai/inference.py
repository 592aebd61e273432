"""OpenAI on-demand inference: chat completions, legacy text completions and embeddings, each run
through the catalog model the body's ``model`` names. Streaming is not offered."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from bulkinfer.api.bedrock.routes import CallerDep
from bulkinfer.api.errors import OPENAI
from bulkinfer.api.ondemand import answer_body

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, who: CallerDep) -> Response:
    return await answer_body(request, who, OPENAI, "openai-chat", "chat")


@router.post("/v1/completions")
async def completions(request: Request, who: CallerDep) -> Response:
    return await answer_body(request, who, OPENAI, "openai-completions", "chat")


@router.post("/v1/embeddings")
async def embeddings(request: Request, who: CallerDep) -> Response:
    return await answer_body(request, who, OPENAI, "openai-embeddings", "embedding")
