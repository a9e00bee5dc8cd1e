"""Durations as settings and rule files write them: seconds as a number, or a string such as
`500ms`, `90s`, `15m`, `2h`, `7d`.

A module of its own below gateway.settings: the tables settings imports (catalog,
audiences, insights) parse durations the same way without closing an import circle.
"""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as `90s`, `15m`, `7d`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m, 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration: use seconds or a string like 30s, 15m, 7d")
