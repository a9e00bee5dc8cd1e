"""Server events in (Meta's shape, readable aliases allowed), outbox rows out.

Validation is all-or-nothing per request: every problem of every event is reported
as `{"index", "field", "message"}` and nothing is stored unless there are none. What is
checked is what Meta would reject, so an accepted event is one Meta will take.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.models import META_WINDOW, STANDARD_EVENTS, NewEvent
from gateway.pipeline.currencies import CURRENCIES
from gateway.pipeline.normalize import (
    CLEAR_FIELDS,
    NormalizationError,
    normalize_user_data,
    weak_identifiers_problem,
)

MAX_EVENTS = 1000
ACTION_SOURCES = frozenset(
    "email website app phone_call chat physical_store system_generated business_messaging "
    "other".split()
)
_CUSTOM_NAME = re.compile(r"^[A-Za-z0-9_ -]{1,50}$")
_DELIVERY = frozenset({"in_store", "curbside", "home_delivery"})
_NUMBER_FIELDS = ("value", "predicted_ltv", "net_revenue")
_TEXT_FIELDS = ("content_name", "content_category", "order_id", "search_string", "status")
_PASSTHROUGH = ("original_event_data", "attribution_data", "app_data", "messaging_channel")
_MAX_CUSTOM_DATA_BYTES = 16 * 1024


class ServerEvent(BaseModel):
    """One event of a `/events` request, as a backend sends it."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    event_name: str = Field(min_length=1, max_length=50)
    event_time: int | None = None
    event_id: str | None = Field(default=None, min_length=1, max_length=256)
    action_source: str = "website"
    event_source_url: str | None = Field(default=None, max_length=4096)
    referrer_url: str | None = Field(default=None, max_length=4096)
    user_data: dict[str, Any] = Field(default_factory=dict)
    custom_data: dict[str, Any] | None = None
    opt_out: bool | None = None
    data_processing_options: list[str] | None = None
    data_processing_options_country: int | None = None
    data_processing_options_state: int | None = None
    pixel_id: str | None = None
    original_event_data: dict[str, Any] | None = None
    attribution_data: dict[str, Any] | None = None
    app_data: dict[str, Any] | None = None
    messaging_channel: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason an event is refused."""

    index: int
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON form used in 400 answers."""
        return {"index": self.index, "field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class Target:
    """A pixel events may go to, with its default test_event_code."""

    pixel_id: str
    test_event_code: str | None


@dataclass(frozen=True, slots=True)
class Context:
    """What building events needs from the configuration."""

    targets: Sequence[Target]
    default_country: str | None = None
    max_future_skew: float = 300.0
    source: str = "api"
    # The `[[sites]]` site the events are for (None: no sites configured).
    site: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """Rows to store, and the event_id of each input event in order."""

    rows: list[NewEvent]
    event_ids: list[str]


def prepare(
    raw_events: Sequence[Any],
    ctx: Context,
    *,
    test_event_code: str | None = None,
    now: float | None = None,
) -> Prepared | list[Problem]:
    """Validate and build every event, or return every problem found."""
    now = time.time() if now is None else now
    problems: list[Problem] = []
    rows: list[NewEvent] = []
    event_ids: list[str] = []
    for index, raw in enumerate(raw_events):
        found, built = _one(index, raw, ctx, now)
        problems += found
        if built is not None and not found:
            payload, clear, pixels = built
            event_ids.append(payload["event_id"])
            for target in pixels:
                rows.append(
                    NewEvent(
                        pixel_id=target.pixel_id,
                        event_name=payload["event_name"],
                        event_id=payload["event_id"],
                        event_time=payload["event_time"],
                        payload=payload,
                        clear=clear,
                        source=ctx.source,
                        test_event_code=test_event_code or target.test_event_code,
                        site=ctx.site,
                    )
                )
    return problems or Prepared(rows=rows, event_ids=event_ids)


def _one(
    index: int, raw: Any, ctx: Context, now: float
) -> tuple[list[Problem], tuple[dict[str, Any], dict[str, Any], list[Target]] | None]:
    if not isinstance(raw, Mapping):
        return [Problem(index, "", "each event must be a JSON object")], None
    try:
        ev = ServerEvent.model_validate(raw)
    except ValidationError as exc:
        return [_from_pydantic(index, err) for err in exc.errors()], None
    problems: list[Problem] = []

    def bad(field: str, message: str) -> None:
        problems.append(Problem(index, field, message))

    if ev.event_name not in STANDARD_EVENTS and not _CUSTOM_NAME.match(ev.event_name):
        bad(
            "event_name",
            f"{ev.event_name!r} is neither a standard event nor a custom name of letters, "
            "digits, '_', '-' and spaces (at most 50)",
        )
    event_time = _event_time(ev.event_time, now, ctx.max_future_skew, bad)
    if ev.action_source not in ACTION_SOURCES:
        bad(
            "action_source",
            f"{ev.action_source!r} is not one of {', '.join(sorted(ACTION_SOURCES))}",
        )
    for name in ("event_source_url", "referrer_url"):
        url = getattr(ev, name)
        if url is not None and not is_http_url(url):
            bad(name, f"{url!r} is not an absolute http(s) URL")
    if ev.action_source == "website" and not ev.event_source_url:
        bad("event_source_url", "website events need event_source_url (the page's URL)")
    targets = _targets(ev.pixel_id, ctx, bad)
    _dpo(ev, bad)

    user_data: dict[str, Any] = {}
    try:
        user_data = normalize_user_data(ev.user_data, default_country=ctx.default_country)
    except NormalizationError as exc:
        bad(f"user_data.{exc.field}", exc.message)
    else:
        if ev.action_source == "website" and not user_data.get("client_user_agent"):
            bad(
                "user_data.client_user_agent",
                "website events need the visitor's user agent (client_user_agent or user_agent)",
            )
        weak = weak_identifiers_problem(user_data)
        if weak:
            bad("user_data", weak)
    custom = _custom_data(ev.event_name, ev.custom_data, bad)
    if problems:
        return problems, None

    hashed = {k: v for k, v in user_data.items() if k not in CLEAR_FIELDS}
    clear = {k: v for k, v in user_data.items() if k in CLEAR_FIELDS}
    payload: dict[str, Any] = {
        "event_name": ev.event_name,
        "event_time": event_time,
        "event_id": ev.event_id or str(uuid.uuid4()),
        "action_source": ev.action_source,
        "user_data": hashed,
    }
    for name in ("event_source_url", "referrer_url", "opt_out"):
        if getattr(ev, name) is not None:
            payload[name] = getattr(ev, name)
    if custom:
        payload["custom_data"] = custom
    if ev.data_processing_options is not None:
        payload["data_processing_options"] = ev.data_processing_options
        for name in ("data_processing_options_country", "data_processing_options_state"):
            if getattr(ev, name) is not None:
                payload[name] = getattr(ev, name)
    for name in _PASSTHROUGH:
        if getattr(ev, name) is not None:
            payload[name] = getattr(ev, name)
    return [], (payload, clear, targets)


def _from_pydantic(index: int, err: Any) -> Problem:
    field = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return Problem(index, field, f"unknown field {field!r}; see Meta's server event fields")
    return Problem(index, field, str(err["msg"]))


def _event_time(value: int | None, now: float, skew: float, bad: Any) -> int:
    if value is None:
        return int(now)
    if value > 100_000_000_000:
        bad("event_time", f"{value} looks like milliseconds: send Unix seconds")
    elif value < now - META_WINDOW:
        bad("event_time", f"{value} is older than 7 days: Meta rejects such events")
    elif value > now + skew:
        bad("event_time", f"{value} is {int(value - now)} s in the future: check the clock")
    return value


def is_http_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host whose port (if any) parses."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _targets(pixel_id: str | None, ctx: Context, bad: Any) -> list[Target]:
    if pixel_id is None:
        return list(ctx.targets)
    for target in ctx.targets:
        if target.pixel_id == str(pixel_id):
            return [target]
    known = ", ".join(t.pixel_id for t in ctx.targets) or "none"
    bad("pixel_id", f"pixel {pixel_id} is not configured (configured: {known})")
    return []


def _dpo(ev: ServerEvent, bad: Any) -> None:
    options = ev.data_processing_options
    if options is not None and any(o != "LDU" for o in options):
        bad("data_processing_options", 'use [] or ["LDU"] (Limited Data Use)')
    country, state = ev.data_processing_options_country, ev.data_processing_options_state
    if country is not None and country not in (0, 1):
        bad("data_processing_options_country", "use 1 (United States) or 0 (geolocate)")
    if state is not None and state not in (0, 1000):
        bad("data_processing_options_state", "use 1000 (California) or 0 (geolocate)")
    if country is not None and state is None:
        bad("data_processing_options_state", "must be set when the country is set")
    if (country is not None or state is not None) and options is None:
        bad("data_processing_options", 'must be set (e.g. ["LDU"]) with country or state')


def _custom_data(name: str, data: dict[str, Any] | None, bad: Any) -> dict[str, Any]:
    out = dict(data or {})
    if len(repr(out)) > _MAX_CUSTOM_DATA_BYTES:
        bad("custom_data", f"is larger than {_MAX_CUSTOM_DATA_BYTES // 1024} KiB")
        return out
    for key in _NUMBER_FIELDS:
        if key in out:
            number = _number(out[key])
            if number is None:
                bad(f"custom_data.{key}", f"{out[key]!r} is not a number")
            else:
                out[key] = number
    if "currency" in out:
        code = out["currency"]
        if not isinstance(code, str) or code.strip().upper() not in CURRENCIES:
            bad("custom_data.currency", f"{code!r} is not an ISO 4217 code such as USD")
        else:
            out["currency"] = code.strip().upper()
    if name == "Purchase":
        for key in ("value", "currency"):
            if key not in out:
                bad(f"custom_data.{key}", f"Purchase events need custom_data.{key}")
    if "content_ids" in out:
        ids = out["content_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str | int) for i in ids):
            bad("custom_data.content_ids", "must be a list of strings")
        else:
            out["content_ids"] = [str(i) for i in ids]
    if "contents" in out:
        out["contents"] = _contents(out["contents"], bad)
    if "content_type" in out and out["content_type"] not in ("product", "product_group"):
        bad("custom_data.content_type", "use product or product_group")
    if "num_items" in out:
        count = _number(out["num_items"])
        if count is None or count != int(count) or count < 0:
            bad("custom_data.num_items", f"{out['num_items']!r} is not a whole number")
        else:
            out["num_items"] = int(count)
    if "delivery_category" in out and not _delivery_ok(out["delivery_category"]):
        bad("custom_data.delivery_category", f"use one of {', '.join(sorted(_DELIVERY))}")
    for key in _TEXT_FIELDS:
        if key in out and isinstance(out[key], int | float) and not isinstance(out[key], bool):
            out[key] = str(out[key])
        elif key in out and not isinstance(out[key], str):
            bad(f"custom_data.{key}", "must be a string")
    return out


def _delivery_ok(value: Any) -> bool:
    # A list or object is unhashable: test the type before the set.
    return isinstance(value, str) and value in _DELIVERY


def _contents(items: Any, bad: Any) -> Any:
    if not isinstance(items, list):
        bad("custom_data.contents", "must be a list of objects with id and quantity")
        return items
    out = []
    for i, item in enumerate(items):
        field = f"custom_data.contents.{i}"
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str | int):
            bad(field, "each item needs an id")
            continue
        entry = dict(item)
        entry["id"] = str(item["id"])
        for key in ("quantity", "item_price"):
            if key in entry:
                number = _number(entry[key])
                if number is None:
                    bad(f"{field}.{key}", f"{entry[key]!r} is not a number")
                else:
                    entry[key] = int(number) if key == "quantity" else number
        if "delivery_category" in entry and not _delivery_ok(entry["delivery_category"]):
            bad(f"{field}.delivery_category", f"use one of {', '.join(sorted(_DELIVERY))}")
        out.append(entry)
    return out


def _number(value: Any) -> float | int | None:
    """A finite number from a JSON number or a plain decimal string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
        number = float(value)
        return int(number) if number.is_integer() and "." not in value else number
    return None
