"""HtmlScan, selectors and JSON-LD paths: streaming, bounded extraction for rule files (issue 5)."""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.html.scan import (
    HtmlFound,
    HtmlScan,
    Selector,
    Wants,
    jsonld_lookup,
    parse_selector,
    selector_matches,
)
from gateway.html.tokens import unwrap

PRICE = "product:price:amount"
ALL_META = frozenset({"description", "og:title", PRICE, "price", "author"})
BUY = parse_selector("button.buy[data-sku]")
ANY_SKU = parse_selector("[data-sku]")


def scan(doc: bytes, wants: Wants, chunks: list[bytes] | None = None, **kw: Any) -> HtmlFound:
    s = HtmlScan(wants, **kw)
    for piece in chunks if chunks is not None else [doc]:
        s.feed(piece)
    return s.finish()


def meta(doc: bytes, *names: str, **kw: Any) -> dict[str, list[str]]:
    return scan(doc, Wants(meta=frozenset(names)), **kw).meta


def ld(doc: bytes) -> list[Any]:
    return scan(doc, Wants(jsonld=True)).jsonld


def elements(doc: bytes, sel: str) -> list[dict[str, str]]:
    s = parse_selector(sel)
    return scan(doc, Wants(selectors=(s,))).elements[s]


def same_in_any_chunking(doc: bytes, wants: Wants, **kw: Any) -> HtmlFound:
    """Feed `doc` cut at every index and byte by byte; all must give the one-piece result."""
    whole = scan(doc, wants, **kw)
    for i in range(len(doc) + 1):
        assert repr(scan(doc, wants, [doc[:i], doc[i:]], **kw)) == repr(whole), f"cut at {i}"
    bytewise = [doc[i : i + 1] for i in range(len(doc))]
    assert repr(scan(doc, wants, bytewise, **kw)) == repr(whole), "byte by byte"
    return whole


# --- selectors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "button.add-to-cart[data-sku]",
        "meta[itemprop=price]",
        "a.buy, button.buy",
        "*",
        "#main",
        "div.a.b#c[x][y='1'][z^=\"a b\"][w$=q][v*=r][u~=s]",
        "[data-sku]",
        "  INPUT[Name=qty]  ",
        r".md\:flex",
    ],
)
def test_valid_selectors_compile_and_print_their_source(text: str) -> None:
    sel = parse_selector(text)
    assert str(sel) == text.strip()
    assert sel == parse_selector(text) and hash(sel) == hash(parse_selector(text))
    assert isinstance(sel, Selector)


MATCHES = [
    ("button.add-to-cart[data-sku]", "BUTTON", {"class": "x add-to-cart", "data-sku": ""}, True),
    ("button.add-to-cart[data-sku]", "button", {"class": "add-to-cart"}, False),
    ("button.add-to-cart[data-sku]", "a", {"class": "add-to-cart", "data-sku": "1"}, False),
    ("meta[itemprop=price]", "meta", {"itemprop": "price"}, True),
    ("meta[itemprop=price]", "meta", {"itemprop": "Price"}, False),  # values: case-sensitive
    ("a.buy, button.buy", "button", {"class": "buy"}, True),
    ("a.buy, button.buy", "span", {"class": "buy"}, False),
    ("*", "section", {}, True),
    ("#main", "div", {"id": "main"}, True),
    ("#main", "div", {"id": "main2"}, False),
    (".a.b", "p", {"class": "b\ta"}, True),
    (".a.b", "p", {"class": "ab"}, False),
    ("[href^=https]", "a", {"href": "https://x"}, True),
    ("[href^='']", "a", {"href": "x"}, False),  # empty ^= $= *= ~= never match
    ("[href$='.pdf']", "a", {"href": "/f.pdf"}, True),
    ("[href*=shop]", "a", {"href": "/my-shop/"}, True),
    ("[rel~=next]", "a", {"rel": "prev next"}, True),
    ("[rel~=next]", "a", {"rel": "prev-next"}, False),
    ("[rel~='a b']", "a", {"rel": "a b"}, False),
    ("[DATA-SKU]", "div", {"data-sku": "1"}, True),  # attribute names: case-insensitive
    (r".md\:flex", "div", {"class": "md:flex"}, True),
    (r"[data-x='a\'b']", "div", {"data-x": "a'b"}, True),
    (r"#\31 23", "div", {"id": "123"}, True),
]


