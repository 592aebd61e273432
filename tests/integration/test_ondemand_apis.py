"""`bulkinfer serve`'s on-demand OpenAI and Anthropic APIs and Bedrock's model listing, driven only
through the unmodified openai, anthropic and boto3 clients against a real server on 127.0.0.1."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import anthropic
import boto3
import openai
import pytest
from botocore.exceptions import ClientError

from tests.conftest import SLOW_ECHO_CATALOG as CATALOG
from tests.integration.test_bedrock_api import Server, start_server

pytestmark = pytest.mark.sdk_compat

KEY_A = "team-a-key-0123456789"
KEY_B = "team-b-key-0123456789"
TENANTS = """
[tenants.a]
api_keys_env = "ONDEMAND_TEST_KEYS_A"
access_keys = { AKIDONDEMANDA = "ONDEMAND_TEST_SECRET_A" }
models = ["echo"]

[tenants.b]
api_keys_env = "ONDEMAND_TEST_KEYS_B"
models = ["slow-echo", "all-minilm-l6-v2"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ondemand")
    catalog = root / "models.toml"
    catalog.write_text(CATALOG)
    running = start_server(root / "data", catalog, "--insecure-dev")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tenants_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ondemand-tenants")
    catalog, tenants = root / "models.toml", root / "tenants.toml"
    catalog.write_text(CATALOG)
    tenants.write_text(TENANTS)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ONDEMAND_TEST_KEYS_A", f"{KEY_A},another-key-for-team-a")
        env.setenv("ONDEMAND_TEST_KEYS_B", KEY_B)
        env.setenv("ONDEMAND_TEST_SECRET_A", "secret-of-a")
        running = start_server(root / "data", catalog, "--tenants", str(tenants))
    yield running
    running.stop()


def openai_client(server: Server, key: str = "any-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def anthropic_client(server: Server, key: str = "any-key") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)


def bedrock_client(server: Server, key: str = "AKIDANY", secret: str = "secret") -> Any:
    return boto3.client(
        "bedrock",
        endpoint_url=server.url,
        region_name="eu-west-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


# OpenAI


def test_chat_completion_answers_as_openai_does(server: Server) -> None:
    client = openai_client(server)
    completion = client.chat.completions.create(
        model="echo",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "three small words"},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "echo"
    (choice,) = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "three small words",
        "stop",
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3

    cut = client.chat.completions.create(
        model="slow-echo", messages=[{"role": "user", "content": "one two three four"}], max_tokens=2
    )
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("one two", "length")


def test_legacy_completion_takes_the_prompt_as_one_user_turn(server: Server) -> None:
    completion = openai_client(server).completions.create(model="echo", prompt="complete me", max_tokens=1)
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    (choice,) = completion.choices
    assert (choice.text, choice.index, choice.finish_reason, choice.logprobs) == (
        "complete",
        0,
        "length",
        None,
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 1


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_embeddings_in_either_encoding(server: Server, encoding: str) -> None:
    client = openai_client(server)
    kwargs: dict[str, Any] = (
        {} if encoding == "base64" else {"encoding_format": "float"}
    )  # base64: SDK default
    response = client.embeddings.create(model="echo", input=["red apple", "green pear"], **kwargs)
    assert response.object == "list"
    assert response.model == "echo"
    assert [d.index for d in response.data] == [0, 1]
    for item in response.data:
        assert item.object == "embedding"
        assert len(item.embedding) == 8
        assert math.isclose(math.fsum(v * v for v in item.embedding), 1.0, rel_tol=1e-5)
    assert response.data[0].embedding != response.data[1].embedding
    assert response.usage.prompt_tokens == response.usage.total_tokens == 4
    again = client.embeddings.create(model="echo", input="red apple", dimensions=3, **kwargs)
    assert len(again.data[0].embedding) == 3


def test_a_chat_model_asked_for_embeddings_and_back_is_a_clear_400(server: Server) -> None:
    client = openai_client(server)
    with pytest.raises(openai.BadRequestError) as embeddings:
        client.embeddings.create(model="smollm2-135m-instruct", input="x")
    assert "'smollm2-135m-instruct' is a chat model and produces no embeddings" in embeddings.value.message
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model="all-minilm-l6-v2", messages=[{"role": "user", "content": "x"}])
    assert "'all-minilm-l6-v2' only produces embeddings" in chat.value.message
    with pytest.raises(anthropic.BadRequestError) as message:
        anthropic_client(server).messages.create(
            model="all-minilm-l6-v2", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert "only produces embeddings" in message.value.message


def test_openai_refuses_streaming_and_bad_bodies(server: Server) -> None:
    client = openai_client(server)
    with pytest.raises(openai.BadRequestError) as streamed:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}], stream=True)
    assert "streaming is not supported" in streamed.value.message
    assert streamed.value.param == "stream"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="echo", messages=[{"role": "robot", "content": "x"}])  # type: ignore[misc, list-item]
    assert bad.value.param == "messages.0.role"
    assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model="echo", input=[])
    assert empty.value.param == "input"
    not_an_image: Any = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as image:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": [not_an_image]}])
    assert "messages.0.content.0.image_url: not an image" in image.value.message
    with pytest.raises(openai.BadRequestError) as prompts:
        client.completions.create(model="echo", prompt=["one", "two"])
    assert "one prompt per request" in prompts.value.message


