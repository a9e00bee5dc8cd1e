"""Extraction specs in (from a rule's `extract`/`custom`), event fields out of request facts.

A spec names a source (query parameter, form field, JSON-LD path, ...) and how to convert
what it finds (number with `,` or `.` decimals, cents to units, case, defaults). A target
may list several specs: the first that yields a value wins. Everything is compiled once at
load; `extract` runs per matching request and never raises on odd input — a value that
does not convert is simply missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gateway.html.scan import HtmlFound, Selector, jsonld_lookup, parse_selector
from gateway.pipeline.normalize import ALIASES
from gateway.pipeline.rulefile import (
    ALL_SOURCES,
    CUSTOM_DATA_TARGETS,
    HTML_SOURCES,
    LIST_TARGETS,
    NUMBER_TARGETS,
    TARGETS,
    USER_DATA_TARGETS,
    SourceSpec,
)
from gateway.pipeline.rulemessages import error_location, specific_error
from gateway.pipeline.values import (
    dotted,
    finite,
    mapped_item,
    parse_number,
    scaled,
)

_MAX_LIST = 200  # items kept from a list source (content_ids of a huge cart)
_MAX_TEXT = 1000


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything a rule can read about one request (and its response)."""

    query: Mapping[str, Sequence[str]] = field(default_factory=dict)
    path: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, Sequence[str]] = field(default_factory=dict)
    json: Any = None
    cookies: Mapping[str, str] = field(default_factory=dict)
    headers: Callable[[str], list[str]] = lambda _name: []
    response_headers: Callable[[str], list[str]] = lambda _name: []
    html: HtmlFound | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    fields: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pick:
    """One compiled source spec."""

    spec: SourceSpec
    key: str
    selector: Selector | None
    pattern: re.Pattern[str] | None
    as_list: bool
    number: str | None  # "number" | "integer" | None

    def raw(self, facts: Facts) -> list[Any]:
        """The values the source holds for this request, before conversion."""
        source, key = self.spec.source, self.key
        if source == "const":
            value = self.spec.value
            return list(value) if isinstance(value, list) else [value]
        if source == "query":
            return list(facts.query.get(key, ()))
        if source == "path":
            return [facts.path[key]] if key in facts.path else []
        if source == "form":
            return list(facts.form.get(key, ()))
        if source == "json":
            return dotted(facts.json, key)
        if source == "cookie":
            return [facts.cookies[key]] if key in facts.cookies else []
        if source == "header":
            return facts.headers(key)
        if source == "response_header":
            return facts.response_headers(key)
        if source == "data":
            return [facts.data[key]] if key in facts.data else []
        if source == "field":
            return list(facts.fields.get(key, ()))
        html = facts.html
        if html is None:
            return []
        if source == "meta":
            return list(html.meta.get(key.lower(), ()))
        if source == "jsonld":
            return jsonld_lookup(html.jsonld_index(), key)
        assert self.selector is not None and self.spec.attr is not None
        attr = self.spec.attr.lower()
        return [a[attr] for a in html.elements.get(self.selector, ()) if attr in a]

    def value(self, facts: Facts) -> Any:
        """The converted value, or None when the source has nothing usable."""
        found = self.raw(facts)
        spec = self.spec
        if self.as_list:
            items: list[Any] = []
            for item in found:
                if isinstance(item, str) and spec.split is not None:
                    items += [part for part in item.split(spec.split) if part.strip()]
                elif isinstance(item, list):
                    items += item
                else:
                    items.append(item)
            out = [c for c in (self._one(i) for i in items[:_MAX_LIST]) if c is not None]
            if out:
                return out
        else:
            for item in found:
                converted = self._one(item)
                if converted is not None:
                    return converted
        return spec.default

    def _one(self, item: Any) -> Any:
        spec = self.spec
        if spec.map is not None:
            return mapped_item(item, spec.map) if isinstance(item, Mapping) else None
        if item is None or isinstance(item, Mapping | list):
            return None
        if isinstance(item, bool):
            item = str(item).lower()
        if self.number is not None and isinstance(item, int | float):
            number = finite(item)
            return None if number is None else scaled(number, spec.divide, self.number)
        text = str(item).strip()[:_MAX_TEXT]
        if self.pattern is not None:
            match = self.pattern.search(text)
            if match is None:
                return None
            text = (match.groupdict().get("value") or match.group(match.lastindex or 0)).strip()
        if not text:
            return None
        if spec.type == "boolean":
            return text.lower() in ("1", "true", "yes", "on")
        if self.number is not None:
            number = parse_number(text, spec.decimal)
            return None if number is None else scaled(number, spec.divide, self.number)
        if spec.lower:
            text = text.lower()
        if spec.upper:
            text = text.upper()
        return text


@dataclass(frozen=True, slots=True)
class Extractor:
    """A target field and the picks that may fill it, in order."""

    target: str
    section: str  # "custom_data" | "user_data" | "custom"
    picks: tuple[Pick, ...]

    def value(self, facts: Facts) -> Any:
        """The first pick's value that is not None."""
        for pick in self.picks:
            found = pick.value(facts)
            if found is not None and found != []:
                return found
        return None


