"""Unit tests for ``providers.batchapi``: when to poll, how records are cut into provider jobs, and
`BatchProvider` driven over an in-memory batch API on a real state store (slots, resubmission, restarts,
stop, on demand), plus the catalog's checks of the ``*-batch`` keys."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkinfer.domain.request import (
    UNSENT,
    ChatRequest,
    ChatResult,
    Message,
    Outcome,
    RecordError,
    Request,
    TextPart,
    Usage,
)
from bulkinfer.errors import ConfigError
from bulkinfer.providers.base import Provider
from bulkinfer.providers.batchapi import provider as provider_module
from bulkinfer.providers.batchapi.api import Answer, BatchApi, Save, Status, read_line
from bulkinfer.providers.batchapi.polling import MIN_POLL_S, Bell, next_poll
from bulkinfer.providers.batchapi.provider import BatchProvider, _cut
from bulkinfer.providers.catalog import Catalog, ModelSpec, _parse
from bulkinfer.providers.remote.call import Permanent
from bulkinfer.store.provider_jobs import CREATING, ENDED, RUNNING, ProviderJob
from bulkinfer.store.state import StateStore

MODEL = "gpt-batch"
JOB = "job-1"
WAIT_S = 30.0
"""A bound on every wait, so a hang fails the test instead of stalling the run (never a timing check)."""


# the in-memory batch API


@dataclass
class FakeJob:
    provider_id: str
    token: str
    keys: tuple[str, ...]
    ended: bool = False
    cancelled: bool = False


class FakeBatchApi(BatchApi):
    """A provider's batch API in memory: it records every create and cancel, ends a provider job when the
    test says so (or at its first poll, with ``auto_end``), and fails the records ``failures`` names."""

    def __init__(self, *, auto_end: bool = True, keeps_inputs: bool = True) -> None:
        self.auto_end = auto_end
        self.keeps_inputs = keeps_inputs
        self.creates: list[tuple[str, list[bytes] | None, ProviderJob]] = []
        """Every create call: the token, the lines (None for a re-create) and the row as given."""
        self.jobs: dict[str, FakeJob] = {}
        self.failures: dict[str, list[int]] = {}
        """A record key to the code it fails with on its 1st, 2nd... attempt (none past the list)."""
        self.finished: set[str] = set()
        """The records a cancelled provider job still answers (it finished them before the cancel)."""
        self.cancels: list[str] = []
        self.polled: set[str] = set()
        self.max_live = 0
        self.problems: list[str] = []
        """What the provider got wrong, kept to assert (an exception here would only be retried)."""
        self.on_create: Callable[[], None] | None = None
        self.closed = 0

    def live(self) -> list[FakeJob]:
        return [job for job in self.jobs.values() if not job.ended]

    def end(self, provider_id: str) -> None:
        self.jobs[provider_id].ended = True

    def line(self, custom_id: str, request: Request) -> bytes:
        return orjson.dumps({"custom_id": custom_id, "key": request.key})

    async def create(self, job: ProviderJob, lines: list[bytes] | None, save: Save) -> str:
        self.creates.append((job.token, lines, job))
        if lines is None and not self.keeps_inputs:
            raise Permanent("the provider kept no input to create this job from")
        if lines is not None:
            sent = [orjson.loads(line) for line in lines]
            if [s["key"] for s in sent] != list(job.keys):
                self.problems.append(f"lines of {job.token} are not its keys: {sent} vs {job.keys}")
            if [s["custom_id"] for s in sent] != [str(n) for n in range(len(sent))]:
                self.problems.append(f"custom ids of {job.token} are not their places: {sent}")
        if self.on_create is not None:
            self.on_create()
        existing = next((j for j in self.jobs.values() if j.token == job.token), None)
        if existing is not None:  # idempotent under the token
            return existing.provider_id
        provider_id = f"batch_{len(self.jobs) + 1}"
        self.jobs[provider_id] = FakeJob(provider_id, job.token, job.keys)
        self.max_live = max(self.max_live, len(self.live()))
        return provider_id

    async def status(self, provider_id: str) -> Status:
        job = self.jobs[provider_id]
        self.polled.add(provider_id)
        if self.auto_end:
            job.ended = True
        state = "cancelled" if job.cancelled else "completed" if job.ended else "in_progress"
        return Status(state, job.ended, total=len(job.keys))

    async def results(self, job: ProviderJob) -> dict[int, Answer]:
        assert job.provider_id is not None
        fake = self.jobs[job.provider_id]
        if not fake.ended:
            self.problems.append(f"results of {job.provider_id} read before it ended")
        answers: dict[int, Answer] = {}
        for n, key in enumerate(fake.keys):
            if fake.cancelled and key not in self.finished:
                continue
            codes = self.failures.get(key, [])
            code = codes[job.attempt - 1] if job.attempt <= len(codes) else None
            if code is None:
                answers[n] = Answer(body={"text": f"answer to {key}"})
            else:
                answers[n] = Answer(error=RecordError(code, f"{key} failed with {code}", "ProviderError"))
        return answers

    def outcome(self, body: dict[str, Any], request: Request) -> Outcome:
        return ChatResult(text=body["text"], stop_reason="end_turn", usage=Usage(1, 1))

    async def cancel(self, provider_id: str) -> None:
        self.cancels.append(provider_id)
        job = self.jobs[provider_id]
        job.cancelled = job.ended = True

    async def aclose(self) -> None:
        self.closed += 1


class OnDemand(Provider):
    """The on-demand model: answers every request at once, saying it did."""

    def __init__(self) -> None:
        self.calls: list[list[str | None]] = []

    async def infer(self, requests: Sequence[Request]) -> list[Outcome]:
        self.calls.append([r.key for r in requests])
        return [
            ChatResult(text=f"on demand {r.key}", stop_reason="end_turn", usage=Usage()) for r in requests
        ]


# helpers


def batch_spec(**keys: Any) -> ModelSpec:
    """The catalog's spec of an openai-batch model with these keys (polled every 0.05 s at most)."""
    settings: dict[str, Any] = {"base_url": "http://127.0.0.1:9/v1", "poll_seconds": 0.05, **keys}
    lines = [f"[models.{MODEL}]", 'provider = "openai-batch"']
    lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in settings.items()]
    return _parse("\n".join(lines), "test catalog")[MODEL]


