"""Which network addresses an image may be fetched from: the SSRF guard.

A record can name any URL, so without a guard a job could be made to read the cloud metadata service,
a database on the private network, or a port on the host itself. The guard resolves each host name
itself, refuses it when *any* of its addresses is not a public one, and hands the connection the very
address it checked, so a name that resolves to a public address for the check and a private one for the
connection (DNS rebinding) has nothing to switch: the check runs inside the HTTP client's connect step
(``GuardedBackend``), once per new connection, and the TLS handshake still names and verifies the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

import httpcore

from bulkinfer.media.errors import MediaError, MediaRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolve = Callable[[str, int], Awaitable[Sequence[str]]]
"""Host and port to the addresses to try, in order (``getaddrinfo`` by default; tests inject names)."""

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle instance metadata
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer: a public address, so only this list catches it
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refusal(address: IPAddress) -> str | None:
    """Why nothing may be fetched from ``address`` (``private``, ``loopback``...), or None if public."""
    ip = _embedded_ipv4(address) or address
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    )
    for name, hit in checks:
        if hit:
            return name
    return None if ip.is_global else "not a public address"  # e.g. 100.64.0.0/10, carrier NAT


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), which is where packets really go."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class AddressGuard:
    """Resolves hosts and refuses every address ``refusal`` names, unless ``allow`` permits it.

    ``allow`` holds CIDRs (``127.0.0.1/32``, ``10.0.0.0/8``) whose addresses are permitted, and host
    names (exact, case-insensitive) whose every address is permitted.
    """

    def __init__(self, allow: Iterable[str] = (), resolve: Resolve | None = None) -> None:
        self._networks: list[IPNetwork] = []
        self._hosts: set[str] = set()
        for entry in allow:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hosts.add(_host_key(entry))
        self._resolve = resolve or getaddrinfo

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` that may be connected to; raises ``MediaRefused`` if any may not."""
        found = list(dict.fromkeys(await self._resolve(host, port)))
        if not found:
            raise MediaError(f"host {host} has no address")
        if _host_key(host) not in self._hosts:
            for address in found:
                self.check(address)
        return found

    def check(self, address: str) -> None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
        reason = refusal(ip)
        if reason is not None and not any(ip in net for net in self._networks):
            raise MediaRefused(f"address {ip} is {reason}; fetching it is not allowed")


async def getaddrinfo(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``, in its order."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MediaError(f"host {host} cannot be resolved: {exc.strerror}") from None
    return [str(info[4][0]) for info in infos]


def _host_key(host: str) -> str:
    return host.lower().rstrip(".")


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the guard in its connect step: every TCP connection the HTTP
    client opens goes to an address the guard has just checked."""

    def __init__(self, guard: AddressGuard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._guard.addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took over {timeout} s") from None
        error: Exception = httpcore.ConnectError(f"no address of {host} answered")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise MediaRefused("images are not fetched over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
