"""The lane's one-pass header rules give what the multidict rules give, or step aside."""

from __future__ import annotations

import pytest
from aiohttp.http_writer import _serialize_headers
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.edge import headers as hdr
from gateway.edge.lanewire import client_response, lane_request, upstream_request

Pairs = list[tuple[str, str]]

BROWSER: Pairs = [
    ("Host", "shop.example"),
    ("Connection", "keep-alive"),
    ("User-Agent", "Mozilla/5.0"),
    ("Accept", "*/*"),
    ("Sec-Fetch-Dest", "script"),
    ("Cookie", "a=1"),
    ("Cookie", "b=2"),
]


def raw(pairs: Pairs) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.encode(), v.encode()) for k, v in pairs)


def multidict_request(pairs: Pairs, *, preserve_host: bool, trusted: bool) -> bytes:
    headers = hdr.upstream_request_headers(
        CIMultiDictProxy(CIMultiDict(pairs)),
        peer="198.51.100.7",
        peer_trusted=trusted,
        scheme="http",
        host="shop.example",
        upstream_host="127.0.0.1:9000",
        preserve_host=preserve_host,
    )
    length = CIMultiDict(pairs).get("Content-Length")
    if length is not None:
        headers["Content-Length"] = length
    return _serialize_headers("GET /a.css?v=1 HTTP/1.1", headers)


def lines(wire: bytes) -> list[tuple[bytes, bytes]]:
    """The fields (names lowercased: case is no part of a name), in order per name."""
    pairs = [line.partition(b": ") for line in wire.split(b"\r\n")[1:] if line]
    return sorted(((name.lower(), value) for name, _, value in pairs), key=lambda p: p[0])


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("preserve_host", [False, True])
@pytest.mark.parametrize(
    "extra",
    [
        [],
        [("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=6.6.6.6"), ("TE", "trailers")],
        [("Proxy-Authorization", "Basic x"), ("Keep-Alive", "timeout=5")],
        [("Content-Length", "0")],
        [
            ("X-Forwarded-For", "203.0.113.1, 10.0.0.1"),
            ("X-Forwarded-For", " 10.0.0.2 ,"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "www.shop.example"),
        ],
        [("X-Forwarded-Proto", ""), ("X-Forwarded-Host", "")],
    ],
)
def test_the_request_for_the_site_is_the_multidict_rules(
    extra: Pairs, preserve_host: bool, trusted: bool
) -> None:
    pairs = BROWSER + extra
    scan = lane_request(raw(pairs), 1 << 16)
    assert scan is not None
    wire = upstream_request(
        b"GET /a.css?v=1 HTTP/1.1",
        scan,
        peer="198.51.100.7",
        peer_trusted=trusted,
        scheme="http",
        host="shop.example",
        upstream_host="127.0.0.1:9000",
        preserve_host=preserve_host,
    )
    assert wire is not None and wire.endswith(b"\r\n\r\n")
    # The same fields (repeated ones kept in their order), the same values.
    expected = multidict_request(pairs, preserve_host=preserve_host, trusted=trusted)
    assert lines(wire) == lines(expected)
    assert wire.index(b"Cookie: a=1") < wire.index(b"Cookie: b=2")


def test_a_connection_line_naming_fields_steps_aside() -> None:
    pairs = [*BROWSER, ("Connection", "X-Secret"), ("X-Secret", "hop")]
    scan = lane_request(raw(pairs), 1 << 16)
    assert scan is not None
    wire = upstream_request(
        b"GET / HTTP/1.1",
        scan,
        peer=None,
        peer_trusted=False,
        scheme="http",
        host="h",
        upstream_host="u",
        preserve_host=False,
    )
    assert wire is None
    assert client_response(raw([("Connection", "close")])) is None


@pytest.mark.parametrize(
    "extra,taken",
    [
        ([], True),
        ([("Upgrade", "websocket")], False),
        ([("Expect", "100-continue")], False),
        ([("Sec-Fetch-Dest", "document")], True),  # a navigation: its page leaves later
        ([("X-Big", "x" * 3000)], False),
    ],
)
def test_what_keeps_a_request_off_the_lane(extra: Pairs, taken: bool) -> None:
    assert (lane_request(raw(BROWSER + extra), 2048) is not None) is taken


def test_navigations_take_the_lane_marked_as_documents_within_the_size_bound() -> None:
    # Issue 19: the page's request too; its answer is handed to the page path.
    def document(pairs: Pairs) -> bool:
        scan = lane_request(raw(pairs), 4096)
        assert scan is not None
        return scan.document

    assert document([("Sec-Fetch-Dest", "Document")])
    assert document([("Accept", "text/html,*/*;q=0.8")])
    assert not document([("Accept", "text/html"), ("Sec-Fetch-Dest", "image")])
    assert not document([("Sec-Fetch-Dest", "script"), ("Sec-Fetch-Dest", "document")])
    assert not document([("Accept", "*/*")])
    # The size counts every line as sent: name, ": ", value, CRLF.
    assert lane_request(raw([("A", "b")]), 6) is not None
    assert lane_request(raw([("A", "b")]), 5) is None


def test_the_scan_reads_the_forwarding_fields_as_aiohttp_decodes_them() -> None:
    pairs = [
        ("Host", "shop.example"),
        ("X-Forwarded-For", "203.0.113.1, 10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.2"),
        ("Forwarded", "for=198.51.100.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "www.shop.example"),
    ]
    scan = lane_request((*raw(pairs), (b"X-Forwarded-Host", "caf\u00e9".encode())), 4096)
    assert scan is not None
    assert scan.host == b"shop.example" and scan.proto == b"https"
    assert scan.xfh == b"www.shop.example"
    assert scan.forwarding() == (("203.0.113.1, 10.0.0.1", "10.0.0.2"), ("for=198.51.100.1",))
    assert scan.lines == []


def test_the_response_fields_are_the_multidict_rules() -> None:
    pairs = [
        ("Server", "nginx"),
        ("Date", "Mon, 07 Dec 2026 09:00:00 GMT"),
        ("Content-Type", "text/css"),
        ("Content-Length", "100"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Set-Cookie", "a=1; Expires=Wed, 09 Jun 2027 10:18:14 GMT"),
        ("Set-Cookie", "b=2"),
        ("Transfer-Encoding", "chunked"),
        ("ETag", '"v1"'),
    ]
    copied = client_response(raw(pairs))
    assert copied is not None
    out, framing = copied
    expected = CIMultiDict(pairs)
    hdr.drop_hop_by_hop(expected)
    assert out == [f"{k}: {v}".encode() for k, v in expected.items()]
    assert framing.length == b"100" and framing.type == b"text/css"
    assert framing.date and framing.server
    # A field the relay rewrites leaves it to the multidict path.
    assert client_response(raw([("Location", "http://127.0.0.1:9000/x")])) is None
