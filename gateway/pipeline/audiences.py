"""Audience membership: a visitor's stored events and hashed identifiers in, rows for Meta out.

Pure: the store hands over the events of the window (`Hit`) and the visitors' identifiers;
this decides who is a member and what row Meta receives for them.

The rule, for one audience and one site, at time `now`, over the events whose `event_time`
lies in [now - window, now]:

1. a visitor (the keyed hash of their `_fbp`, see gateway/delivery/profiles.py) is a
   candidate with at least `min_count` events named in `events`, whose `custom_data.value`
   summed is at least `min_value` when that is set. Values are summed per currency, never
   across two: with the audience's `currency` set only values in that currency count;
   without it, the values of any one currency must reach `min_value` (an event's value
   without a currency is a currency of its own, "");
2. an event named in `exclude_events` at or after the candidate's last `events` event takes
   them out (a Purchase after the AddToCart; an AddToCart after the Purchase brings them
   back in);
3. a visitor with any restricted event among these (opt_out, Limited Data Use: a visitor who
   withdrew or limited consent) is out — events of visitors without consent are never
   stored at all;
4. a member needs identifiers Meta can match: EMAIL, PHONE or EXTERN_ID, or FN and LN
   together (CT, ST, ZIP, COUNTRY, GEN only help a match, never make one).

Rows follow Meta's multi-key schema (`SCHEMA`): one row per member, the first hashed value of
each key in the member's visitor profile (what their consenting events told the site; see
gateway/delivery/profiles.py), "" where none is known. The values are the CAPI hashes already
stored (SHA-256 of the same normalization Meta asks for customer files).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

# Meta's multi-key schema names, in the order rows are written, and the CAPI key of each.
# `db` is left out: Meta wants DOBY/DOBM/DOBD hashed separately, a hashed YYYYMMDD cannot
# be split.
SCHEMA: tuple[str, ...] = (
    "EMAIL",
    "PHONE",
    "FN",
    "LN",
    "CT",
    "ST",
    "ZIP",
    "COUNTRY",
    "GEN",
    "EXTERN_ID",
)
CAPI_KEYS: tuple[str, ...] = (
    "em",
    "ph",
    "fn",
    "ln",
    "ct",
    "st",
    "zp",
    "country",
    "ge",
    "external_id",
)
# Meta's limit of rows per /users call.
MAX_ROWS = 10_000

Row = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """An audience's membership rule (from `AudienceSettings`)."""

    events: frozenset[str]
    exclude_events: frozenset[str]
    window: float
    min_count: int = 1
    min_value: float | None = None
    # ISO 4217 code: only values in it count towards `min_value` (None: any one currency).
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    """One stored event of the window, reduced to what membership needs."""

    visitor: str
    event_name: str
    event_time: int
    value: float
    restricted: bool
    # `custom_data.currency` upper-cased, "" when the event has none.
    currency: str = ""


def members(rule: Rule, hits: Iterable[Hit], *, now: float) -> set[str]:
    """The visitors `hits` make members under `rule` (steps 1-3 of the module's rule)."""
    since = now - rule.window
    count: dict[str, int] = {}
    # Per visitor and currency: 10 EUR and 10 USD are not 20 of anything.
    value: dict[str, dict[str, float]] = {}
    last_in: dict[str, int] = {}
    last_out: dict[str, int] = {}
    restricted: set[str] = set()
    for hit in hits:
        if not since <= hit.event_time <= now:
            continue
        if hit.restricted:
            restricted.add(hit.visitor)
        if hit.event_name in rule.events:
            count[hit.visitor] = count.get(hit.visitor, 0) + 1
            if hit.value:
                sums = value.setdefault(hit.visitor, {})
                sums[hit.currency] = sums.get(hit.currency, 0.0) + hit.value
            last_in[hit.visitor] = max(last_in.get(hit.visitor, hit.event_time), hit.event_time)
        elif hit.event_name in rule.exclude_events:
            last_out[hit.visitor] = max(last_out.get(hit.visitor, hit.event_time), hit.event_time)
    out: set[str] = set()
    for visitor, n in count.items():
        if n < rule.min_count or visitor in restricted:
            continue
        if rule.min_value is not None and not _reaches(rule, value.get(visitor, {})):
            continue
        if visitor in last_out and last_out[visitor] >= last_in[visitor]:
            continue
        out.add(visitor)
    return out


def _reaches(rule: Rule, sums: Mapping[str, float]) -> bool:
    """Whether a visitor's value sums (by currency) reach `min_value` in one currency (the
    rule's, when it names one)."""
    assert rule.min_value is not None
    if rule.currency is not None:
        return sums.get(rule.currency, 0.0) >= rule.min_value
    return max(sums.values(), default=0.0) >= rule.min_value


def row(ids: Mapping[str, Sequence[str]]) -> Row | None:
    """A member's row in `SCHEMA` order from their hashed identifiers; None when Meta could
    not match it (step 4)."""
    values = tuple(next((v for v in ids.get(key, ()) if v), "") for key in CAPI_KEYS)
    email, phone, fn, ln, *_, extern = values
    if email or phone or extern or (fn and ln):
        return values
    return None


def row_hash(values: Row) -> str:
    """A row's identity in the audience state (what was sent is kept under it)."""
    return hashlib.sha256("\x1f".join(values).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Changes:
    """What a sync sends: rows to add and rows to remove (by row hash)."""

    add: dict[str, Row]
    remove: dict[str, Row]


def diff(sent: Mapping[str, Row], current: Mapping[str, Row]) -> Changes:
    """The rows to add (in `current`, never sent) and to remove (sent, no longer current)."""
    return Changes(
        add={h: r for h, r in current.items() if h not in sent},
        remove={h: r for h, r in sent.items() if h not in current},
    )


def batches(rows: Sequence[Row], size: int = MAX_ROWS) -> Iterator[Sequence[Row]]:
    """`rows` in slices of at most `size` (Meta takes 10,000 per call)."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def coverage(rows: Iterable[Row]) -> dict[str, float]:
    """Share of rows carrying each schema key (0..1), by Meta's key name."""
    totals = [0] * len(SCHEMA)
    n = 0
    for values in rows:
        n += 1
        for i, value in enumerate(values):
            if value:
                totals[i] += 1
    return {key: (totals[i] / n if n else 0.0) for i, key in enumerate(SCHEMA)}
