"""Erasure: a person's identifiers in, their profile, stitched visits and unsent data out.

One write transaction on the buffer file: every unsent event (pending, being sent, blocked,
dead) carrying the person's hashed email, phone or external id, or their `_fbp`, loses its
hashed customer identifiers and its fbp/fbc (IP and user agent stay: without them a
website event is refused, and they identify no one once the identifiers are gone); the
visitor profiles under those fbp values or holding those hashes are deleted; so are the
stitched visits kept under those identifiers or for those fbp values. Delivered events are
Meta's copy already and leave the buffer with `retention`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from gateway.delivery import insights, profiles
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.rows import match_keys
from gateway.delivery.seal import Sealer, SealError
from gateway.delivery.stitch import derive_lookup_key, kind_site, lookup_hash
from gateway.models import row_key
from gateway.pipeline.normalize import HASHED_FIELDS, NormalizationError, normalize_user_data

_UNSENT = ("pending", "inflight", "blocked", "dead")
# What is removed from a matching event's clear fields.
_CLEAR_IDS = ("fbp", "fbc")


class PersonError(ValueError):
    """A value given to `forget` that normalizes to nothing usable."""


@dataclass(frozen=True, slots=True)
class Person:
    """Who to forget: hashed identifiers (em, ph, external_id -> SHA-256 hex) and fbp values."""

    hashed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    fbps: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        *,
        email: Iterable[str] = (),
        phone: Iterable[str] = (),
        external_id: Iterable[str] = (),
        fbp: Iterable[str] = (),
        default_country: str | None = None,
    ) -> Person:
        """Normalize values as event fields are (`Jane@Example.com` finds `jane@example.com`)."""
        hashed: dict[str, frozenset[str]] = {}
        for key, values in (("em", email), ("ph", phone), ("external_id", external_id)):
            found: set[str] = set()
            for value in values:
                try:
                    out = normalize_user_data({key: value}, default_country=default_country)
                except NormalizationError as exc:
                    raise PersonError(f"{key}: {exc.message}") from exc
                if not out.get(key):
                    raise PersonError(f"{key}: {value!r} is empty once normalized")
                found.add(str(out[key]))
            if found:
                hashed[key] = frozenset(found)
        fbps = frozenset(v.strip() for v in fbp if v.strip())
        if not hashed and not fbps:
            raise PersonError("name the person: --email, --phone, --external-id or --fbp")
        return cls(hashed, fbps)

    @property
    def hashes(self) -> frozenset[str]:
        """Every hashed identifier, whatever its key."""
        return frozenset(h for values in self.hashed.values() for h in values)

    def matches(self, user_data: Mapping[str, Any], clear: Mapping[str, Any]) -> bool:
        """True when an event carries one of the person's identifiers."""
        for key, values in self.hashed.items():
            given = user_data.get(key)
            items = given if isinstance(given, list) else [given]
            if any(item in values for item in items):
                return True
        return clear.get("fbp") in self.fbps


