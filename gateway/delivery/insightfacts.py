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
the store in the same write transaction, one query per group commit, so it is
right across workers and replicas; a bounded cache (`VisitCache`) spares the read for the
common case a stale entry cannot get wrong (an untagged view within the visit timeout).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from gateway.delivery import profiles
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.rows import match_keys
from gateway.delivery.visitcache import Seen, VisitCache
from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome, State
from gateway.pipeline.channels import (
    CLICK_IDS,
    ChannelRules,
    VisitSource,
    starts_visit,
    visit_source,
)

# `_fbp` values whose visitor keys are remembered, at most.
_MEMO = 50_000
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
    cache: VisitCache = field(default_factory=lambda: VisitCache())
    memo: dict[str, str] = field(default_factory=dict)

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

    def prime(
        self, profiles_policy: ProfilePolicy, fbps: Sequence[Any], keys: Sequence[Sequence[str]]
    ) -> None:
        """Remember the visitors of events whose profile keys (`profiles.visitor_keys`,
        the fbp's first) were hashed under the same key as this policy's: `visitor` then
        finds them instead of hashing each fbp a second time."""
        if profiles_policy.lookup_key != self.lookup.lookup_key:
            return
        memo = self.memo
        for fbp, event_keys in zip(fbps, keys, strict=True):
            if isinstance(fbp, str) and fbp and event_keys and fbp not in memo:
                if len(memo) >= _MEMO:
                    memo.clear()
                memo[fbp] = visitor_of(event_keys[0])

    def visitor(self, fbp: str) -> str:
        """The stored visitor key of an `_fbp` value (remembered: a visitor's views come
        in runs, and each one's fact and touchpoint both ask)."""
        known = self.memo.get(fbp)
        if known is None:
            if len(self.memo) >= _MEMO:
                self.memo.clear()
            known = self.memo[fbp] = visitor_of(self.lookup.key_hash("fbp", fbp))
        return known


# Hex digits of a profile key kept as the visitor key: 64 bits make a collision among even
# millions of visitors negligible, and keep the report indexes a quarter of the size.
VISITOR_DIGITS = 16


def visitor_of(profile_key: str) -> str:
    """The visitor key of a profile key (`ProfilePolicy.key_hash("fbp", …)`, with `[[sites]]`
    `<site>:<hash>`: facts and touchpoints carry their site in a column of their own)."""
    return profile_key.rsplit(":", 1)[-1][:VISITOR_DIGITS]


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
    # Kept for events a later copy can still change (not PageViews): see `merged`.
    event_id: str | None = None
    # Stitch keys to find the visitor by when the event carries no fbp.
    links: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Touch:
    """A visit's start: a touchpoint row."""

    site: str
    visitor: str
    at: int
    source: VisitSource


def facts(
    policy: InsightPolicy, rows: Sequence[NewEvent], outcomes: Sequence[Outcome], new: set[int]
) -> list[Fact]:
    """One fact per event stored as new (`new`: indexes of rows inserted, not merged); an
    event sent to several pixels (one row each) is one fact."""
    out = []
    taken: set[tuple[str, str]] = set()
    for index in sorted(new):
        ev = rows[index]
        if outcomes[index] != "new" or (ev.event_name, ev.event_id) in taken:
            continue
        taken.add((ev.event_name, ev.event_id))
        fbp = ev.clear.get("fbp")
        visitor = policy.visitor(fbp) if isinstance(fbp, str) and fbp else None
        links: tuple[str, ...] = ()
        if visitor is None and ev.links:
            keys = profiles.visitor_keys(policy.lookup, {}, ev.links, ev.site)
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
                event_id=ev.event_id if ev.event_name != "PageView" else None,
                links=links,
            )
        )
    return out


def merged(
    rows: Sequence[NewEvent],
    outcomes: Sequence[Outcome],
    states: Sequence[State | None],
) -> list[tuple[Any, ...]]:
    """What copies merged into stored events change in their facts (the payment webhook
    is the record of a Purchase's amount): (value, currency, content ids, match keys,
    event name, event id) per merged copy, PageViews aside (nothing of theirs is counted)."""
    out = []
    for ev, outcome, state in zip(rows, outcomes, states, strict=True):
        if outcome != "merged" or state is None or ev.event_name == "PageView":
            continue
        custom = state.payload.get("custom_data")
        custom = custom if isinstance(custom, dict) else {}
        out.append(
            (
                _number(custom.get("value")),
                _currency(custom.get("currency")),
                _content_ids(custom.get("content_ids")),
                match_keys(state.payload.get("user_data"), state.clear),
                ev.event_name,
                ev.event_id,
            )
        )
    return out


# `merged`'s values, set on the fact of the same event.
MERGE_SQL = (
    "UPDATE insight_events SET value = ?, currency = ?, content_ids = ?, match_keys = ? "
    "WHERE event_name = ? AND event_id = ?"
)


