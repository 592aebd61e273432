"""Unit tests for ``providers.catalog``: the built-in catalog, user files, and prices."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkinfer.dialects.registry import DIALECTS
from bulkinfer.errors import ConfigError, UnknownModelError, UserError
from bulkinfer.providers.catalog import Catalog, ModelSpec, Price

BUILTIN = {"echo", "smollm2-135m-instruct", "all-minilm-l6-v2", "ocr", "smollm2-135m-instruct-ocr"}


def write(tmp_path: Path, text: str, name: str = "models.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        Catalog.load(path)
    return str(info.value)


def test_builtin_models() -> None:
    catalog = Catalog.load()
    names = [spec.name for spec in catalog]
    assert set(names) >= BUILTIN
    assert names == sorted(names)
    for name in BUILTIN:
        spec = catalog.get(name)
        assert isinstance(spec, ModelSpec)
        assert spec.name == name
        assert spec.dialects
        assert all(d in DIALECTS for d in spec.dialects)
        assert spec.default_dialect == spec.dialects[0]
        assert spec.batch_size >= 1
        assert spec.concurrency >= 1
        assert spec.token_budget >= 1


def test_builtin_entries_have_the_expected_settings() -> None:
    catalog = Catalog.load()
    echo = catalog.get("echo")
    assert echo.provider == "echo"
    assert echo.kind == "chat"
    assert set(echo.dialects) == set(DIALECTS)
    assert echo.default_dialect == "anthropic"
    assert echo.price == Price()

    smol = catalog.get("smollm2-135m-instruct")
    assert smol.provider == "transformers"
    assert smol.kind == "chat"
    assert smol.default_dialect == "anthropic"
    assert smol.price == Price(0.02, 0.04, 0.5)
    assert smol.options["gguf_file"].endswith(".gguf")

    minilm = catalog.get("all-minilm-l6-v2")
    assert minilm.provider == "sentence-transformers"
    assert minilm.kind == "embedding"
    assert all(DIALECTS[d].kind == "embedding" for d in minilm.dialects)


def test_builtin_dialects_fit_the_model_kind() -> None:
    for spec in Catalog.load():
        if spec.provider != "echo":
            assert {DIALECTS[d].kind for d in spec.dialects} == {spec.kind}, spec.name


def test_user_file_adds_a_model_and_overrides_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[models.my-echo]
provider = "echo"
description = "mine"
dialects = ["converse", "anthropic"]
batch_size = 3
concurrency = 2
token_budget = 500
default_max_tokens = 9
options = { delay_ms = 5 }

[models.my-echo.price]
input_per_million = 1.5
output_per_million = 3.0
batch_discount = 0.25

[models."smollm2-135m-instruct"]
provider = "echo"
batch_size = 2
""",
    )
    catalog = Catalog.load(path)
    names = {spec.name for spec in catalog}
    assert names == BUILTIN | {"my-echo"}

    mine = catalog.get("my-echo")
    assert mine.provider == "echo"
    assert mine.description == "mine"
    assert mine.dialects == ("converse", "anthropic")
    assert mine.default_dialect == "converse"
    assert (mine.batch_size, mine.concurrency, mine.token_budget) == (3, 2, 500)
    assert mine.default_max_tokens == 9
    assert mine.options == {"delay_ms": 5}
    assert mine.price == Price(1.5, 3.0, 0.25)

    smol = catalog.get("smollm2-135m-instruct")
    assert smol.provider == "echo"
    assert smol.batch_size == 2
    # An override replaces the whole entry: unspecified fields take the schema defaults.
    assert smol.dialects == ("anthropic",)
    assert smol.price == Price()
    assert smol.options == {}

    assert catalog.get("echo") == Catalog.load().get("echo")


