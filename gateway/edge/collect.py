"""`POST {prefix}/collect`: browser beacons from px.js in, outbox rows out.

Only a page the gateway served can send: the beacon carries that page's signed token,
bound to the visitor's IP and user agent, and must come from the site's own origin. What
identifies the visitor (IP, user agent, _fbp, _fbc) is taken from the request, never from
the beacon, so a script cannot speak for someone else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from gateway.edge import pagetoken
from gateway.edge.appkeys import INTAKE, METRICS
from gateway.edge.bodies import read_whole
from gateway.edge.intake import Refused
from gateway.edge.sites import pages_for, runtime_for
from gateway.edge.visitor import visitor
from gateway.errors import json_error
from gateway.pipeline.events import prepare
from gateway.pipeline.extract import Facts
from gateway.pipeline.rules import RuleSet
from gateway.pipeline.urls import scrub_url

log = logging.getLogger("gateway.collect")

_MAX_NAMES = 50  # data-* values and form fields a click/submit beacon may carry
_MAX_VALUE = 1000

# user_data a page may add (a form field the visitor typed, hashed server-side); the
# fields that identify the browser always come from the request itself.
_BEACON_USER_FIELDS = frozenset(
    {"em", "ph", "fn", "ln", "ct", "st", "zp", "country", "external_id", "ge", "db"}
    | {"email", "phone", "first_name", "last_name", "city", "state", "zip", "gender"}
)


def same_origin(request: web.Request, origin: str) -> bool:
    """True when the browser says the beacon comes from the site's own pages."""
    sent = request.headers.get("Origin")
    if sent is not None:
        return sent == origin
    return request.headers.get("Sec-Fetch-Site") == "same-origin"


async def post_collect(request: web.Request) -> web.StreamResponse:
    """Validate a beacon and store its events; 204 once they are durable."""
    runtime = runtime_for(request)
    settings = runtime.settings
    pages = pages_for(request)
    who = visitor(request)
    if pages is None:
        # With `[[sites]]`, a host no site claims served no page: there is no token to check.
        return json_error(421, "misdirected request", f"no site answers for host {who.host!r}")
    origin = who.origin
    if not same_origin(request, origin):
        return json_error(403, "forbidden", "beacons are accepted from the site's own pages only")
    limit = settings.collect_max_bytes
    if request.content_length is not None and request.content_length > limit:
        return json_error(413, "beacon too large", f"at most {limit} bytes")
    raw = await read_whole(request.content, limit)
    if raw is None:
        return json_error(413, "beacon too large", f"at most {limit} bytes")
    try:
        beacon = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        # Not JSON, not UTF-8, NaN/Infinity (not JSON either) or nested too deep to parse.
        return json_error(400, "invalid beacon", "the body is not JSON")
    if not isinstance(beacon, dict) or not isinstance(beacon.get("events"), list):
        return json_error(400, "invalid beacon", 'send {"token": ..., "events": [...]}')
    ip = who.client_ip
    now = int(time.time())
    claims = pagetoken.verify(
        pages.secret,
        str(beacon.get("token", "")),
        client=who.page_client(),
        now=now,
        ttl=int(settings.page_token_ttl),
    )
    if claims is None:
        return json_error(403, "forbidden", "the page token is missing, forged or expired")
    wait = pages.rate_limits.wait(ip or "")
    if wait > 0:
        return json_error(
            429, "too many beacons", "slow down", headers={"Retry-After": str(int(wait) + 1)}
        )
    events = beacon["events"]
    if not 1 <= len(events) <= settings.collect_max_events:
        return json_error(
            400, "invalid beacon", f"send 1 to {settings.collect_max_events} events per beacon"
        )
    consent = who.consent
    metrics = request.app[METRICS]
    if not consent.track or who.bot:
        reason = "bot" if consent.track else "consent"
        metrics.dropped(reason, source="collect", count=len(events), site=who.site)
        return web.Response(status=204)
    page_url = _page_url(beacon.get("url"), origin, request.headers.get("Referer"))
    context = {
        "user_data": who.user_data(),
        "url": scrub_url(page_url, pages.sensitive) if page_url else None,
        "referrer": _referrer(beacon.get("referrer"), pages.sensitive),
        "consent": consent,
        "issued": claims.issued,
        "now": now,
    }
    built: list[dict[str, Any]] = []
    rules = runtime.rules
    fired: dict[str, str] = {}  # event_id -> the click/submit rule that made it
    for index, event in enumerate(events):
        problem = _check(event, claims.event_id)
        if problem is None and "rule" in event:
            problem, event = _rule_event(event, rules, page_url)
            if event is not None and problem is None:
                fired[event["event_id"]] = event.pop("rule")
        if problem:
            metrics.rejected("collect", events, site=who.site)
            return json_error(400, "invalid beacon", [{"index": index, **problem}])
        if event is not None:
            built.append(_server_event(event, context))
    if not built:
        return web.Response(status=204)
    result = prepare(built, pages.collect_context, now=now)
    if isinstance(result, list):
        metrics.rejected("collect", built, site=who.site)
        return json_error(400, "invalid beacon", [p.as_dict() for p in result])
    if fired:
        result.rows[:] = [
            dataclasses.replace(
                row, rule=fired[row.event_id], hold=_hold(rules, fired[row.event_id])
            )
            if row.event_id in fired
            else row
            for row in result.rows
        ]
    # The page's PageView is already stored by the proxy: the beacon's copy merges into it
    # (completing what the proxy could not see) and makes it due at once.
    stored = await request.app[INTAKE].store(result.rows)
    if isinstance(stored, Refused):
        return stored.response()
    return web.Response(status=204)