def test_unknown_model_is_404_everywhere(server: Server) -> None:
    client = openai_client(server)
    with pytest.raises(openai.NotFoundError) as chat:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert "unknown model 'no-such-model'" in chat.value.message
    assert "echo" in chat.value.message  # the models it could have named
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client(server).models.retrieve("no-such-model")
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client(server).messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )


# Anthropic


def test_messages_answers_as_anthropic_does(server: Server) -> None:
    client = anthropic_client(server)
    message = client.messages.create(
        model="echo",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello over there"}]}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "echo"
    assert message.stop_reason == "end_turn"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "hello over there")]
    assert message.usage.output_tokens == 3
    assert message.usage.input_tokens > 0
    cut = client.messages.create(model="echo", max_tokens=1, messages=[{"role": "user", "content": "a b"}])
    assert cut.stop_reason == "max_tokens"


def test_messages_refuses_streaming_and_bad_bodies(server: Server) -> None:
    client = anthropic_client(server)
    with pytest.raises(anthropic.BadRequestError) as streamed:
        client.messages.create(
            model="echo", max_tokens=5, messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert "streaming is not supported" in streamed.value.message
    assert streamed.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="echo", max_tokens=5, messages=[])
    assert "messages" in bad.value.message
    with pytest.raises(anthropic.BadRequestError) as unknown_field:
        client.messages.create(
            model="echo", max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_body={"colour": 1}
        )
    assert "colour" in unknown_field.value.message


# model listing


def test_both_sdks_list_and_retrieve_models_on_the_same_path(server: Server) -> None:
    names = {"echo", "slow-echo", "all-minilm-l6-v2", "smollm2-135m-instruct"}
    listed = list(openai_client(server).models.list())
    assert names <= {m.id for m in listed}
    assert {m.object for m in listed} == {"model"}
    assert [m.id for m in listed] == sorted(m.id for m in listed)
    model = openai_client(server).models.retrieve("slow-echo")
    assert (model.id, model.object, model.owned_by, model.created) == ("slow-echo", "model", "echo", 0)

    client = anthropic_client(server)
    everything = [m.id for m in client.models.list(limit=1000)]
    assert everything == [m.id for m in listed]
    first = client.models.list(limit=2)
    assert [m.id for m in first.data] == everything[:2]
    assert first.has_more and first.first_id == everything[0] and first.last_id == everything[1]
    paged = [m.id for m in client.models.list(limit=2)]  # the SDK follows after_id to the end
    assert paged == everything
    before = client.models.list(limit=2, before_id=everything[3])
    assert [m.id for m in before.data] == everything[1:3]
    assert before.has_more
    info = client.models.retrieve("echo")
    assert (info.id, info.type, info.display_name) == ("echo", "model", "echo")
    assert info.created_at.year == 1970  # a catalog entry has no release date


