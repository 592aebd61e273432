"""Images by reference: fetched through the guarded client from a real server on 127.0.0.1, read from
files and buckets, and each reference fetched once however many records name it.

The server counts requests per path, so "fetched once" and "never connected" are the server's word.
No test reaches any address but 127.0.0.1: refused addresses are refused before any connection.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import random
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from PIL import Image

from bulkinfer.domain.request import ChatRequest, ImagePart, Message, Native, RecordError, Request, TextPart
from bulkinfer.domain.tally import MediaTally
from bulkinfer.errors import ConfigError
from bulkinfer.media import (
    AddressGuard,
    FetchPolicy,
    FileReader,
    GuardedFetcher,
    MediaError,
    MediaRefused,
    MediaResolver,
    MediaTimeout,
    local_buckets,
    refusal,
    s3fs_objects,
)
from bulkinfer.media.reader import read_capped
from tests.integration.test_bedrock_api import moto_s3  # noqa: F401  (a fixture)

MiB = 2**20
LOOPBACK_ONLY = ("127.0.0.1/32",)
FIELD = "modelInput.messages.0.content.0.source"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (32, 24)) -> bytes:
    noise = random.Random(fmt).randbytes(size[0] * size[1] * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", size, noise).save(out, format=fmt)
    return out.getvalue()


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")


@dataclass
class Server:
    base: str
    hits: Counter[str] = field(default_factory=Counter)
    hosts: list[str] = field(default_factory=list)
    """The Host header of each request, in order."""

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """An image server on 127.0.0.1 with well-behaved, broken, huge, slow and redirecting routes."""
    release = asyncio.Event()  # lets slow handlers end at teardown instead of holding the runner
    app = web.Application(middlewares=[_count])
    routes = {
        "/cat.png": _static(PNG, "image/png"),
        "/photo": _static(JPEG, "text/plain"),  # a JPEG served under the wrong type
        "/shared.png": _shared,
        "/missing.png": _missing,
        "/big.png": _static(bytes(2 * MiB), "image/png"),
        "/stream.png": _chunked,
        "/gzip.png": _gzip,
        "/slow.png": lambda request: _slow(release),
        "/trickle.png": lambda request: _trickle(request, release),
        "/to/cat": _redirect("/cat.png"),
        "/to/metadata": _redirect("http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
        "/to/private": _redirect("http://10.1.2.3/cat.png"),
        "/to/ftp": _redirect("ftp://127.0.0.1/cat.png"),
        "/loop": _redirect("/loop"),
    }
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    served = Server(f"http://127.0.0.1:{runner.addresses[0][1]}")
    app["served"] = served
    try:
        yield served
    finally:
        release.set()
        await runner.cleanup()


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    served: Server = request.app["served"]
    served.hits[request.path] += 1
    served.hosts.append(request.host)
    return await handler(request)


def _static(body: bytes, content_type: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type)

    return handle


async def _shared(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(0.2)  # long enough that every record asks while the first fetch is in flight
    return web.Response(body=PNG, content_type="image/png")


async def _missing(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(0.1)
    raise web.HTTPNotFound()


async def _chunked(request: web.Request) -> web.StreamResponse:
    """2 MiB with no Content-Length: only counting the streamed bytes can stop it."""
    response = web.StreamResponse()
    response.content_type = "image/png"
    await response.prepare(request)
    for _ in range(32):
        await response.write(bytes(64 * 1024))
    await response.write_eof()
    return response


async def _gzip(request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=b"\x1f\x8b...", headers={"Content-Encoding": "gzip", "Content-Type": "image/png"}
    )


async def _slow(release: asyncio.Event) -> web.StreamResponse:
    await release.wait()
    return web.Response(body=PNG, content_type="image/png")


async def _trickle(request: web.Request, release: asyncio.Event) -> web.StreamResponse:
    """A byte every 50 ms: every read is quick, only a whole-fetch deadline ends it."""
    response = web.StreamResponse()
    await response.prepare(request)
    while not release.is_set():
        await response.write(b"x")
        await asyncio.sleep(0.05)
    return response


def _redirect(location: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(location)

    return handle


def fetcher(**policy: object) -> GuardedFetcher:
    options: dict[str, object] = {"allow": LOOPBACK_ONLY, "max_bytes": 1 * MiB, "timeout_s": 5.0}
    return GuardedFetcher(FetchPolicy(**{**options, **policy}))  # type: ignore[arg-type]


async def fetch(url: str, client: GuardedFetcher | None = None) -> bytes:
    client = client or fetcher()
    try:
        return await client.fetch(url)
    finally:
        await client.aclose()


def by_url(url: str, field: str = FIELD, native: Native | None = None) -> ChatRequest:
    part = ImagePart(media_type="", url=url, field=field)
    return ChatRequest(messages=(Message("user", (part, TextPart("what is this?"))),), native=native)


def image_of(request: Request | RecordError) -> ImagePart:
    assert isinstance(request, ChatRequest), request
    [part] = [p for p in request.messages[0].parts if isinstance(p, ImagePart)]
    return part


# --- the guard --------------------------------------------------------------------------------------


async def test_an_allowlisted_loopback_server_is_fetched(server: Server) -> None:
    assert await fetch(server.url("/cat.png")) == PNG
    assert await fetch(server.url("/to/cat")) == PNG  # a relative redirect to an allowed place
    assert server.hits == {"/cat.png": 2, "/to/cat": 1}


async def test_without_the_allowlist_loopback_is_refused_and_never_contacted(server: Server) -> None:
    for host in ("127.0.0.1", "localhost"):
        url = server.url("/cat.png").replace("127.0.0.1", host)
        with pytest.raises(
            MediaRefused, match=r"^address (127\.0\.0\.1|::1) is loopback; fetching it is not"
        ):
            await fetch(url, GuardedFetcher())
    assert server.hits == {}


async def test_a_name_resolving_to_a_private_address_is_refused_before_connecting() -> None:
    names = {"images.internal": ["10.0.0.5"], "mixed.example": ["93.184.216.34", "169.254.169.254"]}

    async def resolve(host: str, port: int) -> Sequence[str]:
        return names[host]

    client = GuardedFetcher(FetchPolicy(connect_timeout_s=30), resolve=resolve)
    with pytest.raises(MediaRefused, match=r"^address 10\.0\.0\.5 is private; fetching it is not allowed$"):
        await client.fetch("http://images.internal/cat.png")
    # One bad address among good ones is enough: the connection could go to any of them.
    with pytest.raises(MediaRefused, match=r"169.254.169.254 is a cloud metadata address"):
        await client.fetch("https://mixed.example/cat.png")
    await client.aclose()


async def test_an_allowed_name_is_connected_at_the_address_the_guard_resolved(server: Server) -> None:
    port = int(server.base.rsplit(":", 1)[1])

    async def resolve(host: str, port: int) -> Sequence[str]:
        return {"images.internal": ["127.0.0.1"]}[host]  # a name no system resolver knows

    client = GuardedFetcher(FetchPolicy(allow=("images.internal",)), resolve=resolve)
    assert await fetch(f"http://images.internal:{port}/cat.png", client) == PNG
    assert server.hosts == [f"images.internal:{port}"]


def self_signed(folder: Path, name: str) -> Path:
    """A certificate and key for ``name`` in one PEM file: the test's own CA, trusted by the test alone."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = folder / f"{name}.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pem


