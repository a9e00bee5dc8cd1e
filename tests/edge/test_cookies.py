"""Cookie domain, `_fbp`/`_fbc` format, minting, decisions and Set-Cookie (no socket needed)."""

from __future__ import annotations

import email.utils
import os
import random
import string
import time

import pytest
from aiohttp._cookie_helpers import parse_cookie_header
from capi_param_builder import ParamBuilder
from capi_param_builder.util import EtldPlusOneResolver
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.edge.cookies import (
    FBC_RE,
    FBP_RE,
    CookieDecision,
    cookie_domain,
    decide_cookies,
    fbclid_from,
    for_page,
    new_fbp,
    read_cookies,
    registrable_domain,
    set_cookie_header,
    subdomain_index,
    valid_fbc,
    valid_fbp,
)

NOW_MS = 1_763_840_000_123
FBCLID = "IwAR2xYz_Ab-Cd9EfGhIjKlMnOp"  # mixed case, `_` and `-`: must survive untouched

# ---------------------------------------------------------------------------------------------
# Cookie domain and subdomain index
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.example.co.uk", "example.co.uk"),
        ("www.shop.example.co.uk", "example.co.uk"),
        ("example.com", "example.com"),
        ("a.b.example.com", "example.com"),
        ("WWW.Example.COM", "example.com"),
        ("www.example.com:8443", "example.com"),
        ("example.com.", "example.com"),
        ("app.github.io", "app.github.io"),  # private PSL section, as browsers use it
        ("bücher.de", "xn--bcher-kva.de"),
        ("www.xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("localhost", None),
        ("localhost:8080", None),
        ("intranet", None),
        ("127.0.0.1", None),
        ("127.0.0.1:8080", None),
        ("[::1]", None),
        ("[::1]:8080", None),
        ("::1", None),
        ("co.uk", None),
        ("github.io", None),
        ("com", None),
        ("", None),
        ("evil.com;domain=x", None),
        ("a..example.com", None),
    ],
)
def test_registrable_domain(host: str, expected: str | None) -> None:
    assert registrable_domain(host) == expected


@pytest.mark.parametrize(
    ("host", "override", "expected"),
    [
        ("shop.example.com", ".example.com", "example.com"),
        ("example.com", "example.com", "example.com"),
        ("a.shop.example.com", "shop.example.com", "shop.example.com"),
        ("Shop.Example.com:443", ".EXAMPLE.com", "example.com"),
        # Not under the override: fall back to the host's own registrable domain.
        ("www.other.org", "example.com", "other.org"),
        ("notexample.com", "example.com", "notexample.com"),
        ("127.0.0.1", "example.com", None),
        ("www.example.co.uk", None, "example.co.uk"),
        ("www.example.co.uk", "", "example.co.uk"),
    ],
)
def test_cookie_domain(host: str, override: str | None, expected: str | None) -> None:
    assert cookie_domain(host, override) == expected


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("example.com", 1),
        ("www.example.com", 2),
        ("example.co.uk", 2),
        (".example.com", 1),
        ("example.com.", 1),
        (None, 0),
        ("", 0),
        ("localhost", 0),
        ("127.0.0.1", 0),
        ("[::1]", 0),
        ("::1", 0),
    ],
)
def test_subdomain_index(domain: str | None, expected: int) -> None:
    assert subdomain_index(domain) == expected


