"""Copies of one event in, one assembled event out: the merge rules of event assembly.

Pure: no I/O. The store calls `merge` when a copy of an event (same pixel, event_name and
event_id) arrives while the first is still unsent; its SQL only reads the stored row and
writes the result back, so another backend can reuse these rules as they are.

The rules, as data (`POLICY` and the two rank tables below):
- hashed identifiers (em, ph, ...): the union of the values, at most `MAX_VALUES` per key
  (Meta accepts a list for each); what is stored is never dropped to make room;
- clear fields (IP, user agent, fbp, fbc, ...) and the page URLs: filled when missing; a
  value is replaced only by one from a source closer to the browser (`IDENTITY_RANK`), so a
  webhook's or backend's own network identity never overwrites the visitor's;
- custom_data fields and action_source: added when missing; on disagreement the source of
  record wins (`RECORD_RANK`: events API and webhooks over page rules over browser beacons);
  "website" wins action_source as soon as any copy is one (it carries the browser's data);
- event_time: the earliest; opt_out and Limited Data Use: the most restrictive copy wins;
- between equal ranks the value already stored stays.
Every field keeps the rank of the copy it came from (`State.ranks`), so the outcome does
not depend on the order in which copies of different ranks arrive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.pipeline.normalize import CLEAR_FIELDS, HASHED_FIELDS

Outcome = Literal["new", "merged", "late"]

# Values kept per hashed identifier: an email typed at checkout and the payment provider's
# one fit; an endless list would only dilute matching.
MAX_VALUES = 5
# Source labels kept per event (e.g. "page:purchase", "webhook:stripe-purchase").
MAX_SOURCES = 16

# Who knows the business facts (value, currency, contents) best.
RECORD_RANK: Mapping[str, int] = {"api": 3, "webhook": 3, "rule": 2, "proxy": 2, "collect": 1}
# Who saw the visitor's browser most directly (IP, user agent, cookies, page URL).
IDENTITY_RANK: Mapping[str, int] = {
    "proxy": 3,
    "rule": 3,
    "collect": 2,
    "api": 1,
    "webhook": 1,
}
_URL_FIELDS = ("event_source_url", "referrer_url")
_DPO_FIELDS = (
    "data_processing_options",
    "data_processing_options_country",
    "data_processing_options_state",
)
_FIXED = frozenset({"event_name", "event_id", "event_time", "user_data", "custom_data"})
_FIXED_ALL = _FIXED | {"action_source", "opt_out", *_URL_FIELDS, *_DPO_FIELDS}


@dataclass(frozen=True, slots=True)
class Copy:
    """One copy of an event as a source offers it."""

    payload: Mapping[str, Any]  # the CAPI event with hashed user_data only
    clear: Mapping[str, Any]  # the clear user_data fields
    source: str  # NewEvent.source: "api", "webhook", "rule", "proxy", "collect"
    label: str  # what `sources` records, e.g. "page:purchase"


@dataclass(frozen=True, slots=True)
class State:
    """An assembled event: what would be sent, and where each contested field came from."""

    payload: dict[str, Any]
    clear: dict[str, Any]
    sources: tuple[str, ...]
    # "<section>.<key>" -> rank of the copy the value came from (see `_rank_key`)
    ranks: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Merged:
    """The result of merging one copy: the new state and the fields the copy added."""

    state: State
    added: tuple[str, ...]  # "user_data.em", "custom_data.value", "event_time", ...


def label(source: str, rule: str | None) -> str:
    """The `sources` label of a copy: `page:<rule>`, `webhook:<mapping>`, `api`, ..."""
    prefix = {"rule": "page", "proxy": "page", "collect": "browser"}.get(source, source)
    if source == "proxy":
        return "page:pageview"
    return f"{prefix}:{rule}" if rule else prefix


def start(copy: Copy) -> State:
    """The state of an event whose first copy is `copy`."""
    return State(
        payload=_copy_payload(copy.payload),
        clear=dict(copy.clear),
        sources=(copy.label,),
        ranks=_ranks_of(copy),
    )


def restore(
    payload: Mapping[str, Any],
    clear: Mapping[str, Any],
    *,
    source: str,
    rule: str | None,
    sources: Sequence[str] | None,
    ranks: Mapping[str, int] | None,
) -> State:
    """The state of a stored row; rows never merged have no `ranks`/`sources` yet."""
    first = Copy(payload, clear, source, label(source, rule))
    state = start(first)
    return State(
        payload=state.payload,
        clear=state.clear,
        sources=tuple(sources) if sources else state.sources,
        ranks=dict(ranks) if ranks is not None else state.ranks,
    )


def merge(state: State, copy: Copy) -> Merged:
    """`state` completed with what `copy` adds (see the module docstring for the rules)."""
    payload = _copy_payload(state.payload)
    clear = dict(state.clear)
    ranks = dict(state.ranks)
    added: list[str] = []
    record = RECORD_RANK.get(copy.source, 1)
    ident = IDENTITY_RANK.get(copy.source, 1)

    # hashed identifiers: bounded union
    user_data: dict[str, Any] = payload.setdefault("user_data", {})
    for key, value in (copy.payload.get("user_data") or {}).items():
        if key in CLEAR_FIELDS:
            continue
        have = _values(user_data.get(key))
        grown = list(have)
        for item in _values(value):
            if item not in grown and len(grown) < MAX_VALUES:
                grown.append(item)
        if len(grown) > len(have):
            user_data[key] = grown[0] if len(grown) == 1 else grown
            added.append(f"user_data.{key}")
    if not user_data:
        payload.pop("user_data")
    # clear fields: by identity rank
    for key, value in copy.clear.items():
        if _take(ranks, f"user_data.{key}", key in clear, ident, clear.get(key) != value):
            clear[key] = value
            added.append(f"user_data.{key}")
    # custom_data: by record rank
    theirs = copy.payload.get("custom_data") or {}
    if theirs:
        custom: dict[str, Any] = payload.setdefault("custom_data", {})
        for key, value in theirs.items():
            if _take(ranks, f"custom_data.{key}", key in custom, record, custom.get(key) != value):
                custom[key] = value
                added.append(f"custom_data.{key}")
    # event-level fields
    their_time = copy.payload.get("event_time")
    if isinstance(their_time, int) and their_time < int(payload.get("event_time", their_time)):
        payload["event_time"] = their_time
        added.append("event_time")
    for key in _URL_FIELDS:
        if key in copy.payload and _take(
            ranks, key, key in payload, ident, payload.get(key) != copy.payload[key]
        ):
            payload[key] = copy.payload[key]
            added.append(key)
    theirs_as, mine_as = copy.payload.get("action_source"), payload.get("action_source")
    # A website copy carries the browser's data: it decides, whatever its rank.
    if (
        theirs_as is not None
        and mine_as != "website"
        and theirs_as != mine_as
        and (
            theirs_as == "website"
            or _take(ranks, "action_source", mine_as is not None, record, True)
        )
    ):
        payload["action_source"] = theirs_as
        ranks["action_source"] = max(record, ranks.get("action_source", 0))
        added.append("action_source")
    if copy.payload.get("opt_out") is True and payload.get("opt_out") is not True:
        payload["opt_out"] = True
        added.append("opt_out")
    if _is_ldu(copy.payload) and not _is_ldu(payload):
        for key in _DPO_FIELDS:
            payload.pop(key, None)
            if key in copy.payload:
                payload[key] = copy.payload[key]
        added.append("data_processing_options")
    for key, value in copy.payload.items():
        if key not in _FIXED_ALL and _take(
            ranks, key, key in payload, record, payload.get(key) != value
        ):
            payload[key] = value
            added.append(key)

    sources = state.sources
    if copy.label not in sources and len(sources) < MAX_SOURCES:
        sources = (*sources, copy.label)
    return Merged(State(payload, clear, sources, ranks), tuple(added))


def is_restricted(payload: Mapping[str, Any]) -> bool:
    """True for an event marked opt_out or Limited Data Use: nothing learned or added."""
    return payload.get("opt_out") is True or _is_ldu(payload)


def hashed_identifiers(payload: Mapping[str, Any]) -> dict[str, list[str]]:
    """The hashed customer identifiers of an event (em, ph, external_id, ...), as lists."""
    user_data = payload.get("user_data") or {}
    return {k: _values(v) for k, v in user_data.items() if k in HASHED_FIELDS and _values(v)}


def _take(ranks: dict[str, int], key: str, present: bool, rank: int, differs: bool) -> bool:
    """Whether a copy of `rank` sets field `key`; records the rank when it does."""
    if not present:
        ranks[key] = rank
        return True
    if rank > ranks.get(key, 0):
        # An equal value from a higher rank lifts the field's rank all the same.
        ranks[key] = rank
        return differs
    return False


def _ranks_of(copy: Copy) -> dict[str, int]:
    record = RECORD_RANK.get(copy.source, 1)
    ident = IDENTITY_RANK.get(copy.source, 1)
    ranks = {f"user_data.{k}": ident for k in copy.clear}
    ranks.update({f"custom_data.{k}": record for k in copy.payload.get("custom_data") or {}})
    for key in copy.payload:
        if key in _URL_FIELDS:
            ranks[key] = ident
        elif key not in _FIXED and key not in _DPO_FIELDS and key != "opt_out":
            ranks[key] = record
    return ranks


def _copy_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(payload)
    for section in ("user_data", "custom_data"):
        if isinstance(out.get(section), Mapping):
            out[section] = dict(out[section])
    return out


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value if v]
    return [str(value)] if value else []


def _is_ldu(payload: Mapping[str, Any]) -> bool:
    options = payload.get("data_processing_options")
    return isinstance(options, list) and "LDU" in options


def learnable(payload: Mapping[str, Any]) -> dict[str, list[str]]:
    """What a visitor profile may learn from an event: none of a restricted one."""
    return {} if is_restricted(payload) else hashed_identifiers(payload)


def carries(payload: Mapping[str, Any], profile: Mapping[str, Sequence[str]]) -> bool:
    """True when `payload` has every identifier of `profile` already (`complete` would add
    nothing): the cheap test before completing."""
    user_data = payload.get("user_data") or {}
    return all(user_data.get(name) or name not in HASHED_FIELDS for name in profile)


def complete(
    payload: Mapping[str, Any], profile: Mapping[str, Sequence[str]]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """`payload` with the identifiers it lacks taken from a visitor profile; the keys added.

    An identifier the event has is left as it is; a restricted event gets nothing.
    """
    if is_restricted(payload):
        return dict(payload), ()
    user_data = dict(payload.get("user_data") or {})
    added: list[str] = []
    for name in sorted(profile):
        values = [v for v in profile[name] if v][:MAX_VALUES]
        if name in HASHED_FIELDS and values and not _values(user_data.get(name)):
            user_data[name] = values[0] if len(values) == 1 else list(values)
            added.append(name)
    if not added:
        return dict(payload), ()
    return {**payload, "user_data": user_data}, tuple(added)


def item_outcome(outcomes: Sequence[str]) -> Outcome:
    """One event's outcome over its target pixels: "new" if stored anew for any of them,
    else "merged" if merged into a pending copy for any, else "late"."""
    if "new" in outcomes or not outcomes:
        return "new"
    return "merged" if "merged" in outcomes else "late"
