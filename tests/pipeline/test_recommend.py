"""Recommendations: each rule fires on figures that support it, and only then."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.pipeline.recommend import (
    InsightFacts,
    KeyCoverage,
    Recommendation,
    recommend,
)

GOOD_KEYS = {
    "em": 0.95,
    "ph": 0.5,
    "fn": 0.9,
    "ln": 0.9,
    "external_id": 0.9,
    "fbc": 0.9,
    "fbp": 0.99,
    "client_ip_address": 1.0,
    "client_user_agent": 1.0,
}


def keys(**changes: float) -> dict[str, float]:
    return {**GOOD_KEYS, **changes}


def facts(
    coverage: tuple[KeyCoverage, ...] = (),
    funnel: tuple[tuple[str, int], ...] = (),
    by_channel: Mapping[str, float] | None = None,
    catalog: Mapping[str, float] | None = None,
) -> InsightFacts:
    return InsightFacts(
        coverage=coverage,
        funnel=funnel,
        conversions_by_channel=by_channel or {},
        visitors=500,
        content_ids_in_catalog=catalog,
    )


def kinds(found: list[Recommendation]) -> list[str]:
    return [r.kind for r in found]


def test_healthy_figures_give_no_recommendation() -> None:
    healthy = facts(
        coverage=(
            KeyCoverage("Purchase", "Paid Social", 200, keys()),
            KeyCoverage("PageView", "Organic Search", 5000, keys(em=0.1)),
        ),
        funnel=(
            ("ViewContent", 1000),
            ("AddToCart", 300),
            ("InitiateCheckout", 150),
            ("Purchase", 100),
        ),
        by_channel={"Paid Social": 40, "Organic Search": 30, "Direct": 30},
        catalog={"ViewContent": 0.97},
    )
    assert recommend(healthy) == []


def test_email_coverage_names_both_figures() -> None:
    found = recommend(
        facts(coverage=(KeyCoverage("Purchase", "Paid Social", 250, keys(em=0.4, fbc=0.92)),))
    )
    assert found == [
        Recommendation(
            kind="email_coverage",
            text=(
                "Purchase events from Paid Social carry fbc in 92% of cases but email in 40%: "
                "add a rule that reads the email where it is typed (e.g. the checkout form), "
                "or send it from the backend."
            ),
            figure="em on 40% of 250 Purchase events from Paid Social",
        )
    ]


def test_email_coverage_thresholds() -> None:
    at_threshold = KeyCoverage("Lead", "Email", 100, keys(em=0.6))
    assert recommend(facts(coverage=(at_threshold,))) == []
    too_few = KeyCoverage("Purchase", "Paid Social", 19, keys(em=0.0))
    assert recommend(facts(coverage=(too_few,))) == []
    assert kinds(recommend(facts(coverage=(too_few,)), min_events=10)) == ["email_coverage"]
    # Page views carry no email on most sites: that is no finding.
    page_views = KeyCoverage("PageView", "Direct", 10_000, keys(em=0.0))
    assert recommend(facts(coverage=(page_views,))) == []
    # Nothing carries anything: the figure says so without a misleading comparison.
    bare = KeyCoverage("Purchase", "", 50, dict.fromkeys(GOOD_KEYS, 0.0))
    (only,) = [r for r in recommend(facts(coverage=(bare,))) if r.kind == "email_coverage"]
    assert only.text.startswith("Purchase events carry email in only 0% of cases:")


def test_fbc_missing_only_for_paid_social() -> None:
    lost = KeyCoverage("Purchase", "Paid Social", 80, keys(fbc=0.3))
    (found,) = recommend(facts(coverage=(lost,)))
    assert found.kind == "fbc_missing"
    assert found.figure == "fbc on 30% of 80 Purchase events from Paid Social"
    organic = KeyCoverage("Purchase", "Organic Search", 80, keys(fbc=0.0))
    assert recommend(facts(coverage=(organic,))) == []
    assert (
        recommend(facts(coverage=(KeyCoverage("Purchase", "Paid Social", 80, keys(fbc=0.5)),)))
        == []
    )


def test_fbp_missing_only_on_browser_events() -> None:
    browser = KeyCoverage("ViewContent", "Direct", 500, keys(fbp=0.7))
    (found,) = recommend(facts(coverage=(browser,)))
    assert found.kind == "fbp_missing"
    assert found.figure == "fbp on 70% of 500 ViewContent events from Direct"
    # Backend events (no browser user agent) are not expected to carry fbp.
    backend = KeyCoverage("Purchase", "", 500, keys(fbp=0.0, client_user_agent=0.2))
    assert recommend(facts(coverage=(backend,))) == []
    assert (
        recommend(facts(coverage=(KeyCoverage("ViewContent", "Direct", 500, keys(fbp=0.8)),))) == []
    )


def test_funnel_drop_and_inverted_steps() -> None:
    found = recommend(
        facts(
            funnel=(
                ("ViewContent", 1000),
                ("AddToCart", 150),
                ("InitiateCheckout", 100),
                ("Purchase", 160),
            )
        )
    )
    assert found == [
        Recommendation(
            kind="funnel_drop",
            text=(
                "Only 15% of the visitors with ViewContent go on to AddToCart: look at that "
                "step of the site, or check that the rule recording AddToCart fires."
            ),
            figure="1000 visitors with ViewContent, 150 with AddToCart",
        ),
        Recommendation(
            kind="funnel_inverted",
            text=(
                "More visitors reach Purchase than InitiateCheckout: InitiateCheckout is not "
                "recorded for every visitor; check its rule."
            ),
            figure="100 visitors with InitiateCheckout, 160 with Purchase",
        ),
    ]


def test_funnel_thresholds() -> None:
    # Exactly 20% kept is an 80% loss: not more than 80%.
    assert recommend(facts(funnel=(("ViewContent", 100), ("AddToCart", 20)))) == []
    assert kinds(recommend(facts(funnel=(("ViewContent", 100), ("AddToCart", 19))))) == [
        "funnel_drop"
    ]
    # Too few visitors to say anything.
    assert recommend(facts(funnel=(("ViewContent", 19), ("AddToCart", 0)))) == []
    assert recommend(facts(funnel=(("AddToCart", 10), ("Purchase", 15)))) == []
    assert recommend(facts(funnel=(("AddToCart", 20), ("Purchase", 30)))) == []
    assert kinds(recommend(facts(funnel=(("AddToCart", 20), ("Purchase", 31))))) == [
        "funnel_inverted"
    ]
    assert recommend(facts(funnel=(("ViewContent", 500),))) == []


def test_catalog_mismatch_needs_a_catalog_and_enough_events() -> None:
    coverage = (
        KeyCoverage("ViewContent", "Direct", 300, keys()),
        KeyCoverage("ViewContent", "Paid Social", 100, keys()),
        KeyCoverage("AddToCart", "Direct", 10, keys()),
    )
    found = recommend(facts(coverage=coverage, catalog={"ViewContent": 0.65, "AddToCart": 0.0}))
    assert found == [
        Recommendation(
            kind="catalog_mismatch",
            text=(
                "The content ids of 35% of ViewContent events are not ids in the catalog: Meta "
                "cannot tie them to products for dynamic ads; make the rule's content_ids use "
                "the catalog's item id."
            ),
            figure="65% of 400 ViewContent events with catalog content ids",
        )
    ]
    assert recommend(facts(coverage=coverage, catalog=None)) == []
    assert recommend(facts(coverage=coverage, catalog={"ViewContent": 0.9})) == []


def test_channel_shares() -> None:
    found = recommend(facts(by_channel={"Direct": 60.0, "Unassigned": 15.0, "Email": 25.0}))
    assert kinds(found) == ["direct_share", "unassigned_share"]
    assert found[0].figure == "60% of 100 conversions Direct (last click)"
    assert found[1].figure == "15% of 100 conversions Unassigned (last click)"
    assert recommend(facts(by_channel={"Direct": 50.0, "Unassigned": 10.0, "Email": 40.0})) == []
    # 19 conversions are too few to judge.
    assert recommend(facts(by_channel={"Direct": 19.0})) == []
    assert kinds(recommend(facts(by_channel={"Direct": 20.0}))) == ["direct_share"]


def test_every_recommendation_carries_its_figure() -> None:
    everything = facts(
        coverage=(KeyCoverage("Purchase", "Paid Social", 100, keys(em=0.1, fbc=0.1, fbp=0.1)),),
        funnel=(("ViewContent", 1000), ("AddToCart", 10)),
        by_channel={"Direct": 90.0, "Unassigned": 10.5},
        catalog={"Purchase": 0.1},
    )
    found = recommend(everything)
    assert sorted(kinds(found)) == sorted(
        [
            "email_coverage",
            "fbc_missing",
            "fbp_missing",
            "funnel_drop",
            "catalog_mismatch",
            "direct_share",
            "unassigned_share",
        ]
    )
    for item in found:
        assert any(ch.isdigit() for ch in item.figure)
        assert item.text.endswith(".")


def test_no_conversions_from_many_visitors() -> None:
    silent = InsightFacts(coverage=(), funnel=(), conversions_by_channel={}, visitors=1000)
    (found,) = recommend(silent)
    assert found.kind == "no_conversions"
    assert found.figure == "0 conversions from 1000 visitors"
    few = InsightFacts(coverage=(), funnel=(), conversions_by_channel={}, visitors=999)
    assert recommend(few) == []
    one = InsightFacts(coverage=(), funnel=(), conversions_by_channel={"Email": 1.0}, visitors=5000)
    assert recommend(one) == []


def test_an_all_channel_finding_stands_for_its_channel_rows() -> None:
    # Reports give each event per channel and over all channels (channel "").
    everywhere = (
        KeyCoverage("Purchase", "", 300, keys(em=0.3)),
        KeyCoverage("Purchase", "Paid Social", 100, keys(em=0.3)),
        KeyCoverage("Purchase", "Organic Search", 200, keys(em=0.3)),
    )
    (found,) = recommend(facts(coverage=everywhere))
    assert found.figure == "em on 30% of 300 Purchase events"
    # Only one channel lacks emails: the whole is fine, the channel row is the finding.
    one_channel = (
        KeyCoverage("Purchase", "", 300, keys(em=0.7)),
        KeyCoverage("Purchase", "Paid Social", 100, keys(em=0.3)),
        KeyCoverage("Purchase", "Organic Search", 200, keys(em=0.9)),
    )
    (found,) = recommend(facts(coverage=one_channel))
    assert found.figure == "em on 30% of 100 Purchase events from Paid Social"
    # Another kind on a channel row is kept beside the all-channel finding.
    mixed = (
        KeyCoverage("Purchase", "", 300, keys(em=0.3)),
        KeyCoverage("Purchase", "Paid Social", 100, keys(em=0.3, fbc=0.2)),
    )
    assert kinds(recommend(facts(coverage=mixed))) == ["email_coverage", "fbc_missing"]


def test_catalog_counts_an_event_once_when_an_all_channel_row_exists() -> None:
    coverage = (
        KeyCoverage("ViewContent", "", 30, keys()),
        KeyCoverage("ViewContent", "Direct", 15, keys()),
        KeyCoverage("ViewContent", "Email", 15, keys()),
    )
    (found,) = recommend(facts(coverage=coverage, catalog={"ViewContent": 0.5}))
    assert found.figure == "50% of 30 ViewContent events with catalog content ids"