def compile_extract(
    extract: Mapping[str, Any], custom: Mapping[str, Any], sources: Sequence[str]
) -> list[Extractor]:
    """Compile a rule's `extract` and `custom` tables; ValueError("field: message") if wrong."""
    out: list[Extractor] = []
    for target, raw in extract.items():
        where = f"extract.{target}"
        if target == "custom":
            raise ValueError(f"{where}: put custom properties in the rule's [rule.custom] table")
        if target not in TARGETS:
            raise ValueError(
                f"{where}: unknown target {target!r} (custom_data: "
                f"{', '.join(CUSTOM_DATA_TARGETS)}; user_data: {', '.join(USER_DATA_TARGETS)}; "
                "anything else goes in [rule.custom])"
            )
        section = "user_data" if target in USER_DATA_TARGETS else "custom_data"
        out.append(Extractor(target, section, _picks(raw, target, where, sources)))
    for name, raw in custom.items():
        if name in CUSTOM_DATA_TARGETS:
            raise ValueError(f"custom.{name}: {name} is a standard field: set it in extract")
        out.append(Extractor(name, "custom", _picks(raw, name, f"custom.{name}", sources)))
    seen: dict[str, str] = {}
    for ex in out:
        if ex.section == "user_data":
            canonical = ALIASES.get(ex.target, ex.target)
            if canonical in seen:
                raise ValueError(
                    f"extract.{ex.target}: the same field as extract.{seen[canonical]}"
                )
            seen[canonical] = ex.target
    return out


def _picks(raw: Any, target: str, where: str, sources: Sequence[str]) -> tuple[Pick, ...]:
    if isinstance(raw, dict):
        return (_pick(raw, target, where, sources),)
    if isinstance(raw, list) and raw and all(isinstance(r, dict) for r in raw):
        return tuple(_pick(r, target, f"{where}.{i}", sources) for i, r in enumerate(raw))
    if isinstance(raw, str | int | float | bool) or (
        isinstance(raw, list) and all(isinstance(r, str | int | float) for r in raw)
    ):
        return (_pick({"source": "const", "value": raw}, target, where, sources),)
    raise ValueError(
        f"{where}: expected a constant, a source table such as "
        '{ source = "query", key = "q" }, or a list of source tables (first match wins)'
    )


def _pick(raw: dict[str, Any], target: str, where: str, sources: Sequence[str]) -> Pick:
    source = raw.get("source")
    if isinstance(source, str) and source not in sources:
        # Checked before the model so the message lists the sources of this kind of rule.
        if source in ALL_SOURCES:
            raise ValueError(
                f"{where}: source {source!r} is not available here "
                f"(expected one of: {', '.join(sources)})"
            )
        raise ValueError(
            f"{where}: unknown source {source!r} (expected one of: {', '.join(sources)})"
        )
    try:
        spec = SourceSpec.model_validate(raw)
    except ValidationError as exc:
        err = specific_error(exc)
        loc = error_location(err)
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and err["loc"][0] == "map":
            message = "unknown key (expected key, type, divide, decimal)"
        elif err["type"] == "extra_forbidden":
            message = (
                "unknown key (expected source, key, value, attr, type, decimal, divide, "
                "lower, upper, pattern, split, default, map)"
            )
        elif err["type"] == "missing":
            message = 'required key is missing (e.g. source = "query")'
        raise ValueError(f"{where}{'.' + loc if loc else ''}: {message}") from None
    if spec.source not in sources:
        raise ValueError(
            f"{where}: source {spec.source!r} is not available here "
            f"(expected one of: {', '.join(sources)})"
        )
    if spec.source == "const":
        if spec.value is None:
            raise ValueError(f"{where}: a const source needs value = ...")
    elif not spec.key:
        raise ValueError(f"{where}: source {spec.source!r} needs key = ...")
    selector = None
    if spec.source == "selector":
        if not spec.attr:
            raise ValueError(f'{where}: a selector source needs attr = (e.g. "data-sku")')
        try:
            selector = parse_selector(spec.key or "")
        except ValueError as exc:
            raise ValueError(f"{where}.key: {exc}") from None
    # jsonld_lookup strips each part and raises on an empty one: refuse it here, not per page.
    if spec.source == "jsonld" and not all(p.strip() for p in (spec.key or "").split(".")):
        raise ValueError(f"{where}.key: use a path such as Product.offers.price")
    if spec.lower and spec.upper:
        raise ValueError(f"{where}: choose lower or upper, not both")
    as_list = spec.type == "list" or (spec.type is None and target in LIST_TARGETS)
    if target == "contents" and spec.map is None and spec.source != "const":
        raise ValueError(
            f'{where}: contents are objects: add map = {{ id = "sku", quantity = "qty" }}'
        )
    number: str | None = None
    if spec.type in ("number", "integer"):
        number = spec.type
    elif spec.type is None and target in NUMBER_TARGETS:
        number = "number"
    elif spec.type is None and target == "num_items":
        number = "integer"
    if spec.divide is not None and number is None:
        raise ValueError(f'{where}.divide: only numbers can be divided: add type = "number"')
    pattern = re.compile(spec.pattern) if spec.pattern else None
    key = (spec.key or "").removeprefix("data-") if spec.source == "data" else spec.key or ""
    return Pick(spec, key, selector, pattern, as_list, number)


def extract(extractors: Sequence[Extractor], facts: Facts) -> dict[str, dict[str, Any]]:
    """{"custom_data": {...}, "user_data": {...}} for one request; missing values left out."""
    out: dict[str, dict[str, Any]] = {"custom_data": {}, "user_data": {}}
    for ex in extractors:
        value = ex.value(facts)
        if value is None:
            continue
        section = "user_data" if ex.section == "user_data" else "custom_data"
        out[section][ex.target] = value
    return out


def extract_required(
    extractors: Sequence[Extractor], facts: Facts, require: Sequence[str]
) -> dict[str, dict[str, Any]] | None:
    """`extract`, or None when one of the `require`d targets has no value."""
    found = extract(extractors, facts)
    values = {**found["custom_data"], **found["user_data"]}
    if any(values.get(name) in (None, "", []) for name in require):
        return None
    return found


def html_needs(extractors: Sequence[Extractor]) -> list[Pick]:
    """The picks that read the response's HTML."""
    return [p for ex in extractors for p in ex.picks if p.spec.source in HTML_SOURCES]
