"""A visit's context kept under its keys, and found again for a webhook or an `/events` call.

A page or form rule with `stitch` keeps what the visit knew about the browser (`fbp`,
`fbc`, IP, user agent, page URL, consent, the event id) under the rule's keys (an order
id, a hashed email, ...); a later server event carrying the same key gets it merged in,
its own values winning. This module decides what is kept and how a found context joins an
event; the store and its SQL are `gateway.delivery.stitch`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from gateway.delivery.stitch import VisitorContext, site_kind
from gateway.delivery.store import StitchStore
from gateway.edge.identity import Consent
from gateway.pipeline.events import Problem
from gateway.pipeline.normalize import ALIASES
from gateway.pipeline.rules import RuleSet
from gateway.pipeline.webhooks import Webhook, stitch_values

log = logging.getLogger("gateway.stitching")

# Without the visitor's browser (nothing stitched), a "website" event lacks what Meta
# requires of one (user agent, page URL): it is sent as what it is, a backend event.
UNSTITCHED_ACTION_SOURCE = "system_generated"


class StitchLookupFailed(Exception):
    """The stitch store could not be read (closed or failing): a storage fault, not a miss."""


def _scoped(keys: Mapping[str, str], site: str | None) -> dict[str, str]:
    return {site_kind(kind, site): value for kind, value in keys.items()}


async def _find(
    stitches: StitchStore, keys: Mapping[str, str], site: str | None
) -> VisitorContext | None:
    try:
        return await stitches.find(_scoped(keys, site))
    except Exception as exc:
        # Guessing "no visit" would send a worse event for good; the caller retries instead.
        raise StitchLookupFailed(str(exc) or type(exc).__name__) from exc


# keeping ------------------------------------------------------------------------------------


def visit_context(
    user_data: Mapping[str, Any],
    url: str,
    consent: Consent,
    *,
    event_id: str | None,
    event_name: str,
) -> VisitorContext:
    """What a visit leaves behind: the clear browser fields of `user_data`, page, consent."""
    return VisitorContext(
        user_data={k: v for k, v in user_data.items() if isinstance(v, str)},
        event_source_url=url,
        consent=consent.event_fields(),
        event_id=event_id,
        event_name=event_name,
        seen_at=time.time(),
    )


async def keep(
    stitches: StitchStore,
    keys: dict[str, str],
    visit: VisitorContext,
    ttl: float,
    site: str | None = None,
) -> None:
    """Keep `visit` under `keys` (of `site`) for `ttl` seconds; a failure is logged, never
    raised."""
    try:
        await stitches.put(_scoped(keys, site), visit, ttl=ttl)
    except Exception as exc:
        # Losing a stitch costs match quality later, never the page or the event.
        log.error("Visitor context not kept for a later webhook: %r", exc)


# finding and merging ------------------------------------------------------------------------


def merge_context(
    event: Mapping[str, Any], ctx: VisitorContext, *, reuse_event_id: bool = False
) -> dict[str, Any]:
    """`event` (the `/events` shape) completed with a stored context; its own values win.

    A user_data field counts as given under any alias (`ip` for client_ip_address). The
    consent fields and event_source_url are added when the event has none; the browser
    event id only with `reuse_event_id`, so Meta deduplicates the two.
    """
    merged = dict(event)
    user_data = event.get("user_data", {})
    if isinstance(user_data, Mapping):
        given = {ALIASES.get(name, name) for name in user_data}
        extra = {k: v for k, v in ctx.user_data.items() if k not in given}
        merged["user_data"] = {**user_data, **extra}
    if ctx.event_source_url and not event.get("event_source_url"):
        merged["event_source_url"] = ctx.event_source_url
    for name, value in ctx.consent.items():
        if event.get(name) is None:
            merged[name] = value
    if reuse_event_id and ctx.event_id and not event.get("event_id"):
        merged["event_id"] = ctx.event_id
    return merged


async def stitch_hook_event(
    mapping: Webhook, event: dict[str, Any], stitches: StitchStore, site: str | None = None
) -> tuple[dict[str, Any], bool]:
    """A webhook mapping's event completed with its visit, if one was kept; (event, found).

    StitchLookupFailed when the store cannot be read.
    """
    stitched = False
    keys = mapping.stitch_keys(event)
    if keys:
        ctx = await _find(stitches, keys, site)
        if ctx is not None:
            event = merge_context(event, ctx)
            if mapping.use_stitched_event_id and ctx.event_id:
                # The browser-side event's id: Meta keeps one of the two.
                event["event_id"] = ctx.event_id
            stitched = True
    if event["action_source"] == "website" and not event["user_data"].get("client_user_agent"):
        event["action_source"] = UNSTITCHED_ACTION_SOURCE
    return event, stitched


async def stitch_events(
    data: list[Any],
    stitches: StitchStore,
    rules: RuleSet,
    links: dict[int, tuple[tuple[str, str], ...]] | None = None,
    site: str | None = None,
) -> list[Problem]:
    """`/events`: merge stored visitor context into events carrying `stitch_key`.

    Events are changed in place (the key removed, the context merged, explicit values
    winning); the problems found are returned (nothing is stored when there are any).
    `links` receives, per event index, its normalized stitch keys (`NewEvent.links`: the
    visitor's profile is kept and found under them). StitchLookupFailed when the store
    cannot be read.
    """
    known = {_canonical(k) for rule in rules.rules for k in rule.stitch_keys}
    problems: list[Problem] = []
    for index, event in enumerate(data):
        if not isinstance(event, dict) or "stitch_key" not in event:
            continue
        keys = event.pop("stitch_key")
        if (
            not isinstance(keys, Mapping)
            or not keys
            or not all(
                isinstance(k, str) and isinstance(v, str | int) and not isinstance(v, bool)
                for k, v in keys.items()
            )
        ):
            message = 'use an object of key names to values, e.g. {"order_id": "A1"}'
            problems.append(Problem(index, "stitch_key", message))
            continue
        unknown = sorted(k for k in keys if _canonical(k) not in known)
        if unknown:
            configured = ", ".join(sorted(known)) or "none"
            message = f"no rule keeps visits under {unknown} (configured: {configured})"
            problems.append(Problem(index, "stitch_key", message))
            continue
        values = stitch_values(list(keys), dict(keys))
        if links is not None:
            links[index] = tuple(sorted(values.items()))
        ctx = await _find(stitches, values, site)
        if ctx is not None:
            data[index] = merge_context(event, ctx, reuse_event_id=True)
    return problems


def _canonical(name: str) -> str:
    return ALIASES.get(name, name)
