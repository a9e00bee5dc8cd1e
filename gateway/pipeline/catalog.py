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

import hashlib
import html
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from gateway.html.products import PageData
from gateway.pipeline.catalog_values import (
    availability,
    condition,
    format_price,
    parse_amount,
)

__all__ = [
    "FEED_COLUMNS",
    "ID_SOURCES",
    "CatalogItem",
    "PageProducts",
    "feed_row",
    "products_from_page",
]

ID_SOURCES = ("sku", "productID", "mpn", "gtin", "url")
_MAX_TITLE = 200
_MAX_DESCRIPTION = 9999
_MAX_ID = 100
_MAX_IMAGES = 20  # additional images Meta keeps
_MAX_ITEMS = 500  # variants per page
_PRODUCT_TYPES = frozenset({"product", "individualproduct", "productmodel", "someproducts"})
_GROUP_TYPE = "productgroup"
_LISTS = frozenset({"itemlist", "listitem", "breadcrumblist", "offercatalog", "collectionpage"})
_GTIN_KEYS = ("gtin", "gtin14", "gtin13", "gtin12", "gtin8", "isbn")
_WS = re.compile(r"\s+")
_TAG = re.compile(r"<(?:[A-Za-z/!][^<>]*)?>")


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One Meta catalog item, with Meta's field names and value forms."""

    id: str
    title: str
    description: str
    availability: (
        str  # "in stock" | "out of stock" | "preorder" | "available for order" | "discontinued"
    )
    condition: str  # "new" | "refurbished" | "used"
    price: str  # "49.90 EUR" (the currency's minor units; "4990 JPY")
    link: str
    image_link: str
    sale_price: str | None = None
    additional_image_link: tuple[str, ...] = ()
    brand: str | None = None
    gtin: str | None = None
    mpn: str | None = None
    item_group_id: str | None = None

    def data(self) -> dict[str, Any]:
        """The items_batch request's `data` object: Meta field names, None fields left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def content_hash(self) -> str:
        """sha256 hex of the canonical JSON of data(): changes exactly when what Meta sees does."""
        text = json.dumps(self.data(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> CatalogItem:
        """The inverse of data(), for rows read back from the store."""
        extra = data.get("additional_image_link") or ()
        if isinstance(extra, str):
            extra = [u.strip() for u in extra.split(",") if u.strip()]

        def opt(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(
            id=str(data["id"]),
            title=str(data["title"]),
            description=str(data["description"]),
            availability=str(data["availability"]),
            condition=str(data["condition"]),
            price=str(data["price"]),
            link=str(data["link"]),
            image_link=str(data["image_link"]),
            sale_price=opt("sale_price"),
            additional_image_link=tuple(str(u) for u in extra),
            brand=opt("brand"),
            gtin=opt("gtin"),
            mpn=opt("mpn"),
            item_group_id=opt("item_group_id"),
        )


@dataclass(frozen=True, slots=True)
class PageProducts:
    """The items a page gave, and why a product it declared gave none."""

    items: tuple[CatalogItem, ...]
    had_product: bool  # the page declared a product (JSON-LD/microdata/OG), usable or not
    problems: tuple[str, ...]  # why a declared product gave no item


FEED_COLUMNS: tuple[str, ...] = (
    "id", "title", "description", "availability", "condition", "price", "link", "image_link",
    "brand", "sale_price", "additional_image_link", "gtin", "mpn", "item_group_id",
)  # fmt: skip


def feed_row(item: CatalogItem) -> dict[str, str]:
    """One CSV/XML feed row: every FEED_COLUMNS key, "" where absent, images comma-joined."""
    data = item.data()
    row: dict[str, str] = {}
    for col in FEED_COLUMNS:
        value = data.get(col)
        if value is None:
            row[col] = ""
        elif isinstance(value, list):
            row[col] = ",".join(value)
        else:
            row[col] = str(value)
    return row


# ---------------------------------------------------------------------------------------------
# Reading schema.org nodes (JSON-LD and microdata share this)


def _type_names(node: Mapping[str, Any]) -> set[str]:
    """Lowercased local names of a node's @type ("https://schema.org/Product" -> "product")."""
    raw = node.get("@type")
    names = raw if isinstance(raw, list) else [raw]
    out: set[str] = set()
    for name in names:
        if isinstance(name, str):
            for token in name.split():
                out.add(re.split(r"[/#:]", token.rstrip("/"))[-1].lower())
    return out


