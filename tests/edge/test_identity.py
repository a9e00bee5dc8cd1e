"""Client IP, consent, bots and prefetch (no socket needed)."""

from __future__ import annotations

import re

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.edge.identity import (
    DEFAULT_BOT_PATTERNS,
    DEFAULT_TRUSTED,
    Consent,
    ConsentConfig,
    client_ip,
    compile_bots,
    consent,
    is_bot,
    is_prefetch,
    networks,
    parse_networks,
    trusted_peer,
)

# ---------------------------------------------------------------------------------------------
# parse_networks / client_ip
# ---------------------------------------------------------------------------------------------

TRUSTED = parse_networks([*DEFAULT_TRUSTED, "10.0.0.0/8", "fd00::/8"])


def test_parse_networks_accepts_addresses_and_host_bits() -> None:
    nets = parse_networks(["10.0.0.1/8", " 192.0.2.7 ", "2001:db8::/32"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
    assert parse_networks([]) == ()


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "garbage", "", "1.2.3.4/-1", "::1/129"])
def test_parse_networks_names_the_bad_entry(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{bad!r} is not a CIDR network")):
        parse_networks(["127.0.0.0/8", bad])


@pytest.mark.parametrize(
    ("peer", "xff", "fwd", "expected"),
    [
        # Untrusted peer: headers are the client's own words, ignored.
        ("203.0.113.9", ["1.2.3.4"], [], "203.0.113.9"),
        ("203.0.113.9", [], ["for=1.2.3.4"], "203.0.113.9"),
        # Trusted peer without headers: the peer itself.
        ("127.0.0.1", [], [], "127.0.0.1"),
        # Trusted peer: the right-most untrusted hop wins; left of it may be forged.
        ("127.0.0.1", ["6.6.6.6, 198.51.100.7"], [], "198.51.100.7"),
        # A chain of trusted proxies is skipped.
        ("10.0.0.2", ["6.6.6.6, 198.51.100.7, 10.0.0.5, 10.0.0.3"], [], "198.51.100.7"),
        # Several header lines are one list, first line oldest.
        ("10.0.0.2", ["6.6.6.6", "198.51.100.7, 10.0.0.5"], [], "198.51.100.7"),
        ("10.0.0.2", ["198.51.100.7", "10.0.0.5"], [], "198.51.100.7"),
        # Everything trusted: the left-most (oldest) hop.
        ("127.0.0.1", ["10.1.1.1, 10.0.0.5"], [], "10.1.1.1"),
        # Ports on IPv4 and bracketed IPv6 in XFF.
        ("127.0.0.1", ["198.51.100.7:5555"], [], "198.51.100.7"),
        ("127.0.0.1", ["[2001:db8::1]:443"], [], "2001:db8::1"),
        ("127.0.0.1", ["2001:DB8:0:0::1"], [], "2001:db8::1"),
        # Garbage stops the walk at the last hop we could read.
        ("127.0.0.1", ["6.6.6.6, garbage"], [], "127.0.0.1"),
        ("127.0.0.1", ["6.6.6.6, unknown, 10.0.0.5"], [], "10.0.0.5"),
        ("127.0.0.1", ["6.6.6.6, , 10.0.0.5"], [], "10.0.0.5"),
        ("127.0.0.1", ["1.2.3.4:99999"], [], "127.0.0.1"),
        # XFF wins over Forwarded; blank XFF lines count as absent.
        ("127.0.0.1", ["198.51.100.7"], ["for=192.0.2.1"], "198.51.100.7"),
        ("127.0.0.1", ["  "], ["for=192.0.2.1"], "192.0.2.1"),
        # RFC 7239 Forwarded.
        ("127.0.0.1", [], ['for="[2001:db8::1]:4711"'], "2001:db8::1"),
        ("127.0.0.1", [], ["for=192.0.2.60;proto=http;by=203.0.113.43"], "192.0.2.60"),
        ("127.0.0.1", [], ['For="192.0.2.60:8080"'], "192.0.2.60"),
        ("127.0.0.1", [], ["for=6.6.6.6, for=192.0.2.60, for=10.0.0.4"], "192.0.2.60"),
        ("127.0.0.1", [], ["for=6.6.6.6", "for=192.0.2.60"], "192.0.2.60"),
        ("127.0.0.1", [], ['for=6.6.6.6, for="[fd00::7]:1"'], "6.6.6.6"),
        ("127.0.0.1", [], ["for=6.6.6.6, for=unknown"], "127.0.0.1"),
        ("127.0.0.1", [], ["for=6.6.6.6, for=_hidden"], "127.0.0.1"),
        ("127.0.0.1", [], ["for=6.6.6.6, proto=https"], "127.0.0.1"),
        ("127.0.0.1", [], ['for="[2001:db8::1]:_port"'], "2001:db8::1"),
        ("127.0.0.1", [], ['for="[2001:db8::1"'], "127.0.0.1"),
        # IPv6 peers.
        ("::1", ["198.51.100.7"], [], "198.51.100.7"),
        ("2001:db8::9", ["198.51.100.7"], [], "2001:db8::9"),
        ("fd00::1", ["2001:db8::5, fd00::2"], [], "2001:db8::5"),
        # IPv4-mapped IPv6 is unwrapped, also before the trust check.
        ("::ffff:127.0.0.1", ["::ffff:198.51.100.7"], [], "198.51.100.7"),
        ("::ffff:203.0.113.9", ["1.2.3.4"], [], "203.0.113.9"),
        # No or unusable peer.
        (None, ["1.2.3.4"], [], None),
        ("", [], [], None),
        ("not-an-ip", [], [], None),
    ],
)
def test_client_ip(peer: str | None, xff: list[str], fwd: list[str], expected: str | None) -> None:
    assert client_ip(peer, xff, fwd, TRUSTED) == expected


def test_client_ip_with_nothing_trusted_is_the_peer() -> None:
    assert client_ip("127.0.0.1", ["1.2.3.4"], [], ()) == "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# Consent
# ---------------------------------------------------------------------------------------------

TRACK = Consent(track=True, opt_out=False, ldu=False)
NO_TRACK = Consent(track=False, opt_out=False, ldu=False)
CMP = ConsentConfig(cookie="cmp", accepted=("yes", "all"))


@pytest.mark.parametrize(
    ("cookies", "headers", "config", "expected"),
    [
        # Mode "none": always track.
        ({}, {}, ConsentConfig(), TRACK),
        ({"cmp": "no"}, {}, ConsentConfig(), TRACK),
        # Consent cookie: exact accepted values only.
        ({"cmp": "yes"}, {}, CMP, TRACK),
        ({"cmp": "all"}, {}, CMP, TRACK),
        ({"cmp": "no"}, {}, CMP, NO_TRACK),
        ({"cmp": "YES"}, {}, CMP, NO_TRACK),
        ({"cmp": "yes,analytics"}, {}, CMP, NO_TRACK),
        ({}, {}, CMP, NO_TRACK),
        ({"cmp": "yes"}, {}, ConsentConfig(cookie="cmp"), NO_TRACK),  # nothing accepted
        # Declined consent wins over everything else.
        ({"cmp": "no"}, {"Sec-GPC": "1"}, CMP, NO_TRACK),
        # Opt-out cookie.
        ({"optout": "1"}, {}, ConsentConfig(opt_out_cookie="optout"), Consent(True, True, False)),
        (
            {"optout": "true"},
            {},
            ConsentConfig(opt_out_cookie="optout"),
            Consent(True, True, False),
        ),
        ({"optout": "0"}, {}, ConsentConfig(opt_out_cookie="optout"), TRACK),
        ({"optout": "FALSE"}, {}, ConsentConfig(opt_out_cookie="optout"), TRACK),
        ({}, {}, ConsentConfig(opt_out_cookie="optout"), TRACK),
        (
            {"cmp": "yes", "optout": "1"},
            {},
            ConsentConfig(cookie="cmp", accepted=("yes",), opt_out_cookie="optout"),
            Consent(True, True, False),
        ),
        # Global Privacy Control.
        ({}, {"Sec-GPC": "1"}, ConsentConfig(), Consent(True, True, False)),
        ({}, {"sec-gpc": "1"}, ConsentConfig(gpc="opt_out"), Consent(True, True, False)),
        ({}, {"Sec-GPC": "1"}, ConsentConfig(gpc="ldu"), Consent(True, False, True)),
        ({}, {"Sec-GPC": "1"}, ConsentConfig(gpc="ignore"), TRACK),
        ({}, {"Sec-GPC": "0"}, ConsentConfig(), TRACK),
        (
            {"optout": "yes"},
            {"Sec-GPC": "1"},
            ConsentConfig(opt_out_cookie="optout", gpc="ldu"),
            Consent(True, True, True),
        ),
    ],
)
def test_consent(
    cookies: dict[str, str], headers: dict[str, str], config: ConsentConfig, expected: Consent
) -> None:
    assert consent(cookies, headers, config) == expected


def test_consent_config_rejects_unknown_gpc_mode() -> None:
    with pytest.raises(ValueError, match="gpc"):
        ConsentConfig(gpc="block")


# ---------------------------------------------------------------------------------------------
# Bots and prefetch
# ---------------------------------------------------------------------------------------------

BOTS = compile_bots(DEFAULT_BOT_PATTERNS)


@pytest.mark.parametrize(
    "ua",
    [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0)",
        "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
        "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
        "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Twitterbot/1.0",
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        "AdsBot-Google (+http://www.google.com/adsbot.html)",
        "Mozilla/5.0 (compatible; GPTBot/1.0; +https://openai.com/gptbot)",
        "Mozilla/5.0 (Linux; Android 11) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 "
        "Chrome-Lighthouse",
        "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
        "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/534+ (KHTML, like Gecko) BingPreview/1.0b",
        "Mozilla/5.0 (compatible; Google-InspectionTool/1.0)",
        "curl/8.5.0",
        "Wget/1.21.4",
        "python-requests/2.32.3",
        "Python-urllib/3.11",
        "Go-http-client/2.0",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "WhatsApp/2.23.20.0",
        "",
        "   ",
        None,
    ],
)
def test_is_bot(ua: str | None) -> None:
    assert is_bot(ua, BOTS)


