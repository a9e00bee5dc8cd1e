"""Stored events in, the rows reports read out: one fact per accepted event (the touchpoint
per visit is `insightvisits`'). Shared by both backends (`insights.py`,
`postgres/insights.py`).

Why a facts table and not the outbox: delivered rows leave the outbox after `retention`
(7 days by default) and their payloads are JSON to parse, while reports cover up to
`touchpoint_retention` (90 days) and must answer in well under a second. A fact is a few
columns (site, visitor, event name, time, value, currency, content ids, match keys) written
in the same transaction as the event, so a report counts every accepted event, sent or held.

The visitor is the profile key (`ProfilePolicy.key_hash("fbp", _fbp)`, its first 16 hex
digits: `visitor_of`), so facts, touchpoints and profiles agree on who is who; an event
without an fbp (a webhook, a backend call) finds its visitor through its stitch keys when
profiles are on.

"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.delivery import profiles
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.rows import match_keys
from gateway.delivery.visitcache import VisitCache
from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome, State
from gateway.pipeline.channels import (
    ChannelRules,
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