# ---------------------------------------------------------------------------------------------
# fbp / fbc format
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "fb.1.1763840000123.1234567890",
        "fb.0.1763840000123.0",
        "fb.2.1763840000123.98765",
        "fb.1.1763840000123.1234567890.AQICAQMC",
        "fb.1.1763840000123.1234567890.Ag",
        "fb.1.1763840000123.1234567890.BQ",
        "fb.12.1763840000123.1234567890",
    ],
)
def test_valid_fbp(value: str) -> None:
    assert valid_fbp(value)
    assert FBP_RE.fullmatch(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "fb.1.1763840000123",
        "fb.1.1763840000123.",
        "fb.1.1763840000.1234567890",  # seconds, not milliseconds
        "fb.1.1763840000123.12ab",
        "fb.x.1763840000123.123",
        "fx.1.1763840000123.123",
        "fb.1.1763840000123.123.AQICAQM",  # 7-char appendix
        "fb.1.1763840000123.123.A",
        "fb.1.1763840000123.123.AQ.Ag",  # 6 segments
        "fb.1.1763840000123.123.AQ==",
        "fb.1.1763840000123.١٢٣",  # non-ASCII digits
        " fb.1.1763840000123.123",
        "fb.1.1763840000123.123\n",
    ],
)
def test_invalid_fbp(value: str | None) -> None:
    assert not valid_fbp(value)


@pytest.mark.parametrize(
    "value",
    [
        f"fb.1.1763840000123.{FBCLID}",
        f"fb.1.1763840000123.{FBCLID}.AQICAQMC",
        f"fb.1.1763840000123.{FBCLID}.Ag",
        "fb.2.1763840000123.abc",
        "fb.0.1763840000123.IwZXh0bgNhZW0CMTEAAR_aem_Zm9v-bar",
    ],
)
def test_valid_fbc(value: str) -> None:
    assert valid_fbc(value)
    assert FBC_RE.fullmatch(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "fb.1.1763840000123",
        "fb.1.1763840000123.",
        "fb.1.1763840000.abc",
        "fb.1.1763840000123.ab c",
        "fb.1.1763840000123.ab%20c",
        "fb.1.1763840000123.abc.AQICAQMCX",
        "fb.1.1763840000123.abc.AQICAQMC.Ag",
    ],
)
def test_invalid_fbc(value: str | None) -> None:
    assert not valid_fbc(value)


def test_new_fbp_format_and_range() -> None:
    rng = random.Random(7)
    for _ in range(200):
        value = new_fbp(NOW_MS, 1, rng)
        assert valid_fbp(value)
        fb, index, ms, number = value.split(".")
        assert (fb, index, ms) == ("fb", "1", str(NOW_MS))
        assert number == str(int(number))  # decimal, no padding
        assert 0 <= int(number) <= 2_147_483_647


def test_new_fbp_uses_secrets_by_default() -> None:
    values = {new_fbp(NOW_MS, 2) for _ in range(50)}
    assert len(values) > 45
    assert all(v.startswith(f"fb.2.{NOW_MS}.") and valid_fbp(v) for v in values)


@pytest.mark.parametrize(("now_ms", "index"), [(1_763_840_000, 1), (NOW_MS, -1), (NOW_MS, 100)])
def test_new_fbp_rejects_seconds_and_bad_index(now_ms: int, index: int) -> None:
    with pytest.raises(ValueError):
        new_fbp(now_ms, index)


# ---------------------------------------------------------------------------------------------
# fbclid and cookie decisions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "referer", "expected"),
    [
        (f"fbclid={FBCLID}", None, FBCLID),
        (f"?a=1&fbclid={FBCLID}&b=2", None, FBCLID),
        ({"fbclid": FBCLID}, None, FBCLID),
        (f"fbclid={FBCLID}&fbclid=second", None, FBCLID),
        ("fbclid=Ab%2DcD", None, "Ab-cD"),  # normal URL unquoting only
        # The page URL lost it (redirect): take it from the Referer.
        ("", f"https://l.facebook.com/l.php?u=x&fbclid={FBCLID}", FBCLID),
        ({}, f"https://www.example.com/landing?fbclid={FBCLID}#top", FBCLID),
        ("fbclid=", f"https://x.example/?fbclid={FBCLID}", FBCLID),
        ("fbclid=fromurl", f"https://x.example/?fbclid={FBCLID}", "fromurl"),
        ("a=1", "https://x.example/?a=1", None),
        ("", None, None),
        ("fbclid=", None, None),
        ({"fbclid": ""}, None, None),
        ("fbclid=bad.value", None, None),  # would break the fbc's segments
        ("fbclid=bad%20value", None, None),
        ("", "http://[::1/?fbclid=x", None),  # malformed Referer does not raise
        # A name written with escapes is still the parameter (as parse_qs reads it).
        (f"fbcl%69d={FBCLID}", None, FBCLID),
        ("", f"https://x.example/?%66bclid={FBCLID}", FBCLID),
        ("a=1&b=fbclid", "https://x.example/?q=%20", None),
    ],
)
def test_fbclid_from(
    query: dict[str, str] | str, referer: str | None, expected: str | None
) -> None:
    assert fbclid_from(query, referer) == expected


