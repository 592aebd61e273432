"""What the openai and anthropic SDKs have in common (both are generated from one template): their
exceptions, converted once into our failure kinds, and their rate-limit headers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, NoReturn

import orjson

from bulkinfer.errors import ConfigError
from bulkinfer.providers.catalog import RemoteSpec
from bulkinfer.providers.remote.call import (
    CallFailed,
    Permanent,
    ProviderDown,
    RateHints,
    RateLimited,
    Retryable,
    parse_duration,
)

OVERLOADED = frozenset({529})
"""Anthropic's "overloaded": the provider as a whole is busy, so slow down as for a 429."""
RETRYABLE_STATUS = frozenset({408, 409, 425})


def api_key(spec: RemoteSpec, default_env: str) -> str:
    """The key from the configured variable; a local server with no key configured gets a placeholder."""
    if spec.api_key_env is not None:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {spec.api_key_env} (api_key_env) is not set")
        return key
    return os.environ.get(default_env) or "unused"


def convert(sdk: ModuleType, exc: Exception, timeout: float) -> NoReturn:
    """Raise the ``CallFailed`` that an SDK exception means."""
    if isinstance(exc, sdk.APITimeoutError):
        raise Retryable(f"no answer within {timeout:g} s (timeout_seconds)", code=408) from exc
    if isinstance(exc, sdk.APIStatusError):
        if getattr(exc, "code", None) == "insufficient_quota":
            # Not a rate: the account is out of credit. Pause (visibly) until it is topped up,
            # rather than spend every record's attempts on it.
            raise ProviderDown(f"quota exhausted: {exc.message}") from exc
        raise _status_failure(exc.status_code, exc.response.headers, exc.message) from exc
    if isinstance(exc, sdk.APIConnectionError):
        if _could_not_connect(exc):
            raise ProviderDown(f"cannot connect: {_root_cause(exc)}") from exc
        raise Retryable(f"connection lost: {_root_cause(exc)}") from exc
    raise exc


def _status_failure(status: int, headers: Mapping[str, str], message: str) -> CallFailed:
    text = f"{status}: {message}"
    if status == 429 or status in OVERLOADED:
        return RateLimited(text, retry_after(headers))
    if status >= 500 or status in RETRYABLE_STATUS:
        return Retryable(text, retry_after(headers), code=status)
    return Permanent(f"provider refused the request: {text}", code=status)


def _could_not_connect(exc: BaseException) -> bool:
    """Connection refused or the host unknown, as opposed to a connection that broke mid-call."""
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__name__ in ("ConnectError", "ConnectionRefusedError", "gaierror"):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def retry_after(headers: Mapping[str, str]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return parse_duration(headers.get("retry-after"))


def openai_hints(headers: Mapping[str, str]) -> RateHints:
    return RateHints(
        _int(headers.get("x-ratelimit-remaining-requests")),
        parse_duration(headers.get("x-ratelimit-reset-requests")),
        _int(headers.get("x-ratelimit-limit-requests")),
    )


def anthropic_hints(headers: Mapping[str, str]) -> RateHints:
    reset = headers.get("anthropic-ratelimit-requests-reset")
    return RateHints(
        _int(headers.get("anthropic-ratelimit-requests-remaining")),
        _until(reset),
        _int(headers.get("anthropic-ratelimit-requests-limit")),
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _until(stamp: str | None) -> float | None:
    """Seconds from now to an RFC 3339 time (Anthropic's reset headers)."""
    if not stamp:
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return parse_duration(stamp)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def json_body(content: bytes) -> dict[str, Any]:
    """A response body; a garbled one is worth another try (a proxy cut it short, say)."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise Retryable(f"malformed response body: {exc}") from exc
    if not isinstance(body, dict):
        raise Retryable("malformed response body: not a JSON object")
    return body
