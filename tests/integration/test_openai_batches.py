"""OpenAI's Batch API on `bulkinfer serve`, driven only through the unmodified openai SDK
(``base_url=<server>/v1``) with two tenants' API keys, on SQLite and on PostgreSQL: upload, create, poll,
download; listing; cancel; validation; deduplicated creates; a server killed mid-batch; bad arguments;
and the same file through `bulkinfer run`."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import openai
import orjson
import pytest
from openai.types import Batch
from typer.testing import CliRunner

from bulkinfer.cli.main import app
from tests.conftest import SLOW_ECHO_CATALOG, read_jsonl
from tests.integration.test_bedrock_api import Server, database, start_server

TEAM_A_KEY = "sk-team-a-batches-0123456789"
TEAM_B_KEY = "sk-team-b-batches-0123456789"
TENANTS = """
[tenants.team-a]
api_keys_env = "BI_TEST_BATCH_A_KEYS"
[tenants.team-b]
api_keys_env = "BI_TEST_BATCH_B_KEYS"
"""
KEYS_ENV = {"BI_TEST_BATCH_A_KEYS": TEAM_A_KEY, "BI_TEST_BATCH_B_KEYS": TEAM_B_KEY}
CHAT: Final = "/v1/chat/completions"
SLOW_ECHO_PRICE = """
[models.slow-echo.price]
input_per_million = 2
output_per_million = 10
batch_discount = 0.5
"""


def serve(root: Path, *extra: str) -> Server:
    """A server knowing the two tenants, with the echo and slow-echo models."""
    (root / "models.toml").write_text(SLOW_ECHO_CATALOG + SLOW_ECHO_PRICE)
    (root / "tenants.toml").write_text(TENANTS)
    saved = {name: os.environ.get(name) for name in KEYS_ENV}
    os.environ.update(KEYS_ENV)
    try:
        tenants = ("--tenants", str(root / "tenants.toml"))
        return start_server(root / "data", root / "models.toml", *tenants, *extra)
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with database(request.param) as url:
        running = serve(tmp_path_factory.mktemp("batches"), *(["--database-url", url] if url else []))
        yield running
        running.stop()


def sdk(server: Server, key: str = TEAM_A_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def line(custom_id: str, text: str, model: str = "echo", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(lines: Sequence[dict[str, Any] | bytes]) -> bytes:
    return b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)


def upload(client: openai.OpenAI, lines: Sequence[dict[str, Any] | bytes], purpose: str = "batch") -> str:
    return client.files.create(file=("in.jsonl", jsonl(lines)), purpose=purpose).id  # type: ignore[arg-type]


def create(client: openai.OpenAI, file_id: str, **extra: Any) -> Batch:
    return client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h", **extra)


def wait(client: openai.OpenAI, batch_id: str, wanted: set[str], timeout: float = 60) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in wanted:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.05)


def completed(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return counts.completed if counts is not None else 0


def download(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(x) for x in client.files.content(file_id).content.splitlines()]


def ids(lines: list[dict[str, Any]]) -> list[str]:
    return sorted(x["custom_id"] for x in lines)


def bad_line(custom_id: str) -> dict[str, Any]:
    """A line the echo model answers with a 400: its messages are empty."""
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {"model": "echo", "messages": []}}


@pytest.mark.sdk_compat
def test_a_batch_runs_to_completion_with_output_and_error_files(server: Server) -> None:
    client = sdk(server)
    lines = [line(f"ok-{i}", f"hello number {i}") for i in range(8)]
    lines += [bad_line(f"bad-{i}") for i in range(3)]
    created = create(client, upload(client, lines), metadata={"project": "nov", "run": "1"})
    assert created.id.startswith("batch_") and created.object == "batch" and created.endpoint == CHAT
    batch = wait(client, created.id, {"completed", "failed"})
    assert batch.status == "completed", batch
    assert batch.metadata == {"project": "nov", "run": "1"}
    assert batch.request_counts is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (11, 8, 3)
    wire = batch.to_dict()  # (model and usage are new in openai 3.x: read off the wire in both lines)
    assert wire["model"] == "echo"
    usage: dict[str, Any] = wire["usage"]  # type: ignore[assignment]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert batch.model_extra is not None  # bulkinfer's own fields, kept by the SDK
    assert batch.model_extra["estimated_cost_usd"] == wire["estimated_cost_usd"] == 0.0  # echo: local
    assert batch.model_extra["prices"]["source"] == "local model: no per-token charge"
    assert batch.completed_at is not None and batch.completed_at >= batch.created_at
    out, err = download(client, batch.output_file_id), download(client, batch.error_file_id)
    assert ids(out) == sorted(f"ok-{i}" for i in range(8))
    assert ids(err) == sorted(f"bad-{i}" for i in range(3))
    by_id = {x["custom_id"]: x for x in out}
    assert by_id["ok-3"]["response"]["status_code"] == 200
    assert by_id["ok-3"]["response"]["body"]["choices"][0]["message"]["content"] == "hello number 3"
    assert all(x["response"]["status_code"] == 400 and x["error"] is None for x in err)
    assert client.files.retrieve(batch.output_file_id or "").purpose == "batch_output"
    assert client.batches.retrieve(batch.id) == batch  # shown again the same


@pytest.mark.sdk_compat
def test_listing_pages_newest_first_and_ends(server: Server) -> None:
    client = sdk(server, TEAM_B_KEY)
    file_id = upload(client, [line("a", "hi")])
    made = [create(client, file_id, metadata={"n": str(i)}).id for i in range(5)]
    seen = [b.id for b in client.batches.list(limit=2)]
    assert seen == made[::-1]  # every batch once, newest first, and the loop ends
    page = client.batches.list(limit=2, after=made[3])
    assert [b.id for b in page.data] == [made[2], made[1]] and page.has_more
    last = client.batches.list(limit=2, after=made[1])
    assert [b.id for b in last.data] == [made[0]] and not last.has_more
    with pytest.raises(openai.NotFoundError, match="after: no batch found with id 'batch_"):
        client.batches.list(after=create(sdk(server), upload(sdk(server), [line("a", "hi")])).id)  # team-a's
    for batch_id in made:
        wait(client, batch_id, {"completed"})


@pytest.mark.sdk_compat
def test_cancel_keeps_finished_results_and_lists_the_rest(server: Server) -> None:
    client = sdk(server)
    lines = [line(f"c-{i}", f"text {i}", model="slow-echo") for i in range(300)]
    batch = create(client, upload(client, lines))
    wait(client, batch.id, {"in_progress"})
    deadline = time.monotonic() + 30
    while completed(client, batch.id) < 10:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    cancelled = wait(client, batch.id, {"cancelled"})
    assert cancelled.cancelled_at is not None and cancelled.cancelling_at == cancelling.cancelling_at
    counts = cancelled.request_counts
    assert counts is not None and counts.total == 300 and 0 < counts.completed < 300
    assert counts.completed + counts.failed == 300
    out, err = download(client, cancelled.output_file_id), download(client, cancelled.error_file_id)
    assert len(out) == counts.completed and len(err) == counts.failed
    assert sorted(ids(out) + ids(err)) == sorted(f"c-{i}" for i in range(300))
    assert all(x["response"] is None and x["error"]["code"] == "batch_cancelled" for x in err)
    assert client.batches.cancel(batch.id) == cancelled  # cancelled already: unchanged

    racing = create(client, upload(client, lines))  # cancels at once and together: each answers it
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.batches.cancel(racing.id), range(6)))
    assert {b.status for b in answers} <= {"cancelling", "cancelled"}
    assert all(b.cancelling_at is not None for b in answers)

    done = create(client, upload(client, [line("d", "quick")]))
    wait(client, done.id, {"completed"})
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(done.id)


def test_a_batch_cancelled_before_it_ran_lists_every_request_as_cancelled(server: Server) -> None:
    """Both of slow-echo's job slots are taken: a third batch validates and waits; cancelled then, its
    error file has a batch_cancelled line for each request and its counts say so."""
    client = sdk(server)
    blockers = [
        create(client, upload(client, [line(f"b{n}-{i}", "x", model="slow-echo") for i in range(300)]))
        for n in range(2)
    ]
    for blocker in blockers:
        wait(client, blocker.id, {"in_progress"})
    waiting = create(client, upload(client, [line(f"w-{i}", "x", model="slow-echo") for i in range(5)]))
    deadline = time.monotonic() + 30
    while (got := client.batches.retrieve(waiting.id)).status == "validating":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert got.status == "in_progress" and got.in_progress_at is None  # validated, waiting for a slot
    client.batches.cancel(waiting.id)
    cancelled = wait(client, waiting.id, {"cancelled"})
    for blocker in blockers:
        client.batches.cancel(blocker.id)
    assert cancelled.output_file_id is None and cancelled.in_progress_at is None
    counts = cancelled.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (5, 0, 5)
    err = download(client, cancelled.error_file_id)
    assert sorted(ids(err)) == [f"w-{i}" for i in range(5)]
    assert all(x["response"] is None and x["error"]["code"] == "batch_cancelled" for x in err)
    assert client.batches.retrieve(waiting.id) == cancelled  # shown again: the same files and counts


@pytest.mark.sdk_compat
def test_an_all_failed_batch_completes_with_only_an_error_file(server: Server) -> None:
    client = sdk(server)
    batch = create(client, upload(client, [bad_line(f"x-{i}") for i in range(4)]))
    batch = wait(client, batch.id, {"completed", "failed"})
    assert batch.status == "completed", batch
    assert batch.output_file_id is None and batch.error_file_id is not None
    assert ids(download(client, batch.error_file_id)) == [f"x-{i}" for i in range(4)]
    assert batch.request_counts is not None and batch.request_counts.failed == 4


@pytest.mark.sdk_compat
def test_a_malformed_file_fails_the_batch_with_each_error_and_its_line(server: Server) -> None:
    client = sdk(server)
    streamed = line("s", "hi", stream=True)
    missing = line("m", "hi")
    del missing["custom_id"]
    wrong_url = {**line("u", "hi"), "url": "/v1/embeddings"}
    lines: list[dict[str, Any] | bytes] = [
        line("a", "hi"),
        b'{"custom_id": "j", not json',
        missing,
        line("a", "again"),
        wrong_url,
        line("o", "hi", model="slow-echo"),
        streamed,
    ]
    batch = wait(client, create(client, upload(client, lines)).id, {"failed", "completed"})
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors is not None and batch.errors.data is not None
    found = [(e.line, e.code) for e in batch.errors.data]
    assert found == [
        (2, "invalid_json_line"),
        (3, "missing_required_parameter"),
        (4, "duplicate_custom_id"),
        (5, "invalid_url"),
        (6, "mismatched_model"),
        (7, "streaming_unsupported"),
    ]
    assert all(e.message for e in batch.errors.data)

    unknown = create(client, upload(client, [line("a", "hi", model="no-such-model")]))
    unknown = wait(client, unknown.id, {"failed", "completed"})
    assert unknown.status == "failed" and unknown.errors is not None and unknown.errors.data is not None
    assert [(e.line, e.code) for e in unknown.errors.data] == [(1, "model_not_found")]


@pytest.mark.sdk_compat
def test_a_batch_failed_for_no_line_says_why_in_its_errors(server: Server) -> None:
    client = sdk(server)
    too_many = [line(f"q-{i}", "hi") for i in range(1001)]  # start_server's BULKINFER_MAX_RECORDS_PER_FILE
    batch = wait(client, create(client, upload(client, too_many)).id, {"failed", "completed"})
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    (error,) = batch.errors.data
    assert error.code == "batch_failed" and error.message is not None and "1,000" in error.message


@pytest.mark.sdk_compat
def test_a_repeated_create_is_one_batch(server: Server) -> None:
    client = sdk(server)
    file_id = upload(client, [line("a", "hi")])
    first = create(client, file_id, metadata={"why": "retried"})
    assert create(client, file_id, metadata={"why": "retried"}).id == first.id  # a retried POST
    keyed = create(client, file_id, extra_headers={"Idempotency-Key": "k1"})
    assert create(client, file_id, extra_headers={"Idempotency-Key": "k1"}).id == keyed.id
    assert keyed.id != first.id
    other = create(client, file_id, extra_headers={"Idempotency-Key": "k2"})
    assert other.id not in (first.id, keyed.id)
    another_file = upload(client, [line("b", "hi")])
    with pytest.raises(openai.BadRequestError, match="Idempotency-Key"):  # not k1's batch, on another file
        create(client, another_file, extra_headers={"Idempotency-Key": "k1"})
    with pytest.raises(openai.BadRequestError, match="Idempotency-Key"):
        create(client, file_id, metadata={"changed": "yes"}, extra_headers={"Idempotency-Key": "k1"})
    for batch_id in (first.id, keyed.id, other.id):
        wait(client, batch_id, {"completed"})


@pytest.mark.sdk_compat
def test_bad_create_arguments_are_refused_and_make_no_batch(server: Server) -> None:
    client = sdk(server)
    file_id = upload(client, [line("a", "hi")])
    before = [b.id for b in client.batches.list()]
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=file_id, endpoint="/v1/nope", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        create(sdk(server, TEAM_B_KEY), file_id)  # team-a's file
    with pytest.raises(openai.BadRequestError, match="purpose"):
        create(client, upload(client, [line("a", "hi")], purpose="user_data"))
    assert [b.id for b in client.batches.list()] == before


@pytest.mark.sdk_compat
def test_bulkinfer_run_gives_the_same_results_as_the_service(server: Server, tmp_path: Path) -> None:
    client = sdk(server)
    lines = [line(f"r-{i}", f"same words {i}") for i in range(6)] + [bad_line("r-bad")]
    batch = wait(client, create(client, upload(client, lines)).id, {"completed"})
    served = download(client, batch.output_file_id) + download(client, batch.error_file_id)

    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(lines))
    command = ["run", str(source), "--model", "echo", "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    (folder,) = (p.parent for p in (tmp_path / "out").glob("*/in.jsonl.out"))
    ran = read_jsonl(folder / "in.jsonl.out") + read_jsonl(folder / "in.jsonl.errors.out")

    def summary(results: list[dict[str, Any]]) -> dict[str, tuple[int, str | None]]:
        def content(body: dict[str, Any]) -> str | None:
            return body["choices"][0]["message"]["content"] if "choices" in body else None

        return {
            x["custom_id"]: (x["response"]["status_code"], content(x["response"]["body"])) for x in results
        }

    assert summary(served) == summary(ran) and len(served) == len(ran) == 7


@pytest.mark.sdk_compat
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_server_killed_mid_batch_finishes_it_after_a_restart(kind: str, tmp_path: Path) -> None:
    with database(kind) as url:
        extra = ["--database-url", url] if url else []
        running = serve(tmp_path, *extra)
        try:
            client = sdk(running)
            lines = [line(f"k-{i}", f"text {i}", model="slow-echo") for i in range(150)]
            batch = create(client, upload(client, lines))
            wait(client, batch.id, {"in_progress"})
            deadline = time.monotonic() + 30
            while completed(client, batch.id) < 20:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            running.stop(signal.SIGKILL)
        running = serve(tmp_path, *extra)
        try:
            client = sdk(running)
            done = wait(client, batch.id, {"completed", "failed"}, timeout=90)
            assert done.status == "completed", done
            out, err = download(client, done.output_file_id), download(client, done.error_file_id)
            assert ids(out) == sorted(f"k-{i}" for i in range(150)) and err == []
            assert done.request_counts is not None and done.request_counts.completed == 150
            usage: dict[str, Any] = done.to_dict()["usage"]  # type: ignore[assignment]
            prompt_tokens = sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in out)
            assert usage["input_tokens"] == prompt_tokens  # records run again after the kill count once
            cost = (usage["input_tokens"] * 2 + usage["output_tokens"] * 10) / 1e6 * 0.5
            assert done.to_dict()["estimated_cost_usd"] == round(cost, 6)  # and so does their cost
        finally:
            running.stop()


@pytest.mark.sdk_compat
def test_a_server_killed_while_a_batch_cancels_ends_it_cancelled_after_a_restart(tmp_path: Path) -> None:
    running = serve(tmp_path)
    try:
        client = sdk(running)
        lines = [line(f"k-{i}", f"text {i}", model="slow-echo") for i in range(300)]
        batch = create(client, upload(client, lines))
        wait(client, batch.id, {"in_progress"})
        deadline = time.monotonic() + 30
        while completed(client, batch.id) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.5)  # past a commit (a record finished within the last second before a kill runs again)
        assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    finally:
        running.stop(signal.SIGKILL)
    running = serve(tmp_path)
    try:
        client = sdk(running)
        done = wait(client, batch.id, {"cancelled", "completed", "failed"}, timeout=60)
        assert done.status == "cancelled", done
        out, err = download(client, done.output_file_id), download(client, done.error_file_id)
        assert sorted(ids(out) + ids(err)) == sorted(f"k-{i}" for i in range(300)) and out
        assert all(x["error"]["code"] == "batch_cancelled" for x in err)
        assert done.request_counts is not None and done.request_counts.completed == len(out)
    finally:
        running.stop()