def add_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The counts of several erasures (one per site) added up."""
    out = {"events": 0, "profiles": 0, "stitches": 0}
    for each in counts:
        for name, value in each.items():
            out[name] = out.get(name, 0) + value
    return out


def stitch_kinds(stored: Iterable[str], hashed: Mapping[str, Any], site: str | None) -> list[str]:
    """The stitch key kinds to erase the person's identifiers under: `em` and each site's
    `em@site` that is stored (without `site`), or `em@site` only."""
    if site is not None:
        return [f"{kind}@{site}" for kind in hashed]
    return sorted({k for k in stored if k.split("@", 1)[0] in hashed} | set(hashed))


async def forget(
    conn: aiosqlite.Connection,
    sealer: Sealer,
    key: bytes,
    person: Person,
    *,
    site: str | None = None,
) -> dict[str, int]:
    """Erase `person` (run inside a write transaction); counts of what was removed.

    With `site`, only that site's events, profiles (keys `site:<hash>`) and stitched
    visits (kinds `<kind>@site`) are erased; without, every site's and the unscoped ones.
    """
    events, seen_fbps = await _scrub_events(conn, sealer, person, site)
    fbps = person.fbps | seen_fbps
    policy = ProfilePolicy.from_key(key, ttl=1, max_profiles=1)
    fbp_keys = [policy.key_hash("fbp", fbp) for fbp in fbps]
    # A visitor is known by their fbp's key, or by the key of a profile holding their hashes.
    visitors = fbp_keys + await profiles.holding(conn, person.hashes)
    removed_profiles = await profiles.forget(
        conn, key_hashes=fbp_keys, identifiers=person.hashes, site=site
    )
    touchpoints = await insights.forget(conn, visitors, site=site)
    stitches = await _forget_stitches(conn, sealer, derive_lookup_key(key), person, fbps, site)
    return {
        "events": events,
        "profiles": removed_profiles,
        "stitches": stitches,
        "touchpoints": touchpoints,
    }


async def _scrub_events(
    conn: aiosqlite.Connection, sealer: Sealer, person: Person, site: str | None = None
) -> tuple[int, set[str]]:
    marks = ",".join("?" * len(_UNSENT))
    sql = (
        "SELECT id, pixel_id, event_name, event_id, payload, sealed FROM events "
        f"WHERE state IN ({marks})"
    )
    values: list[Any] = list(_UNSENT)
    if site is not None:
        sql += " AND site = ?"
        values.append(site)
    if not person.fbps:
        # Hashes sit in the payload in clear: let SQLite skip the rows without them.
        sql += " AND (" + " OR ".join("instr(payload, ?) > 0" for _ in person.hashes) + ")"
        values += sorted(person.hashes)
    changed = 0
    fbps: set[str] = set()
    async with conn.execute(sql, values) as cur:
        found = list(await cur.fetchall())
    for row_id, pixel_id, event_name, event_id, payload_text, sealed in found:
        ident = row_key(pixel_id, event_name, event_id)
        payload = json.loads(payload_text)
        try:
            clear = sealer.open(sealed, ident)
        except SealError:
            clear = {}
        user_data = payload.get("user_data") or {}
        if not person.matches(user_data, clear):
            continue
        if isinstance(clear.get("fbp"), str):
            fbps.add(clear["fbp"])
        payload["user_data"] = {k: v for k, v in user_data.items() if k not in HASHED_FIELDS}
        kept = {k: v for k, v in clear.items() if k not in _CLEAR_IDS}
        await conn.execute(
            # profile_keys go too: what links the row to a profile was the person's.
            "UPDATE event_data SET payload=?, sealed=?, match_keys=?, profile_keys=NULL WHERE id=?",
            (
                json.dumps(payload, separators=(",", ":")),
                sealer.seal(kept, ident),
                match_keys(payload["user_data"], kept),
                row_id,
            ),
        )
        changed += 1
    return changed, fbps


async def _forget_stitches(
    conn: aiosqlite.Connection,
    sealer: Sealer,
    lookup_key: bytes,
    person: Person,
    fbps: frozenset[str] | set[str],
    site: str | None = None,
) -> int:
    async with conn.execute("SELECT DISTINCT kind FROM stitches") as cur:
        kinds = [str(row[0]) for row in await cur.fetchall()]
    total = 0
    for kind in stitch_kinds(kinds, person.hashed, site):
        for value in person.hashed[kind.split("@", 1)[0]]:
            cur = await conn.execute(
                "DELETE FROM stitches WHERE key_hash=?", (lookup_hash(lookup_key, kind, value),)
            )
            total += int(cur.rowcount)
    if not fbps:
        return total
    # Visits kept under an order id or a lead id: only their sealed context names the fbp.
    async with conn.execute("SELECT key_hash, kind, sealed FROM stitches") as cur:
        rows = [(h, s) for h, k, s in await cur.fetchall() if site in (None, kind_site(k))]
    doomed = []
    for key_hash, sealed in rows:
        try:
            context = sealer.open(sealed, key_hash)
        except SealError:
            continue
        if (context.get("user_data") or {}).get("fbp") in fbps:
            doomed.append((key_hash,))
    await conn.executemany("DELETE FROM stitches WHERE key_hash=?", doomed)
    return total + len(doomed)