@pytest.mark.parametrize(("sel", "tag", "attrs", "expected"), MATCHES)
def test_selector_matches(sel: str, tag: str, attrs: dict[str, str], expected: bool) -> None:
    assert selector_matches(parse_selector(sel), tag, attrs) is expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("div > a", "combinators are not supported; use one compound selector such as"),
        ("div a", "combinators are not supported"),
        ("h1 + p", "combinators are not supported"),
        ("h1~p", "combinators are not supported"),
        ("a:hover", "pseudo-classes"),
        ("p::before", "pseudo-classes"),
        ("a[href", "unbalanced brackets"),
        ("a]", "unbalanced brackets"),
        ("a[href|=en]", "cannot read the attribute test"),
        ("a[href=x i]", "cannot read the attribute test"),
        ("", "empty"),
        ("   ", "empty"),
        ("a,,b", "empty alternative"),
        ("a,", "empty alternative"),
        (",a", "empty alternative"),
        ("a.b*", "unexpected '*'"),
        ("a!", "unexpected '!'"),
    ],
)
def test_unsupported_selectors_are_clear_errors(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="selector") as info:
        parse_selector(text)
    assert problem in str(info.value)
    assert repr(text) in str(info.value)


# --- meta -----------------------------------------------------------------------------------


def test_meta_by_name_property_itemprop_any_quoting_and_case() -> None:
    doc = (
        b"<!DOCTYPE html><html><head>"
        b'<meta name="description" content="A &amp; B">'
        b"<META PROPERTY='og:title' CONTENT='It&#39;s \"here\"'/>"
        b"<meta itemprop=price content=19.99 />"  # unquoted: "19.99" then a lone "/"
        b'<meta\nname = "Author"\tcontent = "Ann">'
        b'<meta property="product:price:amount" content="10"><meta content="12" '
        b'property="product:price:amount">'
        b'<meta name="description">'  # no content: nothing to report
        b"<meta name='keywords' content='not wanted'>"
    )
    assert meta(doc, *ALL_META) == {
        "author": ["Ann"],
        "description": ["A & B"],
        "og:title": ['It\'s "here"'],
        PRICE: ["10", "12"],
        "price": ["19.99"],
    }


def test_meta_names_are_matched_lowercased_and_several_at_once() -> None:
    doc = b'<meta itemprop="price lowPrice" name="PRICE" content="5"><meta name=x content=y>'
    assert meta(doc, "Price", "lowprice", "none") == {
        "lowprice": ["5"],
        "none": [],
        "price": ["5"],  # once, though both itemprop and name say so
    }


def test_unquoted_value_keeps_a_trailing_slash_like_browsers() -> None:
    assert meta(b"<meta name=a content=x/>", "a") == {"a": ["x/"]}


# --- what is not a tag ----------------------------------------------------------------------

HIDDEN = [
    b'<!-- <meta name="description" content="comment"> -->',
    b'<!-- a -- b <meta name="description" content="comment2"> --!>',
    b'<script>var s = "<meta name=description content=script>";</script>',
    b'<script type="text/javascript"><!-- "<meta name=description content=s2>" --></script>',
    b"<style>/* <meta name=description content=style> */</style>",
    b"<textarea><meta name=description content=textarea></textarea>",
    b"<title><meta name=description content=title></title>",
    b"<noscript><meta name=description content=noscript></noscript>",
    b"<iframe><meta name=description content=iframe></iframe>",
    b'<div title="<meta name=description content=attr>"></div>',
    b"<div title='x > y' data-a=\"<b>x</b><meta name=description content=quoted>\"></div>",
    b'<a data-html="a><!-- "><meta name="description" content="after"><!-- -->',
    b'<p data-x="1 > 0">ok</p><div x="y"><meta name=description content=after2>',
    b"<script>if (a<b) { x = '</scrip' + 't>'; }</script>",
    b"<STYLE>p{}</STYLE ><SCRIPT SRC=x></SCRIPT\n>",
]


HIDDEN_MORE = [
    b"<script><!--\ndocument.write('<script></script><meta name=a content=x>');//--></script>",
    b"<script><!-- <script><meta name=a content=fake3></script><meta name=a content=fake4>",
    b"<a\r\ndata-sku='x\ry\r\nz\x00'>&notin;<div data-sku=\"?a=1&copy=2&amp;&#0;&#x80;\">",
]


