"""Sources, conversions and transforms: a rule's `extract` table applied to request facts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.html.scan import HtmlScan, Wants
from gateway.pipeline.extract import (
    Extractor,
    Facts,
    compile_extract,
    extract,
    html_needs,
)
from gateway.pipeline.rulefile import BROWSER_SOURCES, REQUEST_SOURCES
from gateway.pipeline.values import dotted, parse_json_text, parse_number


def one(spec: Any, target: str = "content_name", sources: Any = REQUEST_SOURCES) -> Extractor:
    (ex,) = compile_extract({target: spec}, {}, sources)
    return ex


def value(spec: Any, facts: Facts, target: str = "content_name") -> Any:
    """What `spec` gives for `target` on these facts."""
    return one(spec, target).value(facts)


def with_html(page: str, *extractors: Extractor) -> Facts:
    """Facts whose response is `page`, scanned the way the proxy scans it."""
    picks = html_needs(extractors)
    wants = Wants(
        meta=frozenset(p.key for p in picks if p.spec.source == "meta"),
        jsonld=any(p.spec.source == "jsonld" for p in picks),
        selectors=tuple(p.selector for p in picks if p.selector is not None),
    )
    scan = HtmlScan(wants)
    scan.feed(page.encode())
    return Facts(html=scan.finish())


def headers(table: Mapping[str, str]) -> Any:
    lowered = {k.lower(): v for k, v in table.items()}
    return lambda name: [lowered[name.lower()]] if name.lower() in lowered else []


# parse_number -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "decimal", "expected"),
    [
        ("1.234,56", "auto", 1234.56),
        ("1,234.56", "auto", 1234.56),
        ("12,50 €", "auto", 12.5),
        ("€12.50", "auto", 12.5),
        ("Rp 1.250.000", ",", 1250000.0),
        ("Rp 1.250.000", "auto", 1250000.0),
        ("350.000", ",", 350000.0),
        ("350.000", "auto", 350.0),  # one dot is a decimal point unless told otherwise
        ("-3", "auto", -3.0),
        ("\u22123,5", "auto", -3.5),  # a real minus sign
        ("19.99", "auto", 19.99),
        ("19,99", "auto", 19.99),
        ("1,234", "auto", 1234.0),  # a thousands group
        ("1,234,567", "auto", 1234567.0),
        ("1.234.567", "auto", 1234567.0),
        ("1.234.567,89", "auto", 1234567.89),
        ("1,234,567.89", "auto", 1234567.89),
        ("0,500", "auto", 0.5),  # no thousands group starts with 0
        ("1234,5", "auto", 1234.5),
        ("12,345", ".", 12345.0),
        ("12,345", ",", 12.345),
        ("1 234,56", "auto", 1234.56),
        ("1\u202f234,56", "auto", 1234.56),
        ("CHF 1'234.50", "auto", 1234.5),
        ("$ 0.99 USD", "auto", 0.99),
        (",5", "auto", 0.5),
        ("7", "auto", 7.0),
        ("  42  ", "auto", 42.0),
        ("", "auto", None),
        ("free", "auto", None),
        ("-", "auto", None),
        (".", "auto", None),
        (",", "auto", None),
        ("1-2", "auto", None),
        ("--3", "auto", None),
        ("1.2.3,4,5", "auto", None),
        ("9" * 400, "auto", None),  # would be inf
    ],
)
def test_parse_number(text: str, decimal: str, expected: float | None) -> None:
    assert parse_number(text, decimal) == expected


@given(
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=99),
    st.sampled_from([(",", "."), (".", ","), (" ", ","), ("'", "."), ("", "."), ("", ",")]),
    st.booleans(),
)
def test_parse_number_reads_amounts_written_any_common_way(
    units: int, cents: int, separators: tuple[str, str], negative: bool
) -> None:
    thousands, decimal = separators
    grouped = f"{units:,}".replace(",", thousands)
    text = f"{'-' if negative else ''}{grouped}{decimal}{cents:02d} EUR"
    expected = (units + cents / 100) * (-1 if negative else 1)
    assert parse_number(text) == pytest.approx(expected)
    assert parse_number(text, decimal) == pytest.approx(expected)


@given(st.text(max_size=40), st.sampled_from(["auto", ".", ","]))
def test_parse_number_never_raises(text: str, decimal: str) -> None:
    found = parse_number(text, decimal)
    assert found is None or isinstance(found, float)


# Sources ---------------------------------------------------------------------------------


def test_const() -> None:
    assert value("contact form", Facts()) == "contact form"
    assert value({"source": "const", "value": "EUR"}, Facts(), "currency") == "EUR"
    assert value(19.9, Facts(), "value") == 19.9
    assert value(["A", "B"], Facts(), "content_ids") == ["A", "B"]


def test_query_first_value_of_several() -> None:
    facts = Facts(query={"q": ["", "shoes", "boots"]})
    assert value({"source": "query", "key": "q"}, facts, "search_string") == "shoes"
    assert value({"source": "query", "key": "missing"}, facts) is None


def test_path_group() -> None:
    facts = Facts(path={"sku": "SKU-1"})
    assert value({"source": "path", "key": "sku"}, facts, "content_ids") == ["SKU-1"]


def test_form_field() -> None:
    facts = Facts(form={"email": ["Jane@Example.com"]})
    assert value({"source": "form", "key": "email"}, facts, "email") == "Jane@Example.com"


def test_json_by_dotted_path() -> None:
    body = {"customer": {"email": "j@example.com"}, "items": [{"sku": "A"}, {"sku": "B"}]}
    facts = Facts(json=body)
    assert value({"source": "json", "key": "customer.email"}, facts, "email") == "j@example.com"
    assert value({"source": "json", "key": "items.1.sku"}, facts, "order_id") == "B"
    assert value({"source": "json", "key": "items.sku"}, facts, "content_ids") == ["A", "B"]
    assert value({"source": "json", "key": "items.9.sku"}, facts, "order_id") is None


def test_cookie_header_and_response_header() -> None:
    facts = Facts(
        cookies={"plan": "pro"},
        headers=headers({"X-Order": "A-17"}),
        response_headers=headers({"Location": "/thank-you?order=A17"}),
    )
    assert value({"source": "cookie", "key": "plan"}, facts) == "pro"
    assert value({"source": "cookie", "key": "nope"}, facts) is None
    assert value({"source": "header", "key": "x-order"}, facts, "order_id") == "A-17"
    spec = {"source": "response_header", "key": "Location", "pattern": "order=(?P<value>\\w+)"}
    assert value(spec, facts, "order_id") == "A17"


PAGE = """<!doctype html><html><head>
<meta property="og:title" content="Blue Shoes">
<meta name="price" content="1.234,50">
<script type="application/ld+json">
{"@context": "https://schema.org", "@type": "Product", "name": "Blue Shoes",
 "offers": {"@type": "Offer", "price": "49.90", "priceCurrency": "eur"}}
