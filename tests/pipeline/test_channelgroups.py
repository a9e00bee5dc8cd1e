"""GA4's default channel grouping row by row, source categories, and override validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.pipeline.channelgroups import (
    CHANNELS,
    ChannelRule,
    ChannelRules,
    default_channel,
    source_categories,
)


@pytest.mark.parametrize(
    ("source", "medium", "campaign", "channel"),
    [
        ("(direct)", "(none)", "(not set)", "Direct"),
        ("(direct)", "(not set)", "(not set)", "Direct"),
        ("google", "cpc", "brand-cross-network", "Cross-network"),
        ("amazon", "cpc", "(not set)", "Paid Shopping"),
        # The shopping campaign rule comes before Paid Search.
        ("google", "cpc", "summer_shopping", "Paid Shopping"),
        ("google", "cpc", "(not set)", "Paid Search"),
        ("bing", "ppc", "(not set)", "Paid Search"),
        ("facebook", "paid", "spring", "Paid Social"),
        ("Facebook", "CPC", "(not set)", "Paid Social"),  # compared case-insensitively
        ("ig", "paid_social", "(not set)", "Paid Social"),
        ("youtube", "cpv", "(not set)", "Paid Video"),
        ("newsletter-partner", "display", "(not set)", "Display"),
        ("dbm", "cpm", "(not set)", "Display"),
        ("somenetwork", "retargeting", "(not set)", "Paid Other"),
        ("somenetwork", "ppc", "(not set)", "Paid Other"),
        ("etsy.com", "referral", "(not set)", "Organic Shopping"),
        ("partner", "referral", "shop-week", "Organic Shopping"),
        ("l.instagram.com", "referral", "(not set)", "Organic Social"),
        ("partner", "social", "(not set)", "Organic Social"),
        ("vimeo.com", "referral", "(not set)", "Organic Video"),
        ("partner", "video-embed", "(not set)", "Organic Video"),
        ("duckduckgo", "organic", "(not set)", "Organic Search"),
        ("someengine", "organic", "(not set)", "Organic Search"),
        ("news.ycombinator.com", "referral", "(not set)", "Referral"),
        ("app-partner", "link", "(not set)", "Referral"),
        ("newsletter", "email", "(not set)", "Email"),
        ("e-mail", "blast", "(not set)", "Email"),
        ("partner", "affiliate", "(not set)", "Affiliates"),
        ("spotify-ads", "audio", "(not set)", "Audio"),
        ("sms", "text", "(not set)", "SMS"),
        ("app", "web_push", "(not set)", "Mobile Push Notifications"),
        ("app", "mobile-alert", "(not set)", "Mobile Push Notifications"),
        ("firebase", "inapp", "(not set)", "Mobile Push Notifications"),
        ("partner", "flyer", "(not set)", "Unassigned"),
        ("(not set)", "(not set)", "(not set)", "Unassigned"),
    ],
)
def test_default_channel_table(source: str, medium: str, campaign: str, channel: str) -> None:
    assert default_channel(source, medium, campaign) == channel
    assert channel in CHANNELS


def test_source_categories_match_whole_labels_only() -> None:
    assert source_categories("www.google.co.uk") == {"search"}
    assert source_categories("google") == {"search"}
    assert source_categories("lm.facebook.com") == {"social"}
    assert source_categories("youtu.be") == {"video"}
    assert source_categories("googleish.example") == frozenset()
    assert source_categories("mail.google.com") == frozenset()  # webmail, not a search
    assert source_categories("") == frozenset()


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"channel": "X", "source": "(unclosed"}, "not a valid regular expression"),
        ({"channel": "X"}, "matches nothing"),
        ({"channel": "", "source": "a"}, "at least 1 character"),
        ({"channel": "X", "source": "a", "referrer": "b"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_overrides_are_refused(item: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        ChannelRule.model_validate(item)


def test_overrides_come_before_the_defaults() -> None:
    rules = ChannelRules(
        [ChannelRule(channel="Partners", medium=["referral"], source="partner-.*")]
    )
    assert default_channel("partner-a", "referral", "(not set)", rules=rules) == "Partners"
    assert default_channel("partner-a", "referral", "(not set)") == "Referral"
    assert default_channel("other", "referral", "(not set)", rules=rules) == "Referral"
