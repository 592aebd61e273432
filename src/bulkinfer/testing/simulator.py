"""A simulated OpenAI- and Anthropic-compatible provider on loopback, for tests and benchmarks.

Each inference call goes through the same gate, in the order a real provider applies them:

1. the rate limiter (429 + Retry-After, answered at once, before any latency);
2. the latency draw (lognormal around the median), so errors cost time as they do in production;
3. the permanent-error marker (400);
4. the fault draw: 500, 503, connection reset, a hang past the client's timeout, or a truncated body;
5. otherwise a deterministic 200.

Every call is counted under its request id (see ``request_id``) with exactly one ``Outcome``, so a
test can prove each record was billed once.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from types import TracebackType
from typing import Any, Self

import orjson

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the provider simulator needs aiohttp: pip install 'bulkinfer[sim]'") from exc

from bulkinfer.testing import _anthropic, _openai
from bulkinfer.testing._config import FAULT_FIELDS, SimulatorConfig
from bulkinfer.testing._http import (
    DIALECTS,
    drop_connection,
    dumps,
    error_response,
    flushed,
    json_response,
    raw_response,
    read_json,
)
from bulkinfer.testing._ratelimit import Admission, RateLimiter, retry_after_headers
from bulkinfer.testing._stats import Ledger, Outcome, SimulatorStats
from bulkinfer.testing._wire import Call, InvalidRequest, Provider

MAX_BODY_BYTES = 32 * 1024 * 1024
LISTEN_BACKLOG = 1024
ID_HEADERS = ("Idempotency-Key", "X-Request-Id")
"""Headers that name a call's request id, in order of preference."""

_Parser = Callable[[Mapping[str, Any]], Call]
_ROUTES: tuple[tuple[str, Provider, _Parser], ...] = (
    ("/v1/chat/completions", "openai", _openai.parse_chat),
    ("/v1/embeddings", "openai", _openai.parse_embeddings),
    ("/v1/messages", "anthropic", _anthropic.parse_messages),
)


_FAULT_OUTCOMES = {
    "error_500": Outcome.ERROR_500,
    "error_503": Outcome.ERROR_503,
    "reset": Outcome.RESET,
    "timeout": Outcome.TIMEOUT,
    "malformed": Outcome.MALFORMED,
}


def request_id(request: web.BaseRequest, call: Call | None) -> str | None:
    """``Idempotency-Key``, else ``X-Request-Id``, else the call's last user text or embedding input."""
    for header in ID_HEADERS:
        if value := request.headers.get(header):
            return value
    return call.id_text if call is not None else None


class _Tally:
    """Records one call's outcome exactly once, however the handler ends (the first outcome wins)."""

    def __init__(self, ledger: Ledger, rid: str | None) -> None:
        self._ledger, self._rid, self.done = ledger, rid, False
        ledger.received(rid)

    def finish(self, outcome: Outcome, status: int | None = None) -> None:
        if not self.done:
            self.done = True
            self._ledger.finished(self._rid, outcome, status)


