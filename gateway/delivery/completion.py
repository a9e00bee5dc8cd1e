"""Claimed events completed from their visitors' profiles: which of them a live profile adds
identifiers to, and those events as they will be sent. Both stores call this between a
claim and the send, and record what it added on the rows (`record_completed` in each
backend's rows module) so a resend carries it too. The merge itself is pure
(`gateway/pipeline/assembly.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from gateway.delivery import profiles
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.store import Claimed
from gateway.pipeline import assembly, jsonfast

# Row id -> (the event completed, the identifier names its profile added).
Completed = dict[int, tuple[dict[str, Any], tuple[str, ...]]]


async def completions(
    lookup: Callable[[list[str]], Awaitable[dict[str, profiles.Dated]]],
    events: Mapping[int, dict[str, Any]],
    policy: ProfilePolicy,
    stored_keys: Mapping[int, str | None] | None = None,
    seen: Mapping[int, float | None] | None = None,
) -> Completed:
    """Claimed events (row id -> event as sent) completed from their visitors' profiles,
    one `lookup` (profile keys -> live profiles) per batch: those that gained identifiers,
    with the keys added.

    `stored_keys`: the rows' `profile_keys` columns; a row without one (stored while
    profiles were off) is found by its fbp. `seen`: the rows' `profile_seen` columns; a
    row that carried its whole profile when stored is compared only if the profile was
    updated since.
    """
    stored = stored_keys or {}
    seen_at = seen or {}
    keys = {
        row_id: profiles.split_keys(stored[row_id])
        if stored.get(row_id) is not None
        else profiles.visitor_keys(policy, event.get("user_data", {}))
        for row_id, event in events.items()
    }
    wanted = [k for ks in keys.values() for k in ks]
    out: Completed = {}
    if not wanted:
        return out
    found = await lookup(wanted)
    if not found:
        return out
    parsed: dict[str, dict[str, list[str]]] = {}
    for row_id, event in events.items():
        row_keys = keys[row_id]
        if not any(key in found for key in row_keys):
            continue  # most rows: their profile was not read back (see `lookup`)
        added: tuple[str, ...] = ()
        since = seen_at.get(row_id)
        for key in row_keys:
            dated = found.get(key)
            if dated is None or (since is not None and dated[0] <= since):
                continue
            event, more = _complete(event, key, dated[1], parsed)
            added += more
        if added:
            out[row_id] = (event, added)
    return out


def completed(
    events: Mapping[int, dict[str, Any]], hits: Iterable[tuple[int, str, str]]
) -> Completed:
    """`completions` for rows of one profile key each whose profiles SQL already chose
    (`profiles.changed`): `hits` are (row id, profile key, identifiers as JSON) of the rows
    a live profile may add to; the same result as `completions` gives for those rows."""
    out: Completed = {}
    parsed: dict[str, dict[str, list[str]]] = {}
    for row_id, key, ids in hits:
        event, added = _complete(events[row_id], key, ids, parsed)
        if added:
            out[row_id] = (event, added)
    return out


def _complete(
    event: dict[str, Any], key: str, ids: str, parsed: dict[str, dict[str, list[str]]]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """`event` completed from the profile under `key` (its JSON parsed once per batch)."""
    profile = parsed.get(key)
    if profile is None:
        # jsonfast: the same value; the stdlib took 1.2 % of a replica at two (py-spy).
        profile = parsed[key] = jsonfast.loads(ids)
    # Most events of a known visitor carry what their profile holds already.
    if assembly.carries(event, profile):
        return event, ()
    return assembly.complete(event, profile)


def applied(
    claimed: Sequence[Claimed], done: Mapping[int, tuple[dict[str, Any], tuple[str, ...]]]
) -> list[Claimed]:
    """`claimed` with the completed events (and what their profiles added) in place."""
    return [
        replace(row, event=done[row.id][0], profile_added=done[row.id][1])
        if row.id in done
        else row
        for row in claimed
    ]
