"""ProductReader: streaming, bounded collection of a page's product declarations (issue 17)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.html.products import PageData, ProductReader, read_page

FIXTURES = Path(__file__).parent.parent / "fixtures" / "catalog"
PAGES = sorted(p.name for p in FIXTURES.glob("*.html"))


def chunked(body: bytes, cuts: list[int], **kw: int) -> PageData:
    reader = ProductReader(**kw)
    at = 0
    for cut in sorted(set(cuts)):
        reader.feed(body[at:cut])
        at = cut
    reader.feed(body[at:])
    return reader.close()


def test_collects_json_ld_raw_meta_canonical_and_microdata() -> None:
    body = b"""<html><head>
    <link rel="canonical" href="/p/a">
    <meta property="og:type" content="product"><meta property="og:title" content="A &amp; B">
    <meta name="description" content="not a product tag">
    <script type="application/ld+json"><!--
    {"@type": "Product", "name": "A"}
    --></script>
    <script type="application/ld+json">{"broken": </script>
    <script>var x = '<meta property="og:title" content="fake">';</script>
    </head><body>
    <div itemscope itemtype="https://schema.org/Product" itemid="urn:a">
      <span itemprop="name">  A
        <i>plus</i> </span>
      <a itemprop="url" href="/p/a">link</a>
      <div itemprop="offers" itemscope itemtype="https://schema.org/Offer">
        <meta itemprop="price" content="3.50"><time itemprop="validFrom" datetime="2026-01-01">
        Jan</time>
      </div>
      <span itemprop="color">red</span><span itemprop="color">blue</span>
    </div>
    <p itemprop="name">outside any item</p>
    </body></html>"""
    got = read_page(body)
    assert got.canonical == "/p/a"
    assert got.meta == (("og:title", "A & B"), ("og:type", "product"))
    assert got.json_ld == ('{"@type": "Product", "name": "A"}', '{"broken":')
    assert got.microdata == (
        {
            "@type": "https://schema.org/Product",
            "@id": "urn:a",
            "name": "A plus",
            "url": "/p/a",
            "offers": {
                "@type": "https://schema.org/Offer",
                "price": "3.50",
                "validFrom": "2026-01-01",
            },
            "color": ["red", "blue"],
        },
    )
    assert not got.truncated


def test_a_page_without_products_gives_nothing() -> None:
    got = read_page(b"<html><body><p>itemscope is a word here</p>" + b"x" * 5000 + b"</body>")
    assert got == PageData((), (), (), None, False)


def test_charset_is_honoured() -> None:
    body = '<meta property="og:title" content="Café"><p itemscope><b itemprop="n">Crème</b>'
    reader = ProductReader(charset="iso-8859-1")
    reader.feed(body.encode("iso-8859-1"))
    got = reader.close()
    assert got.meta == (("og:title", "Café"),)
    assert got.microdata == ({"@type": "", "n": "Crème"},)


@pytest.mark.parametrize("name", PAGES)
def test_one_byte_chunks_give_the_same_result(name: str) -> None:
    body = (FIXTURES / name).read_bytes()
    assert chunked(body, list(range(len(body)))) == read_page(body)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(PAGES), cuts=st.lists(st.integers(0, 6000), max_size=30))
def test_any_chunking_gives_the_same_result(name: str, cuts: list[int]) -> None:
    body = (FIXTURES / name).read_bytes()
    assert chunked(body, cuts) == read_page(body)


@settings(max_examples=30, deadline=None)
@given(pad=st.integers(0, 9000), cuts=st.lists(st.integers(0, 12000), max_size=20))
def test_itemscope_far_into_the_page_is_found_whatever_the_chunking(
    pad: int, cuts: list[int]
) -> None:
    body = (
        b"<html><body>"
        + b"<p>itemscope</p>" * (pad // 16)
        + b'<div\n class="x" itemscope itemtype="https://schema.org/Product">'
        + b'<span itemprop="name">N</span></div>'
    )
    got = chunked(body, cuts)
    assert got == read_page(body)
    assert got.microdata == ({"@type": "https://schema.org/Product", "name": "N"},)


def test_max_bytes_stops_reading_and_says_so() -> None:
    ld = b'<script type="application/ld+json">{"@type":"Product"}</script>'
    body = b"<html><head>" + ld + b"</head><body>" + b"x" * 10_000 + ld + b"</body></html>"
    got = read_page(body, max_bytes=1000)
    assert got.truncated
    assert got.json_ld == ('{"@type":"Product"}',)  # the second one lies past the bound
    whole = read_page(body)
    assert not whole.truncated and len(whole.json_ld) == 2
    assert chunked(body, list(range(0, len(body), 7)), max_bytes=1000) == got


def test_json_ld_budget_bounds_what_is_held() -> None:
    one = json.dumps({"@type": "Product", "description": "d" * 300}).encode()
    script = b'<script type="application/ld+json">' + one + b"</script>"
    got = read_page(script * 10, max_json_ld_bytes=1000)
    assert got.truncated
    assert sum(len(t) for t in got.json_ld) <= 1000
    assert len(got.json_ld) == 1000 // len(one)


def test_microdata_bounds() -> None:
    props = b"".join(b'<meta itemprop="p" content="%d">' % i for i in range(300))
    item = b"<div itemscope>" + props + b"</div>"
    got = read_page(b"<body>" + item * 60)
    assert got.truncated
    assert len(got.microdata) <= 50
    assert all(len(m.get("p", ())) <= 200 for m in got.microdata)
    assert sum(len(m.get("p", ())) for m in got.microdata) <= 50 * 200
    long_text = read_page(b'<div itemscope><p itemprop="d">' + b"word " * 5000 + b"</p></div>")
    assert len(long_text.microdata[0]["d"]) <= 10_000


def test_read_page_rejects_unknown_bounds() -> None:
    with pytest.raises(TypeError, match="max_item"):
        read_page(b"", max_item=3)


def test_many_stray_itemscope_words_stay_linear() -> None:
    # Each stray word switches the microdata parser on at the nearest "<"; it must switch off
    # again after it, or a page of them would be parsed (and searched) over and over.
    body = b"<html><body>" + b"<p>itemscope</p>\n" * 20_000 + b"</body></html>"
    reader = ProductReader()
    start = time.process_time()
    for i in range(0, len(body), 16_384):
        reader.feed(body[i : i + 16_384])
    got = reader.close()
    assert got.microdata == ()
    assert time.process_time() - start < 5.0  # quadratic behaviour takes minutes


TRICKY = b"""<html><body><div itemscope itemtype="https://schema.org/Product">
<span itemprop="name">Tom &amp; Jerry&nbsp;mug</span>
<script>var s = "<span itemprop='name'>not me</span></div>";</script>
<style>.a > b { content: "</div>" }</style>
<!-- <span itemprop="name">commented out</span> </div> -->
<title itemprop="alternateName">Mug &lt;1&gt;</title>
<ul><li itemprop="color">blue<li itemprop="color">white</ul>
<p itemprop="description">Caf\xc3\xa9 <br> mug</p>
<img itemprop="image" src="/a.jpg"/><img itemprop="image" src='/b.jpg' src="/ignored.jpg">
<div itemprop="offers" itemscope itemtype="https://schema.org/Offer"><meta itemprop="price"
 content="9.50" ><link itemprop="availability" href="https://schema.org/InStock"></div>
<span data-x="a > b" itemprop="sku">M-1</span>
</div>
<p>after the item</p><div itemscope itemtype="https://schema.org/Thing"><b itemprop="n">2</b></div>
</body></html>"""


def test_microdata_walker_follows_the_tokenizer() -> None:
    got = read_page(TRICKY)
    assert got.microdata == (
        {
            "@type": "https://schema.org/Product",
            "name": "Tom & Jerry\xa0mug".replace("\xa0", " "),
            "alternateName": "Mug <1>",
            "color": ["blue", "white"],
            "description": "Café mug",
            "image": ["/a.jpg", "/b.jpg"],
            "offers": {
                "@type": "https://schema.org/Offer",
                "price": "9.50",
                "availability": "https://schema.org/InStock",
            },
            "sku": "M-1",
        },
        {"@type": "https://schema.org/Thing", "n": "2"},
    )
    assert chunked(TRICKY, list(range(len(TRICKY)))) == got


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, len(TRICKY)), max_size=40))
def test_microdata_walker_any_chunking(cuts: list[int]) -> None:
    assert chunked(TRICKY, cuts) == read_page(TRICKY)


def test_unfinished_markup_at_the_end() -> None:
    for tail in (b"<!-- never closed", b"<script>never closed", b"<span itemprop", b"<"):
        body = b'<div itemscope><b itemprop="n">x</b>' + tail
        got = read_page(body)
        assert got.microdata == ({"@type": "", "n": "x"},)
        assert chunked(body, list(range(len(body)))) == got


def test_a_json_ld_script_too_big_to_keep_marks_the_page_truncated() -> None:
    # A product that cannot be read must not look like a product gone from its page.
    big = (
        b'<script type="application/ld+json">{"@type":"Product","d":"'
        + b"x" * 5000
        + b'"}</script>'
    )
    body = b"<html><head>" + big + b"</head><body>" + b"y" * 100 + b"</body></html>"
    got = read_page(body, max_json_ld_bytes=1000)
    assert got.json_ld == () and got.truncated
    assert chunked(body, list(range(0, len(body), 97)), max_json_ld_bytes=1000) == got
    assert not read_page(body).truncated
