"""schema.org values to Meta catalog values: availability, condition, prices ("49.90 EUR"),
text, ids and URLs, and the context of the page being read.

Pure. Amounts are Decimals (never floats), rounded half-up to the currency's ISO 4217 minor
units.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from gateway.pipeline.currencies import CURRENCIES

__all__ = [
    "ID_SOURCES",
    "MAX_DESCRIPTION",
    "MAX_ID",
    "MAX_IMAGES",
    "MAX_TITLE",
    "PageContext",
    "absolute",
    "availability",
    "choose_id",
    "condition",
    "format_price",
    "ident",
    "minor_units",
    "parse_amount",
    "path_of",
    "text_of",
]

# ISO 4217 exponents other than 2 (Meta's catalog takes the same).
_MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys(
        "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0
    ),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    "CLF": 4,
    "UYW": 4,
}

# schema.org ItemAvailability (local names, lowercased) to Meta's availability values.
_AVAILABILITY = {
    "instock": "in stock",
    "limitedavailability": "in stock",
    "onlineonly": "in stock",
    "instoreonly": "in stock",
    "outofstock": "out of stock",
    "soldout": "out of stock",
    "preorder": "preorder",
    "presale": "preorder",
    "backorder": "available for order",
    "madetoorder": "available for order",
    "availablefororder": "available for order",
    "discontinued": "discontinued",
    # Open Graph's product:availability words
    "oos": "out of stock",
    "pending": "preorder",
}
_CONDITION = {
    "newcondition": "new",
    "new": "new",
    "refurbishedcondition": "refurbished",
    "refurbished": "refurbished",
    "usedcondition": "used",
    "used": "used",
    "damagedcondition": "used",
}
_LOCAL = re.compile(r"[\s_\-]+")
_NUMBER = re.compile(r"[0-9][0-9.,'\s\u00a0\u202f]*")


def _local(value: str) -> str:
    """'https://schema.org/InStock', 'schema:InStock', 'in stock' -> 'instock'."""
    name = re.split(r"[/#:]", value.strip().rstrip("/"))[-1]
    return _LOCAL.sub("", name).lower()


def availability(value: str | None) -> str:
    """Meta's availability for a schema.org/Open Graph one; absent or unknown: "in stock"."""
    if not value:
        return "in stock"
    return _AVAILABILITY.get(_local(value), "in stock")


def condition(value: str | None) -> str:
    """Meta's condition for schema.org itemCondition; absent or unknown: "new"."""
    if not value:
        return "new"
    return _CONDITION.get(_local(value), "new")


def minor_units(currency: str) -> int:
    """Digits after the decimal point for an ISO 4217 code (2 unless listed otherwise)."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def parse_amount(value: Any) -> Decimal | None:
    """A price as a Decimal from a JSON number, "49.90", "49,90", "1.299,00" or "€ 1,299.00".

    The last separator is the decimal point, except a single "," followed by exactly three
    digits ("1,299"), which groups thousands; a lone "." is always a decimal point, as in
    schema.org. None when there is no usable non-negative number.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal):
        amount = Decimal(value)
    elif isinstance(value, float):
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        m = _NUMBER.search(value)
        if m is None or value[: m.start()].rstrip().endswith("-"):
            return None  # a negative amount is no price
        text = re.sub(r"[\s'\u00a0\u202f]", "", m.group(0)).rstrip(".,")
        last = max(text.rfind("."), text.rfind(","))
        if last >= 0:
            tail = text[last + 1 :]
            lone = text.count(text[last]) == 1 and ("." not in text or "," not in text)
            if lone and len(tail) == 3 and text[last] == ",":
                text = text.replace(",", "")  # "1,299": thousands
            else:
                text = re.sub(r"[.,]", "", text[:last]) + "." + tail
        try:
            amount = Decimal(text)
        except InvalidOperation:
            return None
    else:
        return None
    if not amount.is_finite() or amount < 0:
        return None
    return amount


def format_price(amount: Decimal, currency: str) -> str:
    """Meta's price form: "49.90 EUR", "4990 JPY", "1.500 KWD"; ValueError on a bad code."""
    code = currency.strip().upper()
    if code not in CURRENCIES:
        raise ValueError(f"unknown currency {currency!r} (an ISO 4217 code such as EUR)")
    digits = minor_units(code)
    quantum = Decimal(1).scaleb(-digits)
    return f"{amount.quantize(quantum, rounding=ROUND_HALF_UP)} {code}"


# ---------------------------------------------------------------------------------------------
# Shared by the readers of schema.org nodes and of Open Graph tags (gateway.pipeline.catalog_*)

ID_SOURCES = ("sku", "productID", "mpn", "gtin", "url")
MAX_TITLE = 200
MAX_DESCRIPTION = 9999
MAX_ID = 100
MAX_IMAGES = 20  # additional images Meta keeps
_WS = re.compile(r"\s+")
_TAG = re.compile(r"<(?:[A-Za-z/!][^<>]*)?>")


def text_of(value: Any) -> str | None:
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


def ident(value: Any) -> str | None:
    """A retailer id: text, cut to Meta's 100 characters."""
    text = text_of(value)
    return text[:MAX_ID] if text else None


@dataclass(slots=True)
class PageContext:
    """The page being read: where it is, what it links to, and the problems found so far."""

    page_url: str  # the public URL of the page (base for relative links)
    link: str
    paths: frozenset[str]  # the page's own paths (request and canonical), normalised
    og_images: tuple[str, ...]
    id_source: str
    problems: list[str] = field(default_factory=list)
    check_urls: bool = True  # several products declared: skip those naming another page


def absolute(url: Any, base: str) -> str | None:
    """An absolute http(s) URL from a URL value (or an ImageObject), resolved against base."""
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


def choose_id(
    source: str, values: Mapping[str, str | None], link: str, discriminator: str
) -> str | None:
    """The item id by `source` (see products_from_page); None when there is none."""
    if source == "url":
        key = link if not discriminator else f"{link}#{discriminator}"
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    order = [source, *(s for s in ("sku", "productID", "mpn", "gtin") if s != source)]
    for name in order:
        value = values.get(name)
        if value:
            return value[:MAX_ID]
    return None


def path_of(url: str) -> str:
    """A URL's path, unquoted, without a trailing slash: to compare pages."""
    return unquote(urlsplit(url).path).rstrip("/") or "/"