def test_comments_raw_text_and_attribute_values_hide_tags() -> None:
    doc = b"".join(HIDDEN) + b'<meta name="description" content="real">'
    assert meta(doc, "description") == {"description": ["after", "after2", "real"]}


def test_short_comments_close_at_once() -> None:
    doc = b"<!--><meta name=a content=1><!---><meta name=a content=2><!----><meta name=a content=3>"
    assert meta(doc, "a") == {"a": ["1", "2", "3"]}


def test_bogus_comments_doctype_and_processing_instructions() -> None:
    doc = (
        b'<!DOCTYPE html PUBLIC "x"><?xml version="1.0"?><![CDATA[ x ]]>'
        b"</ not a tag><meta name=a content=1></><meta name=a content=2>"
        b"a < b <3 <meta name=a content=3>"
    )
    assert meta(doc, "a") == {"a": ["1", "2", "3"]}


def test_plaintext_ends_the_scan() -> None:
    s = HtmlScan(Wants(meta=frozenset({"a"})), max_bytes=40)
    s.feed(b"<meta name=a content=1><plaintext>")
    assert s.done
    s.feed(b"<meta name=a content=2>" * 10)
    found = s.finish()
    assert found.meta == {"a": ["1"]} and not found.truncated


# --- JSON-LD --------------------------------------------------------------------------------

PRODUCT = {"@type": "Product", "offers": {"price": "19.99"}}


@pytest.mark.parametrize(
    "open_tag",
    [
        b'<script type="application/ld+json">',
        b"<script type='application/ld+json'>",
        b"<script type=application/ld+json>",
        b'<SCRIPT TYPE="Application/LD+JSON">',
        b'<script type=" application/ld+json ; charset=utf-8" id=x>',
        b'<script id="a" type="application&#x2F;ld+json">',
    ],
)
def test_jsonld_script_types(open_tag: bytes) -> None:
    assert ld(open_tag + json.dumps(PRODUCT).encode() + b"</script>") == [PRODUCT]


@pytest.mark.parametrize(
    "body",
    [
        b"<!--\n%s\n-->",
        b"<![CDATA[%s]]>",
        b"//<![CDATA[\n%s\n//]]>",
        b"/*<![CDATA[*/%s/*]]>*/",
        b"  \n<!--<![CDATA[%s]]>-->\n",
        b"\xef\xbb\xbf%s",
    ],
)
def test_jsonld_wrappers_are_stripped(body: bytes) -> None:
    doc = b'<script type="application/ld+json">' + body % json.dumps(PRODUCT).encode()
    assert ld(doc + b"</script>") == [PRODUCT]


def test_jsonld_invalid_skipped_arrays_kept_others_ignored() -> None:
    doc = (
        b'<script type="application/ld+json">{"@type": "Product",}</script>'
        b'<script type="application/ld+json">[{"@type": "Order", "orderNumber": "A1"}, 2]</script>'
        b'<script type="application/json">{"@type": "Product"}</script>'
        b'<script>{"@type": "Product"}</script>'
        b'<script type="application/ld+json"></script>'
        b'<script type="application/ld+json">{"a": "\\u00e9 \xc3\xa9"}</SCRIPT>'
    )
    assert ld(doc) == [[{"@type": "Order", "orderNumber": "A1"}, 2], {"a": "é é"}]


def test_jsonld_ends_at_the_first_end_script_tag_like_browsers() -> None:
    # Browsers end the script at "</script" even inside a JSON string: what is left is not
    # valid JSON, so it is skipped, and the rest of the string is read as HTML.
    doc = (
        b'<script type="application/ld+json">{"a": "</script><meta name=x content=y>"}</script>'
        b'<script type="application/ld+json">{"b": "<\\/script>"}</script>'
    )
    found = scan(doc, Wants(meta=frozenset({"x"}), jsonld=True))
    assert found.jsonld == [{"b": "</script>"}]
    assert found.meta == {"x": ["y"]}


def test_unfinished_jsonld_at_the_end_is_read_like_browsers_do() -> None:
    assert ld(b'<script type="application/ld+json">{"a": 1}') == [{"a": 1}]
    assert ld(b'<script type="application/ld+json">{"a": 1') == []