FBP = "fb.1.1700000000000.123456789"
FBC = f"fb.1.1700000000000.{FBCLID}"


def test_decide_new_visitor_without_click() -> None:
    d = decide_cookies(None, None, None, now_ms=NOW_MS, index=1)
    assert d.fbc is None and not d.set_fbc
    assert d.set_fbp and d.fbp is not None and valid_fbp(d.fbp)
    assert d.fbp.startswith(f"fb.1.{NOW_MS}.")


def test_decide_new_visitor_with_click_preserves_case() -> None:
    d = decide_cookies(None, None, FBCLID, now_ms=NOW_MS, index=2)
    assert d.fbc == f"fb.2.{NOW_MS}.{FBCLID}" and d.set_fbc


@pytest.mark.parametrize("refresh", [True, False])
def test_decide_keeps_valid_cookies(refresh: bool) -> None:
    d = decide_cookies(FBP, FBC, None, now_ms=NOW_MS, index=1, refresh=refresh)
    assert d == CookieDecision(fbp=FBP, fbc=FBC, set_fbp=refresh, set_fbc=refresh)


def test_decide_keeps_five_segment_values() -> None:
    fbp, fbc = FBP + ".AQICAQMC", FBC + ".Ag"
    d = decide_cookies(fbp, fbc, FBCLID, now_ms=NOW_MS, index=1)
    assert (d.fbp, d.fbc) == (fbp, fbc)


def test_decide_same_click_keeps_fbc_and_its_creation_time() -> None:
    d = decide_cookies(FBP, FBC, FBCLID, now_ms=NOW_MS, index=1)
    assert d.fbc == FBC and d.set_fbc


def test_decide_new_click_rewrites_fbc() -> None:
    d = decide_cookies(FBP, FBC, "NewClick123", now_ms=NOW_MS, index=1)
    assert d.fbc == f"fb.1.{NOW_MS}.NewClick123" and d.set_fbc
    assert d.fbp == FBP


def test_decide_click_differing_only_in_case_is_a_new_click() -> None:
    d = decide_cookies(FBP, FBC, FBCLID.lower(), now_ms=NOW_MS, index=1)
    assert d.fbc == f"fb.1.{NOW_MS}.{FBCLID.lower()}"


def test_decide_replaces_malformed_cookies() -> None:
    d = decide_cookies("fb.1.garbage", "fb.1.1700000000000", FBCLID, now_ms=NOW_MS, index=1)
    assert d.fbp is not None and valid_fbp(d.fbp) and d.fbp != "fb.1.garbage" and d.set_fbp
    assert d.fbc == f"fb.1.{NOW_MS}.{FBCLID}" and d.set_fbc


def test_decide_malformed_fbc_without_click_is_dropped() -> None:
    d = decide_cookies(FBP, "junk", None, now_ms=NOW_MS, index=1, refresh=False)
    assert d == CookieDecision(fbp=FBP, fbc=None, set_fbp=False, set_fbc=False)


def test_decide_ignores_malformed_fbclid() -> None:
    d = decide_cookies(FBP, FBC, "a.b", now_ms=NOW_MS, index=1)
    assert d.fbc == FBC


