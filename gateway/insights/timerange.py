"""`--since`/`--until` (or `since`/`until` query parameters) in, a report's epoch range out.

Accepted: an ISO date (`2026-12-01`, a whole UTC day: `--until 2026-12-06` includes the
6th), an ISO date and time (`2026-12-01T08:00:00Z`, naive means UTC), or a span back from
now (`7d`, `12h`, `90m`). Defaults: the last 30 days up to now.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta

DEFAULT_SPAN = 30 * 86400
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|h|d|w)\s*$")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class RangeError(ValueError):
    """A since/until value that is none of the accepted forms, or an empty range."""


def parse_point(value: str, *, now: float, end: bool = False) -> float:
    """Epoch seconds of one bound; a bare date as `until` (`end`) means the end of that day."""
    span = _SPAN.match(value)
    if span:
        return now - float(span.group(1)) * _UNITS[span.group(2)]
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return (start + timedelta(days=1) if end else start).timestamp()
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RangeError(
            f"{value!r} is not a date: use an ISO date (2026-12-01), a date and time "
            "(2026-12-01T08:00:00Z) or a span back from now (7d, 12h)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_range(
    since: str | None, until: str | None, *, now: float | None = None
) -> tuple[int, int]:
    """[since, until) in whole epoch seconds; RangeError for a bad or empty range."""
    now = time.time() if now is None else now
    end = parse_point(until, now=now, end=True) if until else now
    start = parse_point(since, now=now) if since else end - DEFAULT_SPAN
    # `until` is exclusive: an event at the very second `now` still counts.
    lo, hi = int(start), int(end) + (0 if until else 1)
    if lo >= hi:
        raise RangeError(f"since ({since}) must be before until ({until or 'now'})")
    return lo, hi