def test_defaults_of_a_minimal_entry(tmp_path: Path) -> None:
    spec = Catalog.load(write(tmp_path, '[models.tiny]\nprovider = "echo"\n')).get("tiny")
    assert spec.kind == "chat"
    assert spec.dialects == ("anthropic",)
    assert spec.context_length == 2048
    assert spec.default_max_tokens == 256
    assert (spec.concurrency, spec.batch_size, spec.token_budget) == (1, 8, 16384)
    assert spec.description == ""


def test_empty_user_file_changes_nothing(tmp_path: Path) -> None:
    catalog = Catalog.load(write(tmp_path, "# nothing here\n"))
    assert {spec.name for spec in catalog} == BUILTIN


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[models.x\nprovider = ", name="broken.toml")
    message = config_error(path)
    assert str(path) in message
    assert "TOML" in message


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    message = config_error(path)
    assert str(path) in message


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ('[models.x]\nprovider = "mystery"\n', "models.x.provider", "echo"),
        ("[models.x]\ndescription = 'no provider'\n", "models.x.provider", "required"),
        ('[models.x]\nprovider = "echo"\nbogus = 1\n', "models.x.bogus", "unknown key"),
        ('[models.x]\nprovider = "echo"\nkind = "audio"\n', "models.x.kind", ""),
        ('[models.x]\nprovider = "echo"\nbatch_size = 0\n', "models.x.batch_size", ""),
        ('[models.x]\nprovider = "echo"\nconcurrency = 5000\n', "models.x.concurrency", ""),
        ('[models.x]\nprovider = "echo"\ndialects = []\n', "models.x.dialects", ""),
        (
            '[models.x]\nprovider = "echo"\n[models.x.price]\nbatch_discount = 2\n',
            "models.x.price.batch_discount",
            "",
        ),
        (
            '[models.x]\nprovider = "echo"\n[models.x.price]\ncurrency = "EUR"\n',
            "models.x.price.currency",
            "unknown key",
        ),
        ('[model.x]\nprovider = "echo"\n', "model", "unknown key"),
    ],
)
def test_invalid_entries_name_the_file_and_the_field(
    tmp_path: Path, text: str, field: str, hint: str
) -> None:
    path = write(tmp_path, text, name="user-models.toml")
    message = config_error(path)
    assert str(path) in message
    assert field in message
    assert hint in message


def test_unknown_dialect_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[models.x]\nprovider = "echo"\ndialects = ["anthropic", "gemini"]\n')
    message = config_error(path)
    assert "gemini" in message


def test_unknown_dialect_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, '[models.x]\nprovider = "echo"\ndialects = ["anthropic", "gemini"]\n')
    message = config_error(path)
    assert str(path) in message
    assert "models.x.dialects" in message


def test_unknown_model_lists_the_available_names() -> None:
    catalog = Catalog.load()
    with pytest.raises(UnknownModelError) as info:
        catalog.get("gpt-5")
    message = str(info.value)
    assert "gpt-5" in message
    for name in BUILTIN:
        assert name in message
    assert isinstance(info.value, UserError)


def test_unknown_model_lists_user_models_too(tmp_path: Path) -> None:
    catalog = Catalog.load(write(tmp_path, '[models.zeta]\nprovider = "echo"\n'))
    with pytest.raises(UnknownModelError, match="zeta"):
        catalog.get("nope")


# prices


def test_price_cost_with_batch_discount() -> None:
    price = Price(input_per_million=2.0, output_per_million=4.0, batch_discount=0.5)
    # (1M * $2 + 0.5M * $4) / 1M = $4 on demand; half off for batch.
    assert price.cost(1_000_000, 500_000) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("price", "tokens", "expected"),
    [
        (Price(), (10**9, 10**9), 0.0),
        (Price(1.0, 0.0, 0.0), (1, 0), 1e-6),
        (Price(0.0, 10.0, 0.0), (123, 1000), 0.01),
        (Price(3.0, 15.0, 0.0), (2000, 400), 0.012),
        (Price(3.0, 15.0, 0.5), (2000, 400), 0.006),
        (Price(3.0, 15.0, 1.0), (2000, 400), 0.0),
        (Price(0.02, 0.04, 0.5), (0, 0), 0.0),
    ],
)
def test_price_cost_table(price: Price, tokens: tuple[int, int], expected: float) -> None:
    assert price.cost(*tokens) == pytest.approx(expected)


