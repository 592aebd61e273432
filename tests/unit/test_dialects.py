"""Unit tests for the dialects: body -> canonical request, result -> dialect-shaped response."""

from __future__ import annotations

import base64
import pickle
from typing import Any

import orjson
import pytest

from bulkinfer.dialects.registry import DIALECTS, detect, get_dialect
from bulkinfer.domain.request import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationParams,
    ImagePart,
    Message,
    TextPart,
    Usage,
)
from bulkinfer.errors import ConfigError, RecordInvalid

SRC0 = "modelInput.messages.0.content.0.source"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
PNG_B64 = base64.b64encode(PNG).decode()


def user(text: str) -> Message:
    return Message("user", (TextPart(text),))


def assistant(text: str) -> Message:
    return Message("assistant", (TextPart(text),))


def chat_result(stop: Any = "end_turn", text: str = "Paris.") -> ChatResult:
    return ChatResult(text, stop, Usage(input_tokens=12, output_tokens=3), model="m-1", latency_ms=42)


def invalid(dialect: str, body: dict[str, Any]) -> RecordInvalid:
    with pytest.raises(RecordInvalid) as info:
        DIALECTS[dialect].to_request(body)
    err = info.value
    assert err.field is not None
    assert err.field.startswith("modelInput")
    assert str(err).startswith(f"{err.field}: ")
    return err


def test_registry_holds_the_six_dialects() -> None:
    assert set(DIALECTS) == {
        "anthropic",
        "converse",
        "openai-chat",
        "openai-completions",
        "openai-embeddings",
        "titan-embed",
    }
    for name, dialect in DIALECTS.items():
        assert dialect.name == name
        assert get_dialect(name) is dialect
    assert {n for n, d in DIALECTS.items() if d.kind == "embedding"} == {"openai-embeddings", "titan-embed"}


def test_get_dialect_unknown_lists_known() -> None:
    with pytest.raises(ConfigError) as info:
        get_dialect("gemini")
    assert "gemini" in str(info.value)
    assert "anthropic" in str(info.value)


# anthropic

ANTHROPIC_BODY: dict[str, Any] = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 200,
    "system": "You are terse.",
    "messages": [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Paris"}]},
        {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "Spain?"}]},
    ],
    "temperature": 0.2,
    "top_p": 0.9,
    "top_k": 40,
    "stop_sequences": ["\n\nHuman:", "END"],
    "metadata": {"user_id": "u1"},
}


def test_anthropic_to_request() -> None:
    request = DIALECTS["anthropic"].to_request(ANTHROPIC_BODY)
    assert request == ChatRequest(
        messages=(
            user("Capital of France?"),
            assistant("Paris"),
            Message("user", (TextPart("And "), TextPart("Spain?"))),
        ),
        system="You are terse.",
        params=GenerationParams(
            max_tokens=200, temperature=0.2, top_p=0.9, top_k=40, stop=("\n\nHuman:", "END")
        ),
    )
    assert isinstance(request, ChatRequest)
    assert request.last_user_text == "And Spain?"


def test_anthropic_minimal_body_defaults() -> None:
    request = DIALECTS["anthropic"].to_request({"messages": [{"role": "user", "content": "hi"}]})
    assert request == ChatRequest(messages=(user("hi"),), system=None, params=GenerationParams())


def test_anthropic_system_blocks_are_joined() -> None:
    body = {
        "system": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        "messages": [{"role": "user", "content": "hi"}],
    }
    request = DIALECTS["anthropic"].to_request(body)
    assert isinstance(request, ChatRequest)
    assert request.system == "one\ntwo"


def test_anthropic_base64_image_is_decoded() -> None:
    body = {
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    }
    request = DIALECTS["anthropic"].to_request(body)
    assert isinstance(request, ChatRequest)
    parts = request.messages[0].parts
    assert parts == (ImagePart("image/png", PNG, field=SRC0), TextPart("What is this?"))
    assert request.messages[0].text == "What is this?"


def test_anthropic_url_image() -> None:
    source = {"type": "url", "url": "https://example.com/cat.jpg"}
    body = {"messages": [{"role": "user", "content": [{"type": "image", "source": source}]}]}
    request = DIALECTS["anthropic"].to_request(body)
    assert isinstance(request, ChatRequest)
    assert request.messages[0].parts == (ImagePart("", url="https://example.com/cat.jpg", field=SRC0),)


