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

The campaign is `utm_campaign`, else `(not set)`. The channel is GA4's default channel
group, decided by the first matching row of `DEFAULT_CHANNEL_RULES` (the table below, in
GA4's order, compared case-insensitively); configured overrides (`ChannelRules`) are tried
before it. "Source matches a list of social sites" uses `SOURCE_CATEGORIES`, a compact
version of the list GA4 publishes: a source belongs to a site when it equals one of the
site's names, or one of its dot-separated labels other than the last does (so `google`,
`www.google.co.uk` and `google.com` are all search, `l.facebook.com` is social).

| Channel | Rule |
|---|---|
| Direct | source is `(direct)` and medium is `(not set)` or `(none)` |
| Cross-network | campaign contains `cross-network` |
| Paid Shopping | (shopping site or shopping campaign¹) and paid medium² |
| Paid Search | search site and paid medium² |
| Paid Social | social site and paid medium |
| Paid Video | video site and paid medium |
| Display | medium is display, banner, expandable, interstitial or cpm |
| Paid Other | paid medium² |
| Organic Shopping | shopping site or shopping campaign¹ |
| Organic Social | social site or medium is social, social-network, social-media, sm, … ³ |
| Organic Video | video site or medium matches `^(.*video.*)$` |
| Organic Search | search site or medium is organic |
| Referral | medium is referral, app or link |
| Email | source or medium is email, e-mail, e_mail or e mail |
| Affiliates | medium is affiliate |
| Audio | medium is audio |
| SMS | source or medium is sms |
| Mobile Push Notifications | medium ends with push, has mobile or notification; firebase |
| Unassigned | anything else |

¹ campaign matches `^(.*(([^a-df-z]|^)shop|shopping).*)$`;
² medium matches `^(.*cp.*|ppc|retargeting|paid.*)$`;
³ also social network, social media (with a space).

A visit (`starts_visit`) starts on a page view that brings a new campaign or click id, an
external referrer, or comes after `visit_timeout` seconds of inactivity; an internal referrer
or no referrer within the timeout continues the current visit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DIRECT_SOURCE = "(direct)"
NONE_MEDIUM = "(none)"
NOT_SET = "(not set)"

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

# GA4's source categories (SOURCE_CATEGORY_SEARCH / SOCIAL / VIDEO / SHOPPING), compact: a
# name without a dot matches a whole label of the source, one with a dot the source's tail.
SOURCE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "search": (
        "google",
        "bing",
        "yahoo",
        "duckduckgo",
        "baidu",
        "yandex",
        "ecosia",
        "qwant",
        "naver",
        "seznam",
        "ask",
        "aol",
        "startpage",
        "search.brave.com",
        "sogou",
        "so.com",
        "daum",
        "coccoc",
        "msn",
        "yahoo.co.jp",
        "perplexity",
    ),
    "social": (
        "facebook",
        "fb",
        "instagram",
        "ig",
        "messenger",
        "meta",
        "threads.net",
        "twitter",
        "x.com",
        "t.co",
        "linkedin",
        "lnkd.in",
        "pinterest",
        "reddit",
        "tiktok",
        "snapchat",
        "tumblr",
        "vk",
        "weibo",
        "whatsapp",
        "telegram",
        "t.me",
        "quora",
        "discord",
        "mastodon.social",
        "bsky.app",
        "line",
        "wechat",
        "xing",
        "ok.ru",
    ),
    "video": (
        "youtube",
        "youtu.be",
        "vimeo",
        "twitch",
        "dailymotion",
        "wistia",
        "netflix",
        "rumble",
    ),
    "shopping": (
        "amazon",
        "ebay",
        "etsy",
        "walmart",
        "aliexpress",
        "alibaba",
        "shopping.google.com",
        "idealo",
        "mercadolibre",
        "rakuten",
        "shopzilla",
        "pricegrabber",
        "google shopping",
    ),
}
# Hosts that carry a category's name but are not that kind of site (webmail, documents).
_NOT_CATEGORISED = frozenset(
    {
        "mail.google.com",
        "docs.google.com",
        "drive.google.com",
        "mail.yahoo.com",
        "outlook.live.com",
        "ads.google.com",
        "business.facebook.com",
    }
)

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

