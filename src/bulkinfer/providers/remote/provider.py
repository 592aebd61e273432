"""A remote model as a ``Provider``: each request is one call, through limits, retries and the breaker."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

from bulkinfer.domain.request import UNSENT, ChatRequest, Outcome, RecordError, Request, Result, Unsent
from bulkinfer.errors import JobFault
from bulkinfer.providers.base import Capabilities, Provider
from bulkinfer.providers.catalog import ModelSpec, RemoteSpec
from bulkinfer.providers.remote.call import Call, CallFailed, Permanent, ProviderDown, RateLimited, Retryable
from bulkinfer.providers.remote.limits import LimitRegistry, ModelLimits, Reservation
from bulkinfer.stopping import STOPPED, StopSignal

BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 30.0
THROTTLED_TRIES_PER_ATTEMPT = 4
"""429s cost the provider no work and us no money, so they do not use up a record's attempts; this many
times its attempt limit bounds them all the same."""


def backoff(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Full-jitter exponential backoff, never shorter than what the provider asked for."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1))
    delay = rng.uniform(0, ceiling)
    return max(delay, retry_after) if retry_after is not None else delay


class RemoteProvider(Provider):
    """Sends each request on its own, as many at once as the model's limits allow.

    ``infer`` never raises for a record: a permanent refusal, or retries running out, is that record's
    error line, with the number of calls it took (it raises `JobFault` for what no record caused: the
    shared limits refused by the state store). Once ``stop`` is called, a record still waiting (for
    the limits, the breaker or a retry's backoff) is given up as ``UNSENT``; calls already sent finish.
    """

    def __init__(self, spec: ModelSpec, call: Call, limits: ModelLimits, capabilities: Capabilities) -> None:
        assert spec.remote is not None
        self._spec = spec
        self._remote: RemoteSpec = spec.remote
        self._call = call
        self._limits = limits
        self._breaker = limits.breaker
        self.capabilities = capabilities
        self._rng = random.Random()
        self._output_estimate = float(min(spec.default_max_tokens, 256))
        self._stop = StopSignal()

    async def infer(self, requests: Sequence[Request]) -> list[Outcome]:
        try:  # (a task group: a call that ends the job cancels its siblings rather than leave them)
            async with asyncio.TaskGroup() as group:
                calls = [group.create_task(self._one(r)) for r in requests]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return [call.result() for call in calls]

    def paused(self) -> str | None:
        breaker = self._breaker
        if breaker.down_since is None:
            return None
        since = time.strftime("%H:%M:%S", time.localtime(breaker.down_since))
        return f"paused: {self._spec.name} not answering since {since} ({breaker.reason}); retrying"

    def stop(self) -> None:
        self._stop.set()

    async def aclose(self) -> None:
        await self._call.aclose()

    async def _one(self, request: Request) -> Outcome:
        attempts = tries = 0
        limit = self._remote.max_attempts
        while (probe := await self._ready()) is not None:
            tries += 1
            try:
                result = await self._attempt(request)
            except (asyncio.CancelledError, JobFault):  # (the call was not made, or not for this reason)
                self._breaker.abandoned(probe)
                raise
            except Permanent as exc:
                self._breaker.answered(probe)
                return RecordError(exc.code, str(exc), exc.kind, attempts + 1)
            except ProviderDown as exc:
                # Not the record's fault and no call was billed: it waits for the provider instead.
                self._breaker.failed(str(exc), probe, unreachable=True)
                continue
            except RateLimited as exc:
                self._limits.stats.throttled += 1
                self._breaker.answered(probe)
                self._limits.throttled(exc.retry_after)
                if tries >= limit * THROTTLED_TRIES_PER_ATTEMPT:
                    return _gave_up(exc, attempts + 1)
                delay = backoff(min(tries, 8), exc.retry_after, self._rng)
            except Exception as exc:  # an adapter's surprise is retried, then an error line
                error = exc if isinstance(exc, Retryable) else Retryable(f"{type(exc).__name__}: {exc}")
                if error.code == 408:  # a timeout: the provider is queueing, so send it less at once
                    self._limits.concurrency.throttled()
                attempts += 1
                self._breaker.failed(str(error), probe, unreachable=False)
                if attempts >= limit:
                    return _gave_up(error, attempts)
                delay = backoff(attempts, error.retry_after, self._rng)
            else:
                return self._answered(result, probe, attempts + 1)
            if not await self._pause(delay):
                break
        return UNSENT  # the job is stopping: this record was not sent again

    def _answered(self, result: Result | Unsent, probe: bool, attempts: int) -> Result | Unsent:
        if isinstance(result, Unsent):  # stopped before it was sent: it tells nothing of the provider
            self._breaker.abandoned(probe)
            return result
        self._breaker.answered(probe)
        result.attempts = attempts
        return result

    async def _ready(self) -> bool | None:
        """Whether this call is the breaker's probe; None when the job stopped while it waited."""
        if not self._breaker.is_down:
            return False if not self._stop.is_set else None
        probe = await self._stop.unless_stopped(self._breaker.ready(), undo=self._breaker.abandoned)
        return None if probe is STOPPED else bool(probe)

    async def _pause(self, seconds: float) -> bool:
        """Sleep before a retry; False when the job stopped meanwhile (the record is then not retried)."""
        resumed = await self._stop.unless_stopped(asyncio.sleep(seconds)) is not STOPPED
        if resumed:
            self._limits.stats.retries += 1
        return resumed

    async def _attempt(self, request: Request) -> Result | Unsent:
        reservation = Reservation(self.count_tokens(request), self._expected_output(request))
        admitted = await self._stop.unless_stopped(
            self._limits.admit(reservation), undo=lambda _: self._limits.release()
        )
        if admitted is STOPPED:
            return UNSENT
        started, outcome = time.monotonic(), None  # a cancelled call (a shutdown) is not counted
        try:
            answer = await self._call(request, self._remote.timeout_seconds)
            outcome = "ok"
        except Exception as exc:
            outcome = _outcome(exc)
            raise
        finally:
            self._limits.release()
            if outcome is not None:
                self._limits.stats.observe(outcome, time.monotonic() - started)
        usage = answer.result.usage
        self._limits.settle(reservation, usage.input_tokens, usage.output_tokens)
        self._limits.observe(answer.hints)
        self._limits.concurrency.succeeded()
        if usage.output_tokens:
            self._output_estimate += (usage.output_tokens - self._output_estimate) * 0.05
        return answer.result

    def _expected_output(self, request: Request) -> int:
        if not isinstance(request, ChatRequest):
            return 0
        cap = request.params.max_tokens or self._spec.default_max_tokens
        return min(cap, int(self._output_estimate) + 1)


def remote_provider(spec: ModelSpec, limits: LimitRegistry) -> RemoteProvider:
    """The provider of a remote catalog entry; its limits are those every job on the model shares."""
    remote = spec.remote
    assert remote is not None
    call: Call
    if spec.provider == "openai":
        from bulkinfer.providers.remote.openai_api import NATIVE_DIALECTS, OpenAICall

        call, native = OpenAICall(remote), NATIVE_DIALECTS
    elif spec.provider == "anthropic":
        from bulkinfer.providers.remote.anthropic_api import NATIVE_DIALECTS, AnthropicCall

        call, native = AnthropicCall(remote, spec.default_max_tokens), NATIVE_DIALECTS
    else:
        from bulkinfer.providers.remote.bedrock_api import INVOKE_DIALECTS, BedrockCall

        call, native = BedrockCall(remote, spec.default_max_tokens), INVOKE_DIALECTS & set(spec.dialects)
    return RemoteProvider(spec, call, limits.for_model(spec.name, remote), remote_capabilities(spec, native))


def remote_capabilities(spec: ModelSpec, native: frozenset[str] = frozenset()) -> Capabilities:
    """A remote model takes what its catalog entry's kind says, images included (its provider judges
    them)."""
    embeddings = spec.kind == "embedding"
    return Capabilities(
        chat=not embeddings, embeddings=embeddings, images=True, native_dialects=native, keyed=True
    )


def _gave_up(exc: CallFailed, attempts: int) -> RecordError:
    message = f"gave up after {attempts} attempt{'s' if attempts > 1 else ''}: {exc}"
    return RecordError(exc.code, message, exc.kind, attempts)


def _outcome(exc: Exception) -> str:
    """A failed call's outcome label (see ``stats.OUTCOMES``)."""
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, ProviderDown):
        return "unreachable"
    return "refused" if isinstance(exc, Permanent) else "failed"