def _image_body(source: dict[str, Any], index: int = 1) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    content = [{"type": "text", "text": "look"}, {"type": "image", "source": source}]
    messages.insert(index, {"role": "user", "content": content})
    return {"max_tokens": 5, "messages": messages}


def test_anthropic_bad_base64_names_the_field() -> None:
    source = {"type": "base64", "media_type": "image/png", "data": "not base64!!"}
    err = invalid("anthropic", _image_body(source, index=2))
    assert err.field == "modelInput.messages.2.content.1.source.data"
    assert "base64" in str(err)


@pytest.mark.parametrize(
    "source",
    [
        {"type": "base64", "media_type": "image/png"},
        {"type": "base64", "data": PNG_B64},
        {"type": "url"},
    ],
)
def test_anthropic_incomplete_image_source(source: dict[str, Any]) -> None:
    err = invalid("anthropic", _image_body(source, index=0))
    assert err.field == "modelInput.messages.0.content.1.source"


def test_anthropic_render() -> None:
    request = DIALECTS["anthropic"].to_request(ANTHROPIC_BODY)
    out = DIALECTS["anthropic"].render(chat_result("max_tokens"), request)
    assert out["type"] == "message"
    assert out["role"] == "assistant"
    assert out["model"] == "m-1"
    assert out["content"] == [{"type": "text", "text": "Paris."}]
    assert out["stop_reason"] == "max_tokens"
    assert out["stop_sequence"] is None
    assert out["usage"] == {"input_tokens": 12, "output_tokens": 3}
    assert out["id"].startswith("msg_")
    assert orjson.loads(orjson.dumps(out)) == out


@pytest.mark.parametrize("stop", ["end_turn", "max_tokens", "stop_sequence"])
def test_anthropic_stop_reasons_pass_through(stop: str) -> None:
    request = DIALECTS["anthropic"].to_request(ANTHROPIC_BODY)
    assert DIALECTS["anthropic"].render(chat_result(stop), request)["stop_reason"] == stop


def test_anthropic_render_ids_are_unique() -> None:
    request = DIALECTS["anthropic"].to_request(ANTHROPIC_BODY)
    ids = {DIALECTS["anthropic"].render(chat_result(), request)["id"] for _ in range(20)}
    assert len(ids) == 20


# converse

CONVERSE_BODY: dict[str, Any] = {
    "system": [{"text": "You are terse."}, {"text": "Answer in English."}],
    "messages": [
        {"role": "user", "content": [{"text": "Capital of "}, {"text": "France?"}]},
        {"role": "assistant", "content": [{"text": "Paris"}]},
        {"role": "user", "content": [{"text": "And Spain?"}]},
    ],
    "inferenceConfig": {"maxTokens": 128, "temperature": 0.5, "topP": 0.8, "stopSequences": ["###"]},
    "additionalModelRequestFields": {"top_k": 50},
}


def test_converse_to_request() -> None:
    request = DIALECTS["converse"].to_request(CONVERSE_BODY)
    assert request == ChatRequest(
        messages=(
            Message("user", (TextPart("Capital of "), TextPart("France?"))),
            assistant("Paris"),
            user("And Spain?"),
        ),
        system="You are terse.\nAnswer in English.",
        params=GenerationParams(max_tokens=128, temperature=0.5, top_p=0.8, top_k=50, stop=("###",)),
    )


def test_converse_minimal_body_defaults() -> None:
    request = DIALECTS["converse"].to_request({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    assert request == ChatRequest(messages=(user("hi"),), system=None, params=GenerationParams())


def test_converse_non_integer_top_k_is_ignored() -> None:
    body = {**CONVERSE_BODY, "additionalModelRequestFields": {"top_k": "many"}}
    request = DIALECTS["converse"].to_request(body)
    assert isinstance(request, ChatRequest)
    assert request.params.top_k is None


def test_converse_image() -> None:
    image = {"format": "jpeg", "source": {"bytes": PNG_B64}}
    body = {"messages": [{"role": "user", "content": [{"image": image}, {"text": "describe"}]}]}
    request = DIALECTS["converse"].to_request(body)
    assert isinstance(request, ChatRequest)
    assert request.messages[0].parts == (
        ImagePart("image/jpeg", PNG, field="modelInput.messages.0.content.0.image.source"),
        TextPart("describe"),
    )


def test_converse_bad_base64_names_the_field() -> None:
    image = {"format": "png", "source": {"bytes": "%%%"}}
    body = {"messages": [{"role": "user", "content": [{"text": "x"}, {"image": image}]}]}
    err = invalid("converse", body)
    assert err.field == "modelInput.messages.0.content.1.image.source.bytes"


def test_converse_empty_content_block() -> None:
    body = {"messages": [{"role": "user", "content": [{"text": "x"}]}, {"role": "user", "content": [{}]}]}
    assert invalid("converse", body).field == "modelInput.messages.1.content.0"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("end_turn", "end_turn"), ("max_tokens", "max_tokens"), ("stop_sequence", "stop_sequence")],
)
def test_converse_render(stop: Any, expected: str) -> None:
    request = DIALECTS["converse"].to_request(CONVERSE_BODY)
    out = DIALECTS["converse"].render(chat_result(stop), request)
    assert out == {
        "output": {"message": {"role": "assistant", "content": [{"text": "Paris."}]}},
        "stopReason": expected,
        "usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15},
        "metrics": {"latencyMs": 42},
    }