# Bedrock control plane


def test_bedrock_lists_and_gets_foundation_models(server: Server) -> None:
    bedrock = bedrock_client(server)
    summaries = {s["modelId"]: s for s in bedrock.list_foundation_models()["modelSummaries"]}
    assert {"echo", "slow-echo", "all-minilm-l6-v2"} <= set(summaries)
    echo = summaries["echo"]
    assert echo["modelArn"] == "arn:aws:bedrock:eu-west-1::foundation-model/echo"
    assert echo["inputModalities"] == ["TEXT", "IMAGE"]
    assert echo["outputModalities"] == ["TEXT", "EMBEDDING"]
    assert echo["inferenceTypesSupported"] == ["ON_DEMAND"]
    assert echo["responseStreamingSupported"] is False
    assert echo["modelLifecycle"] == {"status": "ACTIVE"}
    assert summaries["all-minilm-l6-v2"]["outputModalities"] == ["EMBEDDING"]

    embedding = bedrock.list_foundation_models(byOutputModality="EMBEDDING")["modelSummaries"]
    assert "smollm2-135m-instruct" not in {s["modelId"] for s in embedding}
    assert {"echo", "all-minilm-l6-v2"} <= {s["modelId"] for s in embedding}
    assert all("EMBEDDING" in s["outputModalities"] for s in embedding)
    assert bedrock.list_foundation_models(byInferenceType="PROVISIONED")["modelSummaries"] == []
    by_provider = bedrock.list_foundation_models(byProvider="sentence-transformers")["modelSummaries"]
    assert [s["modelId"] for s in by_provider] == ["all-minilm-l6-v2"]

    details = bedrock.get_foundation_model(modelIdentifier="slow-echo")["modelDetails"]
    assert details == summaries["slow-echo"]
    by_arn = bedrock.get_foundation_model(modelIdentifier=echo["modelArn"])["modelDetails"]
    assert by_arn["modelId"] == "echo"
    with pytest.raises(ClientError) as missing:
        bedrock.get_foundation_model(modelIdentifier="no-such-model")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as bad:
        bedrock.list_foundation_models(byOutputModality="SMELL")
    assert bad.value.response["Error"]["Code"] == "ValidationException"


# tenants


def test_a_tenant_sees_and_uses_only_its_models(tenants_server: Server) -> None:
    a = openai_client(tenants_server, KEY_A)
    assert [m.id for m in a.models.list()] == ["echo"]
    assert (
        a.chat.completions.create(model="echo", messages=[{"role": "user", "content": "mine"}])
        .choices[0]
        .message.content
        == "mine"
    )
    with pytest.raises(openai.NotFoundError) as not_granted:
        a.chat.completions.create(model="slow-echo", messages=[{"role": "user", "content": "theirs"}])
    assert "'slow-echo'" in not_granted.value.message
    with pytest.raises(openai.NotFoundError):
        a.models.retrieve("slow-echo")

    b = anthropic_client(tenants_server, KEY_B)
    assert [m.id for m in b.models.list()] == ["all-minilm-l6-v2", "slow-echo"]
    with pytest.raises(anthropic.NotFoundError):
        b.messages.create(model="echo", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError):
        b.models.retrieve("echo")

    bedrock = bedrock_client(tenants_server, "AKIDONDEMANDA", "secret-of-a")
    assert [s["modelId"] for s in bedrock.list_foundation_models()["modelSummaries"]] == ["echo"]
    with pytest.raises(ClientError) as hidden:
        bedrock.get_foundation_model(modelIdentifier="slow-echo")
    assert hidden.value.response["Error"]["Code"] == "ResourceNotFoundException"

    with pytest.raises(openai.AuthenticationError):
        openai_client(tenants_server, "not-a-key-of-anyone-at-all").models.list()
    with pytest.raises(anthropic.AuthenticationError):
        anthropic_client(tenants_server, "not-a-key-of-anyone-at-all").models.list()
