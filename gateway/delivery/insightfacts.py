"""Stored events in, the rows reports read out: one fact per accepted event, one touchpoint
per visit. Shared by both backends (`insights.py`, `postgres/insights.py`); no SQL here.

Why a facts table and not the outbox: delivered rows leave the outbox after `retention`
(7 days by default) and their payloads are JSON to parse, while reports cover up to
`touchpoint_retention` (90 days) and must answer in well under a second. A fact is a few
columns (site, visitor, event name, time, value, currency, content ids, match keys) written
in the same transaction as the event, so a report counts every accepted event, sent or held.

The visitor is the profile key (`ProfilePolicy.key_hash("fbp", _fbp)`, its first 16 hex
digits: `visitor_of`), so facts, touchpoints and profiles agree on who is who; an event
without an fbp (a webhook, a backend call) finds its visitor through its stitch keys when
profiles are on.

A touchpoint is written for a PageView that starts a visit (`starts_visit`): the previous
state of the visitor (the last page view's time, the current visit's source) is read from
the store in the same write transaction, one query per group commit, so it is right across
workers and replicas without any per-process cache.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.delivery import profiles
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.rows import match_keys
from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome
from gateway.pipeline.channels import ChannelRules, VisitSource, starts_visit, visit_source

# Content ids kept per fact: enough for catalog coverage, bounded for odd carts.
_MAX_CONTENT_IDS = 50


@dataclass(frozen=True, slots=True)
class InsightPolicy:
    """What the store needs to record insights: visitor keys, visits, own hosts, rules."""

    lookup: ProfilePolicy
    visit_timeout: float
    retention: float
    # Per site ('' without sites): the hosts whose referrers are internal, the channel rules.
    own_hosts: Mapping[str, frozenset[str]] = field(default_factory=dict)
    rules: Mapping[str, ChannelRules | None] = field(default_factory=dict)

    @classmethod
    def from_key(
        cls,
        key: bytes,
        *,
        visit_timeout: float,
        retention: float,
        own_hosts: Mapping[str, frozenset[str]] | None = None,
        rules: Mapping[str, ChannelRules | None] | None = None,
    ) -> InsightPolicy:
        """The policy for a store whose encryption key is `key` (visitor keys as profiles')."""
        return cls(
            ProfilePolicy.from_key(key, ttl=1, max_profiles=1),
            visit_timeout,
            retention,
            dict(own_hosts or {}),
            dict(rules or {}),
        )

    def visitor(self, fbp: str) -> str:
        """The stored visitor key of an `_fbp` value."""
        return visitor_of(self.lookup.key_hash("fbp", fbp))


# Hex digits of a profile key kept as the visitor key: 64 bits make a collision among even
# millions of visitors negligible, and keep the report indexes a quarter of the size.
VISITOR_DIGITS = 16


def visitor_of(profile_key: str) -> str:
    """The visitor key of a profile key (`ProfilePolicy.key_hash("fbp", …)`)."""
    return profile_key[:VISITOR_DIGITS]


@dataclass(slots=True)
class Fact:
    """One accepted event as reports see it."""

    site: str
    visitor: str | None
    event_name: str
    at: int
    value: float | None
    currency: str | None
    content_ids: str | None
    match_keys: str
    # Stitch keys to find the visitor by when the event carries no fbp.
    links: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Touch:
    """A visit's start: a touchpoint row."""

    site: str
    visitor: str
    at: int
    source: VisitSource


@dataclass(frozen=True, slots=True)
class Seen:
    """What the store knows of a visitor before a batch: last page view, current visit."""

    last_seen: float | None
    current: VisitSource | None


def facts(
    policy: InsightPolicy, rows: Sequence[NewEvent], outcomes: Sequence[Outcome], new: set[int]
) -> list[Fact]:
    """One fact per event stored as new (`new`: indexes of rows inserted, not merged)."""
    out = []
    for index in sorted(new):
        if outcomes[index] != "new":
            continue
        ev = rows[index]
        fbp = ev.clear.get("fbp")
        visitor = policy.visitor(fbp) if isinstance(fbp, str) and fbp else None
        links: tuple[str, ...] = ()
        if visitor is None and ev.links:
            keys = profiles.visitor_keys(policy.lookup, {}, ev.links)
            links = tuple(k for k in keys if k.startswith(profiles.LINK))
        custom = ev.payload.get("custom_data")
        custom = custom if isinstance(custom, dict) else {}
        out.append(
            Fact(
                site=ev.site or "",
                visitor=visitor,
                event_name=ev.event_name,
                at=int(ev.event_time),
                value=_number(custom.get("value")),
                currency=_currency(custom.get("currency")),
                content_ids=_content_ids(custom.get("content_ids")),
                match_keys=match_keys(ev.payload.get("user_data"), ev.clear),
                links=links,
            )
        )
    return out


def page_views(rows: Sequence[NewEvent], new: set[int]) -> list[int]:
    """Indexes into `rows` of the new PageViews with a visitor (those that may start a visit)."""
    return [
        index
        for index in sorted(new)
        if rows[index].event_name == "PageView"
        and isinstance(rows[index].clear.get("fbp"), str)
        and rows[index].clear.get("fbp")
    ]


def touches(
    policy: InsightPolicy,
    rows: Sequence[NewEvent],
    pages: Sequence[int],
    seen: Mapping[tuple[str, str], Seen],
) -> list[Touch]:
    """The touchpoints of a batch's page views, given what was known before the batch.

    Page views of one visitor in the batch are taken in time order, each seeing the last.
    """
    state = dict(seen)
    out = []
    for index in sorted(pages, key=lambda i: rows[i].event_time):
        ev = rows[index]
        site = ev.site or ""
        visitor = policy.visitor(str(ev.clear["fbp"]))
        url = ev.payload.get("event_source_url")
        if not isinstance(url, str) or not url:
            continue
        referrer = ev.payload.get("referrer_url")
        own = policy.own_hosts.get(site, frozenset()) | _host(url)
        current = visit_source(
            url=url,
            referrer=referrer if isinstance(referrer, str) else None,
            own_hosts=own,
            rules=policy.rules.get(site),
        )
        before = state.get((site, visitor), Seen(None, None))
        now = float(ev.event_time)
        if starts_visit(
            current,
            previous=before.current,
            previous_seen_at=before.last_seen,
            now=now,
            visit_timeout=policy.visit_timeout,
        ):
            out.append(Touch(site, visitor, int(ev.event_time), current))
            state[(site, visitor)] = Seen(now, current)
        else:
            last = before.last_seen if before.last_seen is not None else now
            state[(site, visitor)] = Seen(max(now, last), before.current)
    return out


def touch_values(t: Touch) -> tuple[Any, ...]:
    """A touchpoint row's values in `TOUCH_COLUMNS` order."""
    s = t.source
    return (
        t.site,
        t.visitor,
        t.at,
        s.channel,
        s.source,
        s.medium,
        s.campaign,
        s.click_id,
        s.referrer_host,
        s.landing_path,
    )


TOUCH_COLUMNS = (
    "site, visitor, at, channel, source, medium, campaign, click_id, referrer_host, landing_path"
)
FACT_COLUMNS = "site, visitor, event_name, at, value, currency, content_ids, match_keys"


def fact_values(f: Fact) -> tuple[Any, ...]:
    """A fact row's values in `FACT_COLUMNS` order."""
    return (f.site, f.visitor, f.event_name, f.at, f.value, f.currency, f.content_ids, f.match_keys)


def source_of(row: Sequence[Any]) -> VisitSource:
    """A stored touchpoint (channel .. landing_path, in `TOUCH_COLUMNS` order from channel)
    as the `VisitSource` it was recorded from."""
    channel, source, medium, campaign, click_id, referrer_host, landing_path = row
    return VisitSource(
        source=source,
        medium=medium,
        campaign=campaign,
        channel=channel,
        click_id=click_id,
        landing_path=landing_path,
        referrer_host=referrer_host,
    )


def _host(url: str) -> frozenset[str]:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return frozenset()
    return frozenset({host}) if host else frozenset()


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _currency(value: Any) -> str | None:
    return value.strip().upper()[:8] or None if isinstance(value, str) else None


def _content_ids(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return None
    ids = [str(v) for v in value[:_MAX_CONTENT_IDS] if isinstance(v, str | int)]
    return json.dumps(ids, separators=(",", ":")) if ids else None