# openai chat

OPENAI_BODY: dict[str, Any] = {
    "model": "gpt-oss-20b",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": [{"type": "text", "text": "And Spain?"}]},
    ],
    "max_tokens": 100,
    "temperature": 1.5,
    "top_p": 0.95,
    "stop": ["\n\n", "END"],
    "n": 1,
}


def test_openai_chat_to_request() -> None:
    request = DIALECTS["openai-chat"].to_request(OPENAI_BODY)
    assert request == ChatRequest(
        messages=(user("Capital of France?"), assistant("Paris"), user("And Spain?")),
        system="You are terse.\nAnswer in English.",
        params=GenerationParams(max_tokens=100, temperature=1.5, top_p=0.95, stop=("\n\n", "END")),
    )


def test_openai_chat_max_completion_tokens_wins_and_stop_string() -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
        "max_completion_tokens": 7,
        "stop": "END",
    }
    request = DIALECTS["openai-chat"].to_request(body)
    assert isinstance(request, ChatRequest)
    assert request.params == GenerationParams(max_tokens=7, stop=("END",))
    assert request.system is None


def test_openai_chat_data_url_image_is_decoded_and_remote_url_kept() -> None:
    content = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "text", "text": "compare"},
    ]
    request = DIALECTS["openai-chat"].to_request({"messages": [{"role": "user", "content": content}]})
    assert isinstance(request, ChatRequest)
    assert request.messages[0].parts == (
        ImagePart("image/png", PNG, field="modelInput.messages.0.content.0.image_url"),
        ImagePart("", url="https://example.com/a.png", field="modelInput.messages.0.content.1.image_url"),
        TextPart("compare"),
    )


def test_openai_chat_bad_data_url_names_the_field_by_original_index() -> None:
    bad = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": bad}]}
    assert invalid("openai-chat", body).field == "modelInput.messages.1.content.0.image_url.url"


@pytest.mark.parametrize(
    ("stop", "finish"), [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length")]
)
def test_openai_chat_render(stop: Any, finish: str) -> None:
    request = DIALECTS["openai-chat"].to_request(OPENAI_BODY)
    out = DIALECTS["openai-chat"].render(chat_result(stop), request)
    assert out["object"] == "chat.completion"
    assert out["id"].startswith("chatcmpl-")
    assert isinstance(out["created"], int)
    assert out["model"] == "m-1"
    assert out["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": finish}
    ]
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


# legacy completions


def test_openai_completions_prompt_is_one_user_turn() -> None:
    body = {"model": "m", "prompt": "Say hi", "max_tokens": 5, "temperature": 0.5, "stop": "."}
    assert DIALECTS["openai-completions"].to_request(body) == ChatRequest(
        messages=(user("Say hi"),), params=GenerationParams(max_tokens=5, temperature=0.5, stop=(".",))
    )
    one_in_a_list = DIALECTS["openai-completions"].to_request({"prompt": ["Say hi"]})
    assert one_in_a_list == ChatRequest(messages=(user("Say hi"),))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ["a", "b"]}, "modelInput.prompt"),
        ({"prompt": []}, "modelInput.prompt"),
        ({"prompt": "a", "echo": True}, "modelInput.echo"),
        ({"prompt": "a", "suffix": "z"}, "modelInput.suffix"),
        ({"prompt": "a", "logprobs": 2}, "modelInput.logprobs"),
        ({"prompt": "a", "n": 2}, "modelInput.n"),
        ({"prompt": [1, 2, 3]}, "modelInput.prompt.0"),
        ({"max_tokens": 3}, "modelInput.prompt"),
    ],
)
def test_openai_completions_refuses_what_it_cannot_do(body: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordInvalid) as info:
        DIALECTS["openai-completions"].to_request(body)
    assert info.value.field == field