def _is_product(node: Mapping[str, Any]) -> bool:
    return bool(_type_names(node) & _PRODUCT_TYPES)


def _is_group(node: Mapping[str, Any]) -> bool:
    return _GROUP_TYPE in _type_names(node)


class _Doc:
    """One JSON-LD document (or the microdata of a page): its nodes by @id."""

    def __init__(self, roots: Sequence[Any]) -> None:
        self.roots = roots
        self.by_id: dict[str, Mapping[str, Any]] = {}
        for node in self._all(roots, 0):
            ident = node.get("@id")
            if isinstance(ident, str) and len(node) > 1:
                self.by_id.setdefault(ident, node)

    def _all(self, value: Any, depth: int) -> Iterator[Mapping[str, Any]]:
        if depth > 12:
            return
        if isinstance(value, dict):
            yield value
            for v in value.values():
                if isinstance(v, dict | list):
                    yield from self._all(v, depth + 1)
        elif isinstance(value, list):
            for v in value:
                yield from self._all(v, depth + 1)

    def resolve(self, value: Any) -> Any:
        """A bare {"@id": ...} reference becomes the node it names (when the doc has it)."""
        if isinstance(value, dict) and len(value) == 1 and "@id" in value:
            return self.by_id.get(str(value["@id"]), value)
        return value

    def many(self, node: Mapping[str, Any] | None, key: str) -> list[Any]:
        if node is None:
            return []
        value = node.get(key)
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [self.resolve(v) for v in items]

    def one(self, node: Mapping[str, Any] | None, key: str) -> Any:
        values = self.many(node, key)
        return values[0] if values else None

    def products(self) -> Iterator[Mapping[str, Any]]:
        """Product and ProductGroup nodes, outermost first, not descending into products."""
        seen: set[int] = set()

        def walk(value: Any, depth: int) -> Iterator[Mapping[str, Any]]:
            if depth > 12:
                return
            if isinstance(value, list):
                for v in value:
                    yield from walk(v, depth + 1)
                return
            if not isinstance(value, dict):
                return
            value = self.resolve(value)
            if id(value) in seen:
                return
            seen.add(id(value))
            if _is_group(value) or _is_product(value):
                yield value
                return
            if _type_names(value) & _LISTS:
                return  # a category page's list names products described on their own pages
            for k, v in value.items():
                if k != "@context" and isinstance(v, dict | list):
                    yield from walk(v, depth + 1)

        yield from walk(list(self.roots), 0)


