"""GA4's default channel grouping: source, medium and campaign in, a channel name out.

The channel is decided by the first matching row of `DEFAULT_CHANNEL_RULES` (the table below,
in GA4's order, compared case-insensitively); configured overrides (`ChannelRules`, from
`[[insights.channels]]`) are tried before it. "Source matches a list of social sites" uses
`SOURCE_CATEGORIES`, a compact version of the list GA4 publishes: a source belongs to a site
when it equals one of the site's names, or one of its dot-separated labels other than the
last does (so `google`, `www.google.co.uk` and `google.com` are all search, `l.facebook.com`
is social).

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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DIRECT_SOURCE = "(direct)"
NONE_MEDIUM = "(none)"
NOT_SET = "(not set)"

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


def _index(categories: dict[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    """Name → the categories it is in (a name may be in two), built once at import."""
    out: dict[str, set[str]] = {}
    for category, names in categories.items():
        for name in names:
            out.setdefault(name, set()).add(category)
    return {name: frozenset(found) for name, found in out.items()}


_CATEGORY_OF = _index(SOURCE_CATEGORIES)
_NONE: frozenset[str] = frozenset()


def source_categories(source: str) -> frozenset[str]:
    """The GA4 source categories (search, social, video, shopping) a source belongs to."""
    lowered = source.strip().lower()
    if not lowered or lowered in _NOT_CATEGORISED:
        return _NONE
    whole = _CATEGORY_OF.get(lowered)
    labels = lowered.split(".")
    if len(labels) == 1:
        return whole or _NONE
    found = set(whole or ())
    # A dotted name matches the source's tail ("t.co" in "x.t.co"), a plain one any label
    # but the last ("google" in "www.google.co.uk").
    for i in range(1, len(labels) - 1):
        found.update(_CATEGORY_OF.get(".".join(labels[i:]), ()))
    for label in labels[:-1]:
        found.update(_CATEGORY_OF.get(label, ()))
    return frozenset(found) if found else _NONE


# A compiled condition: (op, field index into (source, medium, campaign), argument); "cat"
# tests the source's categories, "re" a pattern compiled once.
_Compiled = tuple[str, int, Any]
_FIELDS = {"source": 0, "medium": 1, "campaign": 2, "category": -1}


def _compile(cond: Condition) -> _Compiled:
    field, op, arg = cond
    if field == "category":
        return ("cat", -1, arg)
    if op == "re":
        return ("re", _FIELDS[field], re.compile(str(arg), re.IGNORECASE))
    return (op, _FIELDS[field], arg)


_DEFAULTS: tuple[tuple[str, tuple[tuple[_Compiled, ...], ...]], ...] = tuple(
    (name, tuple(tuple(_compile(c) for c in alt) for alt in alts))
    for name, alts in DEFAULT_CHANNEL_RULES
)


def _holds(cond: _Compiled, values: tuple[str, str, str], categories: frozenset[str]) -> bool:
    op, index, arg = cond
    if op == "cat":
        return arg in categories
    value = values[index]
    if op == "is":
        return bool(value == arg)
    if op == "in":
        return value in arg
    if op == "contains":
        return arg in value
    if op == "endswith":
        return value.endswith(arg)
    return arg.fullmatch(value) is not None


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
    values, categories = (s, m, c), source_categories(s)
    for name, alternatives in _DEFAULTS:
        for conditions in alternatives:
            if all(_holds(cond, values, categories) for cond in conditions):
                return name
    return UNASSIGNED