@pytest.mark.parametrize(("stop", "finish"), [("end_turn", "stop"), ("max_tokens", "length")])
def test_openai_completions_render(stop: Any, finish: str) -> None:
    request = DIALECTS["openai-completions"].to_request({"prompt": "Capital of France?"})
    out = DIALECTS["openai-completions"].render(chat_result(stop), request)
    assert out["object"] == "text_completion"
    assert out["id"].startswith("cmpl-")
    assert isinstance(out["created"], int)
    assert out["model"] == "m-1"
    assert out["choices"] == [{"text": "Paris.", "index": 0, "finish_reason": finish, "logprobs": None}]
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def test_openai_completions_is_never_detected() -> None:
    assert detect({"model": "m", "prompt": "hi"}, "anthropic").name != "openai-completions"


# embeddings


def test_titan_to_request() -> None:
    body = {"inputText": "hello world", "dimensions": 256, "normalize": False}
    assert DIALECTS["titan-embed"].to_request(body) == EmbeddingRequest(
        texts=("hello world",), dimensions=256, normalize=False
    )
    assert DIALECTS["titan-embed"].to_request({"inputText": "x"}) == EmbeddingRequest(texts=("x",))


def test_titan_render() -> None:
    result = EmbeddingResult(((0.25, -0.5, 1.0),), Usage(input_tokens=4), model="e")
    out = DIALECTS["titan-embed"].render(result, EmbeddingRequest(("hello",)))
    assert out == {"embedding": [0.25, -0.5, 1.0], "inputTextTokenCount": 4}
    assert orjson.loads(orjson.dumps(out)) == out


@pytest.mark.parametrize(
    ("body", "texts"),
    [
        ({"input": "one", "model": "text-embedding-3-small"}, ("one",)),
        ({"input": ["one", "two", "three"], "encoding_format": "float"}, ("one", "two", "three")),
    ],
)
def test_openai_embeddings_to_request(body: dict[str, Any], texts: tuple[str, ...]) -> None:
    assert DIALECTS["openai-embeddings"].to_request(body) == EmbeddingRequest(texts=texts)


def test_openai_embeddings_dimensions() -> None:
    request = DIALECTS["openai-embeddings"].to_request({"input": "a", "dimensions": 64})
    assert request == EmbeddingRequest(texts=("a",), dimensions=64)


def test_openai_embeddings_render() -> None:
    result = EmbeddingResult(((0.1, 0.2), (0.3, 0.4)), Usage(input_tokens=6), model="e5")
    out = DIALECTS["openai-embeddings"].render(result, EmbeddingRequest(("a", "b")))
    assert out == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
        ],
        "model": "e5",
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }


# invalid bodies

