"""Where a visit came from: GA4 source and medium, the channel table, overrides, visit starts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from gateway.pipeline.channels import (
    CHANNELS,
    CLICK_IDS,
    ChannelRule,
    ChannelRules,
    VisitSource,
    default_channel,
    starts_visit,
    visit_source,
)

OWN = ("shop.example",)
LANDING = "https://shop.example/products/mug"


def vs(url: str, referrer: str | None = None, **kwargs: object) -> VisitSource:
    return visit_source(url=url, referrer=referrer, own_hosts=OWN, **kwargs)  # type: ignore[arg-type]


def test_utm_tags_give_source_medium_campaign() -> None:
    got = vs(f"{LANDING}?utm_source=facebook&utm_medium=paid&utm_campaign=spring&x=1")
    assert got == VisitSource(
        source="facebook",
        medium="paid",
        campaign="spring",
        channel="Paid Social",
        click_id=None,
        landing_path="/products/mug",
        referrer_host=None,
    )
    # A missing half is "(not set)"; utm wins over the referrer.
    got = vs(f"{LANDING}?utm_source=newsletter", "https://www.google.com/")
    assert (got.source, got.medium, got.channel) == ("newsletter", "(not set)", "Unassigned")
    assert got.referrer_host == "www.google.com"


def test_google_click_ids_override_utm_tags() -> None:
    got = vs(f"{LANDING}?utm_source=newsletter&utm_medium=email&utm_campaign=x&gclid=abc")
    assert (got.source, got.medium, got.campaign, got.channel, got.click_id) == (
        "google",
        "cpc",
        "x",
        "Paid Search",
        "gclid",
    )
    assert vs(f"{LANDING}?dclid=1").channel == "Display"
    assert vs(f"{LANDING}?wbraid=1").channel == "Paid Search"


def test_ad_only_click_ids_give_the_network_and_paid() -> None:
    assert (vs(f"{LANDING}?msclkid=1").source, vs(f"{LANDING}?msclkid=1").channel) == (
        "bing",
        "Paid Search",
    )
    assert vs(f"{LANDING}?ttclid=1").channel == "Paid Social"
    # Parameter names are matched case-insensitively and reported by their usual spelling.
    got = vs(f"{LANDING}?sccid=1")
    assert (got.click_id, got.source, got.channel) == ("ScCid", "snapchat", "Paid Social")
    # ...but utm tags win over them.
    got = vs(f"{LANDING}?msclkid=1&utm_source=bing&utm_medium=paid_search&utm_campaign=c")
    assert (got.medium, got.campaign, got.click_id) == ("paid_search", "c", "msclkid")
    # An empty value is no click id.
    assert vs(f"{LANDING}?ttclid=").click_id is None


def test_fbclid_cannot_tell_paid_from_organic() -> None:
    with_referrer = vs(f"{LANDING}?fbclid=IwAR1", "https://l.facebook.com/l.php?u=x")
    assert (with_referrer.source, with_referrer.medium, with_referrer.channel) == (
        "l.facebook.com",
        "referral",
        "Organic Social",
    )
    assert with_referrer.click_id == "fbclid"
    # In-app browsers often send no referrer: the click id still names the network.
    alone = vs(f"{LANDING}?fbclid=IwAR1")
    assert (alone.source, alone.medium, alone.channel) == ("facebook", "referral", "Organic Social")
    # Meta's recommended URL parameters make it paid.
    tagged = vs(f"{LANDING}?fbclid=IwAR1&utm_source=facebook&utm_medium=paid")
    assert tagged.channel == "Paid Social"


@pytest.mark.parametrize(
    ("referrer", "source", "medium", "channel"),
    [
        ("https://www.google.de/", "google", "organic", "Organic Search"),
        ("https://search.yahoo.com/search?p=mug", "yahoo", "organic", "Organic Search"),
        ("https://duckduckgo.com/", "duckduckgo", "organic", "Organic Search"),
        ("https://t.co/abc", "t.co", "referral", "Organic Social"),
        ("https://www.youtube.com/watch?v=1", "www.youtube.com", "referral", "Organic Video"),
        ("https://blog.example.org/post", "blog.example.org", "referral", "Referral"),
        ("https://mail.google.com/mail/u/0/", "mail.google.com", "referral", "Referral"),
        ("HTTPS://Blog.Example.ORG:8443/x", "blog.example.org", "referral", "Referral"),
    ],
)
def test_referrers(referrer: str, source: str, medium: str, channel: str) -> None:
    got = vs(LANDING, referrer)
    assert (got.source, got.medium, got.campaign, got.channel) == (
        source,
        medium,
        "(not set)",
        channel,
    )
    assert got.referrer_host == referrer.split("/")[2].split(":")[0].lower()


@pytest.mark.parametrize(
    "referrer",
    [
        None,
        "",
        "https://shop.example/cart",  # own host
        "https://www.shop.example/",  # a subdomain of the own host
        "https://www.paypal.com/checkoutnow",  # a payment provider sending the buyer back
        "https://checkout.stripe.com/c/pay",
        "android-app://com.google.android.gm/",  # not a web page
        "not a url",
        "http://[::1",  # unparseable
    ],
)
def test_no_usable_referrer_is_direct(referrer: str | None) -> None:
    got = vs(LANDING, referrer)
    assert (got.source, got.medium, got.campaign, got.channel) == (
        "(direct)",
        "(none)",
        "(not set)",
        "Direct",
    )
    assert got.referrer_host is None


def test_landing_path_has_no_query_and_survives_a_bad_url() -> None:
    assert vs("https://shop.example/" + "a" * 5000).landing_path == "/" + "a" * 999
    assert vs("relative/page").landing_path == "/relative/page"
    assert vs("https://shop.example/a/b?email=x@y.z#top").landing_path == "/a/b"
    assert vs("https://shop.example").landing_path == "/"
    assert vs("http://[::1/x?utm_source=a").landing_path == "/"


def test_click_ids_are_documented_in_order_of_preference() -> None:
    assert CLICK_IDS[:3] == ("gclid", "gbraid", "wbraid")
    assert {"fbclid", "msclkid", "ttclid", "twclid", "li_fat_id", "epik", "ScCid"} <= set(CLICK_IDS)
    got = vs(f"{LANDING}?fbclid=1&gclid=2")
    assert got.click_id == "gclid"


# --- overrides -----------------------------------------------------------------------------


def rules(*items: dict[str, object]) -> ChannelRules:
    return ChannelRules(TypeAdapter(list[ChannelRule]).validate_python(list(items)))


def test_overrides_win_first_match_regex_or_list() -> None:
    compiled = rules(
        {"channel": "Paid Social", "source": ["facebook", "l.facebook.com"], "medium": "referral"},
        {"channel": "Partners", "source": "partner-.*"},
        {"channel": "Never", "source": "partner-a"},
        {"channel": "Newsletter", "campaign": "nl-[0-9]{4}"},
    )
    assert len(compiled) == 4
    assert vs(f"{LANDING}?fbclid=1", rules=compiled).channel == "Paid Social"
    assert vs(f"{LANDING}?fbclid=1", "https://l.facebook.com/", rules=compiled).channel == (
        "Paid Social"
    )
    assert vs(f"{LANDING}?utm_source=PARTNER-A&utm_medium=x", rules=compiled).channel == "Partners"
    assert vs(
        f"{LANDING}?utm_source=a&utm_medium=email&utm_campaign=nl-2024", rules=compiled
    ).channel == ("Newsletter")
    # A regex must match the whole value; unmatched visits fall through to the defaults.
    assert vs(
        f"{LANDING}?utm_source=a&utm_medium=email&utm_campaign=nl-2024b", rules=compiled
    ).channel == ("Email")
    assert default_channel("google", "cpc", "(not set)", rules=compiled) == "Paid Search"
    assert ChannelRules().channel_for("google", "cpc", "(not set)") is None


# --- visit starts --------------------------------------------------------------------------

MIN = 60.0
TIMEOUT = 30 * MIN


def test_first_page_view_starts_a_visit() -> None:
    current = vs(LANDING)
    assert starts_visit(current, previous=None, previous_seen_at=None, now=0, visit_timeout=TIMEOUT)


def test_inactivity_starts_a_visit_internal_navigation_continues() -> None:
    first = vs(f"{LANDING}?utm_source=newsletter&utm_medium=email&utm_campaign=may")
    internal = vs("https://shop.example/cart", "https://shop.example/products/mug")
    kwargs = {"previous": first, "previous_seen_at": 1000.0, "visit_timeout": TIMEOUT}
    assert not starts_visit(internal, now=1000 + TIMEOUT - 1, **kwargs)  # type: ignore[arg-type]
    assert starts_visit(internal, now=1000 + TIMEOUT, **kwargs)  # type: ignore[arg-type]
    typed_in = vs("https://shop.example/")
    assert not starts_visit(typed_in, now=1010, **kwargs)  # type: ignore[arg-type]


def test_new_campaign_click_id_or_external_referrer_starts_a_visit() -> None:
    first = vs(f"{LANDING}?utm_source=newsletter&utm_medium=email&utm_campaign=may")
    kwargs = {
        "previous": first,
        "previous_seen_at": 1000.0,
        "now": 1060.0,
        "visit_timeout": TIMEOUT,
    }
    other_campaign = vs(f"{LANDING}?utm_source=newsletter&utm_medium=email&utm_campaign=june")
    assert starts_visit(other_campaign, **kwargs)  # type: ignore[arg-type]
    assert starts_visit(vs(f"{LANDING}?gclid=x"), **kwargs)  # type: ignore[arg-type]
    assert starts_visit(vs(LANDING, "https://www.bing.com/"), **kwargs)  # type: ignore[arg-type]
    # Reloading the tagged landing page is the same visit.
    same = vs(f"{LANDING}?utm_source=newsletter&utm_medium=email&utm_campaign=may")
    assert not starts_visit(same, **kwargs)  # type: ignore[arg-type]


def test_second_click_from_the_same_search_engine_continues() -> None:
    first = vs(LANDING, "https://www.google.com/")
    again = vs("https://shop.example/products/cup", "https://www.google.com/")
    assert not starts_visit(
        again, previous=first, previous_seen_at=0.0, now=120.0, visit_timeout=TIMEOUT
    )
    assert starts_visit(
        vs(LANDING, "https://duckduckgo.com/"),
        previous=first,
        previous_seen_at=0.0,
        now=120.0,
        visit_timeout=TIMEOUT,
    )


# --- never raises: it runs on every page view ----------------------------------------------

_PARAM = st.sampled_from(
    ["utm_source", "utm_medium", "utm_campaign", "gclid", "fbclid", "x", "SCCID"]
)
_QUERY = st.lists(st.tuples(_PARAM, st.text(max_size=12)), max_size=5).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)
)


@settings(max_examples=300, deadline=None)
@given(
    url=st.one_of(st.text(max_size=60), _QUERY.map(lambda q: f"https://shop.example/p?{q}")),
    referrer=st.one_of(st.none(), st.text(max_size=40), st.just("https://[bad")),
)
def test_any_input_gives_a_known_channel(url: str, referrer: str | None) -> None:
    got = vs(url, referrer)
    assert got.channel in CHANNELS
    assert got.source and got.medium and got.campaign
    assert got.landing_path.startswith("/")
    assert len(got.landing_path) <= 1000
