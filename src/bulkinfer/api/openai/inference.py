"""OpenAI on-demand inference: chat completions, legacy text completions and embeddings, each run
through the catalog model the body's ``model`` names. Streaming is not offered."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from bulkinfer.api.bedrock.routes import CallerDep
from bulkinfer.api.errors import OPENAI
from bulkinfer.api.ondemand import Finish, answer_body

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, who: CallerDep) -> Response:
    return await answer_body(request, who, OPENAI, "openai-chat", "chat")


@router.post("/v1/completions")
async def completions(request: Request, who: CallerDep) -> Response:
    return await answer_body(request, who, OPENAI, "openai-completions", "chat")


@router.post("/v1/embeddings")
async def embeddings(request: Request, who: CallerDep) -> Response:
    return await answer_body(request, who, OPENAI, "openai-embeddings", "embedding", adapt=_vectors_as_asked)


def _vectors_as_asked(body: dict[str, Any]) -> Finish:
    """``encoding_format: "base64"`` (what the openai SDK asks for unless told otherwise): each vector
    as the base64 of its little-endian float32 values; the dialect gives lists of floats."""
    if body.get("encoding_format") != "base64":
        return lambda answer: answer
    del body["encoding_format"]
    return _as_base64


def _as_base64(answer: dict[str, Any]) -> dict[str, Any]:
    for item in answer["data"]:
        item["embedding"] = base64.b64encode(np.asarray(item["embedding"], dtype="<f4").tobytes()).decode()
    return answer
