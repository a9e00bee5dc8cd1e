"""Event id templates: filled from values, random without, never longer than Meta takes."""

import re

from gateway.pipeline.eventid import render_event_id

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def test_event_id_template_is_deterministic() -> None:
    values = {"order_id": "A17", "value": 19.0}
    assert render_event_id("purchase-{order_id}", values, "purchase") == "purchase-A17"
    assert render_event_id("purchase-{order_id}", values, "purchase") == "purchase-A17"
    assert render_event_id("{order_id}/{value}", values, "r") == "A17/19"
    assert render_event_id("fixed", values, "r") == "fixed"


def test_event_id_without_a_template_is_random() -> None:
    first, second = (render_event_id(None, {}, "r") for _ in range(2))
    assert re.fullmatch(UUID, first)
    assert first != second


def test_event_id_with_a_missing_value_is_unique_per_event() -> None:
    for values in ({}, {"order_id": ""}, {"order_id": None}, {"order_id": []}):
        made = render_event_id("purchase-{order_id}", values, "purchase")
        assert re.fullmatch(f"purchase-{UUID}", made), made


def test_event_id_values_are_not_templates_themselves() -> None:
    values = {"a": "{b}", "b": "B"}
    assert render_event_id("{a}-{b}", values, "r") == "{b}-B"


def test_event_id_renders_json_values_as_json_does() -> None:
    assert render_event_id("x-{paid}", {"paid": True}, "r") == "x-true"
    assert render_event_id("x-{n}", {"n": 3}, "r") == "x-3"
    assert render_event_id("x-{n}", {"n": 2.5}, "r") == "x-2.5"


def test_event_id_is_at_most_256_characters() -> None:
    assert len(render_event_id("p-{order_id}", {"order_id": "x" * 1000}, "r")) == 256
