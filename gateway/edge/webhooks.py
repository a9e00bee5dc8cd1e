"""`POST {prefix}/hooks/<hook>`: a provider's signed webhook in, conversions out.

The signature is checked on the raw body before anything is parsed; a bad or missing one
is a 401 and nothing is stored. Every mapping of the hook whose conditions hold yields
one event, completed with the visitor's context a page rule stored under the same key
(order id, email, ...). A payload no mapping wants is acknowledged, so providers stop
retrying it. Event ids come from the payload, so a retried delivery is a no-op.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from gateway.delivery.store import StitchStore
from gateway.edge.appkeys import INTAKE, METRICS, STITCHES
from gateway.edge.intake import Refused
from gateway.edge.sites import runtime_for, site_stages, sites_on
from gateway.edge.stitching import StitchLookupFailed, stitch_hook_event
from gateway.edge.visitor import visitor
from gateway.errors import json_error
from gateway.models import NewEvent
from gateway.pipeline.events import Context, prepare
from gateway.pipeline.extract import Facts
from gateway.pipeline.signatures import SignatureError, verify_hmac, verify_stripe
from gateway.pipeline.webhooks import Verifier, Webhook

log = logging.getLogger("gateway.webhooks")


async def post_hook(request: web.Request) -> web.StreamResponse:
    """Verify, map and store one webhook delivery."""
    if sites_on(request.app) and site_stages(request) is None:
        # Webhooks are per site: the host says whose rule files (and secrets) apply.
        return json_error(
            421, "misdirected request", f"no site answers for host {visitor(request).host!r}"
        )
    runtime = runtime_for(request)
    name = request.match_info["hook"]
    mappings = runtime.rules.hook(name)
    if not mappings:
        return json_error(
            404, "unknown hook", f"no [[webhook]] in the rule files uses hook {name!r}"
        )
    metrics = request.app[METRICS]
    site = runtime.context.site
    limit = runtime.settings.webhook_max_bytes
    body = await _read_bounded(request, limit)
    if body is None:
        metrics.webhook(name, "too_large", site=site)
        return json_error(413, "payload too large", f"at most {limit} bytes (webhook_max_bytes)")
    verifier = mappings[0].verifier
    if verifier.missing:
        metrics.webhook(name, "unconfigured", site=site)
        return json_error(
            503,
            "hook not configured",
            # A reload (SIGHUP) re-reads rule files, not the process's own environment.
            f"set {verifier.missing} in the gateway's environment and restart it",
            headers={"Retry-After": "300"},
        )
    try:
        _verify(verifier, request, body)
    except SignatureError as exc:
        metrics.webhook(name, "unauthorized", site=site)
        log.warning("Webhook %r refused: %s.", name, exc)
        return json_error(401, "invalid signature", str(exc))
    payload, form = _parse(body, request.headers.get("Content-Type", ""))
    if payload is None and not form:
        metrics.webhook(name, "invalid", site=site)
        return json_error(400, "invalid payload", "send a JSON object or a form")
    facts = Facts(
        json=payload,
        form=form,
        query={k: request.query.getall(k) for k in request.query},
        # An absent header is a missing value, not a KeyError.
        headers=lambda header: request.headers.getall(header, []),
    )
    context = runtime.context
    stitches = request.app[STITCHES]
    rows: list[NewEvent] = []
    report: list[dict[str, Any]] = []
    for mapping in mappings:
        subject = payload if payload is not None else form
        if not mapping.applies(subject):
            continue
        try:
            built = await _event(mapping, facts, subject, stitches, site)
        except StitchLookupFailed as exc:
            metrics.webhook(name, "busy", site=site)
            return request.app[INTAKE].fault(exc, f"Stitching webhook {name!r}").response()
        if built is None:
            report.append({"webhook": mapping.name, "skipped": "a required value is missing"})
            continue
        event, stitched = built
        result = prepare([event], _webhook_context(context))
        if isinstance(result, list):
            problem = result[0]
            # The message may quote the value (an email that does not parse): customer
            # data stays out of the log; the provider gets it back in the answer.
            log.warning(
                "Webhook %r mapping %r made an invalid event: %s%s",
                name,
                mapping.name,
                problem.field,
                "" if problem.field.startswith("user_data") else f": {problem.message}",
            )
            report.append(
                {"webhook": mapping.name, "rejected": f"{problem.field}: {problem.message}"}
            )
            continue
        links = tuple(sorted(mapping.stitch_keys(event).items()))
        rows += [_tagged(row, mapping.name, mapping.hold, links) for row in result.rows]
        report.append(
            {"webhook": mapping.name, "event_id": result.event_ids[0], "stitched": stitched}
        )
    if rows:
        stored = await request.app[INTAKE].store(rows)
        if isinstance(stored, Refused):
            metrics.webhook(name, "busy", site=site)
            # A 503 makes the provider retry later, which is what we want.
            return stored.response()
        metrics.webhook(name, "mapped", site=site)
        for item in report:
            if "event_id" in item:
                item["outcome"] = stored.outcome_of(item["event_id"])
                # Kept for clients of earlier releases: a copy that was not stored anew.
                item["duplicate"] = item["outcome"] != "new"
    elif report:
        # Acknowledged all the same: a retry of the same payload would fail the same way.
        metrics.webhook(name, "rejected", site=site)
    else:
        metrics.webhook(name, "unmatched", site=site)
        log.info("Webhook %r: the payload matches no mapping; acknowledged.", name)
    return web.json_response({"received": True, "events": report})


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is over `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    # read(n) returns what one network read brought, not n bytes: loop to the end.
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _event(
    mapping: Webhook, facts: Facts, payload: Any, stitches: StitchStore, site: str | None
) -> tuple[dict[str, Any], bool] | None:
    event = mapping.draft(facts, payload)
    if event is None:
        return None
    return await stitch_hook_event(mapping, event, stitches, site)


def _webhook_context(context: Context) -> Context:
    return Context(
        targets=context.targets,
        default_country=context.default_country,
        max_future_skew=context.max_future_skew,
        site=context.site,
        source="webhook",
    )


def _tagged(
    row: NewEvent, name: str, hold: float | None, links: tuple[tuple[str, str], ...]
) -> NewEvent:
    return dataclasses.replace(row, rule=name, hold=hold, links=links)


def _verify(verifier: Verifier, request: web.Request, body: bytes) -> None:
    if verifier.kind == "stripe":
        verify_stripe(
            request.headers.get("Stripe-Signature"),
            body,
            verifier.secrets,
            tolerance=verifier.tolerance,
        )
        return
    assert verifier.scheme is not None
    verify_hmac(verifier.scheme, request.headers, body)


def _parse(body: bytes, content_type: str) -> tuple[Any, dict[str, list[str]]]:
    """(JSON payload or None, form fields); never raises on client input."""
    media = content_type.split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", "replace")
    if media == "application/x-www-form-urlencoded":
        try:
            return None, parse_qs(text, keep_blank_values=True, max_num_fields=1000)
        except ValueError:  # more than max_num_fields fields
            return None, {}
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return None, {}
    return (payload if isinstance(payload, Mapping | list) else None), {}
