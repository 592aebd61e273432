"""The OpenAI Files API of `bulkinfer serve`, driven by the unmodified openai SDK (``base_url=<server>/v1``)
with two tenants' API keys; its bytes in local buckets, and on an S3-protocol server (moto)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest

from bulkinfer.services.files import BATCH_EXPIRY_S, FileNotFound, FileService
from bulkinfer.storage.blobs import LocalBlobs
from bulkinfer.store.files import FileStore
from tests.conftest import SLOW_ECHO_CATALOG
from tests.integration.test_bedrock_api import Server, start_server
from tests.moto import S3_CREDENTIALS, moto_server, s3_client

TEAM_A_KEYS = ("sk-team-a-0123456789abcdef", "sk-team-a-second-key-0001")
TEAM_B_KEY = "sk-team-b-0123456789abcdef"
TENANTS = """
[tenants.team-a]
api_keys_env = "BI_TEST_FILES_A_KEYS"
[tenants.team-b]
api_keys_env = "BI_TEST_FILES_B_KEYS"
"""
MAX_FILE_BYTES = 3 * 2**20
KEYS_ENV = {"BI_TEST_FILES_A_KEYS": ",".join(TEAM_A_KEYS), "BI_TEST_FILES_B_KEYS": TEAM_B_KEY}


def serve(root: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    """A server knowing the two tenants, whose files may be at most `MAX_FILE_BYTES`."""
    (root / "models.toml").write_text(SLOW_ECHO_CATALOG)
    (root / "tenants.toml").write_text(TENANTS)
    added = {**KEYS_ENV, "BULKINFER_MAX_FILE_BYTES": str(MAX_FILE_BYTES), **(env or {})}
    saved = {name: os.environ.get(name) for name in added}
    os.environ.update(added)
    try:
        tenants = ("--tenants", str(root / "tenants.toml"))
        return start_server(root / "data", root / "models.toml", *tenants, *extra)
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = serve(tmp_path_factory.mktemp("files"))
    yield running
    running.stop()


def sdk(server: Server, key: str = TEAM_A_KEYS[0]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def jsonl(lines: int, tag: str = "r") -> bytes:
    return b"".join(
        b'{"custom_id":"%s-%d","method":"POST","url":"/v1/chat/completions","body":{}}\n' % (tag.encode(), i)
        for i in range(lines)
    )


def stored_files(server: Server, tenant: str) -> list[str]:
    """Every file in the tenant's folder of the local files bucket, temp files included."""
    folder = server.data_dir / "s3" / "bulkinfer-files" / tenant / "files"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.sdk_compat
def test_an_upload_is_retrieved_and_read_back_byte_for_byte(server: Server) -> None:
    client = sdk(server)
    data = jsonl(20_000) + bytes(range(256))  # 2.5 MB: several blocks, and bytes that are not text
    created = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.bytes, created.filename, created.purpose) == (len(data), "requests.jsonl", "batch")
    assert created.status == "processed" and created.status_details is None
    assert created.expires_at == created.created_at + BATCH_EXPIRY_S  # batch files: 30 days by default
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == data
    # the bytes are where batches read them: the tenant's own folder of the files bucket
    assert f"{created.id}.jsonl" in stored_files(server, "team-a")
    # the tenant's other key is the same tenant
    assert sdk(server, TEAM_A_KEYS[1]).files.retrieve(created.id).id == created.id


@pytest.mark.sdk_compat
def test_expires_after_sets_the_expiry_and_is_checked(server: Server) -> None:
    client = sdk(server)
    hour = client.files.create(
        file=("a.jsonl", jsonl(1)), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert hour.expires_at == hour.created_at + 3600
    kept = client.files.create(file=("b.jsonl", jsonl(1)), purpose="user_data")
    assert kept.expires_at is None
    for seconds in (3599, 2_592_001):
        with pytest.raises(openai.BadRequestError, match=r"expires_after\[seconds\]"):
            client.files.create(
                file=("c.jsonl", jsonl(1)),
                purpose="batch",
                expires_after={"anchor": "created_at", "seconds": seconds},
            )


@pytest.mark.sdk_compat
def test_listing_pages_through_every_file_in_order(server: Server) -> None:
    client = sdk(server)
    ids = [client.files.create(file=(f"{i}.jsonl", jsonl(1)), purpose="evals").id for i in range(5)]
    first = client.files.list(limit=2, purpose="evals")
    assert [f.id for f in first.data] == ids[:-3:-1] and first.has_more
    assert [f.id for f in client.files.list(limit=2, purpose="evals")] == ids[::-1]  # every page, then stops
    assert [f.id for f in client.files.list(limit=2, purpose="evals", order="asc")] == ids
    after = client.files.list(limit=10, purpose="evals", order="asc", after=ids[1])
    assert [f.id for f in after.data] == ids[2:] and not after.has_more
    everything = [f.id for f in client.files.list()]  # default limit, newest first, every purpose
    assert everything[:5] == ids[::-1]
    assert {f.purpose for f in client.files.list(purpose="evals")} == {"evals"}


@pytest.mark.sdk_compat
def test_a_deleted_file_is_gone_everywhere(server: Server) -> None:
    client = sdk(server)
    created = client.files.create(file=("gone.jsonl", jsonl(3)), purpose="batch")
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(created.id)
    assert created.id not in [f.id for f in client.files.list()]
    assert f"{created.id}.jsonl" not in stored_files(server, "team-a")


@pytest.mark.sdk_compat
def test_another_tenants_file_is_not_found(server: Server) -> None:
    mine = sdk(server).files.create(file=("mine.jsonl", jsonl(2)), purpose="batch")
    theirs = sdk(server, TEAM_B_KEY)
    for call in (theirs.files.retrieve, theirs.files.content, theirs.files.delete):
        with pytest.raises(openai.NotFoundError) as refused:
            call(mine.id)
        assert refused.value.type == "not_found_error"
    assert mine.id not in [f.id for f in theirs.files.list()]
    assert sdk(server).files.retrieve(mine.id) == mine  # untouched
    # team-b's own uploads go to its own folder
    own = theirs.files.create(file=("theirs.jsonl", jsonl(1)), purpose="batch")
    assert f"{own.id}.jsonl" in stored_files(server, "team-b")


@pytest.mark.sdk_compat
def test_an_upload_over_the_limit_is_refused_and_nothing_is_kept(server: Server) -> None:
    client = sdk(server)
    before = stored_files(server, "team-a")
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("big.jsonl", b"x" * (MAX_FILE_BYTES + 1)), purpose="batch")
    assert refused.value.status_code == 413
    assert "limit" in refused.value.message
    assert stored_files(server, "team-a") == before  # no bytes, no temp file
    # far over it: cut off as it streams in, at the Gate (the limit and the form fields' allowance)
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("bigger.jsonl", b"x" * (3 * MAX_FILE_BYTES)), purpose="batch")
    assert refused.value.status_code == 413
    assert stored_files(server, "team-a") == before
    assert not {"big.jsonl", "bigger.jsonl"} & {f.filename for f in client.files.list()}