_PAID = r"^(.*cp.*|ppc|retargeting|paid.*)$"
_SHOP_CAMPAIGN = r"^(.*(([^a-df-z]|^)shop|shopping).*)$"
_EMAIL = ("email", "e-mail", "e_mail", "e mail")

Field_ = Literal["source", "medium", "campaign", "category"]
Op = Literal["is", "in", "re", "contains", "endswith"]
Condition = tuple[Field_, Op, str | tuple[str, ...]]

# The default channel grouping as data: (channel, alternatives); a rule matches when every
# condition of one alternative holds (OR of ANDs). "category" tests SOURCE_CATEGORIES.
DEFAULT_CHANNEL_RULES: tuple[tuple[str, tuple[tuple[Condition, ...], ...]], ...] = (
    ("Direct", ((("source", "is", DIRECT_SOURCE), ("medium", "in", (NOT_SET, NONE_MEDIUM))),)),
    ("Cross-network", ((("campaign", "contains", "cross-network"),),)),
    (
        "Paid Shopping",
        (
            (("category", "is", "shopping"), ("medium", "re", _PAID)),
            (("campaign", "re", _SHOP_CAMPAIGN), ("medium", "re", _PAID)),
        ),
    ),
    ("Paid Search", ((("category", "is", "search"), ("medium", "re", _PAID)),)),
    ("Paid Social", ((("category", "is", "social"), ("medium", "re", _PAID)),)),
    ("Paid Video", ((("category", "is", "video"), ("medium", "re", _PAID)),)),
    (
        "Display",
        ((("medium", "in", ("display", "banner", "expandable", "interstitial", "cpm")),),),
    ),
    ("Paid Other", ((("medium", "re", _PAID),),)),
    (
        "Organic Shopping",
        ((("category", "is", "shopping"),), (("campaign", "re", _SHOP_CAMPAIGN),)),
    ),
    (
        "Organic Social",
        (
            (("category", "is", "social"),),
            (
                (
                    "medium",
                    "in",
                    (
                        "social",
                        "social-network",
                        "social-media",
                        "sm",
                        "social network",
                        "social media",
                    ),
                ),
            ),
        ),
    ),
    ("Organic Video", ((("category", "is", "video"),), (("medium", "re", r"^(.*video.*)$"),))),
    ("Organic Search", ((("category", "is", "search"),), (("medium", "is", "organic"),))),
    ("Referral", ((("medium", "in", ("referral", "app", "link")),),)),
    ("Email", ((("source", "in", _EMAIL),), (("medium", "in", _EMAIL),))),
    ("Affiliates", ((("medium", "in", ("affiliate", "affiliates")),),)),
    ("Audio", ((("medium", "is", "audio"),),)),
    ("SMS", ((("source", "is", "sms"),), (("medium", "is", "sms"),))),
    (
        "Mobile Push Notifications",
        (
            (("medium", "endswith", "push"),),
            (("medium", "contains", "mobile"),),
            (("medium", "contains", "notification"),),
            (("source", "is", "firebase"),),
        ),
    ),
)
UNASSIGNED = "Unassigned"
CHANNELS: tuple[str, ...] = (*(name for name, _ in DEFAULT_CHANNEL_RULES), UNASSIGNED)


@dataclass(frozen=True, slots=True)
class VisitSource:
    """Where one visit came from, GA4 style (see the module docstring for the rules)."""

    source: str
    medium: str
    campaign: str
    channel: str
    click_id: str | None
    landing_path: str
    referrer_host: str | None  # an external referrer's host; None for none or an internal one


@dataclass(frozen=True, slots=True)
class _Facts:
    source: str
    medium: str
    campaign: str
    categories: frozenset[str]


def source_categories(source: str) -> frozenset[str]:
    """The GA4 source categories (search, social, video, shopping) a source belongs to."""
    lowered = source.strip().lower()
    if not lowered or lowered in _NOT_CATEGORISED:
        return frozenset()
    labels = lowered.split(".")
    candidates = set(labels[:-1]) if len(labels) > 1 else {lowered}
    found = set()
    for category, names in SOURCE_CATEGORIES.items():
        for name in names:
            if "." in name or " " in name:
                if lowered == name or lowered.endswith("." + name):
                    found.add(category)
                    break
            elif name in candidates:
                found.add(category)
                break
    return frozenset(found)


