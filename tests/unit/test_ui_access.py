"""Signing in to the dashboard (HTTP Basic against the tenants' access keys) and its CSRF check."""

from __future__ import annotations

import base64

from starlette.datastructures import Headers

from bulkinfer.api.ui.access import CSRF_HEADER, basic_credentials, from_our_page, signed_in
from bulkinfer.domain.tenant import Tenant, Tenants

TENANTS = Tenants(
    by_name={"alpha": Tenant("alpha"), "beta": Tenant("beta")},
    keys={"AKIDALPHA": ("alpha", "alpha-secret"), "AKIDBETA": ("beta", "beta:secret")},
)


def basic(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


def test_a_key_id_and_its_secret_sign_in_as_its_tenant() -> None:
    viewer = signed_in(TENANTS, basic("AKIDALPHA", "alpha-secret"))
    assert viewer is not None and viewer.name == "alpha"
    assert viewer.may_see("alpha") and not viewer.may_see("beta")
    beta = signed_in(TENANTS, basic("AKIDBETA", "beta:secret"))  # a secret may hold a colon
    assert beta is not None and beta.name == "beta"


def test_a_wrong_secret_an_unknown_key_or_another_scheme_signs_in_no_one() -> None:
    assert signed_in(TENANTS, basic("AKIDALPHA", "beta:secret")) is None
    assert signed_in(TENANTS, basic("AKIDNOBODY", "alpha-secret")) is None
    assert signed_in(TENANTS, basic("AKIDALPHA", "")) is None
    assert signed_in(TENANTS, "Bearer AKIDALPHA") is None
    assert signed_in(TENANTS, "") is None


def test_malformed_basic_headers_are_no_credentials() -> None:
    no_colon = "Basic " + base64.b64encode(b"no-colon").decode()
    for header in ("Basic", "Basic !!!", no_colon, "Basic " + "A" * 5000):
        assert basic_credentials(header) is None
    assert basic_credentials("basic " + base64.b64encode(b"k:s").decode()) == ("k", "s")
    assert basic_credentials("Basic " + base64.b64encode(b"\xff:\xfe").decode()) is None


def test_development_mode_shows_everyone_without_a_password() -> None:
    viewer = signed_in(Tenants(open=True), "")
    assert viewer is not None and viewer.name is None and viewer.may_see("anyone")


def test_a_stop_must_carry_the_pages_header_and_come_from_this_site() -> None:
    host = "127.0.0.1:8000"
    ours = {CSRF_HEADER: "1", "origin": f"http://{host}", "sec-fetch-site": "same-origin"}
    assert from_our_page(Headers(ours), host)
    assert from_our_page(Headers({CSRF_HEADER: "1"}), host)  # a client that sends neither (curl)
    assert not from_our_page(Headers({}), host)  # a cross-site form cannot set the header
    assert not from_our_page(Headers({**ours, CSRF_HEADER: "0"}), host)
    older = {CSRF_HEADER: "1"}  # a browser without Sec-Fetch-Site: its Origin tells
    assert from_our_page(Headers({**older, "origin": f"http://{host}"}), host)
    assert not from_our_page(Headers({**older, "origin": "http://evil.example"}), host)
    assert not from_our_page(Headers({**older, "origin": "null"}), host)
    assert not from_our_page(Headers({**ours, "sec-fetch-site": "cross-site"}), host)
    assert not from_our_page(Headers({**ours, "sec-fetch-site": "same-site"}), host)
    # behind a reverse proxy that rewrites Host: the browser's Sec-Fetch-Site, or X-Forwarded-Host
    proxied = {**ours, "origin": "https://bulkinfer.example.com"}
    assert from_our_page(Headers(proxied), host)
    no_fetch_site = {CSRF_HEADER: "1", "origin": "https://bulkinfer.example.com"}
    assert not from_our_page(Headers(no_fetch_site), host)
    assert from_our_page(Headers({**no_fetch_site, "x-forwarded-host": "bulkinfer.example.com"}), host)
