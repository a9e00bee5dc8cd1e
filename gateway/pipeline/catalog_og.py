"""Open Graph product tags (og:type=product, product:price:amount...) to a catalog item.

The fallback when a page has neither JSON-LD nor microdata products; the item's id is
`product:retailer_item_id` (a hash of the link with id source "url").
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from gateway.pipeline.catalog_item import CatalogItem
from gateway.pipeline.catalog_values import (
    MAX_DESCRIPTION,
    MAX_ID,
    MAX_IMAGES,
    MAX_TITLE,
    PageContext,
    availability,
    choose_id,
    condition,
    format_price,
    parse_amount,
    text_of,
)

__all__ = ["from_open_graph"]


def from_open_graph(
    meta: Mapping[str, list[str]], ctx: PageContext
) -> tuple[list[CatalogItem], bool]:
    def first(*names: str) -> str | None:
        for name in names:
            for value in meta.get(name, []):
                text = text_of(value)
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
        ident = choose_id("url", {}, ctx.link, "")
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
        id=ident[:MAX_ID],
        title=title[:MAX_TITLE],
        description=(first("og:description") or title)[:MAX_DESCRIPTION],
        availability=availability(first("product:availability", "og:availability")),
        condition=condition(first("product:condition")),
        price=price_text,
        link=ctx.link,
        image_link=ctx.og_images[0],
        sale_price=sale_text,
        additional_image_link=ctx.og_images[1 : 1 + MAX_IMAGES],
        brand=first("product:brand", "og:brand"),
        gtin=gtin if gtin and gtin.isdigit() else None,
        mpn=first("product:mfr_part_no"),
        item_group_id=first("product:item_group_id"),
    )
    return [item], True
