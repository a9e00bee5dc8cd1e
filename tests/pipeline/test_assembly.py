"""The merge rules of event assembly: examples of each rule, and properties over any copies."""

from __future__ import annotations

import itertools
from functools import reduce
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline import assembly
from gateway.pipeline.assembly import Copy, State, complete, item_outcome, merge, start

EM1, EM2, PH = "a" * 64, "b" * 64, "c" * 64


def page(**payload: Any) -> Copy:
    base = {
        "event_name": "Purchase",
        "event_id": "purchase-1",
        "event_time": 1000,
        "action_source": "website",
        "event_source_url": "https://shop.example/thank-you",
        "user_data": {},
        "custom_data": {"value": 10.0, "currency": "EUR"},
    }
    base.update(payload)
    clear = {
        "client_ip_address": "203.0.113.7",
        "client_user_agent": "Browser/1",
        "fbp": "fb.1.1.1",
    }
    return Copy(base, clear, "rule", "page:purchase")


def webhook(**payload: Any) -> Copy:
    base = {
        "event_name": "Purchase",
        "event_id": "purchase-1",
        "event_time": 1010,
        "action_source": "system_generated",
        "user_data": {"em": EM2, "ph": PH},
        "custom_data": {"value": 12.5, "currency": "EUR", "order_id": "1"},
    }
    base.update(payload)
    # A backend's own network identity: must never replace the browser's.
    return Copy(base, {"client_ip_address": "198.51.100.1"}, "webhook", "webhook:stripe")


def assembled(*copies: Copy) -> State:
    state = start(copies[0])
    for copy in copies[1:]:
        state = merge(state, copy).state
    return state


def test_page_then_webhook_is_the_richest_event() -> None:
    state = assembled(page(user_data={"em": EM1}), webhook())
    assert state.payload["user_data"] == {"em": [EM1, EM2], "ph": PH}
    # The browser's identity stays; the webhook's value (source of record) wins.
    assert state.clear == {
        "client_ip_address": "203.0.113.7",
        "client_user_agent": "Browser/1",
        "fbp": "fb.1.1.1",
    }
    assert state.payload["custom_data"] == {"value": 12.5, "currency": "EUR", "order_id": "1"}
    assert state.payload["event_time"] == 1000
    assert state.payload["action_source"] == "website"
    assert state.payload["event_source_url"] == "https://shop.example/thank-you"
    assert state.sources == ("page:purchase", "webhook:stripe")


def test_webhook_then_page_gives_the_same_event() -> None:
    one = assembled(page(user_data={"em": EM1}), webhook())
    other = assembled(webhook(), page(user_data={"em": EM1}))
    assert other.clear == one.clear
    assert other.payload["custom_data"] == one.payload["custom_data"]
    assert other.payload["action_source"] == "website"
    assert sorted(other.payload["user_data"]["em"]) == sorted(one.payload["user_data"]["em"])


def test_a_beacon_never_overrides_the_page_or_the_webhook() -> None:
    beacon = Copy(
        {
            "event_name": "Purchase",
            "event_id": "purchase-1",
            "event_time": 990,
            "custom_data": {"value": 1.0, "content_ids": ["sku"]},
        },
        {"client_ip_address": "10.0.0.1", "fbc": "fb.1.1.abc"},
        "collect",
        "browser",
    )
    state = assembled(page(), beacon)
    assert state.payload["custom_data"]["value"] == 10.0
    assert state.payload["custom_data"]["content_ids"] == ["sku"]
    assert state.clear["client_ip_address"] == "203.0.113.7"
    assert state.clear["fbc"] == "fb.1.1.abc"
    assert state.payload["event_time"] == 990


def test_hashed_values_are_a_bounded_set() -> None:
    state = start(page(user_data={"em": EM1}))
    for i in range(10):
        state = merge(state, page(user_data={"em": f"{i:064x}"})).state
    values = state.payload["user_data"]["em"]
    assert len(values) == assembly.MAX_VALUES
    assert values[0] == EM1  # what was stored is kept when the set is full


def test_consent_restrictions_are_kept_from_any_copy() -> None:
    state = assembled(
        page(),
        webhook(
            opt_out=True,
            data_processing_options=["LDU"],
            data_processing_options_country=0,
            data_processing_options_state=0,
        ),
    )
    assert state.payload["opt_out"] is True
    assert state.payload["data_processing_options"] == ["LDU"]
    assert assembly.is_restricted(state.payload)
    assert assembly.learnable(state.payload) == {}


