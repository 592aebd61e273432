"""Unit tests for the remote adapters' pure parts: request bodies and how SDK failures are classed."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import openai
import pytest

from bulkinfer.domain.request import (
    ChatRequest,
    EmbeddingRequest,
    GenerationParams,
    ImagePart,
    Message,
    TextPart,
)
from bulkinfer.providers.remote.anthropic_api import messages_body
from bulkinfer.providers.remote.bedrock_api import converse_kwargs
from bulkinfer.providers.remote.call import CallFailed, Permanent, ProviderDown, RateLimited, Retryable
from bulkinfer.providers.remote.openai_api import chat_body, embedding_body
from bulkinfer.providers.remote.sdk import convert, json_body

PNG = b"\x89PNG\r\n\x1a\nfake"
REQUEST = ChatRequest(
    messages=(
        Message("user", (TextPart("what is this?"), ImagePart("image/png", data=PNG))),
        Message("assistant", (TextPart("a picture"),)),
        Message("user", (TextPart("more"),)),
    ),
    system="be brief",
    params=GenerationParams(max_tokens=20, temperature=0.5, top_k=4, stop=("END",)),
)


def test_openai_chat_body() -> None:
    body = chat_body(REQUEST)
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    parts = body["messages"][1]["content"]
    assert parts[0] == {"type": "text", "text": "what is this?"}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgpmYWtl")
    assert body["messages"][2] == {"role": "assistant", "content": "a picture"}
    assert (body["max_tokens"], body["temperature"], body["stop"]) == (20, 0.5, ["END"])
    assert "top_k" not in body  # OpenAI refuses it; a native body can still carry it


def test_openai_embedding_body() -> None:
    assert embedding_body(EmbeddingRequest(("a", "b"), dimensions=64)) == {
        "input": ["a", "b"],
        "dimensions": 64,
    }


def test_anthropic_messages_body() -> None:
    body = messages_body(REQUEST)
    assert body["system"] == "be brief"
    image = body["messages"][0]["content"][1]
    assert image["type"] == "image" and image["source"]["media_type"] == "image/png"
    assert (body["max_tokens"], body["top_k"], body["stop_sequences"]) == (20, 4, ["END"])


def test_converse_kwargs() -> None:
    kwargs = converse_kwargs(REQUEST)
    assert kwargs["system"] == [{"text": "be brief"}]
    assert kwargs["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": PNG}}}
    assert kwargs["inferenceConfig"] == {
        "maxTokens": 20,
        "temperature": 0.5,
        "stopSequences": ["END"],
    }
    assert kwargs["additionalModelRequestFields"] == {"top_k": 4}


REQ = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")


def status_error(sdk: Any, status: int, headers: dict[str, str] | None = None) -> Exception:
    response = httpx2.Response(status, headers=headers or {}, request=REQ)
    return sdk.APIStatusError(f"status {status}", response=response, body=None)  # type: ignore[no-any-return]


def classed(sdk: Any, exc: Exception) -> CallFailed:
    with pytest.raises(CallFailed) as info:
        convert(sdk, exc, 5.0)
    return info.value


@pytest.mark.parametrize("sdk", [openai, anthropic])
def test_statuses_are_classed(sdk: Any) -> None:
    throttled = classed(sdk, status_error(sdk, 429, {"retry-after": "2"}))
    assert isinstance(throttled, RateLimited) and throttled.retry_after == 2.0
    assert isinstance(classed(sdk, status_error(sdk, 529)), RateLimited)  # Anthropic's overloaded
    for status in (500, 502, 503, 408):
        failure = classed(sdk, status_error(sdk, status))
        assert type(failure) is Retryable and failure.code == status
    for status in (400, 401, 403, 404, 422):
        failure = classed(sdk, status_error(sdk, status))
        assert isinstance(failure, Permanent) and failure.code == status
        assert f"{status}: status {status}" in str(failure)


@pytest.mark.parametrize("sdk", [openai, anthropic])
def test_connection_failures_are_classed(sdk: Any) -> None:
    refused = sdk.APIConnectionError(request=REQ)
    refused.__cause__ = httpx2.ConnectError("[Errno 111] Connection refused")
    assert isinstance(classed(sdk, refused), ProviderDown)
    reset = sdk.APIConnectionError(request=REQ)
    reset.__cause__ = httpx2.RemoteProtocolError("Server disconnected without sending a response.")
    failure = classed(sdk, reset)
    assert type(failure) is Retryable and "disconnected" in str(failure)
    timeout = classed(sdk, sdk.APITimeoutError(request=REQ))
    assert type(timeout) is Retryable and timeout.code == 408 and "5 s" in str(timeout)


def test_garbled_bodies_are_retryable() -> None:
    with pytest.raises(Retryable, match="malformed"):
        json_body(b'{"choices": [')
    with pytest.raises(Retryable, match="not a JSON object"):
        json_body(b"[1, 2]")


def test_an_exhausted_quota_pauses_instead_of_throttling() -> None:
    response = httpx2.Response(429, request=REQ)
    body = {
        "message": "You exceeded your current quota",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
    exc = openai.APIStatusError("You exceeded your current quota", response=response, body=body)
    failure = classed(openai, exc)
    assert isinstance(failure, ProviderDown) and "quota exhausted" in str(failure)
