"""The membership rule and Meta's rows, without a store (gateway/pipeline/audiences.py)."""

from __future__ import annotations

import hashlib

from gateway.pipeline.audiences import (
    SCHEMA,
    Hit,
    Rule,
    batches,
    coverage,
    diff,
    members,
    row,
    row_hash,
)

NOW = 1_800_000_000
DAY = 86400
CART = Rule(
    events=frozenset({"AddToCart"}), exclude_events=frozenset({"Purchase"}), window=14 * DAY
)


def hit(
    visitor: str,
    name: str,
    ago: float,
    value: float = 0.0,
    restricted: bool = False,
    currency: str = "EUR",
) -> Hit:
    return Hit(visitor, name, int(NOW - ago), value, restricted, currency)


def test_exclusion_at_the_same_second_as_the_cart_takes_out() -> None:
    hits = [hit("a", "AddToCart", DAY), hit("a", "Purchase", DAY), hit("b", "AddToCart", DAY)]
    assert members(CART, hits, now=NOW) == {"b"}


def test_the_last_cart_decides_against_the_last_purchase() -> None:
    hits = [
        hit("a", "AddToCart", 5 * DAY),
        hit("a", "Purchase", 4 * DAY),
        hit("a", "AddToCart", 3 * DAY),  # back in
        hit("b", "AddToCart", 5 * DAY),
        hit("b", "AddToCart", 4 * DAY),
        hit("b", "Purchase", 3 * DAY),  # out
    ]
    assert members(CART, hits, now=NOW) == {"a"}


def test_window_bounds_are_inclusive_and_future_events_do_not_count() -> None:
    hits = [
        hit("edge", "AddToCart", 14 * DAY),
        hit("old", "AddToCart", 14 * DAY + 1),
        hit("future", "AddToCart", -60),
    ]
    assert members(CART, hits, now=NOW) == {"edge"}


def test_min_count_and_min_value_both_apply() -> None:
    rule = Rule(frozenset({"Purchase"}), frozenset(), 30 * DAY, min_count=2, min_value=100)
    hits = [
        hit("a", "Purchase", DAY, 60),
        hit("a", "Purchase", 2 * DAY, 40),  # 2 purchases, 100: in
        hit("b", "Purchase", DAY, 500),  # one purchase: out
        hit("c", "Purchase", DAY, 10),
        hit("c", "Purchase", DAY, 10),  # two, but 20: out
    ]
    assert members(rule, hits, now=NOW) == {"a"}


def test_a_restricted_event_takes_the_visitor_out() -> None:
    hits = [hit("a", "AddToCart", 2 * DAY), hit("a", "AddToCart", DAY, restricted=True)]
    assert members(CART, hits, now=NOW) == set()


def test_rows_need_a_key_meta_matches_on() -> None:
    em = hashlib.sha256(b"jane@example.com").hexdigest()
    assert row({"em": [em, "other"], "ct": ["c"]}) == (em, "", "", "", "c", "", "", "", "", "")
    assert row({"fn": ["f"], "ln": ["l"]}) is not None
    assert row({"external_id": ["x"]}) is not None
    assert row({"fn": ["f"], "ge": ["g"]}) is None  # Meta refuses fn+ge alone
    assert row({"ct": ["c"], "zp": ["z"], "country": ["us"], "st": ["s"]}) is None
    assert row({}) is None
    assert len(SCHEMA) == 10 and SCHEMA[0] == "EMAIL" and SCHEMA[-1] == "EXTERN_ID"


def test_diff_batches_and_coverage() -> None:
    a, b, c = ("a",) + ("",) * 9, ("b", "p") + ("",) * 8, ("c",) + ("",) * 9
    sent = {row_hash(a): a, row_hash(b): b}
    now = {row_hash(b): b, row_hash(c): c}
    changes = diff(sent, now)
    assert list(changes.add.values()) == [c] and list(changes.remove.values()) == [a]
    assert [len(part) for part in batches([a] * 25_001)] == [10_000, 10_000, 5_001]
    cov = coverage([a, b])
    assert cov["EMAIL"] == 1.0 and cov["PHONE"] == 0.5 and cov["ZIP"] == 0.0
    assert coverage([]) == dict.fromkeys(SCHEMA, 0.0)


def test_min_value_never_sums_two_currencies() -> None:
    hits = [
        # 60 EUR + 60 USD is not 120 of anything: out without a currency, out with EUR.
        hit("mixed", "Purchase", DAY, 60, currency="EUR"),
        hit("mixed", "Purchase", DAY, 60, currency="USD"),
        hit("eur", "Purchase", DAY, 70, currency="EUR"),
        hit("eur", "Purchase", 2 * DAY, 40, currency="EUR"),
        hit("usd", "Purchase", DAY, 150, currency="USD"),
        hit("usd", "Purchase", DAY, 5, currency="EUR"),
    ]
    anyone = Rule(frozenset({"Purchase"}), frozenset(), 30 * DAY, min_value=100)
    assert members(anyone, hits, now=NOW) == {"eur", "usd"}
    in_eur = Rule(frozenset({"Purchase"}), frozenset(), 30 * DAY, min_value=100, currency="EUR")
    assert members(in_eur, hits, now=NOW) == {"eur"}
    in_usd = Rule(frozenset({"Purchase"}), frozenset(), 30 * DAY, min_value=100, currency="USD")
    assert members(in_usd, hits, now=NOW) == {"usd"}