@pytest.mark.sdk_compat
def test_bad_purposes_and_ids_are_refused(server: Server) -> None:
    client = sdk(server)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("a.jsonl", jsonl(1)), purpose="batch_output")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="not a file id"):
        client.files.retrieve("batch_123")
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.files.list(limit=10_001)


@pytest.mark.sdk_compat
def test_files_on_an_s3_server_and_a_503_while_it_is_away(tmp_path: Path) -> None:
    with moto_server() as port:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket="bulkinfer-files")
        running = serve(tmp_path, "--s3-endpoint-url", endpoint, env=S3_CREDENTIALS)
        client = sdk(running)
        data = jsonl(5_000)
        created = client.files.create(file=("on-s3.jsonl", data), purpose="batch")
        key = f"team-a/files/{created.id}.jsonl"
        assert s3.get_object(Bucket="bulkinfer-files", Key=key)["Body"].read() == data
        assert client.files.content(created.id).content == data
        kept = client.files.create(file=("kept.jsonl", data), purpose="batch")
        client.files.delete(created.id)
        listed = s3.list_objects_v2(Bucket="bulkinfer-files")["Contents"]
        assert [o["Key"] for o in listed] == [f"team-a/files/{kept.id}.jsonl"]
    try:  # the S3 server is gone: retried for a few seconds, then a 503 the SDK would retry later
        with pytest.raises(openai.InternalServerError) as refused:
            client.files.content(kept.id)
        assert refused.value.status_code == 503
        assert client.files.retrieve(kept.id).id == kept.id  # the rows are in the database
        uploads = tmp_path / "data" / "uploads"
        assert not uploads.exists() or not any(uploads.iterdir())  # spooled uploads are not left
    finally:
        running.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_the_expiry_sweep_deletes_files_whose_time_is_up(tmp_path: Path) -> None:
    clock = Clock()
    store = FileStore(f"sqlite:///{tmp_path / 'files.db'}")
    files = FileService(store, LocalBlobs(tmp_path), "bulkinfer-files", 2**20, clock=clock)
    folder = tmp_path / "s3" / "bulkinfer-files" / "team-a" / "files"

    async def scenario() -> None:
        short = await files.upload("team-a", "short.jsonl", "batch", once(b"1\n"), expires_after_s=3600)
        clock.now += 1
        kept = await files.upload("team-a", "kept.jsonl", "user_data", once(b"2\n"))
        clock.now += 1
        batch = await files.upload("team-a", "batch.jsonl", "batch", once(b"3\n"))
        assert await files.sweep_expired() == 0
        clock.now += 3600 - 2
        with pytest.raises(FileNotFound):  # expired: gone for its tenant before the sweep comes
            await files.get("team-a", short.file_id)
        assert [f.file_id for f in (await files.list("team-a")).files] == [batch.file_id, kept.file_id]
        assert await files.sweep_expired() == 1
        assert store.get("team-a", short.file_id) is None
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{f.file_id}.jsonl" for f in (kept, batch))
        clock.now += BATCH_EXPIRY_S
        assert await files.sweep_expired() == 1  # the batch file's default 30 days
        assert [p.name for p in folder.iterdir()] == [f"{kept.file_id}.jsonl"]
        assert (await files.get("team-a", kept.file_id)).expires_at is None

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_registering_an_output_file_twice_keeps_the_first(tmp_path: Path) -> None:
    store = FileStore(f"sqlite:///{tmp_path / 'files.db'}")
    files = FileService(store, LocalBlobs(tmp_path), "bulkinfer-files", 2**20)
    uri = "s3://bulkinfer-files/team-a/batches/b1/output.jsonl"

    async def scenario() -> None:
        first = await files.register("team-a", "file-b1output", "output.jsonl", "batch_output", uri, 10)
        again = await files.register("team-a", "file-b1output", "output.jsonl", "batch_output", uri, 10)
        assert again == first
        assert (await files.get("team-a", "file-b1output")).purpose == "batch_output"
        with pytest.raises(FileNotFound):
            await files.get("team-b", "file-b1output")

    try:
        asyncio.run(scenario())
    finally:
        store.close()