def _condition(cond: Condition) -> Callable[[_Facts], bool]:
    field, op, arg = cond
    if field == "category":
        return lambda f: arg in f.categories

    def value(f: _Facts) -> str:
        return str(getattr(f, field))

    if op == "is":
        return lambda f: value(f) == arg
    if op == "in":
        return lambda f: value(f) in arg
    if op == "contains":
        return lambda f: str(arg) in value(f)
    if op == "endswith":
        return lambda f: value(f).endswith(str(arg))
    pattern = re.compile(str(arg), re.IGNORECASE)
    return lambda f: pattern.fullmatch(value(f)) is not None


def _compile_rule(
    alternatives: tuple[tuple[Condition, ...], ...],
) -> Callable[[_Facts], bool]:
    compiled = tuple(tuple(_condition(c) for c in alt) for alt in alternatives)
    return lambda f: any(all(c(f) for c in alt) for alt in compiled)


_DEFAULTS: tuple[tuple[str, Callable[[_Facts], bool]], ...] = tuple(
    (name, _compile_rule(alts)) for name, alts in DEFAULT_CHANNEL_RULES
)


class ChannelRule(BaseModel):
    """One channel override from config: when every given field matches, the visit gets `channel`.

    A string is a regular expression matched against the whole value, a list is a set of
    exact values; both compare case-insensitively. At least one of source, medium, campaign.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str = Field(min_length=1, max_length=100)
    source: str | list[str] | None = None
    medium: str | list[str] | None = None
    campaign: str | list[str] | None = None

    @field_validator("source", "medium", "campaign")
    @classmethod
    def _valid_pattern(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str):
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"not a valid regular expression ({exc}); use a list for exact values"
                ) from exc
        return value

    @model_validator(mode="after")
    def _something_to_match(self) -> ChannelRule:
        if self.source is None and self.medium is None and self.campaign is None:
            raise ValueError(
                f"the rule for channel {self.channel!r} matches nothing: "
                "give source, medium or campaign"
            )
        return self


def _matcher(value: str | list[str] | None) -> Callable[[str], bool] | None:
    if value is None:
        return None
    if isinstance(value, str):
        pattern = re.compile(value, re.IGNORECASE)
        return lambda v: pattern.fullmatch(v) is not None
    exact = frozenset(v.lower() for v in value)
    return lambda v: v in exact


class ChannelRules:
    """Compiled channel overrides: the first matching rule wins, before GA4's defaults."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Iterable[ChannelRule] = ()) -> None:
        self._rules = tuple(
            (rule.channel, _matcher(rule.source), _matcher(rule.medium), _matcher(rule.campaign))
            for rule in rules
        )

    def __len__(self) -> int:
        return len(self._rules)

    def channel_for(self, source: str, medium: str, campaign: str) -> str | None:
        """The overriding channel for these (lowercased) values, or None to use the defaults."""
        for channel, src, med, camp in self._rules:
            if (
                (src is None or src(source))
                and (med is None or med(medium))
                and (camp is None or camp(campaign))
            ):
                return channel
        return None


def default_channel(
    source: str, medium: str, campaign: str, *, rules: ChannelRules | None = None
) -> str:
    """The channel group of a source / medium / campaign: overrides first, then GA4's table."""
    s, m, c = source.strip().lower(), medium.strip().lower(), campaign.strip().lower()
    if rules is not None:
        chosen = rules.channel_for(s, m, c)
        if chosen is not None:
            return chosen
    facts = _Facts(s, m, c, source_categories(s))
    for name, matches in _DEFAULTS:
        if matches(facts):
            return name
    return UNASSIGNED


def _host(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return host.lower().rstrip(".")


def _is_within(host: str, domains: Iterable[str]) -> bool:
    for domain in domains:
        d = domain.strip().lower().rstrip(".")
        if d.startswith("www."):
            d = d[4:]
        if d and (host == d or host.endswith("." + d)):
            return True
    return False


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
        path = parts.path or "/"
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
        _is_within(ref_host, own_hosts) or _is_within(ref_host, IGNORED_REFERRERS)
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
    return VisitSource(
        source=source,
        medium=medium,
        campaign=campaign,
        channel=default_channel(source, medium, campaign, rules=rules),
        click_id=click_id,
        landing_path=path,
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
    "starts_visit",
    "visit_source",
)