def test_decide_click_from_referer_when_url_lost_it() -> None:
    click = fbclid_from("", f"https://www.example.com/?fbclid={FBCLID}")
    d = decide_cookies(None, None, click, now_ms=NOW_MS, index=1)
    assert d.fbc == f"fb.1.{NOW_MS}.{FBCLID}"


# ---------------------------------------------------------------------------------------------
# Oracle: Meta's capi-param-builder-python
# ---------------------------------------------------------------------------------------------


class _PslResolver(EtldPlusOneResolver):
    """Meta's default eTLD+1 rule just drops the first label; give it the real list."""

    def resolve(self, host_name: str) -> str:
        return registrable_domain(host_name) or host_name


def _meta(
    host: str,
    query: dict[str, list[str]] | None = None,
    cookies: dict[str, str] | None = None,
    referer: str | None = None,
    *,
    psl: bool = False,
) -> ParamBuilder:
    builder = ParamBuilder(_PslResolver()) if psl else ParamBuilder()
    builder.process_request(host, query or {}, cookies or {}, referer)
    return builder


def _ours(host: str, query: str, cookies: dict[str, str], referer: str | None) -> CookieDecision:
    index = subdomain_index(cookie_domain(host, None))
    click = fbclid_from(query, referer)
    return decide_cookies(
        cookies.get("_fbp"), cookies.get("_fbc"), click, now_ms=int(time.time() * 1000), index=index
    )


@pytest.mark.parametrize(
    ("host", "psl"),
    [
        ("example.com", False),
        ("www.example.com", False),
        ("shop.example.com:8443", False),
        ("localhost", False),
        ("localhost:8080", False),
        ("127.0.0.1", False),
        ("127.0.0.1:8080", False),
        ("[::1]:8080", False),
        ("www.example.co.uk", True),
        ("a.b.shop.example.co.uk", True),
        ("a.b.example.com", True),
    ],
)
def test_oracle_subdomain_index_and_fbc(host: str, psl: bool) -> None:
    before = int(time.time() * 1000)
    meta = _meta(host, {"fbclid": [FBCLID]}, psl=psl)
    ours = _ours(host, f"fbclid={FBCLID}", {}, None)
    after = int(time.time() * 1000)
    meta_fbc, meta_fbp = meta.get_fbc(), meta.get_fbp()
    assert meta_fbc is not None and meta_fbp is not None
    assert ours.fbc is not None and ours.fbp is not None
    m, o = meta_fbc.split("."), ours.fbc.split(".")
    assert (o[0], o[1], o[3]) == (m[0], m[1], m[3])  # same index, same fbclid byte for byte
    assert before <= int(m[2]) <= after and before <= int(o[2]) <= after
    mp, op = meta_fbp.split("."), ours.fbp.split(".")
    assert op[1] == mp[1] and len(op[2]) == len(mp[2]) == 13
    assert len(op) == 4 and len(mp) == 5  # Meta appends its appendix; we write plain values


def test_oracle_fbclid_from_referer() -> None:
    referer = f"https://www.example.com/landing?fbclid={FBCLID}"
    meta = _meta("www.example.com", {}, {}, referer)
    ours = _ours("www.example.com", "", {}, referer)
    meta_fbc = meta.get_fbc()
    assert meta_fbc is not None and ours.fbc is not None
    assert meta_fbc.split(".")[3] == ours.fbc.split(".")[3] == FBCLID


