"""Who is calling, checked before a request reaches any route: AWS Signature Version 4 over a bounded body.

`Gate` is ASGI middleware that, for every request, in this order:

1. refuses a body whose ``Content-Length`` is over the cap (413), before anything else;
2. refuses a request with no signature, an unknown access key id, or a credential scope for another
   service (403), before a byte of the body is read;
3. reads the body, refusing it once it passes the cap (a body sent without a length, chunked), so
   nothing over the cap is ever held in memory, and refusing it (503) when the bodies being received
   would pass the server's budget for them (`BodyBudget`: in all, and per access key id), or when it
   stops coming for `BODY_IDLE_S`;
4. checks the signature over exactly that body, recomputed with botocore's own signer over the headers
   the client signed, and that ``X-Amz-Content-SHA256``, when sent, is the body's hash (a captured
   request cannot be replayed with another body), and the clock;

then hands the request on with its ``Caller`` in ``scope["state"]`` and the body replayed. A refused
request never reaches a route, so no JSON is parsed for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulkinfer.domain.tenant import ANONYMOUS, Tenant, Tenants
from bulkinfer.errors import BulkinferError

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)"
    r"/aws4_request, ?SignedHeaders=(?P<headers>[^,]+), ?Signature=(?P<signature>[0-9a-f]{64})"
)
MAX_CLOCK_SKEW_S = 15 * 60
MAX_KEY_ID = 128
DEFAULT_MAX_REQUEST_BYTES = 32 * 2**20
"""Enough for Bedrock's largest body, a 25 MB InvokeModel request, with room for JSON's overhead."""
RUNTIME_PREFIX = "/model/"
"""The bedrock-runtime routes, which boto3 may sign for ``bedrock`` or ``bedrock-runtime``."""
BODY_TIMEOUT_S = 120
"""Longest a body may take to arrive: 32 MiB at a quarter of a megabyte a second."""
BODY_IDLE_S = 10
MIN_UPLOAD_RATE = 256 * 1024
"""Slowest an upload streamed to its route (POST /v1/files) may come on average, past `BODY_TIMEOUT_S`."""
"""Longest a body may stop coming before it is refused."""
FREE_BODY_BYTES = 64 * 1024
"""Of each body, what the budget for bodies in memory does not count (see `BodyBudget`)."""
MAX_API_KEY = 512
"""Longest API key looked up (the tenants file takes none longer)."""
API_KEY_PREFIX = "/v1/"
"""The OpenAI and Anthropic routes, whose clients send API keys rather than signatures."""
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class AuthFailed(BulkinferError):
    def __init__(self, code: str, message: str, status: int = 403) -> None:
        self.code = code
        self.status = status
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: Tenant
    """Whose jobs it sees and what it may touch."""
    region: str
    """The region the request was signed for; it goes into ARNs."""


@dataclass(frozen=True, slots=True)
class _Claim:
    """What the Authorization header says, before the body is read."""

    tenant: Tenant
    secret: str
    key: str
    region: str
    service: str
    signed: str
    signature: str


_INVALID_TOKEN = ("UnrecognizedClientException", "The security token included in the request is invalid")


class Authenticator:
    def __init__(self, tenants: Tenants, default_region: str) -> None:
        self._tenants = tenants
        self._region = default_region

    @property
    def open(self) -> bool:
        return self._tenants.open

    def claim(self, headers: Headers, path: str) -> _Claim | Caller:
        """The caller an Authorization header claims to be; a `Caller` at once where nothing more is
        checked (an API key, or development mode). Raises `AuthFailed` without reading the body."""
        match = _AUTHORIZATION.fullmatch(headers.get("authorization", "").strip())
        if match is None:
            return self._by_api_key(headers, path)
        if len(match["key"]) > MAX_KEY_ID:  # AWS's own bound, and the store's for a tenant name
            raise AuthFailed(*_INVALID_TOKEN)
        found = self._tenants.for_key(match["key"])
        if found is None:
            raise AuthFailed(*_INVALID_TOKEN)
        tenant, secret = found
        if self._tenants.open:
            return Caller(tenant, match["region"])
        _check_service(match["service"], path)
        return _Claim(
            tenant,
            secret,
            match["key"],
            match["region"],
            match["service"],
            match["headers"],
            match["signature"],
        )

    def verify(self, claim: _Claim, scope: Scope, headers: Headers, body: bytes) -> Caller:
        """The caller, once the signature over ``body`` holds."""
        sent_hash = headers.get("x-amz-content-sha256")
        if sent_hash is not None and not hmac.compare_digest(sent_hash, hashlib.sha256(body).hexdigest()):
            raise AuthFailed(
                "AccessDeniedException",
                "X-Amz-Content-SHA256 must be the SHA-256 of the body (unsigned payloads are not accepted)",
            )
        expected = _signature(scope, headers, body, claim)
        if not hmac.compare_digest(expected, claim.signature):
            raise AuthFailed(
                "AccessDeniedException",
                "The request signature we calculated does not match the signature you provided",
            )
        _check_clock(headers.get("x-amz-date", ""))
        return Caller(claim.tenant, claim.region)

    def _by_api_key(self, headers: Headers, path: str) -> Caller:
        """The caller of a request without a signature: its API key's tenant (``X-Api-Key``, else
        ``Authorization: Bearer``)."""
        key = headers.get("x-api-key") or _bearer(headers.get("authorization", ""))
        if key:
            tenant = self._tenants.for_api_key(key) if len(key) <= MAX_API_KEY else None
            if tenant is None:
                raise AuthFailed("UnrecognizedClientException", "Incorrect API key provided", 401)
            return Caller(tenant, self._region)
        if self._tenants.open:
            return Caller(Tenant(ANONYMOUS), self._region)
        if path.startswith(API_KEY_PREFIX):
            raise AuthFailed(
                "MissingAuthenticationTokenException",
                "No API key provided: send it as 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'",
                401,
            )
        raise AuthFailed("MissingAuthenticationTokenException", "Request is missing a SigV4 signature")


def _bearer(authorization: str) -> str:
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _check_service(service: str, path: str) -> None:
    allowed = ("bedrock", "bedrock-runtime") if path.startswith(RUNTIME_PREFIX) else ("bedrock",)
    if service not in allowed:
        raise AuthFailed(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{allowed[0]}', not {service!r}",
        )


def _signature(scope: Scope, headers: Headers, body: bytes, claim: _Claim) -> str:
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"").decode()
    url = f"http://{headers.get('host', '')}{raw_path.decode()}" + (f"?{query}" if query else "")
    signed = {name: headers.get(name, "") for name in claim.signed.split(";")}
    copy = AWSRequest(method=scope["method"], url=url, headers=signed, data=body)
    copy.context["timestamp"] = headers.get("x-amz-date", "")
    signer = SigV4Auth(Credentials("unused", claim.secret), claim.service, claim.region)
    canonical = signer.canonical_request(copy)
    return str(signer.signature(signer.string_to_sign(copy, canonical), copy))


def _check_clock(stamp: str) -> None:
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AuthFailed("AccessDeniedException", "X-Amz-Date is missing or malformed") from None
    if abs((datetime.now(UTC) - signed_at).total_seconds()) > MAX_CLOCK_SKEW_S:
        raise AuthFailed("AccessDeniedException", "Signature expired: X-Amz-Date is more than 15 minutes off")


class BodyTooLarge(AuthFailed):
    def __init__(self, limit: int) -> None:
        super().__init__("ValidationException", f"the request body is over the {limit:,}-byte limit", 413)


class BodyBudget:
    """Request body bytes held in memory: all requests together at most ``total``, the requests signed
    with one access key id at most ``per_key`` (key ids are not secret: anyone may name one), past which
    a request is refused (503, which boto3 retries). The first `FREE_BODY_BYTES` of each body are not
    counted: uvicorn holds that much per connection anyway, and a create or a get never waits behind
    big uploads."""

    def __init__(self, total: int, per_key: int) -> None:
        self._left = total
        self._per_key = per_key
        self._by_key: Counter[str] = Counter()

    def take(self, key: str, size: int) -> None:
        if size > self._left or self._by_key[key] + size > self._per_key:
            raise AuthFailed(
                "ServiceUnavailableException",
                "too many request bodies are being received at once; try again shortly",
                503,
            )
        self._left -= size
        self._by_key[key] += size

    def give(self, key: str, size: int) -> None:
        self._left += size
        self._by_key[key] -= size
        if self._by_key[key] <= 0:
            del self._by_key[key]


class _Held:
    """The bytes of one request's body, and what of them it holds of the budget."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.key = ""
        self._bytes = 0
        self._charged = 0

    def take(self, size: int) -> None:
        charge = max(0, self._bytes + size - FREE_BODY_BYTES) - self._charged
        if charge > 0:
            self._budget.take(self.key, charge)
            self._charged += charge
        self._bytes += size

    def release(self) -> None:
        if self._charged:
            self._budget.give(self.key, self._charged)
        self._bytes = self._charged = 0


