"""Who is calling: AWS Signature Version 4, checked against the configured access keys.

Each access key is a tenant that sees only its own jobs. The signature is recomputed with botocore's own
signer over exactly the headers the client signed, so whatever boto3 signs, we check the same way.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from fastapi import Request

from bulkinfer.errors import BulkinferError

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)"
    r"/aws4_request, ?SignedHeaders=(?P<headers>[^,]+), ?Signature=(?P<signature>[0-9a-f]{64})"
)
MAX_CLOCK_SKEW_S = 15 * 60


class AuthFailed(BulkinferError):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    """The access key id: each key sees only its own jobs."""
    region: str
    """The region the request was signed for; it goes into ARNs."""


MAX_KEY_ID = 128


class Authenticator:
    def __init__(self, keys: dict[str, str], insecure: bool, default_region: str) -> None:
        self._keys = keys
        self._insecure = insecure
        self._region = default_region

    async def __call__(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        match = _AUTHORIZATION.fullmatch(header.strip())
        if match is None:
            if self._insecure:
                return Caller("anonymous", self._region)
            raise AuthFailed("MissingAuthenticationTokenException", "Request is missing a SigV4 signature")
        if len(match["key"]) > MAX_KEY_ID:  # AWS's own bound, and the store's for a tenant name
            raise AuthFailed(
                "UnrecognizedClientException", "The security token included in the request is invalid"
            )
        caller = Caller(match["key"], match["region"])
        if self._insecure:
            return caller
        secret = self._keys.get(match["key"])
        if secret is None:
            raise AuthFailed(
                "UnrecognizedClientException", "The security token included in the request is invalid"
            )
        expected = _signature(
            request, await request.body(), secret, match["region"], match["service"], match["headers"]
        )
        if not hmac.compare_digest(expected, match["signature"]):
            raise AuthFailed(
                "AccessDeniedException",
                "The request signature we calculated does not match the signature you provided",
            )
        _check_clock(request.headers.get("x-amz-date", ""))
        return caller


def _signature(request: Request, body: bytes, secret: str, region: str, service: str, signed: str) -> str:
    raw_path = request.scope.get("raw_path", request.url.path.encode()).decode()
    query = request.scope.get("query_string", b"").decode()
    url = f"http://{request.headers.get('host', '')}{raw_path}" + (f"?{query}" if query else "")
    headers = {name: request.headers.get(name, "") for name in signed.split(";")}
    copy = AWSRequest(method=request.method, url=url, headers=headers, data=body)
    copy.context["timestamp"] = request.headers.get("x-amz-date", "")
    signer = SigV4Auth(Credentials("unused", secret), service, region)
    canonical = signer.canonical_request(copy)
    return str(signer.signature(signer.string_to_sign(copy, canonical), copy))


def _check_clock(stamp: str) -> None:
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AuthFailed("AccessDeniedException", "X-Amz-Date is missing or malformed") from None
    if abs((datetime.now(UTC) - signed_at).total_seconds()) > MAX_CLOCK_SKEW_S:
        raise AuthFailed("AccessDeniedException", "Signature expired: X-Amz-Date is more than 15 minutes off")


def parse_keys(text: str | None) -> dict[str, str]:
    """``AKID1:SECRET1,AKID2:SECRET2`` into a dict."""
    keys = {}
    for pair in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, secret = pair.partition(":")
        if not sep or not key or not secret:
            raise ValueError(f"access keys are KEY:SECRET pairs separated by commas, not {pair!r}")
        keys[key] = secret
    return keys