class Simulator:
    """The simulated provider, run on the caller's event loop: ``async with Simulator(config) as sim``."""

    def __init__(
        self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        """The listening port; an ephemeral one is chosen on start when 0, and kept across go_down/go_up."""
        self._ledger = Ledger()
        self._limiter = RateLimiter(self.config)
        seed = self.config.seed
        # Separate streams, so changing the latency settings does not reshuffle which calls fail.
        self._fault_rng = random.Random(seed)
        self._latency_rng = random.Random(None if seed is None else seed + 1)
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def is_up(self) -> bool:
        return self._site is not None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        # handler_cancellation: a handler whose client went away (timed out, reset) is cancelled
        # instead of sleeping on, so hung calls end with their connections.
        self._runner = web.AppRunner(
            self._app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await self.go_up()

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.go_down()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def stats(self) -> SimulatorStats:
        return self._ledger.snapshot()

    async def idle_stats(self, timeout_s: float = 30.0) -> SimulatorStats:
        """The stats once no call is in flight, so that every call counted has its outcome.

        A hung call ends as soon as its client gives up; ``TimeoutError`` after ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            while (stats := self.stats()).in_flight:
                await asyncio.sleep(0.01)
        return stats

    def reset_stats(self) -> None:
        """Start counting afresh (after a benchmark's warm-up, say)."""
        self._ledger = Ledger()

    async def go_down(self) -> None:
        """Stop listening, so new connections are refused, and drop every open connection.

        Calls in flight end unanswered. Connections are closed, not reset: an answer already written
        (and counted as a success) still reaches its client, as it would from a server that dies.
        """
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server if self._runner is not None else None
        for connection in server.connections if server is not None else ():
            if connection.transport is not None:
                connection.transport.abort()

    async def go_up(self) -> None:
        """Listen again, on the same port."""
        if self._site is not None or self._runner is None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, backlog=LISTEN_BACKLOG)
        await site.start()
        self._site = site

    async def down_for(self, seconds: float) -> None:
        """Go down now and come back up by itself after ``seconds``; returns once down."""
        await self.go_down()
        self._spawn(self._up_after(seconds))

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        for path, provider, parse in _ROUTES:
            app.router.add_post(path, partial(self._inference, provider, parse))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_sim/stats", self._stats_route)
        app.router.add_post("/_sim/down", self._down_route)
        return app

    async def _inference(
        self, provider: Provider, parse: _Parser, request: web.Request
    ) -> web.StreamResponse:
        ledger = self._ledger  # the one this call is counted in, even if stats are reset meanwhile
        ledger.enter()
        try:
            return await self._count(ledger, provider, parse, request)
        finally:
            ledger.leave()

    async def _count(
        self, ledger: Ledger, provider: Provider, parse: _Parser, request: web.Request
    ) -> web.StreamResponse:
        try:
            call = parse(await read_json(request))
        except InvalidRequest as exc:
            _Tally(ledger, request_id(request, None)).finish(Outcome.INVALID, 400)
            return error_response(provider, 400, str(exc), {})
        tally = _Tally(ledger, request_id(request, call))
        try:
            return await self._serve(request, call, tally)
        except asyncio.CancelledError:
            tally.finish(Outcome.DISCONNECTED)
            raise

    async def _serve(self, request: web.Request, call: Call, tally: _Tally) -> web.StreamResponse:
        admission = self._limiter.admit(call.input_tokens, call.output_tokens, call.provider)
        if admission.retry_after_s is not None:
            tally.finish(Outcome.RATE_LIMITED, 429)
            return self._rate_limited(call, admission)
        await self._latency()
        marker = self.config.permanent_error_marker
        if marker is not None and marker in call.marker_text:
            tally.finish(Outcome.PERMANENT, 400)
            message = f"The request was rejected: it contains the permanent-error marker {marker!r}."
            return error_response(call.provider, 400, message, admission.headers)
        fault = self._draw_fault()
        if fault is None:
            return await self._succeed(request, call, tally, admission.headers)
        return await self._fail(fault, request, call, tally, admission.headers)

    async def _succeed(
        self, request: web.Request, call: Call, tally: _Tally, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = json_response(call.provider, 200, call.response, headers)
        try:
            await response.prepare(request)
            await response.write_eof()
            await flushed(request)
        except ConnectionError:
            tally.finish(Outcome.DISCONNECTED)
            return response
        # Counted only now: a call is billed once its whole answer is in the kernel's hands.
        tally.finish(Outcome.SUCCESS, 200)
        return response

    async def _fail(
        self, fault: Outcome, request: web.Request, call: Call, tally: _Tally, headers: dict[str, str]
    ) -> web.StreamResponse:
        status = {Outcome.ERROR_500: 500, Outcome.ERROR_503: 503, Outcome.MALFORMED: 200}.get(fault)
        tally.finish(fault, status)
        if fault is Outcome.MALFORMED:
            body = orjson.dumps(call.response)
            return raw_response(call.provider, 200, body[: len(body) // 2], headers)
        if status is not None:
            return error_response(call.provider, status, None, headers)
        if fault is Outcome.TIMEOUT:
            await asyncio.sleep(self.config.hang_s)
        await drop_connection(request)

    def _rate_limited(self, call: Call, admission: Admission) -> web.StreamResponse:
        wait_s = admission.retry_after_s or 0.0
        limit = self._limiter.limit(admission.limit_name)
        message = DIALECTS[call.provider].rate_limit_message(call.model, admission.limit_name, limit, wait_s)
        return error_response(call.provider, 429, message, admission.headers | retry_after_headers(wait_s))

    async def _latency(self) -> None:
        median = self.config.latency_median_s
        if median > 0:
            await asyncio.sleep(self._latency_rng.lognormvariate(math.log(median), self.config.latency_sigma))

    def _draw_fault(self) -> Outcome | None:
        draw = self._fault_rng.random()
        for name in FAULT_FIELDS:
            draw -= getattr(self.config, name)
            if draw < 0:
                return _FAULT_OUTCOMES[name]
        return None

    async def _models(self, request: web.Request) -> web.StreamResponse:
        model = {"id": "simulator", "object": "model", "created": 0, "owned_by": "bulkinfer"}
        return web.json_response({"object": "list", "data": [model]}, dumps=dumps)

    async def _stats_route(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(self.stats().to_json()), content_type="application/json")

    async def _down_route(self, request: web.Request) -> web.StreamResponse:
        """``POST /_sim/down?seconds=S``: go down for S seconds (for a simulator in another process)."""
        try:
            seconds = float(request.query["seconds"])
        except (KeyError, ValueError):
            seconds = math.nan
        if not 0 < seconds < math.inf:
            return web.json_response({"error": "seconds must be a positive number"}, status=400)
        response = web.json_response({"down_for_s": seconds})
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        # In a task of its own: going down closes every connection, this one included.
        self._spawn(self.down_for(seconds))
        return response

    async def _up_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.go_up()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
