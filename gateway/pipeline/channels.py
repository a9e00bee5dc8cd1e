"""Where a visit came from: landing URL and referrer in; source, medium, campaign, channel out.

Source and medium follow Google Analytics 4, so the numbers read the same as a marketer's GA4:

1. **Google Ads click ids** (`gclid`, `gbraid`, `wbraid`) win over utm tags, as GA4's
   auto-tagging does by default: `google / cpc`. `dclid` (Display & Video 360, Campaign
   Manager) gives `dbm / cpm`.
2. **utm tags**: with `utm_source` or `utm_medium` on the landing URL, source and medium are
   taken from them (a missing one is `(not set)`).
3. **Other click ids** (table `CLICK_ID_SOURCES`) when there is no utm tag: the ones that only
   ad clicks carry (`msclkid` → `bing / cpc`, `ttclid` → `tiktok / cpc`, `li_fat_id`,
   `ScCid`, `yclid`, …) give the network and `cpc`. `fbclid`, `twclid` and `epik` are appended
   to organic and paid links alike, so they cannot tell paid from organic: the referrer
   decides (step 4, e.g. `l.facebook.com / referral`), and without one they give
   `facebook / referral` (resp. twitter, pinterest); both are Organic Social. GA4 itself
   ignores them. Tag paid Meta ads with `utm_source=facebook&utm_medium=paid` (or add a
   channel override) to see them as Paid Social.
4. **The referrer**: a search engine gives `<engine> / organic` (e.g. `google / organic`);
   any other external host gives `<host> / referral`. A referrer that is one of the site's
   own hosts (or a subdomain of one), or a payment provider returning the buyer
   (`IGNORED_REFERRERS`, GA4's "unwanted referrals"), counts as no referrer.
5. Nothing of the above: `(direct) / (none)`.

The campaign is `utm_campaign`, else `(not set)`. The channel is GA4's default channel group
(`gateway.pipeline.channelgroups`, where its table is), after any configured overrides.

A visit (`starts_visit`) starts on a page view that brings a new campaign or click id, an
external referrer, or comes after `visit_timeout` seconds of inactivity; an internal referrer
or no referrer within the timeout continues the current visit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from gateway.pipeline.channelgroups import (
    CHANNELS,
    DIRECT_SOURCE,
    NONE_MEDIUM,
    NOT_SET,
    SOURCE_CATEGORIES,
    ChannelRule,
    ChannelRules,
    default_channel,
    source_categories,
)

# Longest source, medium, campaign and landing path kept: they come from the visitor's URL.
MAX_FIELD = 1000

# Ad click ids, in the order they are looked for when a URL carries several.
CLICK_IDS: tuple[str, ...] = (
    "gclid",
    "gbraid",
    "wbraid",
    "dclid",
    "fbclid",
    "msclkid",
    "ttclid",
    "twclid",
    "li_fat_id",
    "epik",
    "ScCid",
    "yclid",
    "rdt_cid",
    "irclickid",
)

# Click id → (source, medium) when it decides them (see the module docstring, steps 1 and 3).
# `fbclid`, `twclid` and `epik` are on organic links too: referral, never paid.
CLICK_ID_SOURCES: dict[str, tuple[str, str]] = {
    "gclid": ("google", "cpc"),
    "gbraid": ("google", "cpc"),
    "wbraid": ("google", "cpc"),
    "dclid": ("dbm", "cpm"),
    "fbclid": ("facebook", "referral"),
    "msclkid": ("bing", "cpc"),
    "ttclid": ("tiktok", "cpc"),
    "twclid": ("twitter", "referral"),
    "li_fat_id": ("linkedin", "cpc"),
    "epik": ("pinterest", "referral"),
    "ScCid": ("snapchat", "cpc"),
    "yclid": ("yandex", "cpc"),
    "rdt_cid": ("reddit", "cpc"),
    "irclickid": ("impact", "affiliate"),
}
# Google's auto-tagging overrides manual utm tags (GA4's default); the others do not.
_OVERRIDES_UTM = frozenset({"gclid", "gbraid", "wbraid", "dclid"})
_CLICK_ID_BY_LOWER = {name.lower(): name for name in CLICK_IDS}

# Payment providers that send the buyer back: a return from them continues the visit that
# went there, as GA4's "unwanted referrals" list would.
IGNORED_REFERRERS: tuple[str, ...] = (
    "paypal.com",
    "checkout.stripe.com",
    "hooks.stripe.com",
    "klarna.com",
    "adyen.com",
    "mollie.com",
    "pay.google.com",
    "checkout.shopify.com",
    "3dsecure.io",
    "secure5.arcot.com",
)


@dataclass(frozen=True, slots=True)
class VisitSource:
    """Where one visit came from, GA4 style (see the module docstring for the rules)."""

    source: str
    medium: str
    campaign: str
    channel: str
    click_id: str | None
    landing_path: str  # the URL's path, no query (at most MAX_FIELD characters, like the others)
    referrer_host: str | None  # an external referrer's host; None for none or an internal one


def _host(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return host.lower().rstrip(".")


def _domain(name: str) -> str:
    d = name.strip().lower().rstrip(".")
    return d[4:] if d.startswith("www.") else d


_IGNORED = frozenset(_domain(d) for d in IGNORED_REFERRERS)


def _is_within(host: str, domains: Collection[str]) -> bool:
    """Whether host is one of the domains or under one (`www.` of a domain ignored)."""
    labels = host.split(".")
    return any(".".join(labels[i:]) in domains for i in range(len(labels)))


def _search_engine(host: str) -> str | None:
    if "search" not in source_categories(host):
        return None
    labels = host.split(".")
    names = SOURCE_CATEGORIES["search"]
    for label in labels[:-1]:
        if label in names:
            return label
    return host


def visit_source(
    *,
    url: str,
    referrer: str | None,
    own_hosts: Collection[str],
    rules: ChannelRules | None = None,
) -> VisitSource:
    """Where a page view with this landing URL and referrer came from (rules in the docstring)."""
    try:
        parts = urlsplit(url)
        path = parts.path if parts.path.startswith("/") else "/" + parts.path
        query = parse_qsl(parts.query, keep_blank_values=False)
    except ValueError:
        path, query = "/", []
    params: dict[str, str] = {}
    click_id: str | None = None
    for name, value in query:
        key = name.strip()
        lowered = key.lower()
        if lowered.startswith("utm_"):
            params.setdefault(lowered, value.strip())
        elif lowered in _CLICK_ID_BY_LOWER and value.strip():
            params.setdefault(_CLICK_ID_BY_LOWER[lowered], value)
    for name in CLICK_IDS:
        if name in params:
            click_id = name
            break
    utm_source = params.get("utm_source", "")
    utm_medium = params.get("utm_medium", "")
    campaign = params.get("utm_campaign", "") or NOT_SET

    ref_host = _host(referrer) if referrer else None
    if ref_host is not None and (
        _is_within(ref_host, frozenset(_domain(h) for h in own_hosts))
        or _is_within(ref_host, _IGNORED)
    ):
        ref_host = None

    if click_id in _OVERRIDES_UTM:
        source, medium = CLICK_ID_SOURCES[click_id]
    elif utm_source or utm_medium:
        source, medium = utm_source or NOT_SET, utm_medium or NOT_SET
    elif click_id is not None and (ref_host is None or CLICK_ID_SOURCES[click_id][1] != "referral"):
        source, medium = CLICK_ID_SOURCES[click_id]
    elif ref_host is not None:
        engine = _search_engine(ref_host)
        source, medium = (engine, "organic") if engine else (ref_host, "referral")
    else:
        source, medium = DIRECT_SOURCE, NONE_MEDIUM
    # Capped before the channel rules see them: an override's regex runs on visitor input.
    source, medium, campaign = source[:MAX_FIELD], medium[:MAX_FIELD], campaign[:MAX_FIELD]
    return VisitSource(
        source=source,
        medium=medium,
        campaign=campaign,
        channel=default_channel(source, medium, campaign, rules=rules),
        click_id=click_id,
        landing_path=path[:MAX_FIELD],
        referrer_host=ref_host,
    )


def starts_visit(
    current: VisitSource,
    *,
    previous: VisitSource | None,
    previous_seen_at: float | None,
    now: float,
    visit_timeout: float,
) -> bool:
    """Whether a page view with `current` as its source starts a new visit.

    `previous` is the source of the visitor's current visit and `previous_seen_at` the time of
    its last page view. A new visit starts when there is none yet, after `visit_timeout`
    seconds without a page view, or when the page view brings a campaign, click id or
    external referrer that differs from the current visit's (a reload of a tagged landing page,
    or a second click from the same place within the timeout, continues the visit).
    """
    if previous is None or previous_seen_at is None:
        return True
    if now - previous_seen_at >= visit_timeout:
        return True
    if current.source == DIRECT_SOURCE and current.campaign == NOT_SET and current.click_id is None:
        return False  # no referrer or an internal one, nothing tagged: the visit goes on
    return _identity(current) != _identity(previous)


def _identity(source: VisitSource) -> tuple[str, str, str, str | None, str | None]:
    return (source.source, source.medium, source.campaign, source.click_id, source.referrer_host)


__all__: Sequence[str] = (
    "CHANNELS",
    "CLICK_IDS",
    "ChannelRule",
    "ChannelRules",
    "VisitSource",
    "default_channel",
    "source_categories",
    "starts_visit",
    "visit_source",
)
