"""Hostile cases of the APIs' pure parts: development mode's tenant names, a trickled upload, the
OpenAI input file check's error messages."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message

from bulkinfer.api import auth, errors
from bulkinfer.api.tenants import open_tenants, single_tenant
from bulkinfer.cli.main import _record_texts
from bulkinfer.domain.tenant import ANONYMOUS, Grants, Tenant, Tenants, is_plain_key, with_own_areas
from bulkinfer.errors import ConfigError
from bulkinfer.formats.openai_batch import check_file


@pytest.mark.parametrize("key", [".", "..", "a/b"])
def test_development_mode_never_makes_a_tenant_whose_name_is_no_folder(key: str) -> None:
    """A tenant's name is its folder of the files bucket: ``.`` would put its files at the bucket's
    top (outside any tenant's folder), ``..`` above it."""
    tenants = open_tenants()
    by_api_key = tenants.for_api_key(key)
    assert by_api_key is not None and by_api_key.name == ANONYMOUS
    by_access_key = tenants.for_key(key)
    assert by_access_key is not None
    assert "/" not in by_access_key[0].name and is_plain_key(by_access_key[0].name)


def test_development_mode_keeps_a_key_that_is_a_folder_name_as_its_tenant() -> None:
    tenants = open_tenants()
    assert (tenants.for_api_key("AKIDEXAMPLE") or None).name == "AKIDEXAMPLE"  # type: ignore[union-attr]
    assert tenants.for_key("a.b")[0].name == "a.b"  # type: ignore[index]


def test_an_openai_input_files_errors_are_bounded_whatever_its_lines_hold() -> None:
    """Each error kept (up to MAX_ERRORS of them, stored on the job and shown on every retrieve) echoes
    at most a bounded piece of the line, whatever size its url, method or model is."""
    huge = "x" * 1_000_000
    base = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}
    lines = [
        {**base, "url": huge},
        {**base, "custom_id": "b", "method": huge},
        {**base, "custom_id": "c", "body": {"model": huge}},
        {**base, "custom_id": "d"},
        {**base, "custom_id": "e", "body": {"model": huge}},
        {**base, "custom_id": huge},
    ]
    numbered = [(n, orjson.dumps(line)) for n, line in enumerate(lines, 1)]
    check = check_file(numbered, "/v1/chat/completions", lambda model: model == "m")
    assert check.error_count == 5
    assert all(len(e.message) < 1000 for e in check.errors), [len(e.message) for e in check.errors]


async def test_an_upload_trickled_in_is_cut_off_however_often_a_byte_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A streamed upload (POST /v1/files) one byte every little while never stops for BODY_IDLE_S: it
    must still not hold its connection for ever (a buffered body has BODY_TIMEOUT_S)."""
    monkeypatch.setattr(auth, "BODY_TIMEOUT_S", 0.3)

    async def trickle() -> Message:
        await asyncio.sleep(0.01)
        return {"type": "http.request", "body": b"x", "more_body": True}

    receive = auth._capped(trickle, 10**9)
    with pytest.raises(auth.AuthFailed) as refused:
        async with asyncio.timeout(5):
            while True:
                await receive()
    assert refused.value.status == 408


async def test_after_an_upload_ends_its_receive_waits_on_the_client_as_long_as_it_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "BODY_IDLE_S", 0.1)
    sent: list[Message] = [
        {"type": "http.request", "body": b"abc", "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def client() -> Message:
        if len(sent) == 1:
            await asyncio.sleep(0.3)  # the client goes away later than an idle body may stall
        return sent.pop(0)

    receive = auth._capped(client, 10)
    assert (await receive())["body"] == b"abc"
    assert (await receive())["type"] == "http.disconnect"


def test_bulkinfer_results_never_sends_a_records_control_characters_to_the_terminal() -> None:
    """A custom_id (any string in an OpenAI batch line) or a model's text holding ESC sequences would
    clear, retitle or rewrite the operator's terminal when `bulkinfer results` prints it."""
    line = {
        "id": "batch_req_1",
        "custom_id": "evil\x1b]0;owned\x07\x1b[2J\x00\x9b",
        "response": {"status_code": 200, "body": {"choices": [{"message": {"content": "a\x1b[31mb\nc"}}]}},
        "error": None,
    }
    record_id, text = _record_texts(orjson.dumps(line))
    shown = record_id.plain + text.plain
    assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in shown), repr(shown)
    assert "evil" in record_id.plain and "\n" in text.plain


