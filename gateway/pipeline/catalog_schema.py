"""schema.org Product / ProductGroup nodes (JSON-LD or microdata) to catalog items.

`Doc` holds one JSON-LD document, or a page's microdata items (same shape), with its nodes by
`@id`; `from_doc` finds its products — groups first, whose variants become one item each
(`item_group_id` from productGroupID), then plain products (Shopify's one offer per variant
sku makes variants too) — and builds the items, noting in the context why a product gave
none. Products a page only lists (an ItemList, a product whose `url` is another page) give
no item of this page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from gateway.pipeline.catalog_item import CatalogItem
from gateway.pipeline.catalog_values import (
    MAX_DESCRIPTION,
    MAX_ID,
    MAX_IMAGES,
    MAX_TITLE,
    PageContext,
    absolute,
    availability,
    choose_id,
    condition,
    format_price,
    ident,
    parse_amount,
    path_of,
    text_of,
)

__all__ = ["Doc", "from_doc", "own_products"]

_PRODUCT_TYPES = frozenset({"product", "individualproduct", "productmodel", "someproducts"})
_GROUP_TYPE = "productgroup"
_LISTS = frozenset({"itemlist", "listitem", "breadcrumblist", "offercatalog", "collectionpage"})
_GTIN_KEYS = ("gtin", "gtin14", "gtin13", "gtin12", "gtin8", "isbn")


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


class Doc:
    """One JSON-LD document (or the microdata of a page): its nodes by @id."""

    def __init__(self, roots: Sequence[Any]) -> None:
        self.roots = roots
        self.by_id: dict[str, Mapping[str, Any]] = {}
        for node in self._all(roots, 0):
            key = node.get("@id")
            if isinstance(key, str) and len(node) > 1:
                self.by_id.setdefault(key, node)

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
        """A property's values as a list (one or many), references resolved."""
        if node is None:
            return []
        value = node.get(key)
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [self.resolve(v) for v in items]

    def one(self, node: Mapping[str, Any] | None, key: str) -> Any:
        """A property's first value, or None."""
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


def _images(doc: Doc, nodes: Sequence[Mapping[str, Any] | None], base: str) -> list[str]:
    for node in nodes:
        found: list[str] = []
        for value in doc.many(node, "image"):
            url = absolute(value, base)
            if url and url not in found:
                found.append(url)
        if found:
            return found
    return []


def _gtin(node: Mapping[str, Any] | None) -> str | None:
    if node is None:
        return None
    for key in _GTIN_KEYS:
        text = text_of(node.get(key))
        if text:
            digits = re.sub(r"[\s-]", "", text.rsplit(":", 1)[-1])
            if digits.isdigit():
                return digits
    return None


def _price_of(value: Any) -> Decimal | None:
    return parse_amount(value)


def _offer_prices(
    doc: Doc, offer: Mapping[str, Any]
) -> tuple[Decimal | None, Decimal | None, str | None]:
    """(price, list price or None, currency) of one Offer or AggregateOffer."""
    currency = text_of(offer.get("priceCurrency"))
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
        currency = currency or text_of(spec.get("priceCurrency"))
        kind = (text_of(spec.get("priceType")) or "").rsplit("/", 1)[-1].lower()
        if kind in ("strikethroughprice", "listprice", "srp", "msrp"):
            listed = amount if listed is None else max(listed, amount)
        elif price is None and kind in ("", "saleprice", "invoiceprice"):
            price = amount
    return price, listed, currency


def _pick_offer(doc: Doc, nodes: Sequence[Mapping[str, Any] | None]) -> Mapping[str, Any] | None:
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
                    # The aggregate's currency, availability... hold unless the offer says.
                    return {**{k: v for k, v in offer.items() if k != "offers"}, **inner}
            fallback = fallback or offer
    return fallback


