"""The fast PageView build gives exactly what `events.prepare` gives for the same event."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.models import NewEvent
from gateway.pipeline import pageview
from gateway.pipeline.events import Context, Prepared, Problem, Target, prepare

NOW = 1_760_000_000.0
CTX = Context(targets=[Target("111", None), Target("222", "TEST1")], site="shop", source="proxy")

_urls = st.one_of(
    st.sampled_from(
        [
            "https://shop.example/p/1",
            "http://shop.example:8080/a?b=c",
            "https://shop.example:99999/x",  # a port no parser takes
            "https://shop.example:x/",
            "ftp://shop.example/",
            "https:///nohost",
            "https://shop.example/caf\u00e9",
            "https://shop.example/\udcff",
            "https://shop.example/" + "a" * 4100,
            "https://[::1/",
            "",
        ]
    ),
    st.text(max_size=40).map(lambda tail: "https://shop.example/" + tail),
)
_texts = st.one_of(
    st.sampled_from(["Mozilla/5.0", " Mozilla/5.0", "Mozilla/5.0\t", "", " ", "\udcffbot"]),
    st.text(max_size=20),
)
_ips = st.one_of(
    st.none(),
    st.sampled_from(
        ["203.0.113.9", "::ffff:203.0.113.9", "2001:DB8::1", "2001:db8::1", "10.0.0.1 ", "x", ""]
    ),
)
_cookies = st.one_of(st.none(), st.sampled_from(["fb.1.1.2", " fb.1.1.2", ""]), st.text(max_size=8))
_consents = st.sampled_from(
    [
        {},
        {"opt_out": True},
        {
            "data_processing_options": ["LDU"],
            "data_processing_options_country": 0,
            "data_processing_options_state": 0,
        },
        {
            "opt_out": True,
            "data_processing_options": ["LDU"],
            "data_processing_options_country": 0,
            "data_processing_options_state": 0,
        },
        {"opt_out": False},
        {"data_processing_options": ["XYZ"]},
    ]
)


def _reference(
    fields: dict[str, Any], ctx: Context, hold: float | None
) -> Prepared | list[Problem]:
    event = pageview.event_dict(**fields)
    result = prepare([event], ctx, now=NOW)
    if isinstance(result, list) or hold is None:
        return result
    return Prepared([replace(r, hold=hold) for r in result.rows], result.event_ids)


def _same(fast: Prepared | list[Problem], slow: Prepared | list[Problem]) -> None:
    assert type(fast) is type(slow)
    assert fast == slow
    if isinstance(fast, Prepared) and isinstance(slow, Prepared):
        for a, b in zip(fast.rows, slow.rows, strict=True):
            # Byte for byte what is stored: key order included.
            assert json.dumps(a.payload) == json.dumps(b.payload)
            assert json.dumps(a.clear) == json.dumps(b.clear)


@settings(max_examples=400, deadline=None)
@given(
    url=_urls,
    referrer=st.one_of(st.none(), _urls),
    user_agent=_texts,
    client_ip=_ips,
    fbp=_cookies,
    fbc=_cookies,
    consent=_consents,
    event_id=st.one_of(st.just("0b4f3c1e-1111-4222-8333-444455556666"), st.text(max_size=3)),
    hold=st.sampled_from([None, 3.0]),
    targets=st.sampled_from([CTX, replace(CTX, targets=[]), replace(CTX, site=None)]),
)
def test_build_equals_prepare(
    url: str,
    referrer: str | None,
    user_agent: str,
    client_ip: str | None,
    fbp: str | None,
    fbc: str | None,
    consent: dict[str, Any],
    event_id: str,
    hold: float | None,
    targets: Context,
) -> None:
    fields = dict(
        event_id=event_id,
        url=url,
        referrer=referrer,
        user_agent=user_agent,
        client_ip=client_ip,
        fbp=fbp,
        fbc=fbc,
        consent_fields=consent,
    )
    fast = pageview.build(**fields, ctx=targets, hold=hold, now=NOW)
    _same(fast, _reference(fields, targets, hold))


@pytest.mark.parametrize(
    "consent",
    [
        {},
        {"opt_out": True},
        {
            "data_processing_options": ["LDU"],
            "data_processing_options_country": 0,
            "data_processing_options_state": 0,
        },
    ],
)
def test_a_plain_page_view_takes_the_fast_path(
    consent: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the gateway's own PageView went through prepare()")

    monkeypatch.setattr(pageview, "prepare", refuse)
    fields: dict[str, Any] = dict(
        event_id="0b4f3c1e-1111-4222-8333-444455556666",
        url="https://shop.example/p/1?utm_source=x",
        referrer="https://www.google.com/",
        user_agent="Mozilla/5.0 (X11; Linux x86_64)",
        client_ip="203.0.113.9",
        fbp="fb.1.1700000000000.123",
        fbc=None,
        consent_fields=consent,
    )
    fast = pageview.build(**fields, ctx=CTX, hold=3.0, now=NOW)
    monkeypatch.undo()
    _same(fast, _reference(fields, CTX, 3.0))
    assert isinstance(fast, Prepared)
    assert [r.pixel_id for r in fast.rows] == ["111", "222"]
    assert all(isinstance(r, NewEvent) and r.hold == 3.0 for r in fast.rows)


def test_only_a_user_agent_is_refused_as_prepare_refuses_it() -> None:
    result = pageview.build(
        event_id="e1",
        url="https://shop.example/",
        referrer=None,
        user_agent="Mozilla/5.0",
        client_ip=None,
        fbp=None,
        fbc=None,
        consent_fields={},
        ctx=CTX,
        now=NOW,
    )
    assert isinstance(result, list) and result[0].field == "user_data"


@pytest.mark.parametrize("url", ["https://shop.example/p/1", "https://shop.example/p/ü"])
def test_a_minted_fbp_marks_the_rows_on_either_path(url: str) -> None:
    # The plain URL takes the fast path, the non-ASCII one `prepare`: both say so.
    fields: dict[str, Any] = dict(
        event_id="e1",
        url=url,
        referrer=None,
        user_agent="Mozilla/5.0",
        client_ip="203.0.113.9",
        fbp="fb.1.1700000000000.123",
        fbc=None,
        consent_fields={},
        ctx=CTX,
        now=NOW,
    )
    for new_visitor, hold in ((True, None), (True, 3.0), (False, None)):
        result = pageview.build(**fields, hold=hold, new_visitor=new_visitor)
        assert isinstance(result, Prepared) and result.rows
        assert {(r.new_visitor, r.hold) for r in result.rows} == {(new_visitor, hold)}