@pytest.mark.parametrize(
    "ua",
    [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/131.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Safari/605.1.15",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/470.0.0.0;FBBV/600000000]",
        "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A; wv) AppleWebKit/537.36 (KHTML, "
        "like Gecko) Version/4.0 Chrome/120.0 Mobile Safari/537.36 Instagram 312.0.0.0",
        "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0 YaBrowser/24.1 Safari/537.36",
    ],
)
def test_is_not_bot(ua: str) -> None:
    assert not is_bot(ua, BOTS)


def test_compile_bots_custom_and_errors() -> None:
    custom = compile_bots(["MyMonitor/\\d"])
    assert is_bot("mymonitor/2", custom) and not is_bot("curl/8", custom)
    assert not is_bot("curl/8", compile_bots([]))
    with pytest.raises(ValueError, match="invalid bot pattern"):
        compile_bots(["ok", "(unbalanced"])
    with pytest.raises(ValueError, match="empty"):
        compile_bots([""])


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Sec-Purpose": "prefetch"}, True),
        ({"Sec-Purpose": "prefetch;prerender"}, True),
        ({"sec-purpose": "prefetch; anonymous-client-ip"}, True),
        ({"Purpose": "prefetch"}, True),
        ({"X-Moz": "prefetch"}, True),
        ({"X-Purpose": "preview"}, True),
        ({"X-Purpose": "Preview"}, True),
        ({}, False),
        ({"Sec-Purpose": ""}, False),
        ({"Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate"}, False),
        ({"Purpose": "something-else"}, False),
    ],
)
def test_is_prefetch(headers: dict[str, str], expected: bool) -> None:
    assert is_prefetch(headers) is expected
    # A request's own headers (a caseless multidict, names as the client spelt them).
    received = CIMultiDictProxy(CIMultiDict((k.swapcase(), v) for k, v in headers.items()))
    assert is_prefetch(received) is expected


# -- the one trusted-peer check ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("127.0.0.1", True),
        ("::ffff:127.0.0.1", True),  # a dual-stack socket's spelling of the same peer
        ("::1", True),
        ("fe80::1%eth0", False),
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("203.0.113.9", False),
        ("::ffff:203.0.113.9", False),
        ("", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_trusted_peer_gives_one_answer_for_mapped_addresses(
    peer: str | None, trusted: bool
) -> None:
    nets = networks(("127.0.0.0/8", "::1/128", "10.0.0.0/8"))
    assert trusted_peer(peer, nets) is trusted


def test_networks_are_parsed_once_per_list() -> None:
    cidrs = ("192.0.2.0/24", "2001:db8::/32")
    assert networks(cidrs) is networks(tuple(list(cidrs)))


def test_client_ip_behind_an_ipv4_mapped_trusted_proxy() -> None:
    nets = networks(("127.0.0.0/8",))
    assert client_ip("::ffff:127.0.0.1", ["203.0.113.9"], [], nets) == "203.0.113.9"
    assert client_ip("::ffff:198.51.100.1", ["203.0.113.9"], [], nets) == "198.51.100.1"