</script>
</head><body>
<ul id="cart" data-total="1999">
  <li class="item" data-sku="A1"></li><li class="item" data-sku="B2"></li>
</ul>
</body></html>"""


def test_meta() -> None:
    ex = one({"source": "meta", "key": "og:title"})
    assert ex.value(with_html(PAGE, ex)) == "Blue Shoes"
    priced = one({"source": "meta", "key": "PRICE", "decimal": ","}, "value")
    assert priced.value(with_html(PAGE, priced)) == 1234.5


def test_jsonld() -> None:
    price = one({"source": "jsonld", "key": "Product.offers.price"}, "value")
    currency = one({"source": "jsonld", "key": "Product.offers.priceCurrency", "upper": True})
    name = one({"source": "jsonld", "key": "Product.name"})
    facts = with_html(PAGE, price, currency, name)
    assert price.value(facts) == 49.9
    assert currency.value(facts) == "EUR"
    assert name.value(facts) == "Blue Shoes"


def test_selector_attributes() -> None:
    skus = one({"source": "selector", "key": "li.item", "attr": "data-sku"}, "content_ids")
    total = one(
        {"source": "selector", "key": "ul#cart", "attr": "DATA-TOTAL", "divide": 100}, "value"
    )
    facts = with_html(PAGE, skus, total)
    assert skus.value(facts) == ["A1", "B2"]
    assert total.value(facts) == 19.99


def test_html_sources_without_a_page_give_nothing() -> None:
    for spec in (
        {"source": "meta", "key": "og:title"},
        {"source": "jsonld", "key": "Product.name"},
        {"source": "selector", "key": "#cart", "attr": "data-total"},
    ):
        assert value(spec, Facts()) is None


def test_html_needs_lists_only_the_page_reading_picks() -> None:
    extractors = compile_extract(
        {
            "value": [
                {"source": "jsonld", "key": "Product.offers.price"},
                {"source": "query", "key": "v"},
            ],
            "content_name": {"source": "meta", "key": "og:title"},
        },
        {"sku": {"source": "selector", "key": ".item", "attr": "data-sku"}},
        REQUEST_SOURCES,
    )
    assert [p.spec.source for p in html_needs(extractors)] == ["jsonld", "meta", "selector"]


def test_browser_sources_data_and_field() -> None:
    facts = Facts(data={"sku": "A1", "price": "12,50"}, fields={"email": ["j@example.com"]})
    sku = one({"source": "data", "key": "data-sku"}, "content_ids", BROWSER_SOURCES)
    price = one({"source": "data", "key": "price"}, "value", BROWSER_SOURCES)
    email = one({"source": "field", "key": "email"}, "email", BROWSER_SOURCES)
    assert sku.value(facts) == ["A1"]  # "data-" is optional
    assert price.value(facts) == 12.5
    assert email.value(facts) == "j@example.com"


# Types and transforms ----------------------------------------------------------------------


def test_number_targets_are_numbers_by_default() -> None:
    facts = Facts(query={"v": ["12,50 €"], "n": ["3"], "ltv": ["1.000,00"]})
    assert value({"source": "query", "key": "v"}, facts, "value") == 12.5
    assert value({"source": "query", "key": "ltv"}, facts, "predicted_ltv") == 1000.0
    assert value({"source": "query", "key": "n"}, facts, "num_items") == 3
    assert isinstance(value({"source": "query", "key": "n"}, facts, "num_items"), int)


def test_text_that_is_not_a_number_is_missing() -> None:
    facts = Facts(query={"v": ["free"]})
    assert value({"source": "query", "key": "v"}, facts, "value") is None


def test_json_numbers_and_booleans() -> None:
    facts = Facts(json={"total": 1999, "paid": True, "price": 4.5})
    assert value({"source": "json", "key": "total", "divide": 100}, facts, "value") == 19.99
    assert value({"source": "json", "key": "price"}, facts, "value") == 4.5
    assert value({"source": "json", "key": "paid"}, facts, "status") == "true"
    spec = {"source": "json", "key": "paid", "type": "number"}
    assert value(spec, facts, "value") is None


def test_divide_for_cents() -> None:
    facts = Facts(query={"c": ["1999"]})
    assert value({"source": "query", "key": "c", "divide": 100}, facts, "value") == 19.99
    spec = {"source": "query", "key": "c", "type": "integer", "divide": 1000}
    assert value(spec, facts, "num_items") == 2


def test_type_integer_number_and_boolean() -> None:
    facts = Facts(query={"n": ["2,6"], "b": ["yes"], "f": ["off"]})
    assert value({"source": "query", "key": "n", "type": "integer"}, facts) == 3
    assert value({"source": "query", "key": "n", "type": "number"}, facts) == 2.6
    assert value({"source": "query", "key": "b", "type": "boolean"}, facts) is True
    assert value({"source": "query", "key": "f", "type": "boolean"}, facts) is False


def test_decimal_setting_wins_over_guessing() -> None:
    facts = Facts(query={"v": ["350.000"]})
    assert value({"source": "query", "key": "v"}, facts, "value") == 350.0
    assert value({"source": "query", "key": "v", "decimal": ","}, facts, "value") == 350000.0


def test_lower_and_upper() -> None:
    facts = Facts(query={"e": ["  Jane@Example.COM "], "c": ["eur"]})
    assert value({"source": "query", "key": "e", "lower": True}, facts) == "jane@example.com"
    assert value({"source": "query", "key": "c", "upper": True}, facts, "currency") == "EUR"


def test_default() -> None:
    spec = {"source": "query", "key": "currency", "default": "EUR"}
    assert value(spec, Facts(), "currency") == "EUR"
    assert value(spec, Facts(query={"currency": ["USD"]}), "currency") == "USD"
    assert value(spec, Facts(query={"currency": ["  "]}), "currency") == "EUR"


def test_pattern_with_a_value_group_a_plain_group_or_none() -> None:
    facts = Facts(query={"r": ["order=A17&total=9"]})
    named = {"source": "query", "key": "r", "pattern": "total=(?P<value>\\d+)"}
    plain = {"source": "query", "key": "r", "pattern": "order=(\\w+)"}
    whole = {"source": "query", "key": "r", "pattern": "A\\d+"}
    missing = {"source": "query", "key": "r", "pattern": "coupon=(\\w+)"}
    assert value(named, facts, "value") == 9.0
    assert value(plain, facts, "order_id") == "A17"
    assert value(whole, facts, "order_id") == "A17"
    assert value(missing, facts, "order_id") is None


def test_pattern_tries_each_value_in_turn() -> None:
    facts = Facts(query={"x": ["no", "yes-42"]})
    spec = {"source": "query", "key": "x", "pattern": "(\\d+)", "type": "integer"}
    assert value(spec, facts) == 42


def test_split_into_a_list() -> None:
    facts = Facts(query={"ids": ["A1, B2,,C3"]})
    spec = {"source": "query", "key": "ids", "split": ","}
    assert value(spec, facts, "content_ids") == ["A1", "B2", "C3"]
    listed = {"source": "query", "key": "ids", "split": ",", "type": "list"}
    assert value(listed, facts, "content_name") == ["A1", "B2", "C3"]


def test_lists_are_bounded() -> None:
    facts = Facts(json={"ids": [str(i) for i in range(500)]})
    assert len(value({"source": "json", "key": "ids"}, facts, "content_ids")) == 200


def test_long_text_is_cut() -> None:
    facts = Facts(query={"n": ["x" * 5000]})
    assert value({"source": "query", "key": "n"}, facts) == "x" * 1000


def test_contents_with_map() -> None:
    body = {
        "items": [
            {"sku": "A1", "qty": "2", "price": "12,50"},
            {"sku": "B2", "qty": 1, "price": 1999, "extra": {"x": 1}},
            {"qty": 5},  # no id: dropped
            "junk",
        ]
    }
    spec = {
        "source": "json",
        "key": "items",
        "map": {
            "id": "sku",
            "quantity": {"key": "qty", "type": "integer"},
            "item_price": {"key": "price", "type": "number"},
        },
    }
    assert value(spec, Facts(json=body), "contents") == [
        {"id": "A1", "quantity": 2, "item_price": 12.5},
        {"id": "B2", "quantity": 1, "item_price": 1999.0},
    ]
    cents = {
        "source": "json",
        "key": "items",
        "map": {"id": "sku", "item_price": {"key": "price", "type": "number", "divide": 100}},
    }
    assert value(cents, Facts(json=body), "contents")[1] == {"id": "B2", "item_price": 19.99}


def test_contents_from_a_list_of_strings_is_missing() -> None:
    spec = {"source": "json", "key": "items", "map": {"id": "sku"}}
    assert value(spec, Facts(json={"items": ["A1"]}), "contents") is None


def test_first_of_several_sources() -> None:
    specs = [
        {"source": "jsonld", "key": "Order.orderNumber"},
        {"source": "query", "key": "order"},
        {"source": "const", "value": "unknown"},
    ]
    assert value(specs, Facts(query={"order": ["A17"]}), "order_id") == "A17"
    assert value(specs, Facts(), "order_id") == "unknown"


def test_a_default_counts_as_found_for_first_of_several() -> None:
    specs = [{"source": "query", "key": "a", "default": "x"}, {"source": "query", "key": "b"}]
    assert value(specs, Facts(query={"b": ["y"]})) == "x"


# extract(): where values land ---------------------------------------------------------------


def test_extract_sorts_into_custom_data_and_user_data() -> None:
    extractors = compile_extract(
        {
            "value": {"source": "query", "key": "v"},
            "currency": "EUR",
            "email": {"source": "form", "key": "email"},
            "phone": {"source": "form", "key": "phone"},
        },
        {"plan": {"source": "cookie", "key": "plan"}, "source_page": "pricing"},
        REQUEST_SOURCES,
    )
    facts = Facts(query={"v": ["10"]}, form={"email": ["j@example.com"]}, cookies={"plan": "pro"})
    assert extract(extractors, facts) == {
        "custom_data": {"value": 10.0, "currency": "EUR", "plan": "pro", "source_page": "pricing"},
        "user_data": {"email": "j@example.com"},
    }


def test_compile_extract_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^extract\.value\.1: source 'data' is not available"):
        compile_extract({"value": [{"source": "query", "key": "v"}, {"source": "data"}]}, {},
                        REQUEST_SOURCES)  # fmt: skip
    with pytest.raises(ValueError, match=r"^custom\.plan: unknown source 'cookies'"):
        compile_extract({}, {"plan": {"source": "cookies", "key": "p"}}, REQUEST_SOURCES)
    with pytest.raises(ValueError, match=r"^extract\.value\.key: use a path such as"):
        compile_extract({"value": {"source": "jsonld", "key": "Product. .price"}}, {},
                        REQUEST_SOURCES)  # fmt: skip


# Helpers ----------------------------------------------------------------------------------


def test_dotted() -> None:
    data = {"a": {"b": [{"c": 1}, {"c": [2, 3]}, {"d": 4}]}, "": {"x": 5}}
    assert dotted(data, "a.b.c") == [1, 2, 3]
    assert dotted(data, "a.b.1.c") == [2, 3]
    assert dotted(data, "a.b.5") == []
    assert dotted(data, "a.x") == []
    assert dotted(None, "a") == []
    assert dotted("text", "a") == []


def test_parse_json_text() -> None:
    assert parse_json_text('{"a": 1}') == {"a": 1}
    assert parse_json_text("{nope") is None
    assert parse_json_text("[" * 100_000) is None


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c,
                                                                         max_size=3)))  # fmt: skip
def test_extract_never_raises_on_odd_json(body: Any) -> None:
    extractors = compile_extract(
        {
            "value": {"source": "json", "key": "a.0.b", "divide": 100},
            "contents": {"source": "json", "key": "a", "map": {"id": "b", "quantity": "c"}},
            "content_ids": {"source": "json", "key": "a.b", "split": ","},
            "email": {"source": "json", "key": "a", "pattern": "(\\S+@\\S+)", "lower": True},
        },
        {},
        REQUEST_SOURCES,
    )
    result = extract(extractors, Facts(json=body))
    json.dumps(result)  # plain JSON values only