class Gate:
    """ASGI middleware: the checks in this module's docstring, before any route runs."""

    def __init__(
        self,
        app: ASGIApp,
        auth: Authenticator,
        max_body: int,
        respond: Callable[[AuthFailed], ASGIApp],
        public: frozenset[str] = frozenset(),
        max_buffered: int | None = None,
        streamed: Mapping[tuple[str, str], int] | None = None,
        own_auth: tuple[str, ...] = (),
    ) -> None:
        """``own_auth``: path prefixes (``/ui``) whose routes check the caller themselves (the dashboard
        takes HTTP Basic, which no other route accepts); their bodies are still capped here."""
        self._app = app
        self._own_auth = own_auth
        self._streamed = dict(streamed or {})
        self._auth = auth
        self._max_body = max_body
        self._budget = BodyBudget(max_buffered or 2 * max_body, per_key=max_body)
        self._respond = respond
        self._public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        held = _Held(self._budget)
        try:
            try:
                replay = await self._admit(scope, receive, held)
            except AuthFailed as refusal:
                await self._respond(refusal)(scope, receive, send)
                return
            await self._app(scope, replay, send)
        finally:
            held.release()  # the body is the app's no longer once its answer is sent

    async def _admit(self, scope: Scope, receive: Receive, held: _Held) -> Receive:
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        stream_cap = self._streamed.get((scope["method"], scope["path"]))
        if length.isdigit() and int(length) > max(self._max_body, stream_cap or 0):
            raise BodyTooLarge(max(self._max_body, stream_cap or 0))
        path = scope["path"]
        public = path in self._public or any(path == p or path.startswith(p + "/") for p in self._own_auth)
        claim = None if public else self._auth.claim(headers, scope["path"])
        if isinstance(claim, Caller) and stream_cap is not None:
            # no signature to check over the body: it goes to the route as it comes (an upload, spooled
            # to disk there), never whole in memory, cut off past the cap
            scope.setdefault("state", {})["caller"] = claim
            return _capped(receive, stream_cap)
        if length.isdigit() and int(length) > self._max_body:
            raise BodyTooLarge(self._max_body)
        held.key = claim.key if isinstance(claim, _Claim) else claim.tenant.name if claim else "-"
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):  # a body trickled in holds its connection no longer
                body = await _read_body(receive, self._max_body, held)
        except TimeoutError:
            raise AuthFailed(
                "RequestTimeoutException",
                f"the request body stopped coming for {BODY_IDLE_S} s, or took over {BODY_TIMEOUT_S} s",
                408,
            ) from None
        if isinstance(claim, _Claim):
            claim = self._auth.verify(claim, scope, headers, body)
        scope.setdefault("state", {})["caller"] = claim
        return _replay(body, receive)