async def test_https_to_a_checked_address_still_names_and_verifies_the_host(tmp_path: Path) -> None:
    pem = self_signed(tmp_path, "images.internal")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pem)
    app = web.Application()
    app.router.add_get("/cat.png", _static(PNG, "image/png"))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    port = runner.addresses[0][1]

    async def resolve(host: str, port: int) -> Sequence[str]:
        return {"images.internal": ["127.0.0.1"], "other.internal": ["127.0.0.1"]}[host]

    policy = FetchPolicy(allow=("images.internal", "other.internal"))
    client = GuardedFetcher(policy, resolve=resolve, verify=ssl.create_default_context(cafile=pem))
    try:
        # The TCP connection goes to 127.0.0.1; TLS still sends and verifies the URL's host name.
        assert await client.fetch(f"https://images.internal:{port}/cat.png") == PNG
        with pytest.raises(MediaError, match=r"certificate verify failed: Hostname mismatch"):
            await client.fetch(f"https://other.internal:{port}/cat.png")
    finally:
        await client.aclose()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "hop", "reason"),
    [
        (
            "/to/metadata",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "address 169.254.169.254 is a cloud metadata address",
        ),
        ("/to/private", "http://10.1.2.3/cat.png", "address 10.1.2.3 is private"),
        ("/to/ftp", "ftp://127.0.0.1/cat.png", "scheme 'ftp' is not fetched"),
    ],
)
async def test_a_redirect_to_a_refused_place_is_not_followed(
    server: Server, path: str, hop: str, reason: str
) -> None:
    with pytest.raises(MediaRefused) as caught:
        await fetch(server.url(path), fetcher(connect_timeout_s=30))
    assert str(caught.value).startswith(f"redirected to {hop}: {reason}")
    assert server.hits == {path: 1}