def _hold(rules: RuleSet, name: str) -> float | None:
    rule = rules.by_name(name)
    return rule.hold if rule is not None else None


def _rule_event(
    event: Mapping[str, Any], rules: RuleSet, page_url: str | None
) -> tuple[dict[str, str] | None, dict[str, Any] | None]:
    """A click/submit rule's beacon made into the rule's event (None: a required value is
    missing). What the browser sent is only raw input: the rule decides the event."""
    rule = rules.by_name(str(event.get("rule")))
    if rule is None or rule.trigger == "request":
        return {"field": "rule", "message": "no click or submit rule by that name"}, None
    data = event.get("data") or {}
    fields = event.get("fields") or {}
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return {"field": "data", "message": "data must map names to strings"}, None
    if not isinstance(fields, Mapping) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v)
        for k, v in fields.items()
    ):
        return {"field": "fields", "message": "fields must map names to lists of strings"}, None
    query = parse_qs(urlsplit(page_url).query) if page_url else {}
    facts = Facts(
        data={k: v[:_MAX_VALUE] for k, v in list(data.items())[:_MAX_NAMES]},
        fields={k: [i[:_MAX_VALUE] for i in v[:20]] for k, v in list(fields.items())[:_MAX_NAMES]},
        query=query,
    )
    draft = rule.draft(facts)
    if draft is None:
        return None, None
    out: dict[str, Any] = {
        "event_name": rule.event_name,
        "event_id": event["event_id"],
        "rule": rule.name,
        "user_data": draft["user_data"],
    }
    if "custom_data" in draft:
        out["custom_data"] = draft["custom_data"]
    if "event_time" in event:
        out["event_time"] = event["event_time"]
    return None, out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check(event: Any, page_event_id: str) -> dict[str, str] | None:
    if not isinstance(event, Mapping):
        return {"field": "", "message": "each event must be a JSON object"}
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 256:
        return {"field": "event_id", "message": "every beacon event needs its event_id"}
    # The page's own PageView id is fixed by the token: no beacon can mint other PageViews.
    if event.get("event_name") == "PageView" and event_id != page_event_id:
        return {"field": "event_id", "message": "a PageView must carry the page's event id"}
    user_data = event.get("user_data") or {}
    if not isinstance(user_data, Mapping) or set(user_data) - _BEACON_USER_FIELDS:
        return {
            "field": "user_data",
            "message": "a beacon may send only customer fields (email, phone, names, ...)",
        }
    return None


def _server_event(event: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
    # What identifies the browser comes from the request, never from the beacon.
    user_data: dict[str, Any] = {**(event.get("user_data") or {}), **ctx["user_data"]}
    # Browser clocks drift: never in the future, never before the page was served.
    sent_time = event.get("event_time")
    when: int = ctx["now"]
    if isinstance(sent_time, int) and not isinstance(sent_time, bool):
        # Hundreds of digits parse as an int too large for any float: clamped below.
        when = sent_time
    elif isinstance(sent_time, float) and math.isfinite(sent_time):
        # 1e400 is valid JSON and parses as infinity.
        when = int(sent_time)
    out: dict[str, Any] = {
        "event_name": event.get("event_name"),
        "event_id": event["event_id"],
        "event_time": max(ctx["issued"], min(when, ctx["now"])),
        "action_source": "website",
        "user_data": user_data,
    }
    if ctx["url"]:
        out["event_source_url"] = ctx["url"]
    if ctx["referrer"]:
        out["referrer_url"] = ctx["referrer"]
    if event.get("custom_data") is not None:
        out["custom_data"] = event["custom_data"]
    if event.get("pixel_id") is not None:
        out["pixel_id"] = event["pixel_id"]
    out.update(ctx["consent"].event_fields())
    return out


def _page_url(sent: Any, origin: str, referer: str | None) -> str | None:
    """The page the beacon speaks for: its own claim when on our origin, else the Referer."""
    for candidate in (sent, referer):
        if isinstance(candidate, str) and _origin_of(candidate) == origin:
            return candidate
    return None


def _referrer(value: Any, sensitive: Any) -> str | None:
    if isinstance(value, str) and value.startswith(("http://", "https://")) and _origin_of(value):
        return scrub_url(value[:4096], sensitive)
    return None


def _origin_of(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""  # "http://[": no URL parser accepts it, so it names no origin
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