async def _read_body(receive: Receive, limit: int, held: _Held) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        async with asyncio.timeout(BODY_IDLE_S):  # a stalled body holds its share of the budget no longer
            message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        held.take(len(chunk))
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _capped(receive: Receive, limit: int) -> Receive:
    """A ``receive`` that passes the body on, ending the request once more than ``limit`` bytes came
    (the route reading it sees a disconnect and answers nothing more), or once it stalls for
    `BODY_IDLE_S`, or once it comes slower on average than `MIN_UPLOAD_RATE` past `BODY_TIMEOUT_S` (a
    byte now and then would hold the connection for ever). Once the body is whole, what the client does
    next is passed on as it comes."""
    size = 0
    started: float | None = None
    whole = False

    async def capped() -> Message:
        nonlocal size, started, whole
        if whole:
            return await receive()
        now = asyncio.get_running_loop().time()
        started = now if started is None else started
        left = started + BODY_TIMEOUT_S + size / MIN_UPLOAD_RATE - now
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(
                min(BODY_IDLE_S, left)
            ):  # a stalled upload holds its connection no longer
                message = await receive()
        except TimeoutError:
            raise AuthFailed(
                "RequestTimeoutException",
                f"the request body stopped coming for {BODY_IDLE_S} s, or came slower than "
                f"{MIN_UPLOAD_RATE // 1024} KiB/s",
                408,
            ) from None
        size += len(message.get("body", b""))
        if size > limit:
            raise BodyTooLarge(limit)
        whole = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return capped


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then whatever the client does next."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def parse_keys(text: str | None) -> dict[str, str]:
    """``AKID1:SECRET1,AKID2:SECRET2`` into a dict."""
    keys: dict[str, str] = {}
    pairs = [p.strip() for p in (text or "").split(",") if p.strip()]
    for number, pair in enumerate(pairs, 1):
        key, sep, secret = pair.partition(":")
        if not sep or not key or not secret:  # (what was given is not echoed: it may be a secret)
            raise ValueError(f"access keys are KEY:SECRET pairs separated by commas; pair {number} is not")
        if key in keys:
            raise ValueError(f"access key {key} is given twice")
        keys[key] = secret
    return keys