@pytest.mark.parametrize(
    ("method", "path", "headers", "shape"),
    [
        ("GET", "/v1/responses", {}, "openai"),
        ("DELETE", "/v1/known", {}, "openai"),
        ("GET", "/v1/messages/count_tokens", {"anthropic-version": "2023-06-01"}, "anthropic"),
        ("GET", "/no-such-bedrock-route", {}, "bedrock"),
        ("DELETE", "/known", {}, "bedrock"),
    ],
)
def test_a_route_or_method_not_served_is_answered_in_the_callers_api_shape(
    method: str, path: str, headers: dict[str, str], shape: str
) -> None:
    """Not {"detail": "Not Found"}, which no SDK reads: the openai SDK's message would be a dict's repr,
    botocore's error code "404"."""
    app = FastAPI()
    errors.install(app)

    @app.get("/v1/known")
    @app.get("/known")
    async def known() -> dict[str, str]:
        return {}

    answer = TestClient(app).request(method, path, headers=headers)
    assert answer.status_code in (404, 405)
    body = answer.json()
    kinds = ("not_found_error", "invalid_request_error")
    if shape == "openai":
        assert body["error"]["type"] in kinds and body["error"]["message"]
    elif shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] in kinds
    else:
        assert answer.headers["x-amzn-ErrorType"] and body["__type"] == answer.headers["x-amzn-ErrorType"]


def test_an_api_key_longer_than_any_request_may_send_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Gate refuses a key over MAX_API_KEY unlooked-up: configured, it would be a key no one can use."""
    monkeypatch.setenv("ATTACK_LONG_KEYS", "k" * (auth.MAX_API_KEY + 1))
    with pytest.raises(ConfigError, match="ATTACK_LONG_KEYS"):
        single_tenant({}, "ATTACK_LONG_KEYS")


@pytest.mark.parametrize("other", ["a.b", "a-b", "a_b", "ab", "a.", "a.."])
def test_a_tenants_own_area_never_covers_another_whose_name_starts_alike(other: str) -> None:
    tenants = with_own_areas(Tenants({n: Tenant(n, Grants()) for n in ("a", other)}), "files")
    mine, theirs = tenants.by_name["a"], tenants.by_name[other]
    assert mine.grants.may_write("s3://files/a/files/x.jsonl")
    assert not mine.grants.may_read(f"s3://files/{other}/files/x.jsonl")
    assert not theirs.grants.may_read("s3://files/a/files/x.jsonl")


def test_development_mode_never_names_a_tenant_after_a_provider_secret_key() -> None:
    """The openai and anthropic SDKs send OPENAI_API_KEY / ANTHROPIC_API_KEY from the environment unless
    told otherwise: a real key (sk-..., sk-ant-...) sent to a development server must not become a
    tenant name, which is stored in the jobs table, shown in listings and made a folder on disk."""
    secret = "sk-ant-api03-" + "Ab3_" * 20
    tenants = open_tenants()
    tenant = tenants.for_api_key(secret)
    assert tenant is not None and secret not in tenant.name and "Ab3_Ab3_" not in tenant.name
    assert tenant == tenants.for_api_key(secret)  # the same key is the same tenant each time
    assert tenant != tenants.for_api_key("sk-" + "x" * 48)


def test_an_api_key_no_http_header_can_carry_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A header's bytes are read as Latin-1: a key of non-ASCII characters would never match."""
    monkeypatch.setenv("ATTACK_UNICODE_KEYS", "ключ-команды-а-0123456789")
    with pytest.raises(ConfigError, match="ATTACK_UNICODE_KEYS"):
        single_tenant({}, "ATTACK_UNICODE_KEYS")