def test_script_escapes_like_browsers() -> None:
    # Old ad code: "<!--" then "<script" inside a script escapes its "</script>".
    legacy = (
        b"<script><!--\ndocument.write('<script src=x.js></script>"
        b"<meta name=a content=fake>');\n//--></script><meta name=a content=1>"
    )
    closed = b"<script><!-- x --><meta name=a content=fake2></script><meta name=a content=2>"
    # "</script>" only undoes the inner escape: the rest of the page is script.
    open_ = b"<script><!-- <script><meta name=a content=fake3></script>"
    doc = legacy + closed + open_ + b"<meta name=a content=fake4>"
    assert same_in_any_chunking(doc, Wants(meta=frozenset({"a"}))).meta == {"a": ["1", "2"]}
    wrapped = b'<script type="application/ld+json"><!-- {"a": "<script>"} --></script>'
    assert ld(wrapped + b"<script type=application/ld+json>[1]</script>") == [
        {"a": "<script>"},
        [1],
    ]


# --- elements -------------------------------------------------------------------------------


def test_selector_matches_report_attributes_in_document_order() -> None:
    doc = (
        b'<button class="buy" data-sku="A&amp;1" DATA-QTY=2 disabled>x</button>'
        b'<button class="buy">no sku</button>'
        b"<a class=buy data-sku=B href='/p?a=1&copy=2&amp;b=&lt;'>"
        b'<BUTTON CLASS="big buy" data-sku="C" data-sku="ignored">'
    )
    assert elements(doc, "button.buy[data-sku], a.buy") == [
        {"class": "buy", "data-sku": "A&1", "data-qty": "2", "disabled": ""},
        {"class": "buy", "data-sku": "B", "href": "/p?a=1&copy=2&b=<"},
        {"class": "big buy", "data-sku": "C"},
    ]


def test_tagless_selectors_and_star() -> None:
    doc = b'<div data-sku=1><span data-SKU=2></span><p data-skus=3><img data-sku="4"/>'
    assert [e["data-sku"] for e in elements(doc, "[data-sku]")] == ["1", "2", "4"]
    assert len(elements(doc, "*")) == 4
    assert elements(doc, "[data-sku='2']") == [{"data-sku": "2"}]


def test_matches_are_capped_at_100_per_selector() -> None:
    doc = b"<li data-i=x>" * 150 + b'<meta name="a" content="after">'
    sel = parse_selector("li")
    found = scan(doc, Wants(meta=frozenset({"a"}), selectors=(sel, BUY)))
    assert len(found.elements[sel]) == 100
    assert found.elements[BUY] == []
    assert found.meta == {"a": ["after"]}


# --- chunking -------------------------------------------------------------------------------

DOC = (
    b"\xef\xbb\xbf<!DOCTYPE html><html><head>"
    b'<meta charset="utf-8"><META NAME=Description CONTENT="caf\xc3\xa9 &amp; co">'
    b"<!-- <meta name=description content=hidden> --><!-->"
    b"<meta property=\"product:price:amount\" content='9.5'/>"
    b'<script>x = "<meta name=description content=js>" </script >'
    b"<script type='application/ld+json'><!--\n"
    b'{"@type": "Product", "offers": {"price": "9.5"}}\n--></script>'
    b"<style>a{}</style></head><body><p data-x='1 > 0'>t</p>"
    b'<button class="buy x" data-sku="S&#49;">Buy</button>'
    b'<div title="<button class=buy data-sku=fake>"></div>'
    b"<textarea><button class=buy data-sku=T></textarea>"
    b"<button\nclass=buy\ndata-sku=Z/></body></html>"
)
WANTS = Wants(meta=ALL_META, jsonld=True, selectors=(BUY, ANY_SKU))


def test_every_split_point_and_byte_by_byte() -> None:
    found = same_in_any_chunking(DOC, WANTS)
    assert found.meta["description"] == ["café & co"]
    assert found.meta[PRICE] == ["9.5"]
    assert found.jsonld == [{"@type": "Product", "offers": {"price": "9.5"}}]
    assert [e["data-sku"] for e in found.elements[BUY]] == ["S1", "Z/"]
    assert found.elements[ANY_SKU] == found.elements[BUY]
    assert not found.truncated


def test_every_split_point_with_meta_only_and_with_tight_limits() -> None:
    same_in_any_chunking(DOC, Wants(meta=frozenset({"description"})))
    small = same_in_any_chunking(DOC, WANTS, max_item=40, max_bytes=len(DOC) - 30)
    assert small.truncated  # the last 30 bytes hold the Z/ button
    assert small.meta[PRICE] == small.meta["description"] == []  # 53- and 48-byte tags
    assert small.jsonld == []  # 60 bytes of JSON
    assert small.elements[BUY] == [{"class": "buy x", "data-sku": "S1"}]  # a 40-byte tag