_HI = [{"role": "user", "content": "hi"}]
_HI_CONVERSE = [{"role": "user", "content": [{"text": "hi"}]}]

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("anthropic", {"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    (
        "anthropic",
        {"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]},
        "messages.1.role",
    ),
    ("anthropic", {"max_tokens": 5}, "messages"),
    ("anthropic", {"max_tokens": 5, "messages": []}, "messages"),
    ("anthropic", {"max_tokens": 5, "messages": "hi"}, "messages"),
    ("anthropic", {"max_tokens": 0, "messages": _HI}, "max_tokens"),
    ("anthropic", {"max_tokens": -1, "messages": _HI}, "max_tokens"),
    ("anthropic", {"max_tokens": "lots", "messages": _HI}, "max_tokens"),
    ("anthropic", {"temperature": 5, "messages": _HI}, "temperature"),
    ("anthropic", {"temperature": -0.1, "messages": _HI}, "temperature"),
    ("anthropic", {"top_p": 1.5, "messages": _HI}, "top_p"),
    ("anthropic", {"top_k": -1, "messages": _HI}, "top_k"),
    ("anthropic", {"stop_sequences": "END", "messages": _HI}, "stop_sequences"),
    ("anthropic", {"messages": _HI, "frequency_penalty": 1}, "frequency_penalty"),
    ("anthropic", {"messages": _HI, "modelId": "anthropic.claude-3-haiku"}, "modelId"),
    ("converse", {"messages": [{"role": "system", "content": [{"text": "x"}]}]}, "messages.0.role"),
    ("converse", {"messages": []}, "messages"),
    ("converse", {}, "messages"),
    ("converse", {"messages": [{"role": "user", "content": []}]}, "messages.0.content"),
    (
        "converse",
        {"messages": _HI_CONVERSE, "inferenceConfig": {"maxTokens": 0}},
        "inferenceConfig.maxTokens",
    ),
    (
        "converse",
        {"messages": _HI_CONVERSE, "inferenceConfig": {"temperature": 5}},
        "inferenceConfig.temperature",
    ),
    (
        "converse",
        {"messages": _HI_CONVERSE, "toolConfig": {"tools": [{"toolSpec": {"name": "f"}}]}},
        "toolConfig",
    ),
    (
        "converse",
        {
            "messages": [
                {"role": "user", "content": [{"image": {"format": "bmp", "source": {"bytes": "AA=="}}}]}
            ]
        },
        "messages.0.content.0.image.format",
    ),
    ("openai-chat", {"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ("openai-chat", {"messages": [{"role": "system", "content": "only system"}]}, "messages"),
    ("openai-chat", {"max_tokens": 5}, "messages"),
    ("openai-chat", {"messages": _HI, "max_tokens": 0}, "max_tokens"),
    ("openai-chat", {"messages": _HI, "max_completion_tokens": 0}, "max_completion_tokens"),
    ("openai-chat", {"messages": _HI, "temperature": 2.5}, "temperature"),
    ("openai-chat", {"messages": _HI, "n": 2}, "n"),
    ("openai-chat", {"messages": _HI, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("openai-embeddings", {"input": []}, "input"),
    ("openai-embeddings", {"input": ""}, "input"),
    ("openai-embeddings", {"input": "x", "dimensions": 0}, "dimensions"),
    ("openai-embeddings", {"input": "x", "encoding_format": "base64"}, "encoding_format"),
    ("openai-embeddings", {"model": "m"}, "input"),
    ("titan-embed", {}, "inputText"),
    ("titan-embed", {"inputText": ""}, "inputText"),
    ("titan-embed", {"inputText": "x", "dimensions": 0}, "dimensions"),
    ("titan-embed", {"inputText": "x", "normalize": "maybe"}, "normalize"),
    ("titan-embed", {"inputText": "x", "modelId": "amazon.titan-embed-text-v2:0"}, "modelId"),
]


@pytest.mark.parametrize(
    ("dialect", "body", "path"), INVALID, ids=[f"{d}-{p}-{i}" for i, (d, _, p) in enumerate(INVALID)]
)
def test_invalid_body_names_the_field(dialect: str, body: dict[str, Any], path: str) -> None:
    err = invalid(dialect, body)
    assert err.field == f"modelInput.{path}"


def test_anthropic_is_strict_but_nested_unknown_fields_are_ignored() -> None:
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"x": 1}}]}]
    }
    request = DIALECTS["anthropic"].to_request(body)
    assert isinstance(request, ChatRequest)
    assert request.messages[0].text == "hi"


def test_converse_and_openai_ignore_unknown_top_level_fields() -> None:
    converse = DIALECTS["converse"].to_request({"messages": _HI_CONVERSE, "guardrailConfig": {}})
    openai = DIALECTS["openai-chat"].to_request({"messages": _HI, "logprobs": False})
    assert converse == openai == ChatRequest(messages=(user("hi"),))


def test_record_invalid_survives_pickling() -> None:
    # Errors cross process boundaries in the runner.
    err = invalid("anthropic", {"messages": _HI, "temperature": 5})
    clone = pickle.loads(pickle.dumps(err))
    assert isinstance(clone, RecordInvalid)
    assert clone.field == err.field
    assert str(clone) == str(err)


WRONG_BLOCK: list[tuple[str, dict[str, Any], str]] = [
    (
        "anthropic",
        {"messages": [{"role": "user", "content": [{"type": "video", "text": "x"}]}]},
        "modelInput.messages.0.content.0",
    ),
    (
        "anthropic",
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "modelInput.messages.0.content.0",
    ),
    (
        "openai-chat",
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "data": "x"}]}]},
        "modelInput.messages.0.content.0",
    ),
]


@pytest.mark.parametrize(("dialect", "body", "prefix"), WRONG_BLOCK)
def test_bad_content_block_names_the_block_not_the_union_branch(
    dialect: str, body: dict[str, Any], prefix: str
) -> None:
    err = invalid(dialect, body)
    assert err.field is not None
    assert err.field.startswith(prefix)
    assert ".str" not in err.field
    assert "[" not in err.field


# detection

