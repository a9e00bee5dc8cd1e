"""HeadInjector: insertion point (checklist 15), charsets (16), streaming and bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.edge.inject import HeadInjector, html_charset_is_ascii_compatible

TAG = b'<script src="/_capi/px.js" data-p="1"></script>'


def run(doc: bytes, chunks: list[bytes] | None = None, **kw: int) -> tuple[bytes, HeadInjector]:
    inj = HeadInjector(TAG, **kw)
    out = b"".join(inj.feed(c) for c in (chunks if chunks is not None else [doc]))
    return out + inj.finish(), inj


def at(doc: bytes, marker: bytes, *, after: bool = True) -> bytes:
    """`doc` with TAG right after (or before) the first `marker`."""
    i = doc.index(marker) + (len(marker) if after else 0)
    return doc[:i] + TAG + doc[i:]


CASES = [
    # (document, marker, insert after the marker?) — checklist 15
    (b"<!DOCTYPE html><html><head><title>t</title></head><body></body></html>", b"<head>", True),
    (
        b'<!doctype html>\n<html lang="en">\n<head data-x="1" class=\'a>b\'>\n<title>',
        b"'a>b'>",
        True,
    ),
    (b"<!DOCTYPE HTML><HTML><HEAD><TITLE>t</TITLE>", b"<HEAD>", True),
    (b"<html><HeAd\n  profile=x\n><link rel=icon>", b"profile=x\n>", True),
    (b"<!-- <head> -->\n<html><head><title>t</title>", b"<html><head>", True),
    (b"<html><!-- a <head> in here --><head>x", b"--><head>", True),
    (b"<!--><head>--><html><head>x", b"<!--><head>", True),  # "<!-->" is a whole comment
    (b"<html>\n<body><p>hi</p></body></html>", b"<html>", True),  # no <head>
    (b"<!DOCTYPE html>\n<html data-a='>'>\n<body>", b"data-a='>'>", True),
    (b"<html><meta name=viewport content=x><meta charset=utf-8><body>", b"charset=utf-8>", True),
    (b"<!DOCTYPE html>\n<p>content first</p>", b"<p>", False),  # no html/head: before <p>
    (b"<!DOCTYPE html>\nplain text page", b"plain", False),
    (b"<?xml version='1.0'?>\n<!DOCTYPE html><html xmlns='x'><head>", b"<head>", True),
    # In HTML "<![CDATA[" is a bogus comment up to the first ">"; "]]>" is text.
    (b"<!DOCTYPE html><![CDATA[<head>]]><head>", b"]]>", False),
]


@pytest.mark.parametrize(("doc", "marker", "after"), CASES)
def test_insertion_point(doc: bytes, marker: bytes, after: bool) -> None:
    out, inj = run(doc)
    assert out == at(doc, marker, after=after)
    assert inj.injected and not inj.gave_up


def test_header_and_headline_are_not_head() -> None:
    # Browsers open the head implicitly before <header>; a later <head> is ignored by them.
    for doc in (b"<header><head>x", b"<headline>x<head>", b"<html><header><head>"):
        out, _ = run(doc)
        assert out.count(TAG) == 1
        assert out.replace(TAG, b"") == doc
        assert b"<head>" + TAG not in out
        assert out.index(TAG) <= doc.index(b"<header" if b"<header" in doc else b"<headline")


def test_head_inside_script_string_is_skipped() -> None:
    doc = b"<html><script>var s = '<head>';</script><head><title>t</title>"
    out, _ = run(doc)
    assert out == at(doc, b"<html>")  # before the script, never inside its string
    doc = b"<script>document.write('<head>')</script><head>"
    assert run(doc)[0] == TAG + doc


def test_exactly_once_with_several_heads() -> None:
    doc = b"<html><head><head></head><head><body><head>"
    out, _ = run(doc)
    assert out == at(doc, b"<head>") and out.count(TAG) == 1


@pytest.mark.parametrize(
    "doc",
    [
        b'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>x</title>',
        b"<html><head>\n  <!-- c -->\n  <META HTTP-EQUIV='Content-Type' content='text/html;"
        b" charset=iso-8859-1'>\n<title>x</title>",
        b"<head><meta name=viewport content=width=device-width><meta charset=utf-8><link>",
    ],
)
def test_meta_charset_stays_first(doc: bytes) -> None:
    doc = b"<!--" + b"x" * 900 + b"-->" + doc  # the charset meta ends near byte 1000
    meta_end = doc.index(b">", doc.lower().index(b"charset")) + 1
    assert meta_end < 1024
    assert run(doc)[0] == doc[:meta_end] + TAG + doc[meta_end:]


def test_meta_past_prescan_window_is_not_waited_for() -> None:
    doc = b"<head><meta name=a content='" + b"y" * 1100 + b"'><meta charset=utf-8>"
    assert run(doc)[0] == at(doc, b"<head>")


def test_bom_kept_in_place() -> None:
    doc = b"\xef\xbb\xbf<!DOCTYPE html><html><head>x"
    out, _ = run(doc)
    assert out == at(doc, b"<head>") and out.startswith(b"\xef\xbb\xbf<!DOCTYPE")
    assert run(b"\xef\xbb\xbfhello")[0] == b"\xef\xbb\xbf" + TAG + b"hello"


@pytest.mark.parametrize("start", [b"\xff\xfe", b"\xfe\xff", b"<\x00h\x00", b"\x00<\x00h"])
def test_utf16_bodies_pass_through(start: bytes) -> None:
    doc = start + "<html><head>".encode("utf-16-le")
    out, inj = run(doc)
    assert out == doc and not inj.injected and inj.gave_up


def test_legacy_charsets_untouched_apart_from_tag() -> None:
    latin1 = "<html><head><title>Café à la carte</title></head><body>Ünïcödé ß</body>"
    sjis = (
        "<html><head><meta charset=shift_jis><title>日本語のページ</title></head><body>表示</body>"
    )
    for doc in (latin1.encode("latin-1"), sjis.encode("shift_jis")):
        out, inj = run(doc, [doc[i : i + 7] for i in range(0, len(doc), 7)])
        assert inj.injected and out.replace(TAG, b"", 1) == doc
    out, _ = run(sjis.encode("shift_jis"))
    assert out.decode("shift_jis") == sjis.replace("shift_jis>", "shift_jis>" + TAG.decode())


def test_max_scan_gives_up_unchanged() -> None:
    doc = b"<!--" + b"x" * 5000 + b"--><html><head>"
    chunks = [doc[i : i + 100] for i in range(0, len(doc), 100)]
    out, inj = run(doc, chunks, max_scan=1000)
    assert out == doc and inj.gave_up and not inj.injected
    assert inj.feed(b"more") == b"more"
    # A candidate after <head> is safe: reaching the limit there inserts instead of giving up.
    doc = b"<head><!--" + b"x" * 5000 + b"-->"
    out, inj = run(doc, [doc[i : i + 100] for i in range(0, len(doc), 100)], max_scan=1000)
    assert out == at(doc, b"<head>") and inj.injected


def test_nothing_to_insert_into() -> None:
    for doc in (b"", b"  \n", b"<!DOCTYPE html>", b"<!-- only a comment -->", b"<!-- open"):
        out, inj = run(doc)
        assert out == doc and not inj.injected
    assert run(b"<html>")[0] == b"<html>" + TAG
    assert run(b"<head")[0] == b"<head"  # a tag cut off at the end is dropped by browsers too


SPLIT_DOCS = [
    b"<!DOCTYPE html><!-- c --><html lang=en><head class='x>y'><meta charset=utf-8><p>",
    b"\xef\xbb\xbf<html>\n<!--a--><HEAD><meta name=v><title>",
    b"<!--><header x='<head>'>",
    b"<html><body>",
]


@pytest.mark.parametrize("doc", SPLIT_DOCS)
def test_any_split_gives_the_one_chunk_result(doc: bytes) -> None:
    whole, _ = run(doc)
    assert whole.count(TAG) == 1
    n = len(doc)
    for i in range(n + 1):
        assert run(doc, [doc[:i], doc[i:]])[0] == whole, i
        for j in range(i, n + 1):
            assert run(doc, [doc[:i], doc[i:j], doc[j:]])[0] == whole, (i, j)
    assert run(doc, [doc[k : k + 1] for k in range(n)])[0] == whole


def test_holds_back_only_the_minimum() -> None:
    inj = HeadInjector(TAG)
    assert inj.feed(b"<!DOCTYPE html>\n<ht") == b"<!DOCTYPE html>\n"
    assert inj.feed(b"ml><he") == b"<html>"
    assert inj.feed(b"ad>") == b"<head>"  # held after: a charset meta may follow
    assert inj.feed(b"<title>") == TAG + b"<title>"
    assert inj.injected
    x = b"<p>" * 10
    assert inj.feed(x) is x and inj.finish() == b""


def test_streams_a_large_page() -> None:
    head = b"<!DOCTYPE html><html><head><title>big</title></head><body>"
    page = head + b"<p>lorem ipsum dolor sit amet</p>\n" * (1_000_000 // 34)
    chunks = [page[i : i + 4096] for i in range(0, len(page), 4096)]
    inj = HeadInjector(TAG)
    first = inj.feed(chunks[0])
    assert inj.injected and first == at(chunks[0], b"<head>")
    for c in chunks[1:]:
        assert inj.feed(c) is c
    assert inj.finish() == b""


@pytest.mark.parametrize(
    ("ctype", "head", "ok"),
    [
        ("text/html; charset=utf-8", b"<html>", True),
        ("text/html", b"<html>", True),
        (None, b"", True),
        ("text/html; charset=UTF-16", b"<html>", False),
        ('text/html;charset="utf-16le"', b"", False),
        ("text/html; charset=utf-32", b"", False),
        ("text/html", b"\xff\xfe<\x00h\x00", False),
        ("text/html", b"\xfe\xff\x00<\x00h", False),
        ("text/html", b"<\x00h\x00t\x00", False),
        ("text/html", b"<html><head><meta charset='UTF-16'>", False),
        (
            "text/html",
            b'<head><meta http-equiv=content-type content="text/html; charset=utf-16">',
            False,
        ),
        ("text/html", b"<head><meta charset=iso-8859-1>", True),
        ("text/html; charset=utf-16", b"\xef\xbb\xbf<html>", True),  # the BOM wins
        ("text/html; charset=shift_jis", b"<html>", True),
    ],
)
def test_charset_ascii_compatible(ctype: str | None, head: bytes, ok: bool) -> None:
    assert html_charset_is_ascii_compatible(ctype, head) is ok


PIECES = [
    b"<html>", b"<HEAD>", b"<head x='>'>", b"<header>", b"<meta charset=utf-8>", b"<meta name=a>",
    b"<!--", b"-->", b"<!-->", b"<!DOCTYPE html>", b"<?x?>", b"<script>", b"</script>",
    b"'<head>'", b"<title>", b"</head>", b"<body>", b" ", b"\n", b"text", b"<", b">", b'"', b"=",
    b"\xef\xbb\xbf", b"\xe6\x97\xa5", b"<![CDATA[", b"]]>", b"</", b"<a href=x>",
]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), max_size=25),
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    st.sampled_from([8, 30, 60, 100, 65536]),
)
def test_random_documents_and_splits(parts: list[bytes], cuts: list[int], max_scan: int) -> None:
    doc = b"".join(parts)
    whole, inj = run(doc, max_scan=max_scan)
    if inj.injected:
        assert whole.replace(TAG, b"", 1) == doc and TAG not in doc
    else:
        assert whole == doc
    bounds = sorted({min(c, len(doc)) for c in cuts})
    chunks = [doc[a:b] for a, b in zip([0, *bounds], [*bounds, len(doc)], strict=True)]
    assert run(doc, chunks, max_scan=max_scan)[0] == whole


def test_window_edge_does_not_depend_on_chunks() -> None:
    # <html> starts inside the window but ends past it: the same answer however it is cut.
    doc = b"<!--" + b"x" * 140 + b"--><html " + b"a" * 100 + b"><head><title>"
    whole, inj = run(doc, max_scan=200)
    assert whole == doc and inj.gave_up
    for cut in range(0, len(doc), 7):
        assert run(doc, [doc[:cut], doc[cut:]], max_scan=200)[0] == whole
    doc = b"<html><!--" + b"x" * 300 + b"--><head>"
    for cut in range(0, len(doc), 7):
        out, inj = run(doc, [doc[:cut], doc[cut:]], max_scan=200)
        assert out == at(doc, b"<html>") and inj.injected