# --- bounds ---------------------------------------------------------------------------------


def test_max_bytes_truncates_and_makes_feeding_pointless() -> None:
    doc = b"<meta name=a content=1>" + b"x" * 100 + b"<meta name=a content=2>"
    s = HtmlScan(Wants(meta=frozenset({"a"})), max_bytes=len(doc) - 1)
    s.feed(doc[:50])
    assert not s.done
    s.feed(doc[50:])
    assert s.done
    s.feed(b"<meta name=a content=3>")
    assert s.finish() == HtmlFound({"a": ["1"]}, [], {}, truncated=True)
    exact = scan(doc, Wants(meta=frozenset({"a"})), max_bytes=len(doc))
    assert exact.meta == {"a": ["1", "2"]} and not exact.truncated


def test_oversized_items_are_dropped_and_scanning_resumes() -> None:
    big = b"y" * 300
    doc = (
        b'<meta name=a content="' + big + b'"><meta name=a content=1>'
        b'<script type="application/ld+json">["' + big + b'"]</script>'
        b'<script type="application/ld+json">[2]</script>'
        b"<!-- " + big + b" --><meta name=a content=3>"
        b'<script data-x="' + big + b'"><meta name=a content=hidden></script>'
        b"<meta name=a content=4>"
    )
    found = same_in_any_chunking(doc, Wants(meta=frozenset({"a"}), jsonld=True), max_item=100)
    assert found.meta == {"a": ["1", "3", "4"]}
    assert found.jsonld == [[2]]