def _item(
    doc: Doc,
    ctx: PageContext,
    node: Mapping[str, Any],
    group: Mapping[str, Any] | None,
    group_id: str | None,
) -> CatalogItem | None:
    """One item from a Product node (a variant when `group` is given); None: a problem."""
    chain = (node, group)
    title = next((t for n in chain if n is not None and (t := text_of(n.get("name")))), None)
    label = title or text_of(node.get("sku")) or "a product"
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
        own = absolute(node.get("url") or offer.get("url"), ctx.page_url)
        link = own or link
    images = _images(doc, chain, ctx.page_url) or list(ctx.og_images)
    if not images:
        ctx.problems.append(f"product {label!r} has no image")
        return None
    gtin = _gtin(node) or _gtin(offer)
    values = {
        "sku": ident(node.get("sku")) or ident(offer.get("sku")),
        "productID": ident(node.get("productID")),
        "mpn": ident(node.get("mpn")) or ident(offer.get("mpn")),
        "gtin": gtin,
    }
    discriminator = (values["sku"] or values["productID"] or title or "") if group else ""
    item_id = choose_id(ctx.id_source, values, link, discriminator)
    if not item_id:
        ctx.problems.append(
            f"product {label!r} has no id (no sku, productID, mpn or gtin); "
            "set the catalog's id source to 'url' to use a hash of the page URL"
        )
        return None
    if not title:
        ctx.problems.append(f"product {item_id!r} has no name")
        return None
    description = next(
        (d for n in chain if n is not None and (d := text_of(n.get("description")))), title
    )
    brand = next((b for n in chain if n is not None and (b := text_of(doc.one(n, "brand")))), None)
    return CatalogItem(
        id=item_id,
        title=title[:MAX_TITLE],
        description=description[:MAX_DESCRIPTION],
        availability=availability(text_of(offer.get("availability"))),
        condition=condition(
            text_of(offer.get("itemCondition")) or text_of(node.get("itemCondition"))
        ),
        price=price_text,
        link=link,
        image_link=images[0],
        sale_price=sale_text,
        additional_image_link=tuple(images[1 : 1 + MAX_IMAGES]),
        brand=brand,
        gtin=gtin,
        mpn=values["mpn"],
        item_group_id=group_id or ident(node.get("inProductGroupWithID")),
    )


def _group_id(group: Mapping[str, Any]) -> str | None:
    return (
        ident(group.get("productGroupID"))
        or ident(group.get("sku"))
        or ident(group.get("productID"))
        or ident(group.get("@id"))
    )


def from_doc(doc: Doc, ctx: PageContext) -> tuple[list[CatalogItem], bool]:
    """The items of a document's products, and whether it declared any (usable or not)."""
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


def own_products(doc: Doc) -> int:
    """How many products a document declares (a group with its variants counts once)."""
    nodes = list(doc.products())
    variants = {id(v) for n in nodes if _is_group(n) for v in doc.many(n, "hasVariant")}
    return sum(1 for n in nodes if id(n) not in variants)


def _on_this_page(node: Mapping[str, Any], ctx: PageContext) -> bool:
    """False (a problem noted) for a product whose own `url` is another page's.

    A page may describe products it only lists (related products, a category's grid): those
    are read from their own pages, and must not be taken for this page's product. Checked
    only when the page declares several (`ctx.check_urls`).
    """
    if not ctx.check_urls:
        return True
    own = absolute(node.get("url"), ctx.page_url)
    if own is None or path_of(own) in ctx.paths:
        return True
    label = text_of(node.get("name")) or text_of(node.get("sku")) or "a product"
    ctx.problems.append(f"product {label!r} describes another page ({own}): skipped")
    return False


def _variant_offers(doc: Doc, node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A Product's offers when they are its variants (Shopify: one offer per variant sku)."""
    offers: list[Mapping[str, Any]] = [o for o in doc.many(node, "offers") if isinstance(o, dict)]
    skus = [ident(o.get("sku")) for o in offers]
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
    return parts[-1][:MAX_ID] if parts else None
