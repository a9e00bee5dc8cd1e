"""Text and JSON found in a request or a page, as event values: numbers with either decimal
mark, cents to units, dotted paths into JSON, cart items by a field mapping.

Every function here takes client-controlled input and never raises on it: a value that
does not convert is None (or missing), never an error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from gateway.pipeline.rulefile import ItemField

_NUMBER_CHARS = re.compile(r"[^0-9,.\-]")


def parse_number(text: str, decimal: str = "auto") -> float | None:
    """A number from text like "1.234,56", "1,234.56", "12,50 €" or "-3"; None if not one."""
    cleaned = _NUMBER_CHARS.sub("", text.replace("\u2212", "-"))  # U+2212 is a minus sign too
    if not cleaned or cleaned in "-.,":
        return None
    if decimal == "auto":
        decimal = guess_decimal(cleaned)
    thousands = "," if decimal == "." else "."
    cleaned = cleaned.replace(thousands, "").replace(decimal, ".")
    if cleaned.count("-") > 1 or ("-" in cleaned and not cleaned.startswith("-")):
        return None
    try:
        number = float(cleaned)
    except ValueError:
        return None
    # "9" * 400 is inf: not an amount Meta (or JSON) takes.
    return number if math.isfinite(number) else None


def guess_decimal(cleaned: str) -> str:
    """The decimal mark of a cleaned number: "." or ","."""
    last_dot, last_comma = cleaned.rfind("."), cleaned.rfind(",")
    if last_dot >= 0 and last_comma >= 0:
        return "." if last_dot > last_comma else ","
    if last_comma >= 0:
        head, tail = cleaned.lstrip("-").split(",", 1)
        # "1,234" and "1,234,567" group thousands; "12,5", "12,50", "1234,5" and "0,500"
        # are decimals (no thousands group starts with 0).
        if cleaned.count(",") > 1 or (
            len(tail) == 3 and 1 <= len(head) <= 3 and not head.startswith("0")
        ):
            return "."
        return ","
    # "1.234.567" groups thousands; a single dot is a decimal point.
    return "," if cleaned.count(".") > 1 else "."


def finite(value: float) -> float | None:
    """A JSON number as a float; None for NaN, infinities and ints beyond a float's range."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def scaled(number: float, divide: float | None, kind: str) -> float | int:
    """`number` divided (cents to units) and rounded for its kind: integer or money."""
    if divide:
        number = number / divide
    if kind == "integer":
        return round(number)
    # Money: round away float noise from divisions (1999 / 100 = 19.990000000000002).
    return round(number, 6)


def mapped_item(
    item: Mapping[str, Any], mapping: Mapping[str, str | ItemField]
) -> dict[str, Any] | None:
    """One cart item's fields by `mapping`, converted; None without an `id`."""
    out: dict[str, Any] = {}
    for name, how in mapping.items():
        item_field = how if isinstance(how, ItemField) else ItemField(key=how)
        found = dotted(item, item_field.key)
        if not found or isinstance(found[0], Mapping | list):
            continue
        value = found[0]
        if item_field.type != "string":
            number = (
                finite(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else parse_number(str(value), item_field.decimal)
            )
            if number is None:
                continue
            out[name] = scaled(number, item_field.divide, item_field.type)
        else:
            out[name] = str(value)
    return out if "id" in out else None


def dotted(data: Any, path: str) -> list[Any]:
    """Values at a dotted path ("customer.email", "items.0.sku"); lists met are flattened."""
    current: list[Any] = [data]
    for part in path.split("."):
        nxt: list[Any] = []
        for node in current:
            if isinstance(node, Mapping):
                if part in node:
                    nxt.append(node[part])
            elif isinstance(node, list):
                if part.isdigit():
                    index = int(part)
                    if index < len(node):
                        nxt.append(node[index])
                else:
                    nxt += [n[part] for n in node if isinstance(n, Mapping) and part in n]
        current = nxt
        if not current:
            return []
    flat: list[Any] = []
    for node in current:
        if isinstance(node, list):
            flat += node
        else:
            flat.append(node)
    return flat


def parse_json_text(text: str) -> Any:
    """JSON or None; never raises (bodies are client-controlled)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None