def requests(n: int, start: int = 0) -> list[Request]:
    return [
        ChatRequest(messages=(Message("user", (TextPart(f"question {i}"),)),), key=f"job:{i}")
        for i in range(start, start + n)
    ]


def texts(outcomes: Sequence[Outcome]) -> list[Any]:
    """Each outcome's text, or the outcome itself where it is not a result."""
    return [o.text if isinstance(o, ChatResult) else o for o in outcomes]


def answers(keys: Sequence[int]) -> list[str]:
    return [f"answer to job:{i}" for i in keys]


def token_of(job_id: str, seq: int) -> str:
    """The token of a row a test writes itself (the provider draws its own at random)."""
    return f"test-{job_id}-{seq}"


def seq_token(store: StateStore, seq: int) -> str:
    """The token the provider drew for its provider job at ``seq``."""
    return next(r.token for r in store.provider_jobs().of_job(JOB) if r.seq == seq)


def row_of(
    seq: int, keys: tuple[str, ...], *, state: str = CREATING, provider_file: str | None = None
) -> ProviderJob:
    now = time.time()
    return ProviderJob(
        token=token_of(JOB, seq),
        job_id=JOB,
        model=MODEL,
        seq=seq,
        attempt=1,
        keys=keys,
        state=state,
        created_at=now,
        heartbeat_at=now,
        provider_file=provider_file,
        total=len(keys),
    )


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    state = StateStore.at(tmp_path / "state.db")
    yield state
    state.close()


def batch_provider(spec: ModelSpec, api: FakeBatchApi, store: StateStore, **extra: Any) -> BatchProvider:
    return BatchProvider(spec, api, store.provider_jobs(), JOB, Bell(), **extra)


async def run(provider: BatchProvider, batch: Sequence[Request]) -> list[Outcome]:
    try:
        return await asyncio.wait_for(provider.infer(batch), WAIT_S)
    finally:
        await provider.aclose()


# pure logic


def test_next_poll_is_shortest_while_a_job_moves_or_is_nearly_done() -> None:
    assert next_poll(60.0, changed=True, near_done=False, longest_s=60.0) == MIN_POLL_S
    assert next_poll(60.0, changed=False, near_done=True, longest_s=60.0) == MIN_POLL_S
    assert next_poll(8.0, changed=True, near_done=True, longest_s=60.0) == MIN_POLL_S


