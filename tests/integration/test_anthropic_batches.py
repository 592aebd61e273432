"""`bulkinfer serve`'s Message Batches API driven only through the unmodified anthropic SDK, against a
real server on 127.0.0.1 with two tenants (API keys), on SQLite and, when one is given, PostgreSQL."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.messages import MessageBatch

from tests.conftest import SLOW_ECHO_CATALOG
from tests.integration.test_bedrock_api import Server, database, start_server

pytestmark = pytest.mark.sdk_compat

KEY_A = "anthropic-batches-key-a-0123456789"
KEY_B = "anthropic-batches-key-b-0123456789"
TENANTS = """
[tenants.a]
api_keys_env = "ANTHROPIC_BATCHES_KEYS_A"
models = ["echo", "slow-echo", "picky", "all-minilm-l6-v2"]

[tenants.b]
api_keys_env = "ANTHROPIC_BATCHES_KEYS_B"
models = ["slow-echo"]
"""
CATALOG = (
    SLOW_ECHO_CATALOG
    + """
[models.picky]
provider = "echo"
batch_size = 1
[models.picky.options]
fail_text = "EXPLODE"
[models.picky.price]
input_per_million = 2
output_per_million = 10
batch_discount = 0.5
"""
)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("anthropic-batches")
    (root / "models.toml").write_text(CATALOG)
    (root / "tenants.toml").write_text(TENANTS)
    with database(request.param) as url:
        running = _start(root, url)
        yield running
        running.stop()


def _start(root: Path, url: str | None) -> Server:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ANTHROPIC_BATCHES_KEYS_A", KEY_A)
        env.setenv("ANTHROPIC_BATCHES_KEYS_B", KEY_B)
        extra = ["--database-url", url] if url else []
        return start_server(
            root / "data", root / "models.toml", "--tenants", str(root / "tenants.toml"), *extra
        )


def client(server: Server, key: str = KEY_A, bearer: bool = False) -> anthropic.Anthropic:
    """The SDK sending its key as ``X-Api-Key`` (its default), or as ``Authorization: Bearer``."""
    if bearer:
        return anthropic.Anthropic(base_url=server.url, auth_token=key, api_key=None, max_retries=0)
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)


def requests(count: int, prefix: str, model: str = "echo") -> list[Any]:
    """Requests as the SDK's typed dicts take them (Any: mypy reads a dict literal as dict[str, Any])."""
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "params": {
                "model": model,
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"hello {prefix} {i}"}],
            },
        }
        for i in range(count)
    ]


def total(batch: MessageBatch) -> int:
    c = batch.request_counts
    return c.processing + c.succeeded + c.errored + c.canceled + c.expired


def wait(
    sdk: anthropic.Anthropic,
    batch_id: str,
    until: Callable[[MessageBatch], bool] = lambda b: b.processing_status == "ended",
    count: int | None = None,
    timeout: float = 60,
) -> MessageBatch:
    deadline = time.monotonic() + timeout
    while True:
        batch = sdk.messages.batches.retrieve(batch_id)
        if count is not None:
            assert total(batch) == count, batch.request_counts
        if until(batch):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)


