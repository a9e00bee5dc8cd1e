"""Click and submit rules in, the `data-triggers` JSON px.js reads out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.pipeline.rules import Rule


def triggers_json(rules: Sequence[Rule]) -> str:
    """The compact JSON of a page's click/submit rules, for the injected tag."""
    return json.dumps([browser_trigger(rule) for rule in rules], separators=(",", ":"))


def browser_trigger(rule: Rule) -> dict[str, Any]:
    """What px.js needs to fire a click/submit rule: never how customer data is mapped.

    The browser collects raw `data-*` values and form fields and sends them with the
    beacon; the server converts them with the rule's full specs. For the browser pixel's
    own call, px.js gets simple recipes for the custom_data fields only, so customer data
    never reaches the pixel in clear.
    """
    data: dict[str, None] = {}
    fields: dict[str, None] = {}
    recipes: dict[str, list[list[Any]]] = {}
    for ex in rule.extractors:
        for pick in ex.picks:
            if pick.spec.source == "data":
                data[pick.key] = None
            elif pick.spec.source == "field":
                fields[pick.key] = None
        if ex.section == "user_data":
            continue
        recipes[ex.target] = [
            [
                p.spec.source,
                p.key if p.spec.source != "const" else p.spec.value,
                p.number or ("list" if p.as_list else ""),
                p.spec.divide or 1,
                p.spec.decimal,
            ]
            for p in ex.picks
            if p.spec.source in ("const", "data", "field", "query")
        ]
    return {
        "r": rule.name,
        "e": rule.event_name,
        "t": rule.trigger,
        "s": rule.selector,
        "d": list(data),
        "f": list(fields),
        "c": recipes,
    }
