"""API keys as the openai and anthropic SDKs send them (Bearer; X-Api-Key in older anthropic releases),
and refusals in the shape each SDK reads, against a real `bulkinfer serve`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.conftest import SLOW_ECHO_CATALOG
from tests.integration.test_bedrock_api import Server, start_server

KEY = "sk-team-a-0123456789abcdef"
TENANTS = '[tenants.team-a]\napi_keys_env = "BI_TEST_SDK_KEYS"\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("sdk-auth")
    (root / "models.toml").write_text(SLOW_ECHO_CATALOG)
    (root / "tenants.toml").write_text(TENANTS)
    os.environ["BI_TEST_SDK_KEYS"] = KEY
    try:
        running = start_server(root / "data", root / "models.toml", "--tenants", str(root / "tenants.toml"))
    finally:
        del os.environ["BI_TEST_SDK_KEYS"]
    yield running
    running.stop()


@pytest.mark.sdk_compat
def test_openai_sdk_with_an_unknown_key_reads_an_openai_authentication_error(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-not-a-key-of-ours", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.files.list()
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"
    assert refused.value.type == "authentication_error"


@pytest.mark.sdk_compat
def test_anthropic_sdk_with_an_unknown_key_reads_an_anthropic_authentication_error(server: Server) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="sk-not-a-key-of-ours", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client.messages.batches.list()
    assert refused.value.status_code == 401
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
