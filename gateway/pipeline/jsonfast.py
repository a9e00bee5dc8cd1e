"""orjson on the hot paths, with the stdlib's results wherever the two would differ.

orjson parses and writes JSON several times faster than the stdlib `json`, but not always the
same way: it reads an integer past 64 bits as a float (losing digits), refuses `NaN`,
`Infinity`, `1e400`, lone surrogates and a UTF-8 BOM that `json.loads` accepts, and refuses to
write integers past 64 bits, non-str keys and lone surrogates. Every such input goes to the
stdlib instead, so a caller sees exactly what `json.loads` gave, or raised, before.

Written JSON is compact and UTF-8 (no `\\uXXXX` escapes for non-ASCII text): the same
document, not the same bytes, as `json.dumps(..., separators=(",", ":"))`. Use these only
where nothing compares or hashes the serialized bytes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# A run of 19 digits may be an integer orjson reads as a float (past 2**64, or below -2**63);
# shorter ones always fit. A long fraction or a digit string inside a text also matches:
# those go to the stdlib too, which is slower there, never wrong. Found by mapping every
# digit to "0" and everything else to " ": bytes.translate and `in` run in C over the buffer,
# ~20x faster than re's `\d{19}`, which tries every position in turn.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN = b"0" * 19
_compact = json.JSONEncoder(separators=(",", ":")).encode


class _Refused:
    """`orjson_loads`'s answer for a document it leaves to the stdlib."""


REFUSED = _Refused()


def orjson_loads(data: bytes | str) -> Any:
    """What `json.loads(data)` gives, read by orjson; `REFUSED` when orjson cannot tell.

    A value it returns holds no NaN or infinity: orjson reads none (`1e400` included).
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: the stdlib reads them
            return REFUSED
    if _LONG_RUN in data.translate(_DIGITS_ONLY):
        return REFUSED
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # Invalid for orjson: the stdlib either reads it (NaN, a BOM, ...) or raises the
        # error its callers already report.
        return REFUSED


def loads(data: bytes | str) -> Any:
    """`json.loads(data)`: the same value, or the same exception, only faster."""
    value = orjson_loads(data)
    return json.loads(data) if value is REFUSED else value


def dumps_bytes(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON.

    Non-finite floats are written as `null` (the stdlib writes `NaN`, which no strict parser
    reads): callers pass documents already refused at intake when they carry one.
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # Past 64-bit ints, non-str keys, lone surrogates: what the stdlib writes.
        return _compact(value).encode("ascii")


def dumps(value: Any) -> str:
    """`value` as compact JSON text (see `dumps_bytes`)."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:
        return _compact(value)