@pytest.mark.parametrize(
    ("cookie_fbc", "click", "rewrites"),
    [(FBC, FBCLID, False), (FBC, "Other1", True), ("fb.1.1700000000000.Ab.AQICAQMC", "Ab", False)],
)
def test_oracle_fbc_rewrite_rule(cookie_fbc: str, click: str, rewrites: bool) -> None:
    cookies = {"_fbp": FBP, "_fbc": cookie_fbc}
    meta = _meta("www.example.com", {"fbclid": [click]}, cookies)
    ours = _ours("www.example.com", f"fbclid={click}", cookies, None)
    meta_fbc = meta.get_fbc()
    assert meta_fbc is not None and ours.fbc is not None
    # Meta re-issues a kept 4-segment value with its "no change" appendix; the first four
    # segments -- what Meta reads -- are the same as ours.
    assert (meta_fbc.split(".")[:4] == cookie_fbc.split(".")[:4]) is (not rewrites)
    # Prefix, subdomain index and fbclid; the creation time comes from two clock reads.
    same = [0, 1, 3]
    assert [meta_fbc.split(".")[i] for i in same] == [ours.fbc.split(".")[i] for i in same]
    assert (ours.fbc == cookie_fbc) is (not rewrites)
    meta_fbp = meta.get_fbp()
    assert meta_fbp is not None and meta_fbp.split(".")[:4] == FBP.split(".") and ours.fbp == FBP


def test_oracle_random_segment_is_metas_randint() -> None:
    # Meta: str(random.randint(0, 2147483647)) from the global generator. Same seed, same digits.
    state = random.getstate()
    try:
        for seed in range(20):
            random.seed(seed)
            meta_fbp = _meta("www.example.com").get_fbp()
            assert meta_fbp is not None
            ours = new_fbp(NOW_MS, 1, random.Random(seed))
            assert ours.split(".")[3] == meta_fbp.split(".")[3]
    finally:
        random.setstate(state)


def test_oracle_we_accept_everything_metas_builder_emits() -> None:
    rng = random.Random(1234)
    alphabet = string.ascii_letters + string.digits + "_-"
    hosts = ["example.com", "www.example.com", "localhost", "127.0.0.1", "[::1]:8080"]
    for i in range(200):
        click = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))
        host = hosts[i % len(hosts)]
        cookies = {"_fbp": FBP, "_fbc": FBC} if i % 3 == 0 else {}
        meta = _meta(host, {"fbclid": [click]}, cookies)
        fbp, fbc = meta.get_fbp(), meta.get_fbc()
        assert valid_fbp(fbp), fbp
        assert valid_fbc(fbc), fbc
        assert fbc is not None and fbc.split(".")[3] == click
        # And the cookies Meta asks to set are ones we would keep rather than regenerate.
        for cookie in meta.get_cookies_to_set() or ():
            assert (valid_fbp if cookie.name == "_fbp" else valid_fbc)(cookie.value)


# ---------------------------------------------------------------------------------------------
# Set-Cookie
# ---------------------------------------------------------------------------------------------


def test_set_cookie_header_https() -> None:
    now = 1_763_840_000.0
    header = set_cookie_header(
        "_fbp", FBP, domain="example.com", max_age=7_776_000, secure=True, now=now
    )
    expires = email.utils.formatdate(now + 7_776_000, usegmt=True)
    assert header == (
        f"_fbp={FBP}; Max-Age=7776000; Expires={expires}; Domain=example.com; Path=/; "
        "SameSite=Lax; Secure"
    )
    assert "httponly" not in header.lower()


def test_set_cookie_header_http_host_only() -> None:
    header = set_cookie_header("_fbc", FBC, domain=None, max_age=60, secure=False)
    parts = header.split("; ")
    assert parts[0] == f"_fbc={FBC}"
    assert "Domain" not in header and "Secure" not in parts
    assert parts[-2:] == ["Path=/", "SameSite=Lax"]
    expires = email.utils.parsedate_to_datetime(parts[2].removeprefix("Expires="))
    assert abs(expires.timestamp() - (time.time() + 60)) < 5


@pytest.mark.parametrize(
    ("name", "value", "domain"),
    [
        ("_fbp", "a;b", None),
        ("_fbp", "a\r\nSet-Cookie: x=y", None),
        ("_f bp", "a", None),
        ("_fbp", "a", "example.com; Secure"),
    ],
)
def test_set_cookie_header_rejects_injection(name: str, value: str, domain: str | None) -> None:
    with pytest.raises(ValueError):
        set_cookie_header(name, value, domain=domain, max_age=60, secure=True)