def stream(total: int, piece: bytes, chunk: int = 65536) -> Iterator[bytes]:
    """`total` bytes of `piece` repeated, in `chunk`-sized pieces (never all in memory)."""
    block = piece * (chunk // len(piece) + 2)
    for i in range(total // chunk):
        off = (i * chunk) % len(piece)
        yield block[off : off + chunk]


@pytest.mark.parametrize(
    ("opening", "filler", "closing"),
    [
        (b"<!--", b"<meta name=a content=x> -- ", b"-->"),
        (b'<script type="application/ld+json">["', b"<meta name=a content=x> ", b'"]</script>'),
        (b'<div data-big="', b"<meta name=a content=x> ", b'">'),
        (b"<p>", b"<b class=c>text</b> <!-- c --> ", b"</p>"),
    ],
    ids=["comment", "jsonld", "attribute", "markup"],
)
def test_fifty_megabytes_in_64k_chunks_keep_memory_bounded(
    opening: bytes, filler: bytes, closing: bytes
) -> None:
    max_item = 262_144
    s = HtmlScan(Wants(meta=frozenset({"a"}), jsonld=True), max_bytes=60_000_000)
    s.feed(opening)
    most = 0
    for piece in stream(50_000_000, filler):
        s.feed(piece)
        most = max(most, len(s._buf))
    s.feed(closing + b"<meta name=a content=after>")
    found = s.finish()
    assert most <= max_item + 16  # an unfinished item, or the tail of a possible end marker
    assert found.meta == {"a": ["after"]}  # nothing inside the giant item was read
    assert not found.truncated


# --- charsets, empty wants ------------------------------------------------------------------


def test_charset_decodes_extracted_strings() -> None:
    doc = b'<meta name=a content="caf\xe9"><button class=buy data-sku="\xe9">'
    latin = scan(doc, Wants(meta=frozenset({"a"}), selectors=(BUY,)), charset="iso-8859-1")
    assert latin.meta == {"a": ["café"]}
    assert latin.elements[BUY] == [{"class": "buy", "data-sku": "é"}]
    for name in ("no-such-charset", "utf-16", "rot13", ""):
        assert meta(doc, "a", charset=name) == {"a": ["caf\ufffd"]}  # falls back to UTF-8


def test_empty_wants_is_a_no_op() -> None:
    s = HtmlScan(Wants())
    assert Wants().empty and s.done
    s.feed(DOC)
    assert s.finish() == HtmlFound({}, [], {}, truncated=False)
    assert not Wants(jsonld=True).empty and not Wants(selectors=(BUY,)).empty


def test_small_max_item_is_refused() -> None:
    with pytest.raises(ValueError, match="max_item"):
        HtmlScan(WANTS, max_item=8)


# --- JSON-LD paths --------------------------------------------------------------------------

GRAPH = [
    {
        "@context": "https://schema.org",
        "@graph": [
            {"@type": "WebPage", "name": "page"},
            {
                "@type": ["Order", "Thing"],
                "orderNumber": "A1",
                "acceptedOffer": [
                    {"itemOffered": {"sku": "s1"}, "price": 1},
                    {"itemOffered": [{"sku": "s2"}, {"sku": "s3"}], "price": None},
                ],
            },
        ],
    },
    {"@type": "schema:Product", "offers": {"price": "9", "seller": {"@type": "Organization"}}},
    {"@type": "https://schema.org/Product", "offers": [{"price": "10"}, {"price": "11"}]},
    {"@type": "http://schema.org/product", "schema:offers": {"price": 12}},
    [{"@type": "Product", "isRelatedTo": {"@type": "Product", "offers": {"price": "13"}}}],
    "not an object",
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("Order.orderNumber", ["A1"]),
        ("Order.acceptedOffer.itemOffered.sku", ["s1", "s2", "s3"]),
        ("Order.acceptedOffer.price", [1]),  # null is no value
        ("Product.offers.price", ["9", "10", "11", 12, "13"]),
        ("Product.offers.seller", [{"@type": "Organization"}]),
        ("Order.acceptedOffer", [GRAPH[0]["@graph"][1]["acceptedOffer"]]),  # type: ignore[index]
        ("*.sku", ["s1", "s2", "s3"]),
        ("WebPage.name", ["page"]),
        ("Organization", [{"@type": "Organization"}]),
        ("Event.name", []),
        ("Product.nothing.here", []),
    ],
)
def test_jsonld_lookup(path: str, expected: list[Any]) -> None:
    assert jsonld_lookup(GRAPH, path) == expected


def test_jsonld_lookup_rejects_empty_paths() -> None:
    for path in ("", " ", "Product.", ".price", "Product..price"):
        with pytest.raises(ValueError, match="JSON-LD path"):
            jsonld_lookup(GRAPH, path)


def test_jsonld_lookup_survives_deep_nesting() -> None:
    deep: Any = {"@type": "Product", "sku": "deep"}
    for _ in range(5000):
        deep = {"x": [deep]}
    assert jsonld_lookup([deep], "Product.sku") == ["deep"]


# --- property -------------------------------------------------------------------------------

FRAGMENTS = [
    b"<",
    b">",
    b"/",
    b"=",
    b'"',
    b"'",
    b" ",
    b"\n",
    b"-",
    b"!",
    b"?",
    b"&",
    b"&amp;",
    b"x",
    b"<!--",
    b"-->",
    b"--!>",
    b"<!",
    b"</",
    b"<meta",
    b"<META ",
    b" name=a",
    b' name="a"',
    b" content=",
    b" content='v'",
    b" itemprop=a",
    b" data-sku=",
    b" class=buy",
    b"<button",
    b"<script",
    b"</script>",
    b" type=application/ld+json",
    b"<style>",
    b"</style>",
    b"<title>",
    b"</title>",
    b"<plaintext>",
    b"<textarea>",
    b"</textarea>",
    b"[1]",
    b'{"@type": "Product"}',
    b"<![CDATA[",
    b"]]>",
    b"\xc3\xa9",
    b"\xff",
]
SCAN_WANTS = Wants(meta=frozenset({"a"}), jsonld=True, selectors=(BUY, ANY_SKU))


@settings(max_examples=400, deadline=None)
@given(
    doc=st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=4)), max_size=60).map(
        b"".join
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    tight=st.booleans(),
    wants=st.sampled_from(
        [SCAN_WANTS, Wants(meta=frozenset({"a"})), Wants(selectors=(parse_selector("*"),))]
    ),
)
def test_any_chunking_gives_the_one_piece_result(
    doc: bytes, cuts: list[int], tight: bool, wants: Wants
) -> None:
    kw = {"max_item": 24, "max_bytes": 150} if tight else {}
    points = sorted({min(c, len(doc)) for c in cuts})
    pieces = [doc[a:b] for a, b in zip([0, *points], [*points, len(doc)], strict=True)]
    assert repr(scan(doc, wants, pieces, **kw)) == repr(scan(doc, wants, **kw))


