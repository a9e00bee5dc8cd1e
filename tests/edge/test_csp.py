"""CSP decision for the injected same-origin script (checklist 20)."""

from __future__ import annotations

import pytest

from gateway.edge.csp import CspDecision, decide

ORIGIN = "https://shop.example.com"
PATH = "/_capi/px.js"


def check(*policies: str, origin: str = ORIGIN, path: str = PATH) -> CspDecision:
    return decide(list(policies), script_path=path, origin=origin)


@pytest.mark.parametrize(
    ("policies", "allowed", "nonce"),
    [
        # no policy, or none that governs scripts
        ((), True, None),
        (("",), True, None),
        (("img-src 'none'; frame-ancestors 'self'",), True, None),
        (("script-src-attr 'none'",), True, None),
        # 'self', wildcard, scheme-sources
        (("script-src 'self'",), True, None),
        (("script-src 'SELF' https://cdn.example.net",), True, None),
        (("script-src *",), True, None),
        (("script-src https:",), True, None),
        (("script-src http:",), True, None),  # http: also allows https (upgrade)
        (("script-src data: blob:",), False, None),
        # host-sources: scheme, port, wildcard subdomains, paths
        (("script-src shop.example.com",), True, None),
        (("script-src https://shop.example.com",), True, None),
        (("script-src http://shop.example.com",), True, None),
        (("script-src https://shop.example.com:443",), True, None),
        (("script-src https://shop.example.com:8443",), False, None),
        (("script-src https://shop.example.com:*",), True, None),
        (("script-src *.example.com",), True, None),
        (("script-src *.shop.example.com",), False, None),
        (("script-src https://shop.example.com/_capi/",), True, None),
        (("script-src https://shop.example.com/_capi/px.js",), True, None),
        (("script-src https://shop.example.com/static/",), False, None),
        (("script-src ftp://shop.example.com",), False, None),
        (("script-src https://other.example.com",), False, None),
        # 'none', empty, hashes
        (("script-src 'none'",), False, None),
        (("script-src",), False, None),
        (("script-src 'sha256-AbCd0123+/=' 'sha384-xyz'",), False, None),
        (("script-src 'none' 'self'",), True, None),  # 'none' has no effect next to sources
        # nonces
        (("script-src 'nonce-r4nd0m=='",), True, "r4nd0m=="),
        (("script-src 'self' 'nonce-abc'",), True, "abc"),  # harmless to carry it
        (("script-src 'NONCE-abc'",), True, "abc"),
        (("script-src 'nonce-a\"><x'",), False, None),  # not base64: never into an attribute
        (("script-src 'strict-dynamic' 'nonce-n1' 'self' https:",), True, "n1"),
        (("script-src 'strict-dynamic' 'self' https: *",), False, None),
        (("script-src 'strict-dynamic' 'sha256-abc'",), False, None),
        # fallbacks and precedence
        (("default-src 'self'",), True, None),
        (("default-src 'none'; img-src *",), False, None),
        (("default-src 'none'; script-src 'self'",), True, None),
        (("script-src 'none'; script-src-elem 'self'",), True, None),
        (("script-src 'self'; script-src-elem 'none'",), False, None),
        (("script-src 'none'; script-src 'self'",), False, None),  # first duplicate wins
        (("Script-Src 'self'",), True, None),
        # several policies: every one must allow
        (("script-src 'self'", "default-src https:"), True, None),
        (("script-src 'self'", "script-src 'none'"), False, None),
        (("script-src 'self', script-src 'none'",), False, None),
        (("script-src 'self', default-src *",), True, None),
        (("script-src 'nonce-a' 'nonce-b'", "script-src 'nonce-b'"), True, "b"),
        (("script-src 'nonce-a'", "script-src 'nonce-b'"), False, None),
        (("script-src 'nonce-a'", "script-src 'self'"), True, "a"),
        (("script-src 'self' 'nonce-x'", "script-src 'strict-dynamic' 'nonce-y'"), True, "y"),
        # sandbox without allow-scripts runs nothing
        (("sandbox",), False, None),
        (("sandbox allow-forms allow-scripts; script-src 'self'",), True, None),
    ],
)
def test_decide(policies: tuple[str, ...], allowed: bool, nonce: str | None) -> None:
    d = check(*policies)
    assert (d.allowed, d.nonce) == (allowed, nonce)
    assert (d.reason == "") is allowed


def test_reasons() -> None:
    assert "'none'" in check("script-src 'none'").reason
    assert "hashes" in check("script-src 'sha256-abc'").reason
    assert "strict-dynamic" in check("script-src 'strict-dynamic' 'self'").reason
    assert "origin" in check("default-src https://cdn.example.net").reason
    assert "nonces" in check("script-src 'nonce-a'", "script-src 'nonce-b'").reason
    assert "sandbox" in check("sandbox allow-forms").reason


def test_origin_with_port_and_http() -> None:
    assert check("script-src localhost:8080", origin="http://localhost:8080").allowed
    assert not check("script-src localhost", origin="http://localhost:8080").allowed
    assert check("script-src http://127.0.0.1:*", origin="http://127.0.0.1:3000").allowed
    assert not check("script-src https:", origin="http://shop.example.com").allowed
    assert check("script-src https://shop.example.com:8443", origin=ORIGIN + ":8443").allowed


def test_path_with_query_and_escapes() -> None:
    assert check("script-src https://shop.example.com/_capi/", path=PATH + "?v=3").allowed
    assert check("script-src shop.example.com/%5Fcapi/px.js").allowed
