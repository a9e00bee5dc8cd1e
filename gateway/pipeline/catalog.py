"""Turns what a page declares about its products (PageData) into Meta catalog items.

Sources, in order (a later one is read only when the earlier ones gave no item):

1. schema.org JSON-LD: `Product` (and `IndividualProduct`, `ProductModel`, `SomeProducts`)
   and `ProductGroup` with `hasVariant`, found at the top level, in arrays, in `@graph`
   (Yoast, WooCommerce) and nested in other nodes (`WebPage.mainEntity`); `@id` references
   inside a document are followed.
2. microdata (`itemscope itemtype=".../Product"`), read through the same code.
3. Open Graph product tags (`og:type=product`, `product:price:amount`, ...); the item's id is
   `product:retailer_item_id`.

Pure: no I/O. Prices are Decimals all the way (JSON is parsed with `parse_float=Decimal`).
Meta's field names and value forms: capi-reference.md §10 (items_batch `data` objects).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.html.products import PageData
from gateway.pipeline.catalog_item import FEED_COLUMNS, CatalogItem, PageProducts, feed_row
from gateway.pipeline.catalog_og import from_open_graph
from gateway.pipeline.catalog_schema import Doc, from_doc, own_products
from gateway.pipeline.catalog_values import ID_SOURCES, PageContext, absolute, path_of

__all__ = [
    "FEED_COLUMNS",
    "ID_SOURCES",
    "CatalogItem",
    "PageProducts",
    "feed_row",
    "products_from_page",
]

_MAX_ITEMS = 500  # variants per page


def _page_link(page: PageData, url: str, public_origin: str) -> tuple[str, str]:
    """(the page's public URL without query, the item link: canonical or that URL)."""
    origin = public_origin.rstrip("/")
    parts = urlsplit(url)
    page_url = origin + (parts.path or "/")
    link = page_url
    if page.canonical:
        canonical = absolute(page.canonical, page_url)
        if canonical:
            c = urlsplit(canonical)
            upstream = (parts.scheme, parts.netloc)
            if parts.netloc and (c.scheme, c.netloc) == upstream:
                # The upstream named itself (its own host): shoppers see the public origin.
                o = urlsplit(origin)
                canonical = urlunsplit((o.scheme, o.netloc, c.path, c.query, ""))
            link = canonical
    return page_url, link


def _load(raw: str, index: int, problems: list[str]) -> Any:
    try:
        return json.loads(raw, parse_float=Decimal)
    except RecursionError:
        problems.append(f"JSON-LD script {index} is nested too deeply")
    except ValueError as e:
        where = (
            f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        )
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        problems.append(f"JSON-LD script {index} is not valid JSON ({msg}{where})")
    return None


_MENTIONS_PRODUCT = re.compile(r"Product(?:Group)?\b")


def products_from_page(
    page: PageData, *, url: str, public_origin: str, id_source: str = "sku"
) -> PageProducts:
    """The catalog items a page declares, in Meta's form.

    `url` is the request URL (absolute or a path); `public_origin` the scheme://host shoppers
    use. `link` is the page's `rel=canonical` (resolved; pointing at the upstream's own host,
    moved to the public origin), else the request URL without its query on the public origin;
    a variant with its own `url` links there. Relative image URLs resolve against the page.

    `id_source` picks the item id: "sku" (default: sku, then productID, then mpn, then gtin),
    "productID", "mpn" or "gtin" (that one first, then the default order), or "url" (a stable
    24-hex-digit hash of the link, plus the variant's sku for variants sharing a page).
    Open Graph items use product:retailer_item_id (a hash of the link with "url").

    A declared product that gives no item (no price, no id, broken JSON-LD...) is named in
    `problems`; duplicates (same id) keep the first.
    """
    if id_source not in ID_SOURCES:
        raise ValueError(f"id_source must be one of {', '.join(ID_SOURCES)}, not {id_source!r}")
    meta: dict[str, list[str]] = {}
    for name, content in page.meta:
        meta.setdefault(name, []).append(content)
    page_url, link = _page_link(page, url, public_origin)
    og_images: list[str] = []
    for name in ("og:image", "og:image:url", "og:image:secure_url"):
        for value in meta.get(name, []):
            image = absolute(value, page_url)
            if image and image not in og_images:
                og_images.append(image)
    ctx = PageContext(
        page_url, link, frozenset({path_of(page_url), path_of(link)}), tuple(og_images), id_source
    )
    declared = False
    items: list[CatalogItem] = []
    docs: list[Doc] = []
    for i, raw in enumerate(page.json_ld, 1):
        data = _load(raw, i, ctx.problems)
        if data is None:
            declared = declared or bool(_MENTIONS_PRODUCT.search(raw))
        else:
            docs.append(Doc([data]))
    # One product is the page's own whatever its `url` says (a locale prefix, an old slug);
    # among several, those naming another page are only listed here.
    ctx.check_urls = sum(map(own_products, docs)) > 1
    for doc in docs:
        found, said = from_doc(doc, ctx)
        items += found
        declared = declared or said
    if not items and page.microdata:
        doc = Doc([dict(m) for m in page.microdata])
        ctx.check_urls = own_products(doc) > 1
        found, said = from_doc(doc, ctx)
        items += found
        declared = declared or said
    if not items:
        found, said = from_open_graph(meta, ctx)
        items += found
        declared = declared or said
    unique: dict[str, CatalogItem] = {}
    for item in items:
        if len(unique) >= _MAX_ITEMS:
            ctx.problems.append(f"more than {_MAX_ITEMS} products on the page; the rest skipped")
            break
        unique.setdefault(item.id, item)
    return PageProducts(tuple(unique.values()), declared, tuple(dict.fromkeys(ctx.problems)))