# --- Chromium as the oracle -----------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
ORACLE_SELECTORS = ["button.buy[data-sku]", "[data-sku]", "div, p", "meta[content]"]
ORACLE_WANTS = Wants(
    meta=frozenset({"a", "b", "description"}),
    jsonld=True,
    selectors=tuple(parse_selector(s) for s in ORACLE_SELECTORS),
)
ORACLE_FRAGMENTS = [
    *FRAGMENTS,
    b'="a>b"',
    b"='x>'",
    b' title="<meta name=a content=q>"',
    b"<div",
    b"<DIV ",
    b"<!---",
    b"<!-->",
    b"<!--->",
    b"</SCRIPT ",
    b"<noscript>",
    b"</noscript>",
    b"<xmp>",
    b"</xmp>",
    b"\t",
    b"\r\n",
    b"\r",
    b"\x00",
    b" name=b",
    b"<p",
    b"/>",
    b"&copy=",
    b"&#49;",
    b"&notit;",
    b"<button class=buy data-sku=1>",
    b'<p data-x="a > b">',
    b"<div x-on='() => 1'>",
    b'<script type=application/ld+json>[{"a":1}]</script>',
]
# Every document in its own iframe: one page load for all. The page's CSP stops scripts from
# running but scripting stays on, so <noscript> is raw text as in a real visit.
ORACLE_JS = """async ([docs, sels]) => Promise.all(docs.map(doc => new Promise(done => {
  const f = document.createElement("iframe");
  const attrs = (e) => [...e.attributes].map(a => [a.name, a.value]);
  f.onload = () => {
    const d = f.contentDocument;
    done({
      metas: [...d.querySelectorAll("meta")].map(attrs),
      scripts: [...d.querySelectorAll("script")].map(s => [s.getAttribute("type"), s.textContent]),
      els: sels.map(sel => [...d.querySelectorAll(sel)].slice(0, 100).map(attrs)),
    });
    f.remove();
  };
  f.srcdoc = doc;
  document.body.appendChild(f);
})))"""


def browser_view(res: dict[str, Any]) -> tuple[Any, ...]:
    """What HtmlScan should report, worked out from the DOM Chromium built."""
    metas: dict[str, list[str]] = {name: [] for name in sorted(ORACLE_WANTS.meta)}
    for pairs in res["metas"]:
        attrs = dict(reversed(pairs))  # first of duplicates wins (the DOM has only one anyway)
        if "content" not in attrs:
            continue
        names = {
            t
            for key in ("name", "property", "itemprop")
            for t in attrs.get(key, "").lower().split()
        }
        for name in sorted(names & set(metas)):
            metas[name].append(attrs["content"])
    docs = []
    for kind, text in res["scripts"]:
        if (
            kind is not None
            and kind.split(";")[0].strip(" \t\n\f\r").lower() == "application/ld+json"
        ):
            with contextlib.suppress(ValueError):
                docs.append(json.loads(unwrap(text)))
    return metas, docs, [[dict(p) for p in found] for found in res["els"]]


async def test_results_agree_with_chromium() -> None:
    if os.environ.get("CAPIGW_SKIP_BROWSER") == "1":
        pytest.skip("CAPIGW_SKIP_BROWSER=1: browser tests skipped on request")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-browser.sh", pytrace=False)
    from playwright.async_api import Route, async_playwright

    rnd = random.Random(20240517)
    docs = [DOC, b"".join(HIDDEN), *HIDDEN, *HIDDEN_MORE]
    for _ in range(120):
        parts = [rnd.choice(ORACLE_FRAGMENTS) for _ in range(rnd.randrange(120))]
        docs.append(b"".join(parts))

    async def blank(route: Route) -> None:
        await route.fulfill(
            body=b"<!DOCTYPE html><body></body>",
            headers={"content-type": "text/html", "content-security-policy": "script-src 'none'"},
        )

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], timeout=20_000
        )
        try:
            page = await chromium.new_page()
            await page.route("http://oracle.test/", blank)
            await page.goto("http://oracle.test/")
            texts = [d.decode("utf-8", "replace") for d in docs]
            results = await page.evaluate(ORACLE_JS, [texts, ORACLE_SELECTORS])
        finally:
            await chromium.close()
    for doc, res in zip(docs, results, strict=True):
        found = scan(doc, ORACLE_WANTS)
        ours = (found.meta, found.jsonld, [found.elements[s] for s in ORACLE_WANTS.selectors])
        assert repr(ours) == repr(browser_view(res)), doc
