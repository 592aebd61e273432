"""The provider simulator, driven by the official openai and anthropic SDKs as a real client would."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from bulkinfer.testing import Outcome, Simulator, SimulatorConfig, SimulatorStats, SimulatorThread
from bulkinfer.testing._openai import embed

IMAGE_URL = "https://example.invalid/cat.png"
IMAGE_B64 = "iVBORw0KGgo="
Clients = tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]


@asynccontextmanager
async def clients(sim: Simulator, timeout: float = 5.0) -> AsyncIterator[Clients]:
    """Both SDKs, unchanged, with retries off so every call the test makes reaches the simulator once."""
    async with (
        openai.AsyncOpenAI(base_url=sim.openai_base_url, api_key="k", max_retries=0, timeout=timeout) as oai,
        anthropic.AsyncAnthropic(
            base_url=sim.anthropic_base_url, api_key="k", max_retries=0, timeout=timeout
        ) as ant,
    ):
        yield oai, ant


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


async def chat(
    oai: openai.AsyncOpenAI, text: str, max_tokens: int | None = None, headers: dict[str, str] | None = None
) -> openai.types.chat.ChatCompletion:
    return await oai.chat.completions.create(
        model="gpt-sim",
        messages=[{"role": "user", "content": text}],
        max_tokens=max_tokens,
        extra_headers=headers,
    )


async def message(
    ant: anthropic.AsyncAnthropic, text: str, max_tokens: int = 64, headers: dict[str, str] | None = None
) -> anthropic.types.Message:
    return await ant.messages.create(
        model="claude-sim",
        max_tokens=max_tokens,
        messages=[{"role": "user", "content": text}],
        extra_headers=headers,
    )


def as_dict(body: object) -> dict[str, Any]:
    """An SDK error's parsed body (typed ``object`` by the SDKs)."""
    assert isinstance(body, dict)
    return body


# Round trips


async def test_chat_round_trip_counts_text_and_images(sim: Simulator) -> None:
    async with clients(sim) as (oai, _):
        reply = await oai.chat.completions.create(
            model="gpt-sim",
            messages=[
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "describe this"},
                        {"type": "image_url", "image_url": {"url": IMAGE_URL}},
                    ],
                },
            ],
        )
        cut = await chat(oai, "a rather long question", max_tokens=2)

    assert reply.model == "gpt-sim"
    assert reply.choices[0].message.content == "sim: describe this"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == math.ceil(len("be brief" + "describe this") / 4) + 85
    assert reply.usage.completion_tokens == math.ceil(len("sim: describe this") / 4)
    assert cut.choices[0].message.content == "sim: a r"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 2


async def test_embeddings_are_deterministic_in_both_encodings(sim: Simulator) -> None:
    async with clients(sim) as (oai, _):
        default = await oai.embeddings.create(model="emb-sim", input=["alpha", "beta"])  # SDK asks for base64
        floats = await oai.embeddings.create(
            model="emb-sim", input="alpha", dimensions=4, encoding_format="float"
        )

    assert [len(d.embedding) for d in default.data] == [8, 8]
    assert default.data[0].embedding == pytest.approx(embed("alpha", 8), abs=1e-6)
    assert default.usage.prompt_tokens == 2 + 1  # ceil(5 / 4) + ceil(4 / 4)
    assert floats.data[0].embedding == pytest.approx(embed("alpha", 4))
    assert math.fsum(x * x for x in floats.data[0].embedding) == pytest.approx(1.0)


async def test_messages_round_trip_with_system_and_image(sim: Simulator) -> None:
    async with clients(sim) as (_, ant):
        reply = await ant.messages.create(
            model="claude-sim",
            max_tokens=64,
            system="be brief",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": IMAGE_B64},
                        },
                        {"type": "text", "text": "what is it"},
                    ],
                }
            ],
        )
        cut = await message(ant, "a rather long question", max_tokens=1)

    assert reply.content[0].type == "text" and reply.content[0].text == "sim: what is it"
    assert reply.stop_reason == "end_turn"
    assert reply.usage.input_tokens == math.ceil(len("be brief" + "what is it") / 4) + 85
    assert reply.usage.output_tokens == math.ceil(len("sim: what is it") / 4)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 1


