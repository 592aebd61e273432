"""Who is looking at the dashboard, and whether a state-changing request really came from its pages.

A tenant signs in with an access key id and its secret through HTTP Basic, which only ``/ui`` paths
accept (the APIs keep SigV4 and API keys). Browsers send Basic credentials again by themselves with
every request to the site, so a request that changes something (Stop) must also prove it came from the
dashboard's own script: see `from_our_page`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from starlette.datastructures import Headers

from bulkinfer.domain.tenant import Tenant, Tenants

REALM = 'Basic realm="bulkinfer", charset="UTF-8"'
CSRF_HEADER = "x-bulkinfer-ui"
"""Set by the dashboard's script on every POST: a cross-site form cannot set it, and a cross-site
script that tries needs a CORS preflight this server never grants."""
_DUMMY_SECRET = "no-such-key-but-compared-all-the-same"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose jobs a dashboard request sees: one tenant's, or (development mode) everyone's."""

    tenant: Tenant | None
    """None in development mode: every tenant's jobs."""

    @property
    def name(self) -> str | None:
        return None if self.tenant is None else self.tenant.name

    def may_see(self, owner: str) -> bool:
        return self.tenant is None or self.tenant.name == owner


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """The (key id, secret) of an ``Authorization: Basic`` header; None for any other or a malformed one."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not token or len(token) > 4096:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    key, sep, secret = decoded.partition(":")
    return (key, secret) if sep and key else None


def signed_in(tenants: Tenants, authorization: str) -> Viewer | None:
    """The viewer an Authorization header signs in as; None when it does not. Development mode
    (``--insecure-dev``) shows everything without a password. The secret is compared in constant time,
    against a stand-in for an unknown key id, so timing tells nothing about which key ids exist."""
    if tenants.open:
        return Viewer(None)
    given = basic_credentials(authorization)
    if given is None:
        return None
    key, secret = given
    found = tenants.keys.get(key)
    expected = found[1] if found else _DUMMY_SECRET
    matches = hmac.compare_digest(secret.encode(), expected.encode())
    if found is None or not matches:
        return None
    return Viewer(tenants.by_name[found[0]])


def from_our_page(headers: Headers, host: str) -> bool:
    """Whether a state-changing request came from the dashboard's own pages: it carries `CSRF_HEADER`,
    and where the browser says where it came from (``Sec-Fetch-Site``, ``Origin``), that is this site."""
    if headers.get(CSRF_HEADER) != "1":
        return False
    site = headers.get("sec-fetch-site")
    if site is not None:  # the browser's own word, which a reverse proxy's rewritten Host cannot spoil
        return site == "same-origin"
    origin = headers.get("origin")
    hosts = {host, headers.get("x-forwarded-host")}
    return origin is None or origin.split("://", 1)[-1] in hosts
