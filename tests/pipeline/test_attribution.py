"""Attribution models against credits computed by hand, and the sum-to-one property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.attribution import (
    BY,
    MODELS,
    Attribution,
    Conversion,
    Journey,
    Row,
    Touch,
    attribute,
    credits,
    journey_paths,
    removal_effects,
)

DAY = 86400.0
WEEK = 7 * DAY


def touch(at: float, channel: str, source: str = "", campaign: str = "(not set)") -> Touch:
    return Touch(at=at, channel=channel, source=source or channel.lower(), campaign=campaign)


def purchase(at: float, value: float | None = 100.0, currency: str | None = "EUR") -> Conversion:
    return Conversion(at=at, value=value, currency=currency)


def table(result: Attribution) -> dict[str, float]:
    return {row.key: row.conversions for row in result.rows}


def values(result: Attribution) -> dict[str, dict[str, float]]:
    return {row.key: row.value for row in result.rows}


# Three visits a week apart, the last one Direct, a Purchase of 100 EUR during the last one.
THREE = Journey(
    touches=(
        touch(0.0, "Paid Social", "facebook", "spring"),
        touch(WEEK, "Organic Search", "google"),
        touch(2 * WEEK, "Direct", "(direct)"),
    ),
    conversions=(purchase(2 * WEEK),),
)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("first_click", {"Paid Social": 1.0}),
        # The last visit is Direct: the last non-Direct one gets the conversion.
        ("last_click", {"Organic Search": 1.0}),
        ("linear", {"Paid Social": 1 / 3, "Organic Search": 1 / 3, "Direct": 1 / 3}),
        # Ages 2, 1 and 0 half-lives: weights 1/4, 1/2, 1 of a total 7/4 -> 1/7, 2/7, 4/7.
        ("time_decay", {"Paid Social": 1 / 7, "Organic Search": 2 / 7, "Direct": 4 / 7}),
        ("position_based", {"Paid Social": 0.4, "Organic Search": 0.2, "Direct": 0.4}),
    ],
)
def test_three_visits_hand_computed(model: str, expected: dict[str, float]) -> None:
    result = attribute([THREE], model=model, half_life=WEEK)
    assert result.conversions == 1
    assert table(result) == pytest.approx(expected)
    assert {k: v["EUR"] for k, v in values(result).items()} == pytest.approx(
        {k: 100 * share for k, share in expected.items()}
    )


def test_credits_per_touch_match_the_models() -> None:
    at = 2 * WEEK
    assert credits("first_click", THREE.touches, at, half_life=WEEK) == [1.0, 0.0, 0.0]
    assert credits("last_click", THREE.touches, at, half_life=WEEK) == [0.0, 1.0, 0.0]
    assert credits("linear", THREE.touches, at, half_life=WEEK) == pytest.approx([1 / 3] * 3)
    assert credits("time_decay", THREE.touches, at, half_life=WEEK) == pytest.approx(
        [1 / 7, 2 / 7, 4 / 7]
    )
    assert credits("position_based", THREE.touches, at, half_life=WEEK) == pytest.approx(
        [0.4, 0.2, 0.4]
    )
    five = [touch(i * DAY, f"C{i}") for i in range(5)]
    assert credits("position_based", five, 5 * DAY, half_life=WEEK) == pytest.approx(
        [0.4, 0.2 / 3, 0.2 / 3, 0.2 / 3, 0.4]
    )
    assert credits("linear", [], 0.0, half_life=WEEK) == []
    with pytest.raises(ValueError, match="data_driven"):
        credits("data_driven", THREE.touches, at, half_life=WEEK)
    with pytest.raises(ValueError, match="unknown attribution model"):
        credits("u_shaped", THREE.touches, at, half_life=WEEK)


def test_time_decay_far_in_the_past_does_not_underflow() -> None:
    # 5000 half-lives apart: 2**-5000 underflows to 0.0 if computed from the conversion time.
    old = [touch(0.0, "Email"), touch(1.0, "Referral")]
    weights = credits("time_decay", old, 5000 * WEEK, half_life=WEEK)
    assert sum(weights) == pytest.approx(1.0)
    assert weights[0] < weights[1]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # Equal timestamps: the journey's order decides first and last.
        ("first_click", {"Email": 1.0}),
        ("last_click", {"Paid Search": 1.0}),
        ("linear", {"Email": 0.5, "Paid Search": 0.5}),
        ("time_decay", {"Email": 0.5, "Paid Search": 0.5}),
        ("position_based", {"Email": 0.5, "Paid Search": 0.5}),
    ],
)
def test_ties_at_the_same_instant_as_the_conversion(model: str, expected: dict[str, float]) -> None:
    journey = Journey(
        touches=(touch(10.0, "Email"), touch(10.0, "Paid Search")),
        conversions=(purchase(10.0),),
    )
    assert table(attribute([journey], model=model)) == pytest.approx(expected)


@pytest.mark.parametrize("model", MODELS)
def test_one_visit_takes_everything(model: str) -> None:
    journey = Journey(touches=(touch(5.0, "Organic Social"),), conversions=(purchase(6.0, 42.0),))
    result = attribute([journey], model=model)
    assert table(result) == {"Organic Social": 1.0}
    assert values(result) == {"Organic Social": {"EUR": 42.0}}


@pytest.mark.parametrize("model", MODELS)
def test_visits_outside_the_lookback_or_after_the_conversion_do_not_count(model: str) -> None:
    conversion_at = 40 * DAY
    journey = Journey(
        touches=(
            touch(conversion_at - 30 * DAY - 1, "Display"),  # one second too old
            touch(conversion_at - 30 * DAY, "Email"),  # exactly at the lookback's edge: in
            touch(conversion_at + 1, "Paid Social"),  # after the conversion
        ),
        conversions=(purchase(conversion_at),),
    )
    result = attribute([journey], model=model, lookback=30 * DAY)
    assert table(result) == {"Email": 1.0}


@pytest.mark.parametrize(
    ("by", "key"), [("channel", "Direct"), ("source", "(direct)"), ("campaign", "(not set)")]
)
@pytest.mark.parametrize("model", MODELS)
def test_a_conversion_without_touch_in_the_lookback_is_direct(
    model: str, by: str, key: str
) -> None:
    journey = Journey(touches=(touch(0.0, "Email"),), conversions=(purchase(60 * DAY),))
    result = attribute([journey], model=model, by=by, lookback=30 * DAY)
    assert result.to_json() == {
        "model": model,
        "by": by,
        "conversions": 1,
        "rows": [{"key": key, "conversions": 1.0, "value": {"EUR": 100.0}}],
    }


def test_last_click_takes_direct_only_when_there_is_nothing_else() -> None:
    journey = Journey(
        touches=(touch(0.0, "Direct"), touch(1.0, "Direct")), conversions=(purchase(2.0),)
    )
    assert table(attribute([journey], model="last_click")) == {"Direct": 1.0}


def test_by_source_and_campaign_use_the_touch_fields() -> None:
    result = attribute([THREE], model="first_click", by="source")
    assert table(result) == {"facebook": 1.0}
    result = attribute([THREE], model="linear", by="campaign")
    assert table(result) == pytest.approx({"spring": 1 / 3, "(not set)": 2 / 3})


def test_currencies_are_never_added_and_missing_values_count_no_value() -> None:
    journeys = [
        Journey(touches=(touch(0.0, "Email"),), conversions=(purchase(1.0, 100.0, "EUR"),)),
        Journey(
            touches=(touch(0.0, "Email"),),
            conversions=(purchase(1.0, 30.0, "USD"), purchase(2.0, None, None)),
        ),
        Journey(touches=(touch(0.0, "Email"),), conversions=(purchase(1.0, 5.0, None),)),
    ]
    result = attribute(journeys, model="linear")
    assert result.conversions == 4
    assert result.rows == (Row(key="Email", conversions=4.0, value={"EUR": 100.0, "USD": 30.0}),)


def test_rows_are_sorted_by_credited_conversions_then_key() -> None:
    journeys = [
        Journey(touches=(touch(0.0, "Referral"),), conversions=(purchase(1.0),)),
        Journey(touches=(touch(0.0, "Email"),), conversions=(purchase(1.0),)),
        Journey(touches=(touch(0.0, "SMS"),), conversions=(purchase(1.0), purchase(2.0))),
    ]
    assert [r.key for r in attribute(journeys, model="first_click").rows] == [
        "SMS",
        "Email",
        "Referral",
    ]


def test_bad_arguments_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="first_click"):
        attribute([], model="last_touch")
    with pytest.raises(ValueError, match="channel, source, campaign"):
        attribute([], model="linear", by="medium")
    with pytest.raises(ValueError, match="half_life"):
        attribute([], model="time_decay", half_life=0)


# --- data_driven ---------------------------------------------------------------------------

MARKOV_EXAMPLE = [
    Journey(touches=(touch(0, "A"), touch(1, "B")), conversions=(purchase(2, 30.0),)),
    Journey(touches=(touch(0, "A"),), conversions=()),
    Journey(touches=(touch(0, "B"),), conversions=(purchase(1, 60.0),)),
    Journey(touches=(touch(0, "A"), touch(1, "A")), conversions=()),
]


def test_markov_worked_example() -> None:
    """Four visitors: A→B→conv, A→null, B→conv, A→A→null.

    Transitions (A→A is one state visit, a self-loop changes no absorption probability):
    start→A 3/4, start→B 1/4; A→B 1/3, A→null 2/3; B→conv 1.
    P(conv) = 3/4·1/3·1 + 1/4·1 = 1/2.
    Without A: only start→B→conv is left, 1/4: RE(A) = 1 - (1/4)/(1/2) = 1/2.
    Without B: nothing converts, 0: RE(B) = 1 - 0 = 1.
    The first purchase (path A, B, 30 EUR) is split 1/2 : 1 → A 1/3, B 2/3 (10 and 20 EUR);
    the second (path B, 60 EUR) goes to B. Totals: A 1/3, B 5/3; A 10 EUR, B 80 EUR.
    """
    assert removal_effects(MARKOV_EXAMPLE) == pytest.approx({"A": 0.5, "B": 1.0})
    result = attribute(MARKOV_EXAMPLE, model="data_driven")
    assert result.conversions == 2
    assert table(result) == pytest.approx({"A": 1 / 3, "B": 5 / 3})
    assert {k: v["EUR"] for k, v in values(result).items()} == pytest.approx({"A": 10.0, "B": 80.0})
    assert [r.key for r in result.rows] == ["B", "A"]


def test_markov_with_a_cycle_solves_the_chain_exactly() -> None:
    """Paths: A→B→A→conv, B→null, A→conv.

    Transitions: start→A 2/3, start→B 1/3; A→B 1/3, A→conv 2/3; B→A 1/2, B→null 1/2.
    p(A) = 2/3 + 1/3·p(B), p(B) = 1/2·p(A) → p(A) = 4/5, p(B) = 2/5;
    P(conv) = 2/3·4/5 + 1/3·2/5 = 2/3.
    Without A: p(B) = 0 → 0, RE(A) = 1.
    Without B: p(A) = 2/3 → P = 2/3·2/3 = 4/9, RE(B) = 1 - (4/9)/(2/3) = 1/3.
    """
    journeys = [
        Journey(touches=(touch(0, "A"), touch(1, "B"), touch(2, "A")), conversions=(purchase(3),)),
        Journey(touches=(touch(0, "B"),), conversions=()),
        Journey(touches=(touch(0, "A"),), conversions=(purchase(1),)),
    ]
    assert removal_effects(journeys) == pytest.approx({"A": 1.0, "B": 1 / 3})
    # Path {A, B}: 1 : 1/3 → A 3/4, B 1/4; path {A}: A 1.
    assert table(attribute(journeys, model="data_driven")) == pytest.approx(
        {"A": 7 / 4, "B": 1 / 4}
    )


def test_markov_paths_split_a_journey_at_its_conversions() -> None:
    journey = Journey(
        touches=(touch(0, "A"), touch(10, "B"), touch(20, "C"), touch(30, "D")),
        conversions=(purchase(15), purchase(25)),
    )
    assert list(journey_paths([journey], by="channel", lookback=20)) == [
        (("A", "B"), True),
        (("B", "C"), True),
        (("D",), False),
    ]
    nothing = Journey(touches=(touch(0, "A"),), conversions=())
    assert list(journey_paths([nothing], by="channel", lookback=12)) == [(("A",), False)]


def test_markov_without_any_conversion_gives_zero_effects() -> None:
    journeys = [Journey(touches=(touch(0, "A"), touch(1, "B")), conversions=())]
    assert removal_effects(journeys) == {"A": 0.0, "B": 0.0}
    assert attribute(journeys, model="data_driven").rows == ()


# --- the property: one conversion's credits sum to 1 under every model ----------------------

touches_st = st.lists(
    st.builds(
        Touch,
        at=st.integers(min_value=0, max_value=60).map(lambda d: d * DAY / 2),
        channel=st.sampled_from(["Direct", "Email", "Paid Social", "Organic Search"]),
        source=st.sampled_from(["(direct)", "google", "facebook"]),
        campaign=st.sampled_from(["(not set)", "a", "b"]),
    ),
    max_size=8,
).map(lambda ts: tuple(sorted(ts, key=lambda t: t.at)))
conversions_st = st.lists(
    st.builds(
        Conversion,
        at=st.integers(min_value=0, max_value=70).map(lambda d: d * DAY / 2),
        value=st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
        currency=st.sampled_from([None, "EUR", "USD"]),
    ),
    max_size=3,
).map(lambda cs: tuple(sorted(cs, key=lambda c: c.at)))
journeys_st = st.lists(
    st.builds(Journey, touches=touches_st, conversions=conversions_st), max_size=6
)


@settings(max_examples=150, deadline=None)
@given(journeys=journeys_st, model=st.sampled_from(MODELS), by=st.sampled_from(BY))
def test_credits_of_every_conversion_sum_to_one(
    journeys: list[Journey], model: str, by: str
) -> None:
    result = attribute(journeys, model=model, by=by, lookback=10 * DAY, half_life=2 * DAY)
    expected = sum(len(j.conversions) for j in journeys)
    assert result.conversions == expected
    assert math.fsum(r.conversions for r in result.rows) == pytest.approx(expected)
    # Each conversion on its own: its credits sum to 1 and its value is shared out whole.
    for journey in journeys:
        for conversion in journey.conversions:
            alone = attribute(
                [journey] if model == "data_driven" else [Journey(journey.touches, (conversion,))],
                model=model,
                by=by,
                lookback=10 * DAY,
                half_life=2 * DAY,
            )
            if model != "data_driven":
                assert math.fsum(r.conversions for r in alone.rows) == pytest.approx(1.0)
                for currency in {"EUR", "USD"}:
                    credited = math.fsum(r.value.get(currency, 0.0) for r in alone.rows)
                    full = (
                        conversion.value
                        if conversion.currency == currency and conversion.value is not None
                        else 0.0
                    )
                    assert credited == pytest.approx(full, rel=1e-9, abs=1e-6)
    for row in result.rows:
        assert row.conversions >= 0
        assert set(row.value) <= {"EUR", "USD"}


@settings(max_examples=100, deadline=None)
@given(
    touches=touches_st.filter(bool),
    model=st.sampled_from([m for m in MODELS if m != "data_driven"]),
    half_life=st.floats(min_value=1.0, max_value=1e7),
)
def test_credits_function_sums_to_one(
    touches: tuple[Touch, ...], model: str, half_life: float
) -> None:
    weights = credits(model, touches, touches[-1].at, half_life=half_life)
    assert len(weights) == len(touches)
    assert math.fsum(weights) == pytest.approx(1.0)
    assert all(w >= 0 for w in weights)


@pytest.mark.parametrize("model", MODELS)
def test_touches_out_of_order_are_put_in_time_order(model: str) -> None:
    shuffled = Journey(
        touches=(THREE.touches[2], THREE.touches[0], THREE.touches[1]),
        conversions=THREE.conversions,
    )
    assert attribute([shuffled], model=model, half_life=WEEK) == attribute(
        [THREE], model=model, half_life=WEEK
    )