async def test_models_and_invalid_bodies_in_provider_shapes(sim: Simulator) -> None:
    async with clients(sim) as (oai, _):
        models = await oai.models.list()
    async with aiohttp.ClientSession(sim.url) as http:
        async with http.post("/v1/chat/completions", data=b"{not json") as bad_json:
            openai_error = await bad_json.json()
        async with http.post("/v1/messages", json={"model": "m", "messages": []}) as no_max_tokens:
            anthropic_error = await no_max_tokens.json()

    assert [m.id for m in models.data] == ["simulator"]
    assert bad_json.status == 400 and openai_error["error"]["type"] == "invalid_request_error"
    assert no_max_tokens.status == 400
    assert anthropic_error["type"] == "error"
    assert anthropic_error["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }
    assert sim.stats().by_outcome == {Outcome.INVALID.value: 2}


# Rate limits


async def test_rpm_limit_answers_429_with_retry_after() -> None:
    async with Simulator(SimulatorConfig(requests_per_minute=2)) as sim, clients(sim) as (oai, ant):
        first = await oai.chat.completions.with_raw_response.create(
            model="gpt-sim", messages=[{"role": "user", "content": "one"}]
        )
        with pytest.raises(openai.RateLimitError) as openai_429:
            await chat(oai, "two")
        with pytest.raises(anthropic.RateLimitError) as anthropic_429:
            await message(ant, "three")

    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    headers = openai_429.value.response.headers
    assert headers["retry-after"] == "30"  # one request per 30 s, just spent
    assert 29_000 < int(headers["retry-after-ms"]) <= 30_000
    assert "requests per min" in openai_429.value.message
    ant_headers = anthropic_429.value.response.headers
    assert ant_headers["retry-after"] == "30"
    assert ant_headers["anthropic-ratelimit-requests-limit"] == "2"
    assert ant_headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    body = as_dict(anthropic_429.value.body)
    assert (body["type"], body["error"]["type"]) == ("error", "rate_limit_error")
    assert body["request_id"].startswith("req_")
    stats = sim.stats()
    assert (stats.successes, stats.rate_limited, stats.by_status[429]) == (1, 2, 2)


async def test_input_token_limit_names_the_limit() -> None:
    config = SimulatorConfig(input_tokens_per_minute=60, burst_s=60)
    async with Simulator(config) as sim, clients(sim) as (oai, _):
        await chat(oai, "x" * 160)  # 40 tokens of 60
        with pytest.raises(openai.RateLimitError) as over:
            await chat(oai, "y" * 160)

    assert "input tokens per min" in over.value.message
    assert over.value.response.headers["x-ratelimit-limit-tokens"] == "60"


# Faults


FAULTS: dict[str, tuple[type[Exception], type[Exception]]] = {
    "error_500": (openai.InternalServerError, anthropic.InternalServerError),
    "error_503": (openai.InternalServerError, anthropic.ServiceUnavailableError),
    "reset": (openai.APIConnectionError, anthropic.APIConnectionError),
    "timeout": (openai.APITimeoutError, anthropic.APITimeoutError),
    # Both SDKs let the JSON decoder's error through as it is.
    "malformed": (json.JSONDecodeError, json.JSONDecodeError),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_each_fault_reaches_the_sdks_as_its_exception(fault: str) -> None:
    openai_error, anthropic_error = FAULTS[fault]
    rates: dict[str, Any] = {fault: 1.0}
    config = SimulatorConfig(hang_s=60.0, **rates)
    # Only the hang needs a client that gives up soon; the others get time to spare on a busy machine.
    timeout = 0.5 if fault == "timeout" else 30.0
    async with Simulator(config) as sim, clients(sim, timeout=timeout) as (oai, ant):
        with pytest.raises(openai_error) as from_openai:
            await chat(oai, "ping openai")
        with pytest.raises(anthropic_error) as from_anthropic:
            await message(ant, "ping anthropic")
        stats = await sim.idle_stats()

    assert type(from_openai.value) is openai_error and type(from_anthropic.value) is anthropic_error
    if isinstance(from_openai.value, openai.APIStatusError):
        assert from_openai.value.status_code == int(fault[-3:])
    assert stats.successes == 0
    if fault == "timeout":
        # A client that gives up may do so before the simulator has read its request: then the
        # call is counted nowhere. Every call the simulator did read hung.
        assert set(stats.by_outcome) <= {fault} and stats.calls <= 2, stats.by_outcome
        assert set(stats.for_id("ping openai").failures) <= {fault}
    else:
        assert stats.by_outcome == {fault: 2}  # each answer (or reset) came from the simulator
        assert stats.for_id("ping openai").failures == {fault: 1}


async def test_permanent_marker_is_a_400_whatever_the_fault_rate() -> None:
    config = SimulatorConfig(permanent_error_marker="@@BAD@@", error_500=1.0)
    async with Simulator(config) as sim, clients(sim) as (oai, ant):
        with pytest.raises(openai.BadRequestError) as from_openai:
            await chat(oai, "record 7 @@BAD@@")
        with pytest.raises(anthropic.BadRequestError) as from_anthropic:
            await message(ant, "record 8 @@BAD@@")

    assert "@@BAD@@" in from_openai.value.message
    assert as_dict(from_openai.value.body)["type"] == "invalid_request_error"
    assert as_dict(from_anthropic.value.body)["error"]["type"] == "invalid_request_error"
    assert sim.stats().for_id("record 7 @@BAD@@").failures == {Outcome.PERMANENT.value: 1}


# Accounting


async def call_until_success(clients_: Clients, kind: str, rid: str) -> int:
    """Retry one record until it succeeds, as a batch client would; returns how many calls it took."""
    oai, ant = clients_
    transient = (openai.APIError, anthropic.APIError, json.JSONDecodeError)
    for attempt in range(1, 100):
        with suppress(*transient):
            if kind == "idempotency-key":
                await chat(oai, "same text for all", headers={"Idempotency-Key": rid})
            elif kind == "x-request-id":
                await message(ant, "same text for all", headers={"X-Request-Id": rid})
            else:
                await oai.embeddings.create(model="emb-sim", input=rid)
            return attempt
    raise AssertionError(f"{rid} never succeeded")


async def test_every_call_is_counted_under_its_request_id() -> None:
    # No timeout faults here: on a loaded machine a short client timeout could also cut off a call
    # the simulator answered, and that double billing is the client's race, not the simulator's.
    config = SimulatorConfig(error_500=0.2, error_503=0.1, reset=0.1, malformed=0.1, seed=7)
    records = [
        (kind, f"{kind}-{i}") for kind in ("idempotency-key", "x-request-id", "text") for i in range(20)
    ]
    async with Simulator(config) as sim, clients(sim) as both:
        attempts = await asyncio.gather(*(call_until_success(both, kind, rid) for kind, rid in records))
        stats = await sim.idle_stats()

    # A client's attempt may end before the simulator has read it (counted by the client alone), so
    # across the socket the counts compare with <=; inside the simulator they add up exactly.
    for (_, rid), calls in zip(records, attempts, strict=True):
        per_id = stats.for_id(rid)
        assert per_id.successes == 1 and per_id.calls == 1 + per_id.failed <= calls, (rid, per_id, calls)
    assert stats.successes == len(records) and stats.calls == sum(stats.by_outcome.values())
    assert stats.calls == sum(s.calls for s in stats.per_id.values()) <= sum(attempts)
    assert stats.calls > len(records)  # the faults did happen, and were counted
    assert len(stats.success_times) == len(records)
    assert SimulatorStats.from_json(json.loads(json.dumps(stats.to_json()))) == stats


# Down and up


async def test_go_down_refuses_connections_and_go_up_reuses_the_port(sim: Simulator) -> None:
    port = sim.port
    async with clients(sim) as (oai, _):
        await chat(oai, "before")
        await sim.go_down()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        with pytest.raises(openai.APIConnectionError) as down:
            await chat(oai, "while down")
        await sim.go_up()
        await chat(oai, "after")

    assert type(down.value) is openai.APIConnectionError
    assert sim.port == port
    assert sim.stats().successes == 2


async def test_going_down_resets_calls_in_flight_and_down_for_comes_back() -> None:
    async with (
        Simulator(SimulatorConfig(latency_median_s=5.0, latency_sigma=0.0)) as sim,
        clients(sim) as (oai, _),
    ):
        in_flight = asyncio.create_task(chat(oai, "slow"))
        async with asyncio.timeout(5):
            while sim.stats().in_flight == 0:
                await asyncio.sleep(0.01)
        await sim.down_for(0.3)
        with pytest.raises(openai.APIConnectionError):
            await in_flight
        assert not sim.is_up
        await asyncio.sleep(0.5)
        assert sim.is_up

    assert sim.stats().for_id("slow").failures == {Outcome.DISCONNECTED.value: 1}


# Other ways to run it


def test_simulator_thread_serves_sync_clients() -> None:
    with (
        SimulatorThread(SimulatorConfig(seed=1)) as sim,
        openai.OpenAI(base_url=sim.openai_base_url, api_key="k", max_retries=0, timeout=5) as oai,
    ):
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "sync"}])
        sim.go_down()
        with pytest.raises(openai.APIConnectionError):
            oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "down"}])
        sim.go_up()
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "up"}])
        stats = sim.idle_stats()

    assert stats.successes == 2 and set(stats.per_id) == {"sync", "up"}


