"""Page views in, touchpoints out: one row per visit start, with where the visit came from.

A touchpoint is written for a PageView that starts a visit (`starts_visit`): the previous
state of the visitor (the last page view's time, the current visit's source) is read from
the store in the same write transaction, one query per group commit, so it is right across
workers and replicas; a bounded cache (`VisitCache`) spares the read for the common case a
stale entry cannot get wrong (an untagged view within the visit timeout), and a visitor
whose `_fbp` the proxy minted for the view itself has nothing to read. Shared by both
backends; the visitor key and the policy are `insightfacts`'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.visitcache import Seen
from gateway.models import NewEvent
from gateway.pipeline.channels import (
    CLICK_IDS,
    ChannelRules,
    VisitSource,
    starts_visit,
    visit_source,
)


@dataclass(frozen=True, slots=True)
class Touch:
    """A visit's start: a touchpoint row."""

    site: str
    visitor: str
    at: int
    source: VisitSource


class PageSeen:
    """A new PageView of a known visitor; its source is worked out only when needed."""

    __slots__ = (
        "_source",
        "at",
        "new",
        "own",
        "referrer",
        "rules",
        "site",
        "untagged",
        "url",
        "visitor",
    )

    def __init__(
        self,
        site: str,
        visitor: str,
        at: float,
        url: str,
        referrer: str | None,
        own: frozenset[str],
        rules: ChannelRules | None,
        new: bool = False,
    ) -> None:
        self.site, self.visitor, self.at = site, visitor, at
        self.url, self.referrer, self.own, self.rules = url, referrer, own, rules
        self.new = new  # the visitor's `_fbp` was minted for this view (`NewEvent.new_visitor`)
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
                ev.new_visitor,
            )
        )
    return out


def from_cache(
    policy: InsightPolicy, pages: Sequence[PageSeen]
) -> tuple[dict[tuple[str, str], Seen], set[tuple[str, str]], set[tuple[str, str]]]:
    """Visitors whose views the cache settles (their state after the batch), those to read
    from the store, and new ones: their first view (in time order) minted their `_fbp`, so
    no store holds an earlier one and nothing is read."""
    by_key: dict[tuple[str, str], list[PageSeen]] = {}
    for page in pages:
        by_key.setdefault((page.site, page.visitor), []).append(page)
    settled: dict[tuple[str, str], Seen] = {}
    unknown: set[tuple[str, str]] = set()
    new: set[tuple[str, str]] = set()
    for key, views in by_key.items():
        if views[0].new:
            new.add(key)
            continue
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
    return settled, unknown, new


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
