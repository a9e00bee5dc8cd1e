"""jsonfast reads and writes like the stdlib `json` wherever orjson would not."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline import jsonfast

# Inputs orjson reads differently from json.loads, or refuses where json.loads reads them.
STDLIB_READS = [
    b"[18446744073709551616]",  # 2**64: orjson gives a float
    b"[-9223372036854775809]",  # below -2**63: orjson gives a float
    b'{"ref":123456789012345678901234567890}',
    "[18446744073709551616]",  # the same as text (PostgreSQL hands jsonb back as str)
    b"[NaN, Infinity, -Infinity]",
    b"[1e400]",
    b'["\\ud800"]',  # a lone surrogate escape
    b"\xef\xbb\xbf[1]",  # a UTF-8 BOM on bytes
    b"[0.12345678901234567890123]",
    b'{"a":1,"b":2,"a":3}',
    b'{"name":"caf\\u00e9 \\ud83d\\ude00"}',  # what json.dumps wrote into stored rows
    b'{"name": "caf\\u00e9", "n": [1, 2.5, -0.0, 1e+16, 1e-07, true, null]}',
    "[18446744073709551615, -9223372036854775808]",  # the 64-bit edges, orjson reads them
]


def same(a: Any, b: Any) -> bool:
    """Equal with types and NaN's place (repr tells 1 from 1.0 and nan from None)."""
    return repr(a) == repr(b)


@pytest.mark.parametrize("data", STDLIB_READS, ids=lambda d: repr(d)[:40])
def test_loads_gives_what_json_loads_gives(data: bytes | str) -> None:
    assert same(jsonfast.loads(data), json.loads(data))


def test_big_integers_keep_their_digits() -> None:
    assert jsonfast.loads(b"[18446744073709551616]") == [2**64]
    assert isinstance(jsonfast.loads("[-9223372036854775809]")[0], int)


@pytest.mark.parametrize("data", [b"", b"[1,", b"[1]x", b"\xff[1]", "\ufeff[1]", b"[.5]", b"[+1]"])
def test_loads_raises_what_json_loads_raises(data: bytes | str) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(data)
    with pytest.raises(ValueError) as got:
        jsonfast.loads(data)
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)


def test_orjson_loads_refuses_what_it_cannot_read_like_the_stdlib() -> None:
    assert jsonfast.orjson_loads(b"[NaN]") is jsonfast.REFUSED
    assert jsonfast.orjson_loads(b"[1e400]") is jsonfast.REFUSED
    assert jsonfast.orjson_loads(b"[18446744073709551616]") is jsonfast.REFUSED
    assert jsonfast.orjson_loads(b'{"a":[1,2.5,"x"]}') == {"a": [1, 2.5, "x"]}


def test_dumps_writes_compact_utf8() -> None:
    value = {"name": "café ☕ 😀", "n": [1, 2.5, None, True]}
    assert jsonfast.dumps_bytes(value) == '{"name":"café ☕ 😀","n":[1,2.5,null,true]}'.encode()
    assert jsonfast.dumps(value) == '{"name":"café ☕ 😀","n":[1,2.5,null,true]}'


@pytest.mark.parametrize(
    "value",
    [{"big": 2**64}, {"neg": -(2**63) - 1}, {"s": "\ud800"}, {1: "int key"}],
    ids=["big", "neg", "surrogate", "int-key"],
)
def test_what_orjson_cannot_write_is_written_by_the_stdlib(value: dict[Any, Any]) -> None:
    expected = json.dumps(value, separators=(",", ":"))
    assert jsonfast.dumps(value) == expected
    assert jsonfast.dumps_bytes(value) == expected.encode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_reads_whatever_the_stdlib_wrote_as_the_stdlib_does(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        assert same(jsonfast.loads(text), json.loads(text))
        try:
            data = text.encode()
        except UnicodeEncodeError:  # a lone surrogate: not UTF-8 bytes
            continue
        assert same(jsonfast.loads(data), json.loads(data))


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    return False


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_what_it_writes_reads_back_as_the_same_document(value: Any) -> None:
    if _has_non_finite(value):
        return  # refused at intake; see dumps_bytes
    assert same(json.loads(jsonfast.dumps(value)), json.loads(json.dumps(value)))