@pytest.fixture
def simulator_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    command = [sys.executable, "-m", "bulkinfer.testing", "--port", "0", "--rpm", "600", "--seed", "3"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(20, process.kill)  # a broken start must not hang the suite
    watchdog.start()
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("simulator ready at http://127.0.0.1:"), line
        yield process, line.removeprefix("simulator ready at ")
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_module_runs_as_a_process_with_stats_over_http(
    simulator_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = simulator_process
    with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=5) as oai:
        reply = oai.chat.completions.with_raw_response.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"Idempotency-Key": "rec-1"},
        )
        down = urllib.request.urlopen(urllib.request.Request(url + "/_sim/down?seconds=0.5", method="POST"))
        assert json.load(down) == {"down_for_s": 0.5}
        time.sleep(0.1)
        with pytest.raises(openai.APIConnectionError):
            oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "down"}])
        time.sleep(0.7)
        stats = SimulatorStats.from_json(json.load(urllib.request.urlopen(url + "/_sim/stats")))

    assert reply.headers["x-ratelimit-limit-requests"] == "600"
    assert stats.calls == 1 and stats.for_id("rec-1").successes == 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"error_500": 0.7, "reset": 0.4},
        {"error_503": -0.1},
        {"requests_per_minute": 0},
        {"burst_s": 0.0},
        {"permanent_error_marker": ""},
    ],
)
def test_config_rejects_impossible_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(**bad)
