"""`capi-gateway doctor`'s audience checks: account and token set, and each audience's stored
state (parked on a refused token, failing, or too small for Meta to use).

Read-only like the rest of doctor: the SQLite file on a query-only connection, PostgreSQL
without migrating; never a call to Meta.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace

from gateway.commands.findings import Finding, Level, mask
from gateway.delivery import reads
from gateway.delivery.audiences import AudienceState, stored_states
from gateway.delivery.audiences_sync import Target, targets
from gateway.delivery.postgres.audiences import stored_states as pg_stored_states
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from gateway.settings import Settings

# Meta lets an ad set use a customer-list Custom Audience only once it matches at least 100
# people (fewer matches are not shown or used, a privacy floor); matches are a share of the
# rows sent, so an audience holding fewer rows cannot reach it.
META_MIN_AUDIENCE = 100


async def check_audiences(settings: Settings, *, site: str | None = None) -> list[Finding]:
    """Findings for the configured audiences (none without `[[audiences]]`)."""
    chosen = targets(settings)
    if site is not None:
        # `doctor --site`: `settings` are that site's own, so the targets carry no site yet.
        chosen = [replace(t, site=site) for t in chosen]
    if not chosen:
        return []
    out = _config_findings(settings, chosen)
    try:
        states = await _states(settings)
    except (sqlite3.Error, OSError, DatabaseUnavailable) as exc:
        out.append(
            Finding(
                "audiences",
                Level.WARN,
                f"the audiences' sync state could not be read ({exc})",
                "the next `serve` or `capi-gateway audiences sync` sets it up",
            )
        )
        return out
    if states is None:
        return out
    for target in chosen:
        out += _state_findings(target, states.get((target.site, target.audience.name)))
    return out


def _config_findings(settings: Settings, chosen: list[Target]) -> list[Finding]:
    out: list[Finding] = []
    accounts = sorted({t.ad_account_id for t in chosen if t.ad_account_id})
    every = "every " + _ago(settings.audiences_sync_interval)
    which = ", ".join(f"act_{mask(a)}" for a in accounts) or "no ad account"
    mode = "dry run" if settings.dry_run else f"synced {every}"
    out.append(Finding("audiences", Level.OK, f"{len(chosen)} audience(s) for {which}, {mode}"))
    if settings.dry_run:
        return out
    for target in chosen:
        if not target.ad_account_id:
            out.append(
                Finding(
                    "audiences",
                    Level.FAIL,
                    f"audience {target.label!r} has no ad account: it cannot be created",
                    "set ad_account_id (CAPIGW_AD_ACCOUNT_ID) to the digits after act_ in "
                    "Ads Manager",
                )
            )
        if not target.access_token:
            out.append(
                Finding(
                    "audiences",
                    Level.FAIL,
                    f"audience {target.label!r} has no access token: nothing can be synced",
                    "set audiences_access_token (a token with ads_management), or give the "
                    "first pixel an access_token",
                )
            )
    return out


async def _states(settings: Settings) -> dict[tuple[str | None, str], AudienceState] | None:
    """Every stored audience state; None when there is no store (or no audience table) yet."""
    found: list[AudienceState] | None
    if settings.store_url is not None:
        db = await Database.open(settings.store_url, health_interval=0, reconnect_timeout=3)
        try:
            found = await pg_stored_states(db)
        finally:
            await db.close()
    else:
        if not settings.buffer.is_file():
            return None
        conn = await reads.open_reader(settings.buffer, must_exist=True)
        try:
            found = await stored_states(conn)
        finally:
            await conn.close()
    return None if found is None else {(s.site, s.name): s for s in found}


def _state_findings(target: Target, state: AudienceState | None) -> list[Finding]:
    label = target.label
    if state is None or (state.audience_id is None and state.last_error is None):
        if state is not None and state.last_result.get("dry_run"):
            return [Finding("audiences", Level.NOTE, f"audience {label!r}: dry runs only so far")]
        return [
            Finding(
                "audiences",
                Level.NOTE,
                f"audience {label!r} has not been synced yet",
                "`capi-gateway audiences sync` syncs it now; `serve` does every interval",
            )
        ]
    if state.blocked_token is not None:
        return [
            Finding(
                "audiences",
                Level.FAIL,
                f"audience {label!r} is parked: Meta refused the token ({state.last_error})",
                "set audiences_access_token to a token with ads_management on the ad account, "
                "then reload the gateway (kill -HUP); the sync resumes with the new token",
            )
        ]
    out: list[Finding] = []
    if state.last_error is not None:
        out.append(
            Finding(
                "audiences",
                Level.WARN,
                f"audience {label!r}: the last sync failed ({state.last_error})",
                f"`capi-gateway audiences sync --name {target.audience.name!r}` retries it "
                "and shows Meta's answer",
            )
        )
    if state.size < META_MIN_AUDIENCE:
        out.append(
            Finding(
                "audiences",
                Level.WARN,
                f"audience {label!r} holds {state.size} row(s): Meta uses a customer-list "
                f"audience in ads only once it matches at least {META_MIN_AUDIENCE} people, "
                "and matches only part of the rows sent",
                "widen it (a longer window, more events, a lower min_count or min_value), or "
                "wait for more visitors",
            )
        )
    else:
        synced = (
            f"last sync {_ago(time.time() - state.synced_at)} ago"
            if state.synced_at
            else "not synced in full yet"
        )
        out.append(
            Finding("audiences", Level.OK, f"audience {label!r}: {state.size} row(s), {synced}")
        )
    return out


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{max(seconds, 0):.0f} s"
