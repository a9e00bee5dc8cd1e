"""A parsed JSON document in, the path of its first non-finite number out.

Python's json module reads `NaN`, `Infinity` and `1e400` as floats that no strict JSON
parser (Meta's included) accepts back: an event carrying one must be refused at intake,
naming the field, rather than sent as invalid JSON later.
"""

from __future__ import annotations

import math
from typing import Any

_MAX_DEPTH = 64


def non_finite_path(document: Any, prefix: str = "") -> str | None:
    """`data.0.custom_data.score` for the first NaN/±Infinity in `document`, else None."""
    stack: list[tuple[Any, str, int]] = [(document, prefix, 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return path or "(the body)"
        elif depth < _MAX_DEPTH and isinstance(value, dict):
            stack.extend(
                (v, f"{path}.{k}" if path else str(k), depth + 1)
                for k, v in reversed(value.items())
            )
        elif depth < _MAX_DEPTH and isinstance(value, list):
            stack.extend(
                (v, f"{path}.{i}" if path else str(i), depth + 1)
                for i, v in reversed(list(enumerate(value)))
            )
    return None
