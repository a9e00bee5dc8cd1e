"""products_from_page: product pages of real shapes to Meta catalog items (issue 17)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.html.products import PageData, read_page
from gateway.pipeline.catalog import (
    FEED_COLUMNS,
    CatalogItem,
    PageProducts,
    feed_row,
    products_from_page,
)
from gateway.pipeline.catalog_values import availability, condition, format_price, parse_amount

FIXTURES = Path(__file__).parent.parent / "fixtures" / "catalog"
ORIGIN = "https://shop.example"


def extract(name: str, *, url: str | None = None, id_source: str = "sku") -> PageProducts:
    page = read_page((FIXTURES / name).read_bytes())
    return products_from_page(
        page,
        url=url or f"http://127.0.0.1:8000/x/{name.removesuffix('.html')}?utm_source=ad",
        public_origin=ORIGIN,
        id_source=id_source,
    )


def page(
    *, json_ld: tuple[str, ...] = (), meta: tuple[tuple[str, str], ...] = (), **kw: Any
) -> PageData:
    return PageData(
        json_ld=json_ld,
        microdata=kw.get("microdata", ()),
        meta=meta,
        canonical=kw.get("canonical"),
        truncated=False,
    )


def ld(**product: Any) -> str:
    base: dict[str, Any] = {
        "@context": "https://schema.org",
        "@type": "Product",
        "name": "Thing",
        "sku": "T-1",
        "image": "/t.jpg",
        "offers": {"@type": "Offer", "price": "10", "priceCurrency": "EUR"},
    }
    base.update(product)
    return json.dumps({k: v for k, v in base.items() if v is not None})


# --- the fixture pages ---------------------------------------------------------------------


def test_product_with_offer() -> None:
    got = extract("product_offer.html")
    assert got.had_product and got.problems == ()
    assert [i.data() for i in got.items] == [
        {
            "id": "TR2-42",
            "title": "Trail Runner 2",
            "description": "A light trail shoe with a grippy sole.",
            "availability": "in stock",
            "condition": "new",
            "price": "49.90 EUR",
            "link": "https://shop.example/products/trail-runner-2",
            "image_link": "https://shop.example/img/tr2-front.jpg",
            "additional_image_link": [
                "https://shop.example/img/tr2-side.jpg",
                "https://shop.example/x/img/tr2-sole.jpg",  # relative to the page
            ],
            "brand": "Acme",
            "gtin": "4006381333931",
            "mpn": "ACM-TR2",
        }
    ]


def test_aggregate_offer_takes_the_low_price_and_maps_limited_availability() -> None:
    (item,) = extract("aggregate_offer.html").items
    assert item.id == "beans-espresso"  # productID when there is no sku
    assert item.price == "8.50 USD"  # lowercase currency, "8.5" padded to minor units
    assert item.availability == "in stock"
    # no canonical: the request URL without its query, on the public origin
    assert item.link == "https://shop.example/x/aggregate_offer"
    assert item.image_link == "https://shop.example/media/beans.png"


def test_aggregate_offer_with_inner_offers_keeps_its_currency() -> None:
    offers = {
        "@type": "AggregateOffer",
        "priceCurrency": "SEK",
        "availability": "https://schema.org/PreOrder",
        "offers": [{"@type": "Offer"}, {"@type": "Offer", "price": "199"}],
    }
    got = products_from_page(page(json_ld=(ld(offers=offers),)), url="/p", public_origin=ORIGIN)
    assert [(i.price, i.availability) for i in got.items] == [("199.00 SEK", "preorder")]


def test_product_group_gives_one_item_per_variant() -> None:
    got = extract("product_group.html")
    assert got.problems == ()
    assert [(i.id, i.item_group_id, i.availability, i.price) for i in got.items] == [
        ("MT-100-S-BLK", "MT-100", "in stock", "35.00 GBP"),
        ("MT-100-M-BLK", "MT-100", "available for order", "35.00 GBP"),
        ("MT-100-L-BLK", "MT-100", "out of stock", "37.50 GBP"),
    ]
    s, m, large = got.items
    assert s.image_link == "https://shop.example/img/mt-black.jpg"  # its own image
    assert m.image_link == "https://shop.example/img/mt.jpg"  # the group's
    assert s.link == "https://shop.example/p/merino-tee?size=S&color=black"  # its offer's url
    assert large.link == "https://shop.example/p/merino-tee"  # canonical, resolved
    assert {i.brand for i in got.items} == {"Woolly"}
    assert {i.description for i in got.items} == {"Soft merino wool tee."}
    assert s.gtin == "00012345600012" and m.gtin is None


def test_strikethrough_price_is_the_price_and_the_offer_price_the_sale_price() -> None:
    (item,) = extract("sale_price.html").items
    assert (item.price, item.sale_price) == ("119.00 EUR", "79.99 EUR")


def test_out_of_stock_refurbished_in_yen() -> None:
    (item,) = extract("out_of_stock.html").items
    assert (item.availability, item.condition, item.price) == (
        "out of stock",
        "refurbished",
        "12990 JPY",
    )
    assert item.description == "Camp stove"  # Meta requires one: the title stands in


def test_microdata_only() -> None:
    got = extract("microdata.html")
    assert got.problems == ()
    assert [i.data() for i in got.items] == [
        {
            "id": "HL-300",
            "title": "Headlamp 300",
            "description": "A 300-lumen headlamp for night runs.",
            "availability": "preorder",
            "condition": "used",
            "price": "39.00 CHF",
            "link": "https://shop.example/x/microdata",
            "image_link": "https://shop.example/img/headlamp.jpg",
            "additional_image_link": ["https://shop.example/img/headlamp-2.jpg"],
            "brand": "Lumo",
        }
    ]


def test_open_graph_only() -> None:
    (item,) = extract("open_graph.html").items
    assert item.data() == {
        "id": "WB-750",
        "title": "Steel water bottle",
        "description": "Keeps water cold for 24 hours.",
        "availability": "in stock",
        "condition": "new",
        "price": "24.00 EUR",
        "sale_price": "19.50 EUR",
        "link": "https://shop.example/x/open_graph",
        "image_link": "https://cdn.shop.example/wb.jpg",
        "additional_image_link": ["https://cdn.shop.example/wb-2.jpg"],
        "brand": "Hydra",
    }


def test_broken_json_ld_still_gives_the_open_graph_item_and_names_the_problem() -> None:
    got = extract("broken_jsonld.html")
    assert got.had_product
    assert [(i.id, i.price, i.availability) for i in got.items] == [
        ("TENT-2", "199.00 EUR", "out of stock")
    ]
    (problem,) = got.problems
    assert problem.startswith("JSON-LD script 1 is not valid JSON") and "line 2" in problem


def test_yoast_woocommerce_graph_follows_id_references() -> None:
    got = extract("graph_yoast.html")
    assert got.problems == ()
    (item,) = got.items
    assert item.id == "MUG-300"
    assert item.image_link == "https://shop.example/wp-content/uploads/mug.jpg"  # via @id
    assert item.description == "Hand-glazed 300 ml mug & saucer."  # entities decoded
    assert item.brand == "Potter & Sons"
    assert item.link == "https://shop.example/product/ceramic-mug/"


def test_shopify_offers_per_variant_become_variants() -> None:
    got = extract("shopify.html")
    assert [(i.id, i.availability, i.price, i.link, i.item_group_id) for i in got.items] == [
        (
            "TOTE-NAT",
            "in stock",
            "1250.00 USD",
            "https://shop.example/products/canvas-tote?variant=4401",
            "canvas-tote",
        ),
        (
            "TOTE-BLK",
            "out of stock",
            "1250.00 USD",
            "https://shop.example/products/canvas-tote?variant=4402",
            "canvas-tote",
        ),
    ]


def test_a_category_page_gives_no_items_for_the_products_it_lists() -> None:
    got = extract("category_page.html")
    assert got.items == ()
    # The JSON-LD list is not read at all; the microdata grid names each product's own page.
    assert got.problems == (
        "product 'Trail Runner 2' describes another page "
        "(https://shop.example/products/trail-runner-2): skipped",
        "product 'Road Runner' describes another page "
        "(https://shop.example/products/road-runner): skipped",
    )


def test_a_related_product_beside_the_page_product_is_skipped() -> None:
    related = ld(sku="OTHER", url="/products/other")
    own = ld(sku="MINE", url="https://shop.example/products/mine/")  # trailing slash: same
    got = products_from_page(
        page(json_ld=(own, related)), url="/products/mine", public_origin=ORIGIN
    )
    assert [i.id for i in got.items] == ["MINE"]
    assert len(got.problems) == 1 and "describes another page" in got.problems[0]
    # Reached under another path (a Shopify collection URL), the canonical one counts.
    via = products_from_page(
        page(json_ld=(own,), canonical="/products/mine"),
        url="/collections/x/products/mine",
        public_origin=ORIGIN,
    )
    assert [i.id for i in via.items] == ["MINE"]
    # Alone on its page, a product is the page's own whatever its url says (a locale
    # prefix, an old slug).
    alone = products_from_page(page(json_ld=(related,)), url="/en/p", public_origin=ORIGIN)
    assert [i.id for i in alone.items] == ["OTHER"] and alone.problems == ()


def test_a_page_without_products() -> None:
    got = products_from_page(
        read_page(b"<html><head><title>About us</title></head><body>Hi</body></html>"),
        url="/about",
        public_origin=ORIGIN,
    )
    assert got == PageProducts((), False, ())


# --- problems ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("product", "words"),
    [
        ({"offers": None}, "no offers"),
        ({"offers": {"@type": "Offer", "priceCurrency": "EUR"}}, "without a price"),
        ({"offers": {"@type": "Offer", "price": "3"}}, "without priceCurrency"),
        ({"offers": {"@type": "Offer", "price": "3", "priceCurrency": "EURO"}}, "currency"),
        ({"sku": None}, "no id"),
        ({"image": None}, "no image"),
    ],
)
def test_a_declared_product_without_an_item_names_why(product: dict[str, Any], words: str) -> None:
    got = products_from_page(page(json_ld=(ld(**product),)), url="/p", public_origin=ORIGIN)
    assert got.items == () and got.had_product
    (problem,) = got.problems
    assert words in problem


def test_og_image_stands_in_for_a_missing_json_ld_image() -> None:
    got = products_from_page(
        page(json_ld=(ld(image=None),), meta=(("og:image", "/og.jpg"),)),
        url="/p",
        public_origin=ORIGIN,
    )
    assert [i.image_link for i in got.items] == ["https://shop.example/og.jpg"]


def test_open_graph_without_retailer_item_id_is_a_problem() -> None:
    meta = (
        ("og:type", "product"),
        ("og:title", "A"),
        ("og:image", "/a.jpg"),
        ("product:price:amount", "1"),
        ("product:price:currency", "EUR"),
    )
    got = products_from_page(page(meta=meta), url="/p", public_origin=ORIGIN)
    assert got.items == () and got.had_product and "retailer_item_id" in got.problems[0]
    by_url = products_from_page(page(meta=meta), url="/p", public_origin=ORIGIN, id_source="url")
    assert len(by_url.items) == 1


# --- ids, links ----------------------------------------------------------------------------


def test_id_sources() -> None:
    doc = ld(sku="S", productID="P", mpn="M", gtin13="4006381333931")

    def ident(source: str, d: str = doc, url: str = "/p") -> str:
        (item,) = products_from_page(
            page(json_ld=(d,)), url=url, public_origin=ORIGIN, id_source=source
        ).items
        return item.id

    assert [ident(s) for s in ("sku", "productID", "mpn", "gtin")] == [
        "S",
        "P",
        "M",
        "4006381333931",
    ]
    assert ident("productID", ld(sku="S")) == "S"  # the named source first, then the default
    assert ident("sku", ld(sku=None, mpn="M")) == "M"
    h = ident("url")
    assert len(h) == 24 and h == ident("url", ld(sku="other"))  # a hash of the link only
    assert h != ident("url", url="/q")
    with pytest.raises(ValueError, match="id_source"):
        products_from_page(page(), url="/", public_origin=ORIGIN, id_source="name")


def test_canonical_naming_the_upstream_host_moves_to_the_public_origin() -> None:
    got = products_from_page(
        page(json_ld=(ld(),), canonical="http://127.0.0.1:3000/p/thing?ref=1"),
        url="http://127.0.0.1:3000/p/thing?utm_source=x",
        public_origin=ORIGIN,
    )
    assert got.items[0].link == "https://shop.example/p/thing?ref=1"
    other = products_from_page(
        page(json_ld=(ld(),), canonical="javascript:alert(1)"), url="/p", public_origin=ORIGIN
    )
    assert other.items[0].link == "https://shop.example/p"  # not http(s): ignored


def test_nested_in_web_page_main_entity_and_arrays() -> None:
    doc = json.dumps(
        [
            {"@type": "BreadcrumbList", "itemListElement": []},
            {"@type": "WebPage", "mainEntity": json.loads(ld(sku="N-1"))},
        ]
    )
    got = products_from_page(page(json_ld=(doc,)), url="/p", public_origin=ORIGIN)
    assert [i.id for i in got.items] == ["N-1"]


def test_html_in_names_and_descriptions_becomes_text() -> None:
    doc = ld(name="Mug &lt;b&gt;", description="<p>Soft &amp; warm,<br/>size <10 cm</p>")
    (item,) = products_from_page(page(json_ld=(doc,)), url="/p", public_origin=ORIGIN).items
    assert (item.title, item.description) == ("Mug", "Soft & warm, size <10 cm")


def test_duplicate_ids_keep_the_first() -> None:
    got = products_from_page(
        page(json_ld=(ld(name="First"), ld(name="Second"))), url="/p", public_origin=ORIGIN
    )
    assert [i.title for i in got.items] == ["First"]


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (Decimal("49.9"), "EUR", "49.90 EUR"),
        (Decimal("49.905"), "eur", "49.91 EUR"),  # half up, not banker's
        (Decimal("4990"), "JPY", "4990 JPY"),
        (Decimal("4990.5"), "JPY", "4991 JPY"),
        (Decimal("1.5"), "KWD", "1.500 KWD"),
        (Decimal("0"), "USD", "0.00 USD"),
    ],
)
def test_format_price(amount: Decimal, currency: str, text: str) -> None:
    assert format_price(amount, currency) == text


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("49.90", "49.90"),
        ("49,90", "49.90"),
        ("1.299,00", "1299.00"),
        ("1,299.00", "1299.00"),
        ("1,299", "1299"),
        ("€ 1 299,50", "1299.50"),
        ("39.\u2013", "39"),
        (12990, "12990"),
        (Decimal("0.1"), "0.1"),
        ("", None),
        ("free", None),
        (True, None),
        ("-5", None),
    ],
)
def test_parse_amount(raw: Any, value: str | None) -> None:
    got = parse_amount(raw)
    assert got == (None if value is None else Decimal(value))


def test_json_numbers_never_pass_through_float() -> None:
    # 0.1 + 0.2 style artefacts would show as 0.30000000000000004 with floats.
    got = products_from_page(
        page(json_ld=(ld(offers={"@type": "Offer", "price": 0.125, "priceCurrency": "KWD"}),)),
        url="/p",
        public_origin=ORIGIN,
    )
    assert got.items[0].price == "0.125 KWD"


@pytest.mark.parametrize(
    ("raw", "meta"),
    [
        ("https://schema.org/InStock", "in stock"),
        ("http://schema.org/InStock", "in stock"),
        ("InStock", "in stock"),
        ("schema:InStock", "in stock"),
        ("https://schema.org/OutOfStock", "out of stock"),
        ("SoldOut", "out of stock"),
        ("https://schema.org/PreOrder", "preorder"),
        ("PreSale", "preorder"),
        ("https://schema.org/BackOrder", "available for order"),
        ("https://schema.org/Discontinued", "discontinued"),
        ("LimitedAvailability", "in stock"),
        ("OnlineOnly", "in stock"),
        ("InStoreOnly", "in stock"),
        ("out of stock", "out of stock"),
        ("available for order", "available for order"),
        ("oos", "out of stock"),
        (None, "in stock"),
    ],
)
def test_availability(raw: str | None, meta: str) -> None:
    assert availability(raw) == meta


def test_condition() -> None:
    assert [
        condition(c)
        for c in (
            "https://schema.org/NewCondition",
            "RefurbishedCondition",
            "http://schema.org/UsedCondition",
            "DamagedCondition",
            None,
        )
    ] == ["new", "refurbished", "used", "used", "new"]


# --- items ---------------------------------------------------------------------------------

_text = st.text(min_size=1, max_size=20)
items = st.builds(
    CatalogItem,
    id=_text,
    title=_text,
    description=_text,
    availability=st.sampled_from(["in stock", "out of stock", "preorder"]),
    condition=st.sampled_from(["new", "used", "refurbished"]),
    price=st.sampled_from(["1.00 EUR", "4990 JPY"]),
    link=st.just("https://shop.example/p"),
    image_link=st.just("https://shop.example/i.jpg"),
    sale_price=st.none() | st.just("0.50 EUR"),
    additional_image_link=st.lists(st.just("https://shop.example/j.jpg"), max_size=2).map(tuple),
    brand=st.none() | _text,
    gtin=st.none() | st.just("4006381333931"),
    mpn=st.none() | _text,
    item_group_id=st.none() | _text,
)


@given(items)
def test_from_data_is_the_inverse_of_data(item: CatalogItem) -> None:
    data = item.data()
    assert None not in data.values() and data["id"] == item.id
    again = CatalogItem.from_data(json.loads(json.dumps(data)))
    assert again == item and again.content_hash() == item.content_hash()


def test_content_hash_changes_exactly_with_what_meta_sees() -> None:
    (item,) = extract("product_offer.html").items
    (same,) = extract("product_offer.html", url="/x/product_offer?other=query").items
    assert same.content_hash() == item.content_hash()
    cheaper = CatalogItem.from_data({**item.data(), "price": "39.90 EUR"})
    assert cheaper.content_hash() != item.content_hash()
    assert len(item.content_hash()) == 64


def test_feed_row() -> None:
    (item,) = extract("product_offer.html").items
    row = feed_row(item)
    assert tuple(row) == FEED_COLUMNS
    assert row["sale_price"] == "" and row["item_group_id"] == ""
    assert row["additional_image_link"] == (
        "https://shop.example/img/tr2-side.jpg,https://shop.example/x/img/tr2-sole.jpg"
    )
    assert row["price"] == "49.90 EUR"


# --- hostile input ---------------------------------------------------------------------------

_KEYS = (
    "@type @id @graph name sku offers price lowPrice priceCurrency priceSpecification priceType "
    "image url hasVariant isVariantOf brand gtin13 availability itemCondition mainEntity "
    "productGroupID description mpn productID"
).split()
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.sampled_from(["Product", "ProductGroup", "Offer", "AggregateOffer", "EUR", "1.5", "x"])
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS), children, max_size=6)
    ),
    max_leaves=30,
)
# Products that nearly make sense, each field possibly replaced by anything.
_maybe = lambda good: st.one_of(good, good, good, _json)  # noqa: E731
_offer = st.fixed_dictionaries(
    {
        "@type": _maybe(st.sampled_from(["Offer", "AggregateOffer"])),
        "price": _maybe(st.sampled_from(["9.99", "1,299.00", "0", "-1", "abc"])),
        "lowPrice": _maybe(st.just("5")),
        "priceCurrency": _maybe(st.sampled_from(["EUR", "JPY", "KWD", "eur", "XXX", ""])),
        "availability": _maybe(st.sampled_from(["https://schema.org/InStock", "SoldOut", "?"])),
        "priceSpecification": _maybe(
            st.fixed_dictionaries(
                {"price": st.just("19.99"), "priceType": st.just("StrikethroughPrice")}
            )
        ),
    }
)
_product = st.fixed_dictionaries(
    {
        "@type": _maybe(st.sampled_from(["Product", "ProductGroup", ["Product", "Thing"]])),
        "name": _maybe(st.text(max_size=30)),
        "sku": _maybe(st.text(max_size=10)),
        "image": _maybe(st.sampled_from(["/a.jpg", "https://x.example/b.jpg", "javascript:x"])),
        "url": _maybe(st.sampled_from(["/p", "/q", "https://shop.example/p"])),
        "offers": _maybe(_offer | st.lists(_offer, max_size=3)),
        "hasVariant": _maybe(st.lists(st.deferred(lambda: _product), max_size=2)),
    }
)
_ITEM_PRICE = r"^\d+(\.\d+)? [A-Z]{3}$"


@settings(max_examples=150, deadline=None)
@given(docs=st.lists(_json | _product, max_size=3), micro=st.lists(_json | _product, max_size=2))
def test_any_json_ld_or_microdata_gives_valid_items_or_problems(
    docs: list[Any], micro: list[Any]
) -> None:
    import re

    got = products_from_page(
        page(
            json_ld=tuple(json.dumps(d) for d in docs),
            microdata=tuple(m for m in micro if isinstance(m, dict)),
            meta=(("og:image", "/i.jpg"),),
        ),
        url="/p",
        public_origin=ORIGIN,
    )
    for item in got.items:
        assert re.match(_ITEM_PRICE, item.price)
        assert item.sale_price is None or re.match(_ITEM_PRICE, item.sale_price)
        assert item.availability in {
            "in stock", "out of stock", "preorder", "available for order", "discontinued",
        }  # fmt: skip
        assert item.condition in {"new", "refurbished", "used"}
        assert item.id and len(item.id) <= 100 and item.title
        assert item.link.startswith("https://") and item.image_link.startswith("http")
        assert CatalogItem.from_data(item.data()) == item