def test_new_fbp_draws_from_the_workers_pool_not_a_system_call_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = os.urandom

    def counted(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counted)
    values = [new_fbp(NOW_MS, 1) for _ in range(500)]
    assert len(calls) <= 2  # 500 x 4 bytes from pools of 4 KiB
    assert len(set(values)) > 495 and all(valid_fbp(v) for v in values)


def test_for_page_issues_what_is_missing_and_keeps_what_came() -> None:
    now = 1_700_000_000_000
    fbp, fbc, lines = for_page(
        "shop.example.co.uk", None, None, "AbC", secure=True, override=None, max_age=90, now_ms=now
    )
    assert fbp is not None and fbp.startswith(f"fb.2.{now}.")  # Domain=example.co.uk: 2
    assert fbc == f"fb.2.{now}.AbC"
    assert [line.split("=", 1)[0] for line in lines] == ["_fbp", "_fbc"]
    assert all("Domain=example.co.uk" in line and "Secure" in line for line in lines)
    kept = for_page(
        "shop.example.co.uk", fbp, fbc, None, secure=True, override=None, max_age=90, now_ms=now
    )
    assert kept[:2] == (fbp, fbc)


# -- reading the gateway's own cookies without parsing the site's --------------------------

_NAMES = ("_fbp", "_fbc", "consent", "optout")
# Headers built of pairs, mostly as browsers write them, with odd names, values and
# separators mixed in: the plain ones are read directly, the others must say None.
_PAIR = st.tuples(
    st.sampled_from([*_NAMES, "_ga", "a", " _fbp", "_fbp ", "x_fbp", '"_fbp"', ""]),
    st.sampled_from(["=", "=", "=", " = ", ""]),
    st.sampled_from(
        [
            "fb.1.2.3",
            "fb.1.2.4",
            "",
            "a=b",
            '"q"',
            '"q',
            "Wed, 09 Jun 2021 10:18:14 GMT",
            "x y",
            "1,2",
            "a\\b",
            "\t",
            "ok ",
        ]
    ),
    st.sampled_from(["; ", ";", "; ", " ; ", " ", ", ", ";;", "\t;"]),
)
_HEADERS = st.lists(_PAIR, max_size=6).map(lambda pairs: "".join("".join(p) for p in pairs))


@settings(max_examples=500, deadline=None)
@given(_HEADERS)
@example("_fbp=fb.1.2.3; _ga=1; _fbp=fb.1.2.4")
@example(" _fbp=ok  ;consent=yes;\t_fbc=fb.1.2.AbC;")
def test_read_cookies_gives_what_aiohttps_parser_gives_for_those_names(header: str) -> None:
    # A plain header is read without aiohttp's parser: for the names asked, the same values
    # (the last of a repeated name), else None, and the caller parses the header whole.
    read = read_cookies(header, _NAMES)
    parsed = {name: morsel.value for name, morsel in parse_cookie_header(header)}
    if read is not None:
        assert read == {name: parsed[name] for name in _NAMES if name in parsed}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("_ga=GA1.1.1; _fbp=fb.1.2.3; _fbc=fb.1.2.AbC", {"_fbp": "fb.1.2.3", "_fbc": "fb.1.2.AbC"}),
        ("_fbp=fb.1.2.3;_fbp=fb.1.2.4 ;", {"_fbp": "fb.1.2.4"}),
        ("session=a=b; x_fbp=1", {}),
        ("", {}),
        ('_fbp="fb.1.2.3"', None),  # quoted: aiohttp's parser unquotes it
        ("_fbp = fb.1.2.3", None),
        ("a=b c=d", None),
    ],
)
def test_read_cookies(header: str, expected: dict[str, str] | None) -> None:
    assert read_cookies(header, ("_fbp", "_fbc")) == expected