def test_next_poll_doubles_while_nothing_changes_up_to_the_longest() -> None:
    waits = [MIN_POLL_S]
    for _ in range(12):
        waits.append(next_poll(waits[-1], changed=False, near_done=False, longest_s=60.0))
    assert waits[:8] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert set(waits[7:]) == {60.0}
    assert next_poll(0.1, changed=False, near_done=False, longest_s=60.0) == MIN_POLL_S  # never shorter
    # a longest wait under MIN_POLL_S is every wait
    assert next_poll(0.05, changed=True, near_done=False, longest_s=0.05) == 0.05
    assert next_poll(0.05, changed=False, near_done=False, longest_s=0.05) == 0.05


def test_cut_by_records_keeping_order() -> None:
    lines = [b"x" * 9 for _ in range(7)]
    parts = _cut(list(range(7)), lines, 3, 10_000)
    assert [[i for i, _ in part] for part in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    assert _cut([], [], 3, 10_000) == []


def test_cut_by_bytes_counting_each_newline() -> None:
    lines = [b"x" * 9 for _ in range(7)]  # 10 bytes each with its newline
    parts = _cut(list(range(7)), lines, 100, 30)
    assert [[i for i, _ in part] for part in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    parts = _cut(list(range(7)), lines, 100, 29)
    assert [[i for i, _ in part] for part in parts] == [[0, 1], [2, 3], [4, 5], [6]]


def test_cut_puts_a_line_over_the_byte_limit_in_a_part_of_its_own() -> None:
    lines = [b"a" * 5, b"b" * 100, b"c" * 5, b"d" * 5, b"e" * 100]
    indexes = [9, 4, 7, 2, 5]  # the records' places in the batch, in any order: kept as given
    parts = _cut(indexes, lines, 10, 20)
    assert [[i for i, _ in part] for part in parts] == [[9], [4], [7, 2], [5]]
    assert [line for part in parts for _, line in part] == lines  # each index keeps its own line


# BatchProvider


async def test_records_run_as_provider_jobs_never_more_at_once_than_the_slots(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # heartbeats stay fresh however slow the machine is (staleness has its own test in the store's)
    monkeypatch.setattr(provider_module, "STALE_POLLS", 100_000)
    spec = batch_spec(max_records_per_job=3, max_provider_jobs=2)
    api = FakeBatchApi(auto_end=False)
    held: list[int] = []
    api.on_create = lambda: held.append(store.provider_jobs().live(MODEL, 3600))
    provider = batch_provider(spec, api, store)
    task = asyncio.create_task(provider.infer(requests(10)))
    expected = math.ceil(10 / 3)

    async def end_one(open_jobs: int) -> None:
        await until(lambda: len(api.live()) >= open_jobs)
        api.end(api.live()[0].provider_id)

    for ended in range(expected):  # the provider ends them one by one, each once the slots are full
        await end_one(min(2, expected - ended))
    outcomes = await asyncio.wait_for(task, WAIT_S)
    await provider.aclose()

    assert texts(outcomes) == answers(range(10))
    assert len(api.creates) == expected
    assert api.max_live == 2
    assert held and max(held) <= 2  # the store's slots, as each create was sent
    assert sorted(job.keys for job in api.jobs.values()) == [
        ("job:0", "job:1", "job:2"),
        ("job:3", "job:4", "job:5"),
        ("job:6", "job:7", "job:8"),
        ("job:9",),
    ]
    rows = store.provider_jobs().of_job(JOB)
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert {r.state for r in rows} == {ENDED}
    assert {r.provider_status for r in rows} == {"completed"}
    assert api.problems == []


async def test_a_record_failed_with_a_5xx_is_sent_again_and_a_4xx_is_not(store: StateStore) -> None:
    api = FakeBatchApi()
    api.failures = {"job:1": [500], "job:2": [400], "job:3": [500, 503, 500, 500]}
    outcomes = await run(batch_provider(batch_spec(max_attempts=3), api, store), requests(5))

    assert texts(outcomes[:2]) == answers([0, 1])
    assert [o.attempts for o in outcomes[:2] if isinstance(o, ChatResult)] == [1, 2]
    assert outcomes[2] == RecordError(400, "job:2 failed with 400", "ProviderError", 1)  # not resent
    assert outcomes[3] == RecordError(500, "job:3 failed with 500", "ProviderError", 3)  # max_attempts
    assert texts(outcomes[4:]) == answers([4])
    assert [(job.attempt, job.keys) for _, _, job in api.creates] == [
        (1, ("job:0", "job:1", "job:2", "job:3", "job:4")),
        (2, ("job:1", "job:3")),
        (3, ("job:3",)),
    ]
    assert api.problems == []


async def test_a_provider_job_refused_for_good_fails_its_records(store: StateStore) -> None:
    class Refusing(FakeBatchApi):
        async def create(self, job: ProviderJob, lines: list[bytes] | None, save: Save) -> str:
            self.creates.append((job.token, lines, job))
            raise Permanent("invalid input file", 400)

    api = Refusing()
    outcomes = await run(batch_provider(batch_spec(), api, store), requests(2))
    assert [(o.code, o.kind) for o in outcomes if isinstance(o, RecordError)] == [
        (400, "ValidationError")
    ] * 2
    assert all("invalid input file" in o.message for o in outcomes if isinstance(o, RecordError))
    assert len(api.creates) == 1
    (row,) = store.provider_jobs().of_job(JOB)
    assert (row.state, row.provider_status) == (ENDED, "refused")


async def test_a_restarted_provider_follows_the_provider_jobs_of_the_records_sent_before(
    store: StateStore,
) -> None:
    spec = batch_spec(max_records_per_job=3, max_provider_jobs=2)
    api = FakeBatchApi(auto_end=False)
    batch = requests(6)
    first = batch_provider(spec, api, store)
    task = asyncio.create_task(first.infer(batch))
    await until(lambda: len(api.polled) == 2)  # both created, their ids saved
    task.cancel()  # the process goes away
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await first.aclose()
    rows = store.provider_jobs().of_job(JOB)
    assert [(r.state, r.provider_id is not None) for r in rows] == [(RUNNING, True)] * 2

    api.auto_end = True
    second = batch_provider(spec, api, store)
    outcomes = await asyncio.wait_for(second.infer(batch), WAIT_S)
    assert texts(outcomes) == answers(range(6))
    assert len(api.creates) == 2  # re-attached: nothing sent again

    more = await asyncio.wait_for(second.infer(requests(2, start=6)), WAIT_S)  # new records: a new job
    await second.aclose()
    assert texts(more) == answers([6, 7])
    assert [(token, job.keys) for token, _, job in api.creates[2:]] == [
        (seq_token(store, 3), ("job:6", "job:7"))
    ]
    assert {r.state for r in store.provider_jobs().of_job(JOB)} == {ENDED}
    assert api.problems == []


async def test_a_provider_job_killed_before_anything_was_sent_is_ended_and_its_records_sent_afresh(
    store: StateStore,
) -> None:
    jobs = store.provider_jobs()
    assert jobs.claim(row_of(1, ("job:0", "job:1")), 10, 600)
    api = FakeBatchApi()
    outcomes = await run(batch_provider(batch_spec(), api, store), requests(3))

    assert texts(outcomes) == answers(range(3))
    assert [(token, lines is not None, job.keys) for token, lines, job in api.creates] == [
        (seq_token(store, 2), True, ("job:0", "job:1", "job:2"))
    ]
    first, second = jobs.of_job(JOB)
    assert (first.state, first.provider_status, first.provider_id) == (ENDED, "not created", None)
    assert (second.state, second.provider_status) == (ENDED, "completed")


async def test_a_create_cut_short_after_its_input_was_kept_is_sent_again_under_the_same_token(
    store: StateStore,
) -> None:
    jobs = store.provider_jobs()
    assert jobs.claim(row_of(1, ("job:0", "job:1"), provider_file="file-abc"), 10, 600)
    api = FakeBatchApi(keeps_inputs=True)
    outcomes = await run(batch_provider(batch_spec(), api, store), requests(2))

    assert texts(outcomes) == answers(range(2))
    assert [(token, lines) for token, lines, _ in api.creates] == [(token_of(JOB, 1), None)]
    assert api.creates[0][2].provider_file == "file-abc"
    (row,) = jobs.of_job(JOB)
    assert (row.state, row.provider_id, row.provider_file) == (ENDED, "batch_1", "file-abc")


async def test_a_create_cut_short_whose_input_was_not_kept_is_sent_with_its_lines_written_again(
    store: StateStore,
) -> None:
    jobs = store.provider_jobs()
    assert jobs.claim(row_of(1, ("job:1", "job:0"), provider_file="sent"), 10, 600)
    api = FakeBatchApi(keeps_inputs=False)
    outcomes = await run(batch_provider(batch_spec(), api, store), requests(2))

    assert texts(outcomes) == answers(range(2))
    assert [(token, lines is not None) for token, lines, _ in api.creates] == [(token_of(JOB, 1), True)]
    assert api.problems == []  # the lines are in the row's order, under their places there


async def test_a_refused_provider_job_is_not_created_again_after_a_restart(store: StateStore) -> None:
    jobs = store.provider_jobs()
    refused = row_of(1, ("job:0", "job:1"), provider_file="file-abc")
    assert jobs.claim(refused, 10, 600)
    jobs.save(refused, state=ENDED, provider_status="refused", message="invalid input file")
    api = FakeBatchApi()
    await run(batch_provider(batch_spec(), api, store), requests(2))
    assert token_of(JOB, 1) not in [token for token, _, _ in api.creates]
    assert (jobs.of_job(JOB)[0].state, jobs.of_job(JOB)[0].provider_status) == (ENDED, "refused")


async def test_stop_cancels_the_provider_jobs_keeps_what_they_finished_and_leaves_the_rest_unsent(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider_module, "STALE_POLLS", 100_000)
    spec = batch_spec(max_records_per_job=2, max_provider_jobs=2)
    api = FakeBatchApi(auto_end=False)
    provider = batch_provider(spec, api, store)
    task = asyncio.create_task(provider.infer(requests(6)))
    await until(lambda: len(api.polled) == 2)  # the third part waits for a slot
    api.finished = {job.keys[0] for job in api.jobs.values()}
    provider.stop()
    outcomes = await asyncio.wait_for(task, WAIT_S)
    await provider.aclose()

    assert sorted(api.cancels) == sorted(api.jobs)
    assert len(api.creates) == 2
    expected = [f"answer to job:{i}" if f"job:{i}" in api.finished else UNSENT for i in range(6)]
    assert texts(outcomes) == expected
    rows = store.provider_jobs().of_job(JOB)
    assert {r.state for r in rows} == {ENDED}
    assert sorted(r.provider_id or "" for r in rows if r.provider_status == "cancelled") == sorted(api.jobs)
    # a part whose claim was under way as the stop came may hold a row: one never created
    assert {r.provider_status for r in rows if r.provider_id is None} <= {"not created"}


async def test_few_records_and_retries_of_few_go_on_demand(store: StateStore) -> None:
    spec = batch_spec(min_records_per_job=3, max_records_per_job=5, on_demand="gpt")
    od = OnDemand()
    api = FakeBatchApi()
    api.failures = {"job:3": [500]}
    provider = batch_provider(spec, api, store, on_demand=lambda: od)
    few = await asyncio.wait_for(provider.infer(requests(2)), WAIT_S)
    assert texts(few) == ["on demand job:0", "on demand job:1"]
    assert api.creates == []

    outcomes = await run(provider, requests(4, start=2))
    assert texts(outcomes) == ["answer to job:2", "on demand job:3", "answer to job:4", "answer to job:5"]
    assert [job.keys for _, _, job in api.creates] == [("job:2", "job:3", "job:4", "job:5")]
    assert od.calls == [["job:0", "job:1"], ["job:3"]]


async def test_a_part_smaller_than_min_records_per_job_goes_on_demand(store: StateStore) -> None:
    spec = batch_spec(min_records_per_job=3, max_records_per_job=5, on_demand="gpt")
    od = OnDemand()
    api = FakeBatchApi()
    outcomes = await run(batch_provider(spec, api, store, on_demand=lambda: od), requests(7))
    assert texts(outcomes) == [*answers(range(5)), "on demand job:5", "on demand job:6"]
    assert [job.keys for _, _, job in api.creates] == [tuple(f"job:{i}" for i in range(5))]


async def test_everything_goes_on_demand_once_the_deadline_is_nearer_than_the_turnaround(
    store: StateStore,
) -> None:
    spec = batch_spec(turnaround_hours=24, max_records_per_job=2, on_demand="gpt")
    od = OnDemand()
    api = FakeBatchApi()
    soon = batch_provider(spec, api, store, on_demand=lambda: od, deadline=time.time() + 3600)
    outcomes = await run(soon, requests(5))
    assert texts(outcomes) == [f"on demand job:{i}" for i in range(5)]
    assert api.creates == []
    assert od.calls == [[f"job:{i}" for i in range(5)]]

    later = batch_provider(spec, api, store, on_demand=lambda: od, deadline=time.time() + 48 * 3600)
    outcomes = await run(later, requests(2, start=5))
    assert texts(outcomes) == answers([5, 6])
    assert len(api.creates) == 1


# the catalog's *-batch keys


GPT = '[models.gpt]\nprovider = "openai"\n'


def catalog_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Catalog.load(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'provider = "bedrock-batch"\nrole_arn = "arn:aws:iam::1:role/R"',
            "models.m.staging: bedrock-batch needs it",
        ),
        ('provider = "bedrock-batch"\nstaging = "s3://b/p/"', "models.m.role_arn: bedrock-batch needs it"),
        (
            'provider = "bedrock-batch"\nstaging = "/data/staging"\nrole_arn = "arn:aws:iam::1:role/R"',
            "models.m.staging: an s3:// prefix",
        ),
        (
            'provider = "openai-batch"\nstaging = "s3://b/p/"',
            "models.m.staging: only bedrock-batch takes this key",
        ),
        (
            'provider = "openai"\nmax_provider_jobs = 2',
            "models.m.max_provider_jobs: only provider batch APIs",
        ),
        ('provider = "anthropic"\non_demand = "gpt"', "models.m.on_demand: only provider batch APIs"),
        ('provider = "echo"\npoll_seconds = 5', "models.m.poll_seconds: only remote providers take this key"),
        (
            'provider = "openai-batch"\non_demand = "nope"',
            "models.m.on_demand: no model 'nope' in the catalog",
        ),
        ('provider = "openai-batch"\non_demand = "m"', "models.m.on_demand: names this model itself"),
        (
            'provider = "openai-batch"\nmin_records_per_job = 10\nmax_records_per_job = 5',
            "models.m.min_records_per_job: more than max_records_per_job",
        ),
    ],
)
def test_batch_keys_are_checked(tmp_path: Path, entry: str, message: str) -> None:
    assert message in catalog_error(tmp_path, f"{GPT}[models.m]\n{entry}\n")


def test_on_demand_must_not_be_a_batch_api_itself(tmp_path: Path) -> None:
    text = '[models.other]\nprovider = "anthropic-batch"\n'
    text += '[models.m]\nprovider = "openai-batch"\non_demand = "other"\n'
    assert "models.m.on_demand: 'other' is a batch API itself" in catalog_error(tmp_path, text)


def test_on_demand_must_be_of_the_same_kind(tmp_path: Path) -> None:
    text = f'{GPT}kind = "embedding"\n[models.m]\nprovider = "openai-batch"\non_demand = "gpt"\n'
    assert "models.m.on_demand: 'gpt' is a embedding model" in catalog_error(tmp_path, text)


def test_a_batch_model_takes_as_many_records_and_jobs_as_its_provider(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        f'{GPT}[models.m]\nprovider = "openai-batch"\non_demand = "gpt"\n'
        "max_provider_jobs = 4\nmax_records_per_job = 1000\n"
    )
    spec = Catalog.load(path).get("m")
    assert spec.remote is not None and spec.remote.batch is not None
    assert (spec.concurrency, spec.batch_size) == (4, 1000)
    assert spec.remote.batch.on_demand == "gpt"
    assert spec.default_dialect == "openai-chat"


# what a hostile review found


async def test_two_runs_of_one_job_id_in_two_stores_never_share_a_provider_job(tmp_path: Path) -> None:
    api = FakeBatchApi()
    day_one, day_two = StateStore.at(tmp_path / "one.db"), StateStore.at(tmp_path / "two.db")
    try:
        await run(batch_provider(batch_spec(), api, day_one), requests(2))
        await run(batch_provider(batch_spec(), api, day_two), requests(2))
    finally:
        day_one.close()
        day_two.close()
    assert len(api.jobs) == 2  # each run made its own, under tokens of its own
    assert len({token for token, _, _ in api.creates}) == 2


class ExpiredKeyApi(FakeBatchApi):
    """Its polls are refused (401) until the operator renews the key."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 3

    async def status(self, provider_id: str) -> Status:
        if self.refusals:
            self.refusals -= 1
            raise Permanent("provider refused the request: 401: invalid key", code=401)
        return await super().status(provider_id)


async def test_a_refused_credential_pauses_the_job_instead_of_losing_its_provider_jobs(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider_module, "OUTAGE_BACKOFF_MAX_S", 0.01)
    api = ExpiredKeyApi()
    provider = batch_provider(batch_spec(), api, store)
    outcomes = await run(provider, requests(3))
    assert texts(outcomes) == answers(range(3))
    assert len(api.creates) == 1 and api.cancels == []  # followed through the refusals, not given up
    assert api.refusals == 0


class GarbledApi(FakeBatchApi):
    """Fails one way our own code cannot expect: its results raise a plain error once."""

    def __init__(self) -> None:
        super().__init__()
        self.garbled = 1

    async def results(self, job: ProviderJob) -> dict[int, Answer]:
        if self.garbled:
            self.garbled -= 1
            raise ValueError("unexpected shape")
        return await super().results(job)


async def test_an_unexpected_failure_is_said_on_the_records_and_they_go_again_not_retried_forever(
    store: StateStore,
) -> None:
    api = GarbledApi()
    outcomes = await run(batch_provider(batch_spec(max_attempts=2), api, store), requests(2))
    assert texts(outcomes) == answers(range(2))  # sent again in a second provider job
    assert len(api.creates) == 2
    first = store.provider_jobs().of_job(JOB)[0]
    assert first.provider_status == "unfollowed" and "unexpected shape" in (first.message or "")


async def test_records_a_stop_left_unanswered_use_no_attempt_when_the_job_resumes(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider_module, "STALE_POLLS", 100_000)
    spec = batch_spec(max_attempts=1)
    api = FakeBatchApi(auto_end=False)
    first = batch_provider(spec, api, store)
    task = asyncio.create_task(first.infer(requests(3)))
    await until(lambda: len(api.polled) == 1)
    first.stop()
    assert texts(await asyncio.wait_for(task, WAIT_S)) == [UNSENT] * 3
    await first.aclose()

    api.auto_end = True
    outcomes = await run(batch_provider(spec, api, store), requests(3))  # the job resumed
    assert texts(outcomes) == answers(range(3))  # max_attempts 1, yet sent again: the stop was ours
    assert [job.attempt for _, _, job in api.creates] == [1, 1]


class FailedWholeApi(FakeBatchApi):
    async def status(self, provider_id: str) -> Status:
        job = self.jobs[provider_id]
        job.ended = True
        self.polled.add(provider_id)
        return Status("failed", True, total=len(job.keys), message="input file: line 1 is not JSON")

    async def results(self, job: ProviderJob) -> dict[int, Answer]:
        return {}


async def test_a_provider_job_that_failed_whole_is_sent_again_once_then_its_reason_is_the_error(
    store: StateStore,
) -> None:
    api = FailedWholeApi()
    outcomes = await run(batch_provider(batch_spec(max_attempts=8), api, store), requests(2))
    assert len(api.creates) == 2  # once more, not eight times
    for outcome in outcomes:
        assert isinstance(outcome, RecordError) and outcome.kind == "ProviderJobFailed"
        assert "line 1 is not JSON" in outcome.message


async def test_answers_are_let_go_once_handed_back(store: StateStore) -> None:
    provider = batch_provider(batch_spec(max_records_per_job=2), FakeBatchApi(), store)
    for start in range(0, 10, 2):
        await asyncio.wait_for(provider.infer(requests(2, start=start)), WAIT_S)
    assert provider._follows == {}
    await provider.aclose()


class SurprisingCreateApi(FakeBatchApi):
    """Its first creates make the provider job, then fail in a way nobody expected (an SDK's surprise)."""

    def __init__(self, surprises: int) -> None:
        super().__init__()
        self.surprises = surprises

    async def create(self, job: ProviderJob, lines: list[bytes] | None, save: Save) -> str:
        provider_id = await super().create(job, lines, save)
        if self.surprises:
            self.surprises -= 1
            raise RuntimeError("the SDK could not read the answer")
        return provider_id


async def test_a_create_that_fails_unexpectedly_is_sent_again_under_its_token_not_made_twice(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random.Random, "uniform", lambda self, a, b: 0.0)
    api = SurprisingCreateApi(surprises=provider_module.CREATE_TRIES - 1)
    outcomes = await run(batch_provider(batch_spec(), api, store), requests(3))
    assert texts(outcomes) == answers(range(3))
    assert len(api.jobs) == 1  # found again under its token, not left running beside a second
    assert len({token for token, _, _ in api.creates}) == 1


async def test_a_create_that_keeps_failing_unexpectedly_is_said_on_the_records_which_go_again(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random.Random, "uniform", lambda self, a, b: 0.0)
    api = SurprisingCreateApi(surprises=provider_module.CREATE_TRIES)
    outcomes = await run(batch_provider(batch_spec(max_attempts=2), api, store), requests(2))
    assert texts(outcomes) == answers(range(2))  # the second attempt's provider job answered
    first = min(store.provider_jobs().of_job(JOB), key=lambda r: r.seq)
    assert first.provider_status == "failed here" and "could not read the answer" in (first.message or "")


async def test_records_of_a_create_that_failed_here_go_again_after_a_restart(store: StateStore) -> None:
    jobs = store.provider_jobs()
    failed = row_of(1, ("job:0", "job:1"), provider_file="file-abc")
    assert jobs.claim(failed, 10, 600)
    jobs.save(failed, state=ENDED, provider_status="failed here", message="RuntimeError: a bug")
    api = FakeBatchApi()
    outcomes = await run(batch_provider(batch_spec(max_attempts=2), api, store), requests(2))
    assert texts(outcomes) == answers(range(2))  # not a refusal of the records: they were sent again
    assert token_of(JOB, 1) not in [token for token, _, _ in api.creates]


class HungApi(FakeBatchApi):
    """A provider that stops answering once its jobs are made: polls and cancels never return."""

    async def status(self, provider_id: str) -> Status:
        self.polled.add(provider_id)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def cancel(self, provider_id: str) -> None:
        await asyncio.Event().wait()


async def test_a_stop_gives_up_on_a_provider_that_hangs_instead_of_waiting_for_it(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider_module, "STOPPING_CALL_S", 0.05)
    monkeypatch.setattr(provider_module, "STALE_POLLS", 100_000)
    api = HungApi(auto_end=False)
    provider = batch_provider(batch_spec(), api, store)
    task = asyncio.create_task(provider.infer(requests(2)))
    await until(lambda: len(api.polled) == 1)
    provider.stop()
    # the poll under way when the stop came is let go; the cancel and last polls are given up
    assert texts(await asyncio.wait_for(task, WAIT_S)) == [UNSENT] * 2
    await provider.aclose()
    (row,) = store.provider_jobs().of_job(JOB)
    assert not row.ended  # left to be followed again when the job resumes


def test_anthropic_result_lines_are_read_each_on_its_own() -> None:
    from bulkinfer.providers.batchapi.anthropic_batch import _read

    lines = [
        b'{"custom_id": "0", "result": {"type": "succeeded", "message": {"content": []}}}',
        b'{"custom_id": "1", "result": {"type": "succ',  # garbled: skipped, not the end of the rest
        b'{"custom_id": "2", "result": {"type": "errored", "error": {"type": "error", "error": '
        b'{"type": "overloaded_error", "message": "busy"}}}}',
        b'{"custom_id": "3", "result": {"type": "expired"}}',
        b'{"custom_id": "x", "result": {"type": "succeeded", "message": {}}}',
    ]
    answers_read: dict[int, Answer] = {}
    for line in lines:
        read_line(line, _read, answers_read)
    assert sorted(answers_read) == [0, 2]
    assert answers_read[0].body == {"content": []}
    error = answers_read[2].error
    assert error is not None and error.code == 529 and "busy" in error.message