def test_what_a_copy_adds_is_reported() -> None:
    result = merge(start(page()), webhook())
    assert set(result.added) >= {
        "user_data.em",
        "user_data.ph",
        "custom_data.value",
        "custom_data.order_id",
    }
    assert merge(result.state, webhook()).added == ()


def test_profiles_complete_only_what_is_missing_and_never_a_restricted_event() -> None:
    payload = {"event_name": "PageView", "user_data": {"em": EM1}}
    done, added = complete(payload, {"em": [EM2], "ph": [PH], "fbp": ["not-hashed"]})
    assert done["user_data"] == {"em": EM1, "ph": PH}
    assert added == ("ph",)
    assert complete({**payload, "opt_out": True}, {"ph": [PH]}) == (
        {**payload, "opt_out": True},
        (),
    )


def test_item_outcome_over_pixels() -> None:
    assert item_outcome(["merged", "new"]) == "new"
    assert item_outcome(["late", "merged"]) == "merged"
    assert item_outcome(["late", "late"]) == "late"


# properties ------------------------------------------------------------------------------

SOURCES = ["api", "webhook", "rule", "proxy", "collect"]
hashes = st.sampled_from([f"{i:064x}" for i in range(4)])
copies = st.builds(
    lambda source, ids, custom, clear, when, action: Copy(
        {
            "event_name": "Purchase",
            "event_id": "x",
            "event_time": when,
            "action_source": action,
            "user_data": ids,
            "custom_data": custom,
        },
        clear,
        source,
        assembly.label(source, "r"),
    ),
    st.sampled_from(SOURCES),
    st.dictionaries(st.sampled_from(["em", "ph", "external_id"]), hashes, max_size=3),
    st.dictionaries(
        st.sampled_from(["value", "currency", "order_id"]), st.integers(0, 3), max_size=3
    ),
    st.dictionaries(
        st.sampled_from(["client_ip_address", "fbp", "fbc"]), st.sampled_from("abc"), max_size=3
    ),
    st.integers(1000, 1010),
    st.sampled_from(["website", "system_generated", "email"]),
)


def _keys(state: State) -> set[str]:
    return (
        {f"u.{k}" for k in state.payload.get("user_data", {})}
        | {f"c.{k}" for k in state.payload.get("custom_data", {})}
        | {f"x.{k}" for k in state.clear}
    )


def _ids(state: State) -> dict[str, set[str]]:
    return {k: set(assembly._values(v)) for k, v in state.payload.get("user_data", {}).items()}


def _unique_top(copies: list[Copy], table: Any, section: str, key: str) -> bool:
    """True when one copy alone has the highest rank among those carrying `key`."""

    def has(c: Copy) -> bool:
        return key in (c.clear if section == "clear" else c.payload.get(section, {}))

    ranks = [table[c.source] for c in copies if has(c)]
    return bool(ranks) and ranks.count(max(ranks)) == 1


@settings(max_examples=150, deadline=None)
@given(st.lists(copies, min_size=1, max_size=4))
def test_merging_is_order_independent_for_the_fields_it_fills(given_copies: list[Copy]) -> None:
    results = [assembled(*order) for order in itertools.permutations(given_copies)]
    first = results[0]
    for other in results[1:]:
        assert _keys(other) == _keys(first)
        assert _ids(other) == _ids(first)  # at most 4 distinct values: within the bound
        assert other.payload["event_time"] == first.payload["event_time"]
        assert (other.payload["action_source"] == "website") == (
            first.payload["action_source"] == "website"
        )
        for key in first.payload.get("custom_data", {}):
            if _unique_top(given_copies, assembly.RECORD_RANK, "custom_data", key):
                assert other.payload["custom_data"][key] == first.payload["custom_data"][key]
        for key in first.clear:
            if _unique_top(given_copies, assembly.IDENTITY_RANK, "clear", key):
                assert other.clear[key] == first.clear[key]


@settings(max_examples=150, deadline=None)
@given(copies, copies)
def test_merging_never_removes_a_value(one: Copy, two: Copy) -> None:
    before = start(one)
    after = merge(before, two).state
    assert _keys(before) <= _keys(after)
    assert _keys(start(two)) <= _keys(after)
    for key, values in _ids(before).items():
        assert values <= _ids(after)[key]
    assert after.payload["event_time"] == min(one.payload["event_time"], two.payload["event_time"])
    assert reduce(lambda a, b: a and b in after.sources, before.sources, True)