async def test_redirects_are_followed_only_so_far(server: Server) -> None:
    with pytest.raises(MediaError, match=r"redirected to .*/loop: more than 3 redirects"):
        await fetch(server.url("/loop"), fetcher(max_redirects=3))
    assert server.hits == {"/loop": 4}


async def test_only_http_and_https_are_fetched() -> None:
    for url in ("ftp://127.0.0.1/cat.png", "gopher://127.0.0.1/", "file:///etc/hostname"):
        with pytest.raises(MediaRefused, match=r"^scheme '[a-z]+' is not fetched; use http or https$"):
            await fetch(url)
    with pytest.raises(MediaRefused, match=r"^not an absolute http\(s\) URL$"):
        await fetch("127.0.0.1/cat.png")
    for url in ("http://", "http:///cat.png"):
        with pytest.raises(MediaRefused, match=r"^the URL names no host$"):
            await fetch(url)
    with pytest.raises(MediaError, match=r"^not a valid URL: "):
        await fetch("http://[::1/cat.png")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "a cloud metadata address"),
        ("169.254.170.2", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("168.63.129.16", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("169.254.1.1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not a public address"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("::ffff:10.0.0.5", "private"),  # IPv4-mapped
        ("2002:a9fe:a9fe::", "a cloud metadata address"),  # 6to4 carrying 169.254.169.254
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 carrying 127.0.0.1
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_the_checker_names_why_an_address_is_refused(address: str, reason: str | None) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


def test_the_allowlist_takes_networks_and_names() -> None:
    guard = AddressGuard(["10.1.0.0/16", "127.0.0.1"])
    guard.check("10.1.2.3")
    guard.check("127.0.0.1")
    with pytest.raises(MediaRefused, match=r"10.2.0.1 is private"):
        guard.check("10.2.0.1")
    with pytest.raises(MediaRefused, match=r"127.0.0.2 is loopback"):
        guard.check("127.0.0.2")


@pytest.mark.parametrize(
    "policy",
    [{"allow": ("10.0.0.0/33",)}, {"allow": ("10.0.0.256",)}, {"max_bytes": 0}, {"max_redirects": -1}],
)
def test_a_fetch_policy_that_makes_no_sense_is_a_config_error(policy: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        FetchPolicy(**policy)  # type: ignore[arg-type]


# --- caps and deadlines -----------------------------------------------------------------------------


async def test_a_body_announced_over_the_cap_is_refused_before_reading(server: Server) -> None:
    with pytest.raises(
        MediaError, match=r"^body is 2,097,152 bytes \(Content-Length\), over the 1 MiB limit$"
    ):
        await fetch(server.url("/big.png"))


async def test_a_streamed_body_is_cut_off_at_the_cap(server: Server) -> None:
    with pytest.raises(MediaError, match=r"^body is over the 1 MiB limit$"):
        await fetch(server.url("/stream.png"))
    assert len(await fetch(server.url("/stream.png"), fetcher(max_bytes=2 * MiB))) == 2 * MiB


async def test_http_errors_and_compressed_bodies_are_refused(server: Server) -> None:
    with pytest.raises(MediaError, match=r"^HTTP 404 Not Found$"):
        await fetch(server.url("/missing.png"))
    with pytest.raises(MediaError, match=r"Content-Encoding: gzip\) is not accepted"):
        await fetch(server.url("/gzip.png"))


@pytest.mark.parametrize("path", ["/slow.png", "/trickle.png"])
async def test_a_slow_server_runs_into_the_deadline(server: Server, path: str) -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(MediaTimeout, match=r"^no complete answer within 0.3 s$"):
        await fetch(server.url(path), fetcher(timeout_s=0.3))
    assert asyncio.get_running_loop().time() - started < 2


async def test_a_timeout_is_the_records_408(server: Server) -> None:
    media = MediaResolver(fetcher=fetcher(timeout_s=0.3))
    outcome = await media.resolve(by_url(server.url("/slow.png")))
    await media.aclose()
    url = server.url("/slow.png")
    assert outcome == RecordError(408, f"{FIELD}: {url}: no complete answer within 0.3 s", "Timeout")


# --- the resolver and its cache ---------------------------------------------------------------------


async def test_a_fetched_image_reaches_the_request_as_checked_bytes(server: Server) -> None:
    media = MediaResolver(fetcher=fetcher())
    resolved = await media.resolve(by_url(server.url("/photo"), native=Native("anthropic", {})))
    await media.aclose()
    assert image_of(resolved) == ImagePart(media_type="image/jpeg", data=JPEG, url=None, field=FIELD)
    assert isinstance(resolved, ChatRequest)
    assert resolved.native is None  # the record's own body still holds the URL


async def test_a_refused_url_is_the_records_error_naming_field_and_url(server: Server) -> None:
    media = MediaResolver(fetcher=fetcher())
    url = server.url("/to/private")
    outcome = await media.resolve(by_url(url))
    await media.aclose()
    assert outcome == RecordError(
        400,
        f"{FIELD}: {url}: redirected to http://10.1.2.3/cat.png: address 10.1.2.3 is private; "
        "fetching it is not allowed",
    )


async def test_resolvers_given_one_tally_add_up_fetches_and_cache_hits(server: Server) -> None:
    tally = MediaTally()  # a service's: every job's resolver adds to it (and /metrics reads it)
    for job in range(2):
        media = MediaResolver(fetcher=fetcher(), tally=tally)
        url = server.url("/shared.png")
        await asyncio.gather(*(media.resolve(by_url(url, f"j{job}r{i}")) for i in range(5)))
        await media.aclose()
    assert (tally.fetches, tally.cache_hits) == (2, 8)  # one fetch per job's cache, the rest hits


async def test_one_url_shared_by_100_records_is_fetched_once(server: Server) -> None:
    media = MediaResolver(fetcher=fetcher())
    url = server.url("/shared.png")
    outcomes = await asyncio.gather(*(media.resolve(by_url(url, f"r{i}")) for i in range(100)))
    assert server.hits == {"/shared.png": 1}
    assert all(image_of(o).data == PNG for o in outcomes)
    later = await media.resolve(by_url(url))
    assert image_of(later).data == PNG and server.hits == {"/shared.png": 1}
    stats = media.stats
    assert (stats.images, stats.fetches, stats.decodes, stats.cache_hits) == (101, 1, 1, 100)
    await media.aclose()


async def test_one_broken_url_shared_by_100_records_is_fetched_once(server: Server) -> None:
    media = MediaResolver(fetcher=fetcher())
    url = server.url("/missing.png")
    outcomes = await asyncio.gather(*(media.resolve(by_url(url, f"r{i}")) for i in range(100)))
    assert server.hits == {"/missing.png": 1}
    assert outcomes[7] == RecordError(400, f"r7: {url}: HTTP 404 Not Found")
    await media.aclose()


# --- files and buckets ------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An input folder with an image, and a secret beside it."""
    (tmp_path / "input" / "imgs").mkdir(parents=True)
    (tmp_path / "input" / "imgs" / "cat.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(JPEG)
    return tmp_path / "input"


async def read(uri: str, base_dir: Path | None, reader: FileReader | None = None) -> bytes:
    return await (reader or FileReader()).read(uri, base_dir)


async def test_relative_paths_and_file_uris_inside_the_input_folder_are_read(folder: Path) -> None:
    assert await read("imgs/cat.png", folder) == PNG
    assert await read("./imgs/../imgs/cat.png", folder) == PNG
    assert await read((folder / "imgs" / "cat.png").as_uri(), folder) == PNG
    assert await read(str(folder / "imgs" / "cat.png"), folder) == PNG


@pytest.mark.parametrize("uri", ["../secret.png", "imgs/../../secret.png", "imgs/../../input/../secret.png"])
async def test_a_relative_path_may_not_climb_out_of_the_input_folder(folder: Path, uri: str) -> None:
    with pytest.raises(MediaRefused, match=r"^the path leaves the input file's folder$"):
        await read(uri, folder)


async def test_a_symlink_out_of_the_input_folder_is_refused(folder: Path) -> None:
    (folder / "link.png").symlink_to(folder.parent / "secret.png")
    with pytest.raises(MediaRefused, match=r"leaves the input file's folder"):
        await read("link.png", folder)


async def test_absolute_paths_must_lie_in_an_allowed_root(folder: Path) -> None:
    secret = (folder.parent / "secret.png").as_uri()
    for uri in (secret, "file:///etc/hostname", "/etc/hostname"):
        with pytest.raises(MediaRefused, match=r"outside the folders images may be read from"):
            await read(uri, folder)
    assert await read(secret, folder, FileReader(roots=[folder.parent])) == JPEG
    with pytest.raises(MediaRefused, match=r"needs the input file's folder"):
        await read("imgs/cat.png", None)


async def test_odd_references_are_refused(folder: Path) -> None:
    with pytest.raises(MediaRefused, match=r"file URIs name no host"):
        await read("file://server/share/cat.png", folder)
    with pytest.raises(MediaRefused, match=r"scheme 'data' is not supported"):
        await read("data:image/png;base64,AAAA", folder)
    with pytest.raises(MediaRefused, match=r"^s3:// images are not enabled here$"):
        await read("s3://bucket/cat.png", folder)
    with pytest.raises(MediaError, match=r"^no such file$"):
        await read("imgs/dog.png", folder)
    with pytest.raises(MediaError, match=r"^is a folder, not a file$"):
        await read("imgs", folder)


async def test_a_file_over_the_cap_is_refused(folder: Path) -> None:
    with pytest.raises(MediaError, match=r"^file is over the 100 bytes limit$"):
        await read("imgs/cat.png", folder, FileReader(max_bytes=100))
    assert read_capped(folder / "imgs" / "cat.png", len(PNG)) == PNG


async def test_the_resolver_reads_relative_references_per_input_folder(tmp_path: Path) -> None:
    for name, data in (("a", PNG), ("b", JPEG)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "img").write_bytes(data)
    media = MediaResolver()
    first = await media.resolve(by_url("img"), base_dir=tmp_path / "a")
    second = await media.resolve(by_url("img"), base_dir=tmp_path / "b")
    escape = await media.resolve(by_url("../b/img"), base_dir=tmp_path / "a")
    await media.aclose()
    assert (image_of(first).media_type, image_of(first).data) == ("image/png", PNG)
    assert (image_of(second).media_type, image_of(second).data) == ("image/jpeg", JPEG)
    assert escape == RecordError(400, f"{FIELD}: ../b/img: the path leaves the input file's folder")


async def test_s3_references_read_local_buckets(tmp_path: Path) -> None:
    (tmp_path / "s3" / "pics" / "cats").mkdir(parents=True)
    (tmp_path / "s3" / "pics" / "cats" / "cat.png").write_bytes(PNG)
    reader = FileReader(objects=local_buckets(tmp_path))
    assert await read("s3://pics/cats/cat.png", None, reader) == PNG
    with pytest.raises(MediaError, match=r"^no such key or prefix$"):
        await read("s3://pics/cats/dog.png", None, reader)
    with pytest.raises(MediaError, match=r"may not contain '..'"):
        await read("s3://pics/../s3/pics/cats/cat.png", None, reader)


async def test_s3_references_read_an_s3_protocol_server(
    moto_s3: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=moto_s3, skip_instance_cache=True)
    await asyncio.to_thread(fs.mkdir, "pics")
    await asyncio.to_thread(fs.pipe_file, "pics/cat.png", PNG)
    reader = FileReader(objects=s3fs_objects(moto_s3, skip_instance_cache=True), max_bytes=1000)
    with pytest.raises(MediaError, match=rf"^object is {len(PNG):,} bytes, over the 1,000 bytes limit$"):
        await read("s3://pics/cat.png", None, reader)
    media = MediaResolver(reader=FileReader(objects=s3fs_objects(moto_s3, skip_instance_cache=True)))
    resolved = await media.resolve(by_url("s3://pics/cat.png"))
    missing = await media.resolve(by_url("s3://pics/dog.png"))
    await media.aclose()
    assert image_of(resolved).data == PNG
    assert missing == RecordError(400, f"{FIELD}: s3://pics/dog.png: no such object")
