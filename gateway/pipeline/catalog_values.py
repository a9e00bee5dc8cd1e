"""schema.org values to Meta catalog values: availability, condition, prices ("49.90 EUR").

Pure. Amounts are Decimals (never floats), rounded half-up to the currency's ISO 4217 minor
units.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from gateway.pipeline.currencies import CURRENCIES

__all__ = ["availability", "condition", "format_price", "minor_units", "parse_amount"]

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
