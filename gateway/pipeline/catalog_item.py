"""Meta catalog items: the `data` of an items_batch request, its content hash, feed rows.

Pure. `CatalogItem` has Meta's field names and value forms (capi-reference.md §10); the
store keeps `data()` and reads it back with `from_data`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["FEED_COLUMNS", "CatalogItem", "PageProducts", "feed_row"]


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