def _text(value: Any) -> str | None:
    """A plain string from a schema.org value (a name, or a node with a name/@value)."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("name", value.get("@value"))
        if isinstance(value, list):
            value = value[0] if value else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    if "&" in value:
        value = html.unescape(value)  # WooCommerce and others escape twice
    if "<" in value:
        value = _TAG.sub(" ", value)  # HTML in a description: Meta shows text
    value = _WS.sub(" ", value).strip()
    return value or None


def _ident(value: Any) -> str | None:
    text = _text(value)
    return text[:_MAX_ID] if text else None


@dataclass(slots=True)
class _Ctx:
    page_url: str  # the public URL of the page (base for relative links)
    link: str
    paths: frozenset[str]  # the page's own paths (request and canonical), normalised
    og_images: tuple[str, ...]
    id_source: str
    problems: list[str] = field(default_factory=list)


def _abs(url: Any, base: str) -> str | None:
    text = url.get("url", url.get("contentUrl")) if isinstance(url, dict) else url
    if isinstance(text, list):
        text = text[0] if text else None
    if not isinstance(text, str) or not (text := text.strip()):
        return None
    if text.startswith(("https://", "http://")) and " " not in text:
        return text  # already absolute (the usual case): urljoin costs more than the rest
    try:
        out = urljoin(base, text)
    except ValueError:
        return None
    return out if urlsplit(out).scheme in ("http", "https") else None


def _images(doc: _Doc, nodes: Sequence[Mapping[str, Any] | None], base: str) -> list[str]:
    for node in nodes:
        found: list[str] = []
        for value in doc.many(node, "image"):
            url = _abs(value, base)
            if url and url not in found:
                found.append(url)
        if found:
            return found
    return []


def _gtin(node: Mapping[str, Any] | None) -> str | None:
    if node is None:
        return None
    for key in _GTIN_KEYS:
        text = _text(node.get(key))
        if text:
            digits = re.sub(r"[\s-]", "", text.rsplit(":", 1)[-1])
            if digits.isdigit():
                return digits
    return None


def _choose_id(
    source: str, values: Mapping[str, str | None], link: str, discriminator: str
) -> str | None:
    if source == "url":
        key = link if not discriminator else f"{link}#{discriminator}"
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    order = [source, *(s for s in ("sku", "productID", "mpn", "gtin") if s != source)]
    for name in order:
        value = values.get(name)
        if value:
            return value[:_MAX_ID]
    return None


def _price_of(value: Any) -> Decimal | None:
    return parse_amount(value)


def _offer_prices(
    doc: _Doc, offer: Mapping[str, Any]
) -> tuple[Decimal | None, Decimal | None, str | None]:
    """(price, list price or None, currency) of one Offer or AggregateOffer."""
    currency = _text(offer.get("priceCurrency"))
    price = _price_of(offer.get("price"))
    if price is None and "aggregateoffer" in _type_names(offer):
        price = _price_of(offer.get("lowPrice"))
    listed: Decimal | None = None
    for spec in doc.many(offer, "priceSpecification"):
        if not isinstance(spec, dict):
            continue
        amount = _price_of(spec.get("price"))
        if amount is None:
            continue
        currency = currency or _text(spec.get("priceCurrency"))
        kind = (_text(spec.get("priceType")) or "").rsplit("/", 1)[-1].lower()
        if kind in ("strikethroughprice", "listprice", "srp", "msrp"):
            listed = amount if listed is None else max(listed, amount)
        elif price is None and kind in ("", "saleprice", "invoiceprice"):
            price = amount
    return price, listed, currency


def _pick_offer(doc: _Doc, nodes: Sequence[Mapping[str, Any] | None]) -> Mapping[str, Any] | None:
    """The first offer with a price (nested AggregateOffer.offers are looked into)."""
    fallback: Mapping[str, Any] | None = None
    for node in nodes:
        for offer in doc.many(node, "offers"):
            if not isinstance(offer, dict):
                continue
            price, _, _ = _offer_prices(doc, offer)
            if price is not None:
                return offer
            for inner in doc.many(offer, "offers"):
                if isinstance(inner, dict) and _offer_prices(doc, inner)[0] is not None:
                    return inner
            fallback = fallback or offer
    return fallback


def _item(
    doc: _Doc,
    ctx: _Ctx,
    node: Mapping[str, Any],
    group: Mapping[str, Any] | None,
    group_id: str | None,
) -> CatalogItem | None:
    """One item from a Product node (a variant when `group` is given); None: a problem."""
    chain = (node, group)
    title = next((t for n in chain if n is not None and (t := _text(n.get("name")))), None)
    label = title or _text(node.get("sku")) or "a product"
    offer = _pick_offer(doc, chain)
    if offer is None:
        ctx.problems.append(f"product {label!r} has no offers (no price)")
        return None
    price, listed, currency = _offer_prices(doc, offer)
    if price is None:
        ctx.problems.append(f"product {label!r} has an offer without a price")
        return None
    if not currency:
        ctx.problems.append(f"product {label!r} has a price without priceCurrency")
        return None
    regular, sale = (listed, price) if listed is not None and listed > price else (price, None)
    try:
        price_text = format_price(regular, currency)
        sale_text = format_price(sale, currency) if sale is not None else None
    except ValueError as e:
        ctx.problems.append(f"product {label!r}: {e}")
        return None

    link = ctx.link
    if group is not None:
        own = _abs(node.get("url") or offer.get("url"), ctx.page_url)
        link = own or link
    images = _images(doc, chain, ctx.page_url) or list(ctx.og_images)
    if not images:
        ctx.problems.append(f"product {label!r} has no image")
        return None
    gtin = _gtin(node) or _gtin(offer)
    values = {
        "sku": _ident(node.get("sku")) or _ident(offer.get("sku")),
        "productID": _ident(node.get("productID")),
        "mpn": _ident(node.get("mpn")) or _ident(offer.get("mpn")),
        "gtin": gtin,
    }
    discriminator = (values["sku"] or values["productID"] or title or "") if group else ""
    ident = _choose_id(ctx.id_source, values, link, discriminator)
    if not ident:
        ctx.problems.append(
            f"product {label!r} has no id (no sku, productID, mpn or gtin); "
            "set the catalog's id source to 'url' to use a hash of the page URL"
        )
        return None
    if not title:
        ctx.problems.append(f"product {ident!r} has no name")
        return None
    description = next(
        (d for n in chain if n is not None and (d := _text(n.get("description")))), title
    )
    brand = next((b for n in chain if n is not None and (b := _text(doc.one(n, "brand")))), None)
    return CatalogItem(
        id=ident,
        title=title[:_MAX_TITLE],
        description=description[:_MAX_DESCRIPTION],
        availability=availability(_text(offer.get("availability"))),
        condition=condition(_text(offer.get("itemCondition")) or _text(node.get("itemCondition"))),
        price=price_text,
        link=link,
        image_link=images[0],
        sale_price=sale_text,
        additional_image_link=tuple(images[1 : 1 + _MAX_IMAGES]),
        brand=brand,
        gtin=gtin,
        mpn=values["mpn"],
        item_group_id=group_id or _ident(node.get("inProductGroupWithID")),
    )


def _group_id(group: Mapping[str, Any]) -> str | None:
    return (
        _ident(group.get("productGroupID"))
        or _ident(group.get("sku"))
        or _ident(group.get("productID"))
        or _ident(group.get("@id"))
    )


def _from_doc(doc: _Doc, ctx: _Ctx) -> tuple[list[CatalogItem], bool]:
    items: list[CatalogItem] = []
    declared = False
    consumed: set[int] = set()
    nodes = list(doc.products())
    for node in nodes:  # groups first: their variants are not products of their own
        if not _is_group(node):
            continue
        declared = True
        if not _on_this_page(node, ctx):
            continue
        gid = _group_id(node)
        variants = [v for v in doc.many(node, "hasVariant") if isinstance(v, dict)]
        for variant in variants:
            consumed.add(id(variant))
            item = _item(doc, ctx, variant, node, gid)
            if item is not None:
                items.append(item)
        if not variants:
            item = _item(doc, ctx, node, None, gid)  # a group without variants: one item
            if item is not None:
                items.append(item)
    for node in nodes:
        if _is_group(node) or id(node) in consumed:
            continue
        declared = True
        if not _on_this_page(node, ctx):
            continue
        parent = doc.one(node, "isVariantOf")
        if isinstance(parent, dict) and _is_group(parent):
            found = [_item(doc, ctx, node, parent, _group_id(parent))]
        elif len(offers := _variant_offers(doc, node)) > 1:
            gid = _group_id(node) if node.get("productGroupID") or node.get("productID") else None
            gid = gid or _slug(ctx.link)
            found = [_item(doc, ctx, _offer_variant(node, o), node, gid) for o in offers]
        else:
            found = [_item(doc, ctx, node, None, None)]
        items += [item for item in found if item is not None]
    return items, declared


def _path(url: str) -> str:
    return unquote(urlsplit(url).path).rstrip("/") or "/"


def _on_this_page(node: Mapping[str, Any], ctx: _Ctx) -> bool:
    """False (a problem noted) for a product whose own `url` is another page's.

    A page may describe products it only lists (related products, a category's grid): those
    are read from their own pages, and must not be taken for this page's product.
    """
    own = _abs(node.get("url"), ctx.page_url)
    if own is None or _path(own) in ctx.paths:
        return True
    label = _text(node.get("name")) or _text(node.get("sku")) or "a product"
    ctx.problems.append(f"product {label!r} describes another page ({own}): skipped")
    return False


def _variant_offers(doc: _Doc, node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A Product's offers when they are its variants (Shopify: one offer per variant sku)."""
    offers: list[Mapping[str, Any]] = [o for o in doc.many(node, "offers") if isinstance(o, dict)]
    skus = [_ident(o.get("sku")) for o in offers]
    if len(offers) > 1 and all(skus) and len(set(skus)) == len(skus):
        return offers
    return []


_VARIANT_OWN = frozenset({"offers", "sku", "mpn", "url", *_GTIN_KEYS})


def _offer_variant(node: Mapping[str, Any], offer: Mapping[str, Any]) -> dict[str, Any]:
    variant = {k: v for k, v in node.items() if k not in _VARIANT_OWN}
    variant.update(offers=offer, sku=offer.get("sku"), url=offer.get("url"))
    return variant


def _slug(link: str) -> str | None:
    """The last path segment of a link ("canvas-tote"): a readable group id."""
    parts = [p for p in urlsplit(link).path.split("/") if p]
    return parts[-1][:_MAX_ID] if parts else None


# ---------------------------------------------------------------------------------------------
# Open Graph


def _from_open_graph(meta: Mapping[str, list[str]], ctx: _Ctx) -> tuple[list[CatalogItem], bool]:
    def first(*names: str) -> str | None:
        for name in names:
            for value in meta.get(name, []):
                text = _text(value)
                if text:
                    return text
        return None

    og_type = (first("og:type") or "").lower()
    amount = first("product:price:amount", "og:price:amount")
    if not (og_type.startswith("product") or og_type == "og:product" or amount):
        return [], False
    title = first("og:title")
    label = title or "the Open Graph product"
    ident = first("product:retailer_item_id")
    if not ident and ctx.id_source == "url":
        ident = _choose_id("url", {}, ctx.link, "")
    if not ident:
        ctx.problems.append(f"{label!r}: Open Graph product without product:retailer_item_id")
        return [], True
    currency = first("product:price:currency", "og:price:currency")
    price = parse_amount(amount)
    if price is None or not currency:
        ctx.problems.append(f"{label!r}: Open Graph product without price and currency")
        return [], True
    sale = parse_amount(first("product:sale_price:amount"))
    listed = parse_amount(first("product:original_price:amount"))
    if sale is not None and sale < price:
        regular: Decimal = price
    elif listed is not None and listed > price:
        regular, sale = listed, price
    else:
        regular, sale = price, None
    if not title:
        ctx.problems.append(f"Open Graph product {ident!r} has no og:title")
        return [], True
    if not ctx.og_images:
        ctx.problems.append(f"Open Graph product {ident!r} has no og:image")
        return [], True
    try:
        price_text = format_price(regular, currency)
        sale_text = format_price(sale, currency) if sale is not None else None
    except ValueError as e:
        ctx.problems.append(f"Open Graph product {ident!r}: {e}")
        return [], True
    gtin = first("product:gtin", "product:ean", "product:upc", "product:isbn")
    item = CatalogItem(
        id=ident[:_MAX_ID],
        title=title[:_MAX_TITLE],
        description=(first("og:description") or title)[:_MAX_DESCRIPTION],
        availability=availability(first("product:availability", "og:availability")),
        condition=condition(first("product:condition")),
        price=price_text,
        link=ctx.link,
        image_link=ctx.og_images[0],
        sale_price=sale_text,
        additional_image_link=ctx.og_images[1 : 1 + _MAX_IMAGES],
        brand=first("product:brand", "og:brand"),
        gtin=gtin if gtin and gtin.isdigit() else None,
        mpn=first("product:mfr_part_no"),
        item_group_id=first("product:item_group_id"),
    )
    return [item], True


# ---------------------------------------------------------------------------------------------
# The page


def _page_link(page: PageData, url: str, public_origin: str) -> tuple[str, str]:
    """(the page's public URL without query, the item link: canonical or that URL)."""
    origin = public_origin.rstrip("/")
    parts = urlsplit(url)
    page_url = origin + (parts.path or "/")
    link = page_url
    if page.canonical:
        canonical = _abs(page.canonical, page_url)
        if canonical:
            c = urlsplit(canonical)
            if (
                parts.scheme
                and parts.netloc
                and (c.scheme, c.netloc)
                == (
                    parts.scheme,
                    parts.netloc,
                )
            ):
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
            image = _abs(value, page_url)
            if image and image not in og_images:
                og_images.append(image)
    ctx = _Ctx(
        page_url, link, frozenset({_path(page_url), _path(link)}), tuple(og_images), id_source
    )
    declared = False
    items: list[CatalogItem] = []
    for i, raw in enumerate(page.json_ld, 1):
        data = _load(raw, i, ctx.problems)
        if data is None:
            declared = declared or bool(_MENTIONS_PRODUCT.search(raw))
            continue
        found, said = _from_doc(_Doc([data]), ctx)
        items += found
        declared = declared or said
    if not items and page.microdata:
        found, said = _from_doc(_Doc([dict(m) for m in page.microdata]), ctx)
        items += found
        declared = declared or said
    if not items:
        found, said = _from_open_graph(meta, ctx)
        items += found
        declared = declared or said
    unique: dict[str, CatalogItem] = {}
    for item in items:
        if len(unique) >= _MAX_ITEMS:
            ctx.problems.append(f"more than {_MAX_ITEMS} products on the page; the rest skipped")
            break
        unique.setdefault(item.id, item)
    return PageProducts(tuple(unique.values()), declared, tuple(dict.fromkeys(ctx.problems)))
