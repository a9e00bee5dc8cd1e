"""The proxy's own PageView in (URL, visitor facts, consent), outbox rows out, without pydantic.

`events.prepare` validates what a backend sends, field by field, through a pydantic model:
~50 µs an event. The PageView the proxy builds for every tagged page has one known shape,
so `build` checks only what can vary (the URLs, the user agent, the IP and cookies) and
assembles the rows directly. Whenever a value is not in the plain form the fast path
knows to be valid, it hands the event to `prepare` instead, so the result is always
exactly `prepare`'s (tests/pipeline/test_pageview.py compares the two on generated input).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from gateway.models import NewEvent
from gateway.pipeline.events import Context, Prepared, Problem, is_http_url, prepare
from gateway.pipeline.normalize import NormalizationError, normalize_user_data

# ServerEvent's max_length for these fields.
_MAX_URL = 4096
_MAX_EVENT_ID = 256


def build(
    *,
    event_id: str,
    url: str,
    referrer: str | None,
    user_agent: str,
    client_ip: str | None,
    fbp: str | None,
    fbc: str | None,
    consent_fields: Mapping[str, Any],
    ctx: Context,
    hold: float | None = None,
    now: float | None = None,
    new_visitor: bool = False,
) -> Prepared | list[Problem]:
    """The rows of a PageView for `url`, exactly as `prepare` builds them, with `hold` set
    (and `new_visitor`: the `_fbp` was minted for this page)."""
    now = time.time() if now is None else now
    if not (
        0 < len(event_id) <= _MAX_EVENT_ID
        and _plain_url(url)
        and (referrer is None or _plain_url(referrer))
        and _plain_text(user_agent)
        and (client_ip is None or _normal_ip(client_ip) == client_ip)
        and (fbp is None or _plain_text(fbp))
        and (fbc is None or _plain_text(fbc))
        and (client_ip or fbp or fbc)  # else only the user agent: a weak-identifiers refusal
        and _plain_consent(consent_fields)
    ):
        event = event_dict(event_id, url, referrer, user_agent, client_ip, fbp, fbc, consent_fields)
        return _slow(event, ctx, hold, now, new_visitor)
    clear: dict[str, Any] = {"client_user_agent": user_agent}
    if client_ip:
        clear["client_ip_address"] = client_ip
    if fbp:
        clear["fbp"] = fbp
    if fbc:
        clear["fbc"] = fbc
    event_time = int(now)
    # The key order of `prepare`'s payload, so the stored JSON is byte for byte the same.
    payload: dict[str, Any] = {
        "event_name": "PageView",
        "event_time": event_time,
        "event_id": event_id,
        "action_source": "website",
        "user_data": {},
        "event_source_url": url,
    }
    if referrer is not None:
        payload["referrer_url"] = referrer
    payload.update(consent_fields)
    rows = [
        NewEvent(
            pixel_id=target.pixel_id,
            event_name="PageView",
            event_id=event_id,
            event_time=event_time,
            payload=payload,
            clear=clear,
            source=ctx.source,
            test_event_code=target.test_event_code,
            hold=hold,
            site=ctx.site,
            new_visitor=new_visitor,
        )
        for target in ctx.targets
    ]
    return Prepared(rows=rows, event_ids=[event_id])


def _slow(
    event: dict[str, Any], ctx: Context, hold: float | None, now: float, new_visitor: bool
) -> Prepared | list[Problem]:
    result = prepare([event], ctx, now=now)
    if isinstance(result, list) or (hold is None and not new_visitor):
        return result
    rows = [_with_hold(row, hold, new_visitor) for row in result.rows]
    return Prepared(rows=rows, event_ids=result.event_ids)


def event_dict(
    event_id: str,
    url: str,
    referrer: str | None,
    user_agent: str,
    client_ip: str | None,
    fbp: str | None,
    fbc: str | None,
    consent_fields: Mapping[str, Any],
) -> dict[str, Any]:
    """The PageView as a server event for `prepare` (the reference `build` must match)."""
    user_data: dict[str, Any] = {"client_user_agent": user_agent}
    for key, value in (("client_ip_address", client_ip), ("fbp", fbp), ("fbc", fbc)):
        if value:
            user_data[key] = value
    event: dict[str, Any] = {
        "event_name": "PageView",
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": url,
        "user_data": user_data,
    }
    if referrer is not None:
        event["referrer_url"] = referrer
    event.update(consent_fields)
    return event


def _with_hold(row: NewEvent, hold: float | None, new_visitor: bool) -> NewEvent:
    return NewEvent(
        pixel_id=row.pixel_id,
        event_name=row.event_name,
        event_id=row.event_id,
        event_time=row.event_time,
        payload=row.payload,
        clear=row.clear,
        source=row.source,
        test_event_code=row.test_event_code,
        rule=row.rule,
        hold=hold,
        site=row.site,
        links=row.links,
        new_visitor=new_visitor,
    )


def _plain_url(url: str) -> bool:
    # ASCII only: a lone surrogate (a header's undecodable byte) fails pydantic's str check.
    return len(url) <= _MAX_URL and url.isascii() and is_http_url(url)


def _plain_text(value: str) -> bool:
    # `normalize_user_data` strips clear fields and drops empty ones.
    return bool(value) and isinstance(value, str) and value == value.strip()


@lru_cache(maxsize=4096)
def _normal_ip(ip: str) -> str | None:
    """The IP as `normalize_user_data` stores it (None: it refuses it); remembered per IP."""
    try:
        return normalize_user_data({"client_ip_address": ip}).get("client_ip_address")
    except NormalizationError:
        return None


_LDU = {
    "data_processing_options": ["LDU"],
    "data_processing_options_country": 0,
    "data_processing_options_state": 0,
}


def _plain_consent(fields: Mapping[str, Any]) -> bool:
    """The consent fields `Consent.event_fields` gives (opt_out, LDU), in its order."""
    keys = list(fields)
    if keys and keys[0] == "opt_out":
        if fields["opt_out"] is not True:
            return False
        keys = keys[1:]
    if not keys:
        return True
    return keys == list(_LDU) and all(
        type(fields[k]) is type(v) and fields[k] == v for k, v in _LDU.items()
    )