def results(sdk: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line in sdk.messages.batches.results(batch_id):
        assert line.custom_id not in found, f"{line.custom_id} twice"
        found[line.custom_id] = line.result
    return found


def test_a_batch_runs_and_its_results_hold_every_request_once(server: Server) -> None:
    sdk = client(server)
    made = sdk.messages.batches.create(requests=requests(12, "run"))
    assert made.id.startswith("msgbatch_") and made.processing_status == "in_progress"
    assert total(made) == 12
    ended = wait(sdk, made.id, count=12)
    assert ended.request_counts.succeeded == 12 and ended.ended_at is not None
    assert ended.results_url == f"{server.url}/v1/messages/batches/{made.id}/results"
    got = results(sdk, made.id)
    assert set(got) == {f"run-{i}" for i in range(12)}
    for custom_id, result in got.items():
        assert result.type == "succeeded"
        assert result.message.content[0].text == f"hello {custom_id.replace('-', ' ')}"
    raw = sdk.get(ended.results_url, cast_to=str)
    assert raw.endswith("\n") and "\n\n" not in raw and raw.count("\n") == 12
    assert ended.model_extra is not None  # bulkinfer's own fields, kept by the SDK
    assert ended.model_extra["estimated_cost_usd"] == 0.0  # echo: a local model, no per-token charge
    prices: dict[str, Any] = ended.to_dict()["prices"]  # type: ignore[assignment]
    assert prices["source"] == "local model: no per-token charge"


def test_a_create_sent_again_returns_the_same_batch(server: Server) -> None:
    sdk = client(server, bearer=True)  # Authorization: Bearer
    first = sdk.messages.batches.create(requests=requests(3, "again"))
    second = sdk.messages.batches.create(requests=requests(3, "again"))
    assert first.id == second.id
    assert sdk.messages.batches.retrieve(first.id).id == first.id


def test_list_pages_newest_first_with_after_and_before_id(server: Server) -> None:
    sdk = client(server, KEY_B)
    made = [sdk.messages.batches.create(requests=requests(1, f"list{i}", "slow-echo")).id for i in range(5)]
    listed = [b.id for b in sdk.messages.batches.list(limit=2)]
    mine = [i for i in listed if i in made]
    assert mine == made[::-1] and len(set(listed)) == len(listed)
    page = sdk.messages.batches.list(limit=2, after_id=made[3])
    assert [b.id for b in page.data] == [made[2], made[1]] and page.has_more
    page = sdk.messages.batches.list(limit=2, before_id=made[1])
    assert [b.id for b in page.data] == [made[3], made[2]] and page.has_more
    page = sdk.messages.batches.list(limit=1000, before_id=made[3])
    assert [b.id for b in page.data] == [made[4]] and not page.has_more


def _bad(request: dict[str, Any], **change: Any) -> Any:
    return {**request, "params": {**request["params"], **change}}


BAD_CREATES: dict[str, tuple[list[Any], str]] = {
    "bad custom_id": ([{**requests(1, "x")[0], "custom_id": "a/b"}], "requests.0.custom_id"),
    "duplicate": ([*requests(2, "dup"), requests(1, "dup")[0]], "requests.2.custom_id"),
    "no model": ([{"custom_id": "m", "params": {"max_tokens": 5}}], "requests.0.params.model"),
    "unknown model": ([_bad(requests(1, "u")[0], model="nosuch")], "requests.0.params.model: model 'nosuch"),
    "not the tenant's": ([_bad(requests(1, "t")[0], model="picky")], "requests.0.params.model: model 'picky"),
    "empty messages": ([*requests(1, "ok"), _bad(requests(1, "e")[0], messages=[])], "requests.1.params"),
    "stream": ([*requests(2, "s"), _bad(requests(1, "st")[0], stream=True)], "requests.2.params.stream"),
    "two models": ([*requests(1, "a"), *requests(1, "b", "slow-echo")], "requests.1.params.model"),
    "no requests": ([], "requests"),
    "an embeddings model": ([_bad(requests(1, "e")[0], model="all-minilm-l6-v2")], "requests.0.params: "),
    "over the server's quota": (requests(1001, "many"), "requests: 1,001 requests, over the 1,000"),
    "a request over a line": ([_bad(requests(1, "big")[0], system="x" * 25_000_000)], "requests.0: 25,000,"),
}


@pytest.mark.parametrize("case", BAD_CREATES)
def test_a_bad_create_is_a_400_and_makes_no_batch(server: Server, case: str) -> None:
    sent, named = BAD_CREATES[case]
    sdk = client(server, KEY_B if case == "not the tenant's" else KEY_A)
    before = [b.id for b in sdk.messages.batches.list(limit=1000)]
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.batches.create(requests=sent)
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert body["error"]["type"] == "invalid_request_error" and named in body["error"]["message"]
    assert [b.id for b in sdk.messages.batches.list(limit=1000)] == before


def test_stream_false_is_a_batch_request_like_any_other(server: Server) -> None:
    sdk = client(server)
    made = sdk.messages.batches.create(requests=[_bad(requests(1, "nostream")[0], stream=False)])
    wait(sdk, made.id, count=1)
    assert results(sdk, made.id)["nostream-0"].type == "succeeded"


def test_a_bad_param_is_named_once(server: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client(server).messages.batches.create(requests=[_bad(requests(1, "neg")[0], max_tokens=-1)])
    assert "requests.0.params.max_tokens: " in refused.value.message


@pytest.mark.parametrize(
    "identifier", ["msgbatch_ＡＢ", "msgbatch_../x", "../../v1/models", "msgbatch_" + "a" * 65]
)
def test_an_id_that_cannot_be_a_batch_is_not_found(server: Server, identifier: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(server).messages.batches.retrieve(identifier)
    body = missing.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "not_found_error"


def test_results_whose_files_were_removed_are_not_found(server: Server) -> None:
    sdk = client(server)
    made = sdk.messages.batches.create(requests=requests(2, "removed"))
    wait(sdk, made.id)
    for out in server.data_dir.glob(f"s3/*/a/batches/{made.id.removeprefix('msgbatch_')}/*.out"):
        out.unlink()
    with pytest.raises(anthropic.NotFoundError, match="removed"):
        list(sdk.messages.batches.results(made.id))
    assert sdk.messages.batches.delete(made.id).id == made.id


def test_cancel_mid_run_keeps_the_finished_and_cancels_the_rest(server: Server) -> None:
    sdk = client(server)
    made = sdk.messages.batches.create(requests=requests(400, "cancel", "slow-echo"))
    wait(sdk, made.id, lambda b: b.request_counts.succeeded > 0, count=400)
    canceling = sdk.messages.batches.cancel(made.id)
    assert canceling.processing_status in ("canceling", "ended") and canceling.cancel_initiated_at
    ended = wait(sdk, made.id, count=400)
    counts = ended.request_counts
    assert 0 < counts.succeeded < 400 and counts.canceled > 0 and counts.processing == 0
    assert counts.succeeded + counts.canceled + counts.errored == 400
    got = results(sdk, made.id)
    assert set(got) == {f"cancel-{i}" for i in range(400)}
    kinds = [r.type for r in got.values()]
    assert kinds.count("succeeded") == counts.succeeded and kinds.count("canceled") == counts.canceled
    assert sdk.messages.batches.cancel(made.id) == ended


def test_a_batch_canceled_before_it_runs_has_every_request_canceled(server: Server) -> None:
    sdk = client(server)
    busy = [sdk.messages.batches.create(requests=requests(300, f"busy{i}", "slow-echo")) for i in range(2)]
    waiting = sdk.messages.batches.create(requests=requests(3, "waiting", "slow-echo"))
    sdk.messages.batches.cancel(waiting.id)
    for batch in busy:
        sdk.messages.batches.cancel(batch.id)
    ended = wait(sdk, waiting.id, count=3)
    assert ended.request_counts.canceled == 3
    assert {i: r.type for i, r in results(sdk, waiting.id).items()} == {
        f"waiting-{i}": "canceled" for i in range(3)
    }
    for batch in busy:
        wait(sdk, batch.id)


def test_delete_waits_for_the_end_then_forgets_the_batch(server: Server) -> None:
    sdk = client(server)
    made = sdk.messages.batches.create(requests=requests(300, "delete", "slow-echo"))
    with pytest.raises(anthropic.BadRequestError, match="cancel it first"):
        sdk.messages.batches.delete(made.id)
    sdk.messages.batches.cancel(made.id)
    wait(sdk, made.id)
    deleted = sdk.messages.batches.delete(made.id)
    assert deleted.id == made.id and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.batches.retrieve(made.id)
    with pytest.raises(anthropic.NotFoundError):
        list(sdk.messages.batches.results(made.id))
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.batches.delete(made.id)


def test_keys_either_way_and_no_tenant_sees_another_s_batch(server: Server) -> None:
    mine = client(server).messages.batches.create(requests=requests(2, "auth"))
    bearer = client(server, bearer=True)
    assert wait(bearer, mine.id).request_counts.succeeded == 2
    with pytest.raises(anthropic.AuthenticationError):
        client(server, "not-a-key-of-ours-0123").messages.batches.retrieve(mine.id)
    other = client(server, KEY_B).messages.batches
    for call in (other.retrieve, other.cancel, other.delete, lambda i: list(other.results(i))):
        with pytest.raises(anthropic.NotFoundError):
            call(mine.id)
    with pytest.raises(anthropic.NotFoundError):
        other.list(after_id=mine.id)
    assert client(server).messages.batches.retrieve(mine.id).processing_status == "ended"


def test_a_request_the_model_fails_is_an_errored_result(server: Server) -> None:
    sdk = client(server)
    sent = requests(3, "picky", "picky")
    sent[1]["params"]["messages"][0]["content"] = "please EXPLODE"
    made = sdk.messages.batches.create(requests=sent)
    ended = wait(sdk, made.id, count=3, timeout=120)
    assert ended.request_counts.succeeded == 2 and ended.request_counts.errored == 1
    got = results(sdk, made.id)
    assert got["picky-0"].type == got["picky-2"].type == "succeeded"
    errored = got["picky-1"]
    assert errored.type == "errored" and errored.error.type == "error"
    assert errored.error.error.type == "api_error" and "EXPLODE" in errored.error.error.message
    used = [got[f"picky-{i}"].message.usage for i in (0, 2)]  # the cost of the committed results
    tokens = sum(u.input_tokens for u in used), sum(u.output_tokens for u in used)
    assert ended.to_dict()["estimated_cost_usd"] == round((tokens[0] * 2 + tokens[1] * 10) / 1e6 * 0.5, 6)
    prices: dict[str, Any] = ended.to_dict()["prices"]  # type: ignore[assignment]
    assert prices["inputPerMillion"] == 2


def test_a_batch_survives_kill_9_and_a_restart(server: Server) -> None:
    sdk = client(server)
    made = sdk.messages.batches.create(requests=requests(300, "kill", "slow-echo"))
    wait(sdk, made.id, lambda b: b.request_counts.succeeded > 0, count=300)
    server.stop(signal.SIGKILL)
    restarted = _start(server.data_dir.parent, server.database_url)
    server.url, server.process = restarted.url, restarted.process  # (the fixture stops this one)
    sdk = client(server)
    ended = wait(sdk, made.id, count=300, timeout=90)
    assert ended.request_counts.succeeded == 300
    got = results(sdk, made.id)
    assert set(got) == {f"kill-{i}" for i in range(300)}
    assert {r.type for r in got.values()} == {"succeeded"}