class PageSeen:
    """A new PageView of a known visitor; its source is worked out only when needed."""

    __slots__ = ("_source", "at", "own", "referrer", "rules", "site", "untagged", "url", "visitor")

    def __init__(
        self,
        site: str,
        visitor: str,
        at: float,
        url: str,
        referrer: str | None,
        own: frozenset[str],
        rules: ChannelRules | None,
    ) -> None:
        self.site, self.visitor, self.at = site, visitor, at
        self.url, self.referrer, self.own, self.rules = url, referrer, own, rules
        self.untagged = _plainly_untagged(url, referrer, own)
        self._source: VisitSource | None = None

    @property
    def source(self) -> VisitSource:
        """Where the view came from (`visit_source`), computed once."""
        if self._source is None:
            self._source = _visit_source(self.url, self.referrer, self.own, self.rules)
        return self._source


@lru_cache(maxsize=1024)
def _visit_source(
    url: str, referrer: str | None, own: frozenset[str], rules: ChannelRules | None
) -> VisitSource:
    # Landing pages repeat (the home page, a campaign's page, each with no referrer or the
    # same one): parsed and classified once while they are recent. Rules compare by
    # identity, so a reload's new rules never meet an old answer.
    return visit_source(url=url, referrer=referrer, own_hosts=own, rules=rules)


# Query parameters that can tag a visit, lowercased: any of them means "work it out".
_TAGS = ("utm_", *(name.lower() for name in CLICK_IDS))


def _plainly_untagged(url: str, referrer: str | None, own: frozenset[str]) -> bool:
    """True only when the view surely has no campaign, click id or external referrer: the
    common internal page, told apart without computing its channel."""
    query = url.partition("?")[2].lower()
    if query and any(tag in query for tag in _TAGS):
        return False
    if not referrer:
        return True
    host = _host(referrer)
    return len(host) == 1 and next(iter(host)) in own


def page_views(policy: InsightPolicy, rows: Sequence[NewEvent], new: set[int]) -> list[PageSeen]:
    """The new PageViews with an fbp and a URL, in time order."""
    out = []
    for index in sorted(new, key=lambda i: rows[i].event_time):
        ev = rows[index]
        fbp = ev.clear.get("fbp")
        url = ev.payload.get("event_source_url")
        if ev.event_name != "PageView" or not isinstance(fbp, str) or not fbp:
            continue
        if not isinstance(url, str) or not url:
            continue
        site = ev.site or ""
        referrer = ev.payload.get("referrer_url")
        out.append(
            PageSeen(
                site,
                policy.visitor(fbp),
                float(ev.event_time),
                url,
                referrer if isinstance(referrer, str) else None,
                policy.own_hosts.get(site, frozenset()) | _host(url),
                policy.rules.get(site),
            )
        )
    return out


def from_cache(
    policy: InsightPolicy, pages: Sequence[PageSeen]
) -> tuple[dict[tuple[str, str], Seen], set[tuple[str, str]]]:
    """Visitors whose views the cache settles (their state after the batch) and those to
    read from the store."""
    by_key: dict[tuple[str, str], list[PageSeen]] = {}
    for page in pages:
        by_key.setdefault((page.site, page.visitor), []).append(page)
    settled: dict[tuple[str, str], Seen] = {}
    unknown: set[tuple[str, str]] = set()
    for key, views in by_key.items():
        known = policy.cache.get(key)
        last = known.last_seen if known is not None else None
        ok = known is not None and last is not None
        for view in views:
            if not ok or last is None or not view.untagged:
                ok = False
                break
            if view.at - last >= policy.visit_timeout:
                ok = False
                break
            last = max(last, view.at)
        if ok and known is not None and last is not None:
            settled[key] = Seen(last, known.current)
            policy.cache.hits += 1
        else:
            unknown.add(key)
            policy.cache.misses += 1
    return settled, unknown


def touches(
    policy: InsightPolicy, pages: Sequence[PageSeen], seen: Mapping[tuple[str, str], Seen]
) -> tuple[list[Touch], dict[tuple[str, str], Seen]]:
    """The touchpoints of the views of visitors in `seen` (what the store knew before the
    batch), taken in time order, each seeing the last; and each visitor's state after."""
    state = dict(seen)
    out = []
    for page in pages:
        key = (page.site, page.visitor)
        if key not in seen:
            continue
        before = state[key]
        if starts_visit(
            page.source,
            previous=before.current,
            previous_seen_at=before.last_seen,
            now=page.at,
            visit_timeout=policy.visit_timeout,
        ):
            out.append(Touch(page.site, page.visitor, int(page.at), page.source))
            state[key] = Seen(page.at, page.source)
        else:
            last = before.last_seen if before.last_seen is not None else page.at
            state[key] = Seen(max(page.at, last), before.current)
    return out, state


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
FACT_COLUMNS = "site, visitor, event_name, at, value, currency, content_ids, match_keys, event_id"


def fact_values(f: Fact) -> tuple[Any, ...]:
    """A fact row's values in `FACT_COLUMNS` order."""
    return (
        f.site,
        f.visitor,
        f.event_name,
        f.at,
        f.value,
        f.currency,
        f.content_ids,
        f.match_keys,
        f.event_id,
    )


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


@lru_cache(maxsize=1024)
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