DETECT: list[tuple[str, dict[str, Any]]] = [
    ("anthropic", ANTHROPIC_BODY),
    (
        "anthropic",
        {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": _HI},
    ),
    (
        "anthropic",
        {"system": "terse", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    ),
    ("anthropic", {"messages": _HI, "stop_sequences": ["x"]}),
    ("anthropic", {"messages": _HI, "top_k": 5}),
    ("converse", CONVERSE_BODY),
    ("converse", {"messages": _HI_CONVERSE}),
    (
        "converse",
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "inferenceConfig": {"maxTokens": 5},
        },
    ),
    ("converse", {"system": [{"text": "s"}], "messages": _HI_CONVERSE}),
    (
        "converse",
        {
            "messages": [
                {"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "AA=="}}}]}
            ]
        },
    ),
    ("openai-chat", OPENAI_BODY),
    ("openai-chat", {"model": "gpt-4o-mini", "messages": _HI}),
    ("openai-chat", {"messages": [{"role": "system", "content": "s"}, *_HI], "max_tokens": 5}),
    ("openai-chat", {"messages": [{"role": "developer", "content": "s"}, *_HI]}),
    ("openai-chat", {"messages": _HI, "max_completion_tokens": 5}),
    ("openai-chat", {"messages": _HI, "response_format": {"type": "json_object"}}),
    ("titan-embed", {"inputText": "hello"}),
    ("titan-embed", {"inputText": "hello", "dimensions": 512, "normalize": True}),
    ("openai-embeddings", {"input": "hello"}),
    ("openai-embeddings", {"input": ["a", "b"], "model": "text-embedding-3-small"}),
]


@pytest.mark.parametrize(("expected", "body"), DETECT)
@pytest.mark.parametrize("default", ["anthropic", "openai-chat", "converse"])
def test_detect_typical_bodies(expected: str, body: dict[str, Any], default: str) -> None:
    assert detect(body, default).name == expected


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_detected_bodies_are_valid_in_their_dialect(name: str) -> None:
    for expected, body in DETECT:
        if expected == name:
            DIALECTS[name].to_request(body)


AMBIGUOUS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 5},
    {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "top_p": 0.9},
    {},
]


@pytest.mark.parametrize("body", AMBIGUOUS)
@pytest.mark.parametrize("default", ["anthropic", "openai-chat"])
def test_detect_falls_back_to_default_for_ambiguous_bodies(body: dict[str, Any], default: str) -> None:
    assert detect(body, default).name == default


def test_ambiguous_body_is_valid_in_both_candidate_dialects() -> None:
    body = AMBIGUOUS[0]
    anthropic = DIALECTS["anthropic"].to_request(body)
    openai = DIALECTS["openai-chat"].to_request(body)
    assert anthropic == openai == ChatRequest(messages=(user("hi"),), params=GenerationParams(max_tokens=5))


@pytest.mark.parametrize(
    "body",
    [
        {"messages": "not a list"},
        {"messages": []},
        {"messages": [None]},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": []}]},
        {"messages": [{"role": "user", "content": [None]}]},
    ],
)
def test_detect_never_crashes_on_malformed_bodies(body: dict[str, Any]) -> None:
    assert detect(body, "anthropic").name == "anthropic"


def test_converse_image_by_s3_location() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"image": {"format": "png", "source": {"s3Location": {"uri": "s3://b/k.png"}}}}],
            }
        ]
    }
    request = get_dialect("converse").to_request(body)
    assert isinstance(request, ChatRequest)
    where = "modelInput.messages.0.content.0.image.source"
    assert request.messages[0].parts == (ImagePart("image/png", url="s3://b/k.png", field=where),)


@pytest.mark.parametrize("source", [{}, {"bytes": PNG_B64, "s3Location": {"uri": "s3://b/k.png"}}])
def test_converse_image_needs_exactly_one_source(source: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": source}}]}]}
    with pytest.raises(RecordInvalid, match="exactly one of bytes and s3Location") as info:
        get_dialect("converse").to_request(body)
    assert info.value.field == "modelInput.messages.0.content.0.image.source"


def test_an_image_url_part_says_openai_chat() -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]},
        ],
        "max_tokens": 5,
    }
    assert detect(body, "anthropic").name == "openai-chat"


def test_an_image_in_a_system_message_is_refused() -> None:
    part = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}
    body = {"messages": [{"role": "system", "content": [part]}, {"role": "user", "content": "hi"}]}
    with pytest.raises(RecordInvalid, match="a system message may hold only text") as info:
        get_dialect("openai-chat").to_request(body)
    assert info.value.field == "modelInput.messages.0.content.0"
