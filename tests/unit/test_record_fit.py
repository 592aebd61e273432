"""A record's kind against a model's: judged from the catalog entry as the loaded provider judges it, and
said the same way by --dry-run and by the engine's error line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bulkinfer.engine.job import RunRequest
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.engine.validate import check_fit, dry_run
from bulkinfer.errors import InputError
from bulkinfer.providers.base import Capabilities
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.echo import EchoProvider
from bulkinfer.providers.embeddings import SentenceEmbeddingProvider
from bulkinfer.providers.ocr import OcrProvider
from bulkinfer.providers.registry import capabilities_of
from bulkinfer.providers.remote.limits import LimitRegistry
from bulkinfer.providers.remote.provider import remote_provider
from bulkinfer.providers.transformers_llm import TransformersChatProvider
from bulkinfer.storage.files import list_inputs
from tests.acceptance.test_cli_messages import chat_record, embedding_record, image_record
from tests.conftest import read_jsonl, run_job, write_jsonl

# A remote embedding model nothing listens for: every record below is refused before any call.
REMOTE = """
[models.embed-remote]
provider = "openai"
kind = "embedding"
base_url = "http://127.0.0.1:9/v1"
max_attempts = 1
[models.chat-remote]
provider = "anthropic"
base_url = "http://127.0.0.1:9"
"""
MAX_LINE = EngineSettings().max_line_bytes


def what(capabilities: Capabilities) -> tuple[bool, bool, bool, bool]:
    return capabilities.chat, capabilities.embeddings, capabilities.images, capabilities.needs_images


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    path = tmp_path / "models.toml"
    path.write_text(REMOTE)
    return Catalog.load(path)


def test_the_catalog_entry_says_what_the_loaded_provider_takes(catalog: Catalog) -> None:
    loaded = {
        "echo": EchoProvider("echo", {}).capabilities,
        "smollm2-135m-instruct": TransformersChatProvider.capabilities,
        "all-minilm-l6-v2": SentenceEmbeddingProvider.capabilities,
        "ocr": OcrProvider.capabilities,
        # ImageTextProvider's own rule: its inner model's, plus images
        "smollm2-135m-instruct-ocr": dataclasses.replace(TransformersChatProvider.capabilities, images=True),
        "embed-remote": remote_provider(catalog.get("embed-remote"), LimitRegistry()).capabilities,
        "chat-remote": remote_provider(catalog.get("chat-remote"), LimitRegistry()).capabilities,
    }
    assert {name: what(capabilities_of(catalog.get(name))) for name in loaded} == {
        name: what(c) for name, c in loaded.items()
    }


def test_the_engines_error_line_says_what_dry_run_says(tmp_path: Path, catalog: Catalog) -> None:
    records = [chat_record("a"), image_record("b"), chat_record("c")]
    source = write_jsonl(tmp_path / "in" / "in.jsonl", records)
    spec = catalog.get("embed-remote")
    report = dry_run(list_inputs(source), spec, None, MAX_LINE)
    assert report.invalid == 3

    catalog_file = tmp_path / "models.toml"
    job = run_job(RunRequest(source, "embed-remote", tmp_path / "out", "fit", catalog_file))
    lines = read_jsonl(job.output_dir / "in.jsonl.out")
    assert [line["error"]["errorMessage"] for line in lines] == report.samples
    assert report.samples[0] == (
        "in.jsonl line 1: modelInput is a chat body, but this model only produces embeddings; "
        "send an embeddings body"
    )


def test_a_model_that_takes_some_of_the_first_records_runs(tmp_path: Path, catalog: Catalog) -> None:
    folder = tmp_path / "in"
    write_jsonl(folder / "a.jsonl", [chat_record("a")] * 3)
    write_jsonl(folder / "b.jsonl", [embedding_record("b"), chat_record("c")])
    check_fit(list_inputs(folder), catalog.get("embed-remote"), None, MAX_LINE, catalog)


def test_only_the_start_of_each_file_is_read(tmp_path: Path, catalog: Catalog) -> None:
    records = [chat_record(f"r{i}") for i in range(100)] + [embedding_record("fits, unread")]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    with pytest.raises(InputError, match=r"takes none of the first records \(100 read, up to 100 a file\)"):
        check_fit(list_inputs(source), catalog.get("embed-remote"), None, MAX_LINE, catalog)


def test_the_message_names_the_models_that_take_the_records(tmp_path: Path, catalog: Catalog) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [b"{", embedding_record("a")])
    with pytest.raises(InputError) as refused:
        check_fit(list_inputs(source), catalog.get("chat-remote"), None, MAX_LINE, catalog)
    assert str(refused.value) == (
        "in.jsonl line 2: modelInput is an embeddings body, but this model does not produce embeddings; "
        "send a chat body. Model chat-remote takes none of the first records (1 read, up to 100 a file); "
        "choose one that does: all-minilm-l6-v2, echo, embed-remote"
    )