def test_price_cost_is_additive() -> None:
    price = Price(0.02, 0.04, 0.5)
    assert price.cost(300, 700) == pytest.approx(price.cost(100, 200) + price.cost(200, 500))


def test_builtin_smollm2_cost() -> None:
    price = Catalog.load().get("smollm2-135m-instruct").price
    assert price.cost(1_000_000, 1_000_000) == pytest.approx((0.02 + 0.04) * 0.5)


REMOTE = """
[models.my-remote]
provider = "openai"
base_url = "http://127.0.0.1:9000/v1"
api_key_env = "MY_API_KEY"
remote_model = "gpt-4o-mini"
requests_per_minute = 600
input_tokens_per_minute = 200000
output_tokens_per_minute = 50000
max_concurrency = 64
max_attempts = 8
timeout_seconds = 60
"""


def test_remote_entry_as_the_issue_writes_it(tmp_path: Path) -> None:
    spec = Catalog.load(write(tmp_path, REMOTE)).get("my-remote")
    assert spec.remote is not None
    assert spec.remote.base_url == "http://127.0.0.1:9000/v1"
    assert spec.remote.remote_model == "gpt-4o-mini"
    assert (spec.remote.requests_per_minute, spec.remote.max_concurrency) == (600, 64)
    assert spec.default_dialect == "openai-chat"
    assert (spec.batch_size, spec.concurrency) == (1, 64)  # one record per call, as many as allowed


def test_remote_limits_default_to_unlimited(tmp_path: Path) -> None:
    text = '[models.claude]\nprovider = "anthropic"\n'
    text += '[models.titan]\nprovider = "bedrock"\nkind = "embedding"\n'
    catalog = Catalog.load(write(tmp_path, text))
    claude = catalog.get("claude")
    assert claude.remote is not None and claude.remote.requests_per_minute is None
    assert claude.remote.remote_model == "claude"
    assert claude.default_dialect == "anthropic"
    assert catalog.get("titan").default_dialect == "titan-embed"


def test_unknown_remote_key_is_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, REMOTE + "request_per_minute = 5\n"))
    assert "models.my-remote.request_per_minute: unknown key" in message


def test_remote_keys_on_a_local_model_are_refused(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, '[models.x]\nprovider = "echo"\nrequests_per_minute = 5\n'))
    assert "models.x.requests_per_minute: only remote providers take this key" in message


# image_text: images read by OCR for text-only chat models


def test_image_text_ocr_is_accepted_and_off_by_default(tmp_path: Path) -> None:
    text = '[models.x]\nprovider = "echo"\nimage_text = "ocr"\n[models.y]\nprovider = "echo"\n'
    catalog = Catalog.load(write(tmp_path, text))
    assert catalog.get("x").image_text == "ocr"
    assert catalog.get("y").image_text is None
    builtin = Catalog.load()
    assert builtin.get("smollm2-135m-instruct-ocr").image_text == "ocr"
    assert builtin.get("smollm2-135m-instruct").image_text is None
    assert builtin.get("ocr").provider == "ocr"


@pytest.mark.parametrize("value", ['"tesseract"', '"OCR"', "true", '""'])
def test_image_text_refuses_other_values_naming_the_key(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f'[models.x]\nprovider = "echo"\nimage_text = {value}\n')
    message = config_error(path)
    assert str(path) in message
    assert "models.x.image_text" in message
    assert "ocr" in message


def test_image_text_is_for_chat_models_only(tmp_path: Path) -> None:
    text = '[models.x]\nprovider = "echo"\nkind = "embedding"\nimage_text = "ocr"\n'
    message = config_error(write(tmp_path, text))
    assert "models.x.image_text: only chat models take this key" in message
