"""Fetching images by http(s) URL through one guarded client: the only way bulkinfer reaches a URL a
record names.

Every connection goes through the address guard (``guard.py``), redirects are followed here one hop at a
time so each hop's scheme is checked too, bodies are read as a stream and dropped past the byte cap, and
each fetch, redirects and body included, has one deadline.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
from dataclasses import dataclass
from typing import Protocol

import httpcore
import httpx

from bulkinfer.errors import ConfigError
from bulkinfer.media.errors import MediaError, MediaRefused, MediaTimeout
from bulkinfer.media.guard import AddressGuard, GuardedBackend, Resolve
from bulkinfer.media.policy import MiB, describe_bytes

SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    max_bytes: int = 20 * MiB
    """Largest body read; the same as ``MediaPolicy.max_bytes`` by default, so nothing is fetched only
    to be refused."""
    timeout_s: float = 30.0
    """Whole fetch, redirects and body included: a slow server cannot hold a record for longer."""
    connect_timeout_s: float = 10.0
    max_redirects: int = 5
    max_connections: int = 16
    """Fetches in flight at once, across every host."""
    allow: tuple[str, ...] = ()
    """CIDRs and host names fetched from although private, loopback or link-local (``127.0.0.1/32``)."""
    user_agent: str = "bulkinfer"

    def __post_init__(self) -> None:
        for name in ("max_bytes", "timeout_s", "connect_timeout_s", "max_connections"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"fetch policy {name} must be positive, not {getattr(self, name)}")
        if self.max_redirects < 0:
            raise ConfigError(f"fetch policy max_redirects must be 0 or more, not {self.max_redirects}")
        for entry in self.allow:
            # A mistyped network would otherwise be taken for a host name and silently match nothing.
            if "/" in entry or ":" in entry or entry.replace(".", "").isdigit():
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError as exc:
                    raise ConfigError(f"fetch allowlist entry {entry!r}: {exc}") from None


class Fetcher(Protocol):
    """Gets the bytes at a URL, or raises ``MediaError`` saying why not."""

    async def fetch(self, url: str) -> bytes: ...

    async def aclose(self) -> None: ...


class GuardedFetcher:
    """An ``httpx.AsyncClient`` that only reaches public addresses (or allowed ones), over http(s).

    ``fetch`` raises ``MediaRefused`` for a scheme or address the guard refuses, ``MediaTimeout`` past
    the deadline and ``MediaError`` for anything else (an HTTP error status, a body over the cap). The
    messages leave out the URL asked for, which the caller names; a redirect hop is named.
    """

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        resolve: Resolve | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = policy or FetchPolicy()
        self.requests = 0
        """HTTP requests sent, redirect hops included."""
        guard = AddressGuard(self.policy.allow, resolve)
        self._client = httpx.AsyncClient(
            transport=_guarded_transport(guard, self.policy, verify),
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would connect where the guard never looked
            timeout=httpx.Timeout(self.policy.timeout_s, connect=self.policy.connect_timeout_s),
            # identity: images are compressed already, and a gzip body could inflate past the cap in one step
            headers={
                "User-Agent": self.policy.user_agent,
                "Accept": "image/*",
                "Accept-Encoding": "identity",
            },
        )
        self._slots = asyncio.Semaphore(self.policy.max_connections)

    async def fetch(self, url: str) -> bytes:
        hops = [url]
        async with self._slots:  # waiting for a slot is not part of the fetch's deadline
            try:
                async with asyncio.timeout(self.policy.timeout_s):
                    return await self._follow(hops)
            except (TimeoutError, httpx.TimeoutException):
                raise MediaTimeout(
                    _at(hops, f"no complete answer within {self.policy.timeout_s:g} s")
                ) from None
            except MediaError as exc:
                raise type(exc)(_at(hops, str(exc))) from None
            except httpx.InvalidURL as exc:
                raise MediaError(_at(hops, f"not a valid URL: {exc}")) from None
            except httpx.HTTPError as exc:
                raise MediaError(_at(hops, f"{type(exc).__name__}: {exc}")) from None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _follow(self, hops: list[str]) -> bytes:
        url = httpx.URL(hops[0])
        _check_url(url)  # before the client merges it: it would take a host-less URL for a relative one
        request = self._client.build_request("GET", url)
        for _ in range(self.policy.max_redirects + 1):
            _check_url(request.url)
            self.requests += 1
            response = await self._client.send(request, stream=True)
            try:
                if response.next_request is None:
                    return await self._body(response)
                request = response.next_request
                hops.append(str(request.url))
            finally:
                await response.aclose()
        raise MediaError(f"more than {self.policy.max_redirects} redirects")

    async def _body(self, response: httpx.Response) -> bytes:
        if response.status_code != 200:
            raise MediaError(f"HTTP {response.status_code} {response.reason_phrase}".rstrip())
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise MediaError(f"compressed body (Content-Encoding: {encoding}) is not accepted for images")
        cap = self.policy.max_bytes
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > cap:
            raise MediaError(
                f"body is {int(length):,} bytes (Content-Length), over the {describe_bytes(cap)} limit"
            )
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > cap:
                raise MediaError(f"body is over the {describe_bytes(cap)} limit")
            chunks.append(chunk)
        return b"".join(chunks)


def _check_url(url: httpx.URL) -> None:
    if not url.scheme:
        raise MediaRefused("not an absolute http(s) URL")
    if url.scheme not in SCHEMES:
        raise MediaRefused(f"scheme {url.scheme!r} is not fetched; use http or https")
    if not url.host:
        raise MediaRefused("the URL names no host")


def _at(hops: list[str], reason: str) -> str:
    """The reason, naming the redirect hop it happened at (the URL asked for is the caller's to name)."""
    return reason if len(hops) == 1 else f"redirected to {hops[-1]}: {reason}"


def _guarded_transport(
    guard: AddressGuard, policy: FetchPolicy, verify: ssl.SSLContext | bool
) -> httpx.AsyncHTTPTransport:
    """httpx's own transport with the guard as its network backend.

    httpx offers no public way to give its transport a network backend, so the connection pool is
    rebuilt with one (``_pool`` is the attribute every httpx release since 0.18 has used). The tests that
    refuse loopback and a redirect to a metadata address fail if this ever stops taking effect.
    """
    limits = httpx.Limits(
        max_connections=policy.max_connections, max_keepalive_connections=policy.max_connections
    )
    ssl_context = verify if isinstance(verify, ssl.SSLContext) else _ssl_context(verify)
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, trust_env=False, limits=limits)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(guard),
    )
    return transport


@functools.cache
def _ssl_context(verify: bool) -> ssl.SSLContext:
    """One context per process: building one loads the CA bundle (about 25 ms), and every job makes a
    fetcher. A client-side context is safe to share between connections and threads."""
    return httpx.create_ssl_context(verify=verify)
