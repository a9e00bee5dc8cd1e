"""`POST {prefix}/events`: server-to-server conversions from backends, API-key protected."""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
from typing import Any

from aiohttp import web

from gateway.edge.appkeys import INTAKE, METRICS, RUNTIME, STITCHES, Runtime
from gateway.edge.intake import Refused
from gateway.edge.sites import SITES, sites_on
from gateway.edge.stitching import StitchLookupFailed, stitch_events
from gateway.edge.visitor import visitor
from gateway.errors import json_error
from gateway.models import NewEvent
from gateway.pipeline.events import MAX_EVENTS, Problem, prepare
from gateway.pipeline.jsonfast import REFUSED, orjson_loads
from gateway.pipeline.jsonfast import dumps as json_dumps
from gateway.pipeline.jsonsafe import non_finite_path

log = logging.getLogger("gateway.events_api")


def authorized(header: str | None, keys: list[str]) -> bool:
    """True when `Authorization: Bearer <key>` names a configured key (constant time)."""
    if not header or not header.startswith("Bearer ") or not keys:
        return False
    # Header bytes that are not UTF-8 arrive as surrogates: they match no key, and must
    # not make encoding fail (a 500).
    given = header[len("Bearer ") :].strip().encode("utf-8", "surrogateescape")
    # Compare against every key so the time taken does not tell which one nearly matched.
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


def _site_of_key(request: web.Request) -> Runtime | web.Response:
    """With `[[sites]]`: the runtime of the site whose key was sent; 403 on another's host."""
    holder = request.app[SITES]
    header = request.headers.get("Authorization")
    for name, stages in holder.router.by_name.items():
        if authorized(header, stages.runtime.settings.events_api_keys):
            host_site = visitor(request).site
            if host_site is not None and host_site != name:
                return json_error(
                    403,
                    "forbidden",
                    f"this key belongs to site {name!r}, not to site {host_site!r} "
                    f"that host {visitor(request).host!r} is for; post to your own site's host",
                )
            return stages.runtime
    return json_error(
        401,
        "unauthorized",
        "send one of your site's events_api_keys as 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": 'Bearer realm="capi-gateway"'},
    )


def _foreign_pixel(data: list[Any], runtime: Runtime) -> web.Response | None:
    """403 naming the first event's pixel that is not one of the key's site's pixels."""
    own = {t.pixel_id for t in runtime.context.targets}
    for index, event in enumerate(data):
        pixel = event.get("pixel_id") if isinstance(event, dict) else None
        if pixel is not None and str(pixel) not in own:
            return json_error(
                403,
                "forbidden",
                [
                    {
                        "index": index,
                        "field": "pixel_id",
                        "message": f"pixel {pixel} is not one of this key's site's pixels "
                        f"({', '.join(sorted(own))}); a key posts for its own site only",
                    }
                ],
            )
    return None


async def post_events(request: web.Request) -> web.StreamResponse:
    """Validate a batch, store it durably, answer 202 with the event ids."""
    if sites_on(request.app):
        found = _site_of_key(request)
        if isinstance(found, web.Response):
            return found
        runtime = found
    else:
        runtime = request.app[RUNTIME]
    settings = runtime.settings
    if not settings.events_api_keys:
        return json_error(
            401,
            "events API disabled",
            "no API key is configured; set events_api_keys, CAPIGW_EVENTS_API_KEYS or --api-key",
        )
    if not authorized(request.headers.get("Authorization"), settings.events_api_keys):
        return json_error(
            401,
            "unauthorized",
            "send a configured key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="capi-gateway"'},
        )
    body = await _read_json(request, settings.max_body_bytes)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body, dict) or "data" not in body:
        return json_error(400, "invalid request", 'send a JSON object {"data": [event, ...]}')
    unknown = sorted(set(body) - {"data", "test_event_code"})
    if unknown:
        return json_error(400, "invalid request", f"unknown top-level field(s): {unknown}")
    data = body["data"]
    if not isinstance(data, list) or not data:
        return json_error(400, "invalid request", "data must be a non-empty list of events")
    if len(data) > MAX_EVENTS:
        return json_error(
            400, "too many events", f"{len(data)} events; send at most {MAX_EVENTS} per request"
        )
    if sites_on(request.app):
        foreign = _foreign_pixel(data, runtime)
        if foreign is not None:
            return foreign
    code = body.get("test_event_code")
    if code is not None and not isinstance(code, str):
        return json_error(400, "invalid request", "test_event_code must be a string")
    metrics = request.app[METRICS]
    links: dict[int, tuple[tuple[str, str], ...]] = {}
    if any(isinstance(e, dict) and "stitch_key" in e for e in data):
        try:
            problems = await stitch_events(
                data, request.app[STITCHES], runtime.rules, links, runtime.context.site
            )
        except StitchLookupFailed as exc:
            return request.app[INTAKE].fault(exc, "Stitching /events").response()
        if problems:
            metrics.rejected("api", data, site=runtime.context.site)
            return _invalid(problems)
    result = prepare(data, runtime.context, test_event_code=code)
    if isinstance(result, list):
        metrics.rejected("api", data, site=runtime.context.site)
        return _invalid(result)
    rows = _linked(result.rows, result.event_ids, links) if links else result.rows
    stored = await request.app[INTAKE].store(rows)
    if isinstance(stored, Refused):
        return stored.response()
    log.debug(
        "Accepted %d event(s) from the events API.",
        len(result.event_ids),
        extra={"event_ids": result.event_ids[:100]},
    )
    outcomes = stored.outcomes_by_event()
    items = [{"event_id": i, "outcome": outcomes.get(i, "new")} for i in result.event_ids]
    return web.json_response(
        {"accepted": len(result.event_ids), "event_ids": result.event_ids, "events": items},
        status=202,
        dumps=json_dumps,  # a batch's answer names each event: the stdlib's cost showed
    )


def _linked(
    rows: list[NewEvent], event_ids: list[str], links: dict[int, tuple[tuple[str, str], ...]]
) -> list[NewEvent]:
    """Rows with the stitch keys their event named (`prepare` keeps the events' order)."""
    by_id: dict[str, tuple[tuple[str, str], ...]] = {}
    for index, keys in links.items():
        event_id = event_ids[index]
        by_id[event_id] = tuple(sorted({*by_id.get(event_id, ()), *keys}))
    return [
        dataclasses.replace(r, links=by_id[r.event_id]) if r.event_id in by_id else r for r in rows
    ]


def _invalid(problems: list[Problem]) -> web.Response:
    count = len({p.index for p in problems})
    return json_error(
        400,
        f"{count} invalid event(s); nothing was stored",
        [p.as_dict() for p in problems],
    )


async def _read_json(request: web.Request, limit: int) -> Any:
    if request.content_length is not None and request.content_length > limit:
        return _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            return _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    document = orjson_loads(body)
    if document is not REFUSED:
        # orjson reads no NaN, Infinity or overflowing number: no walk looking for them.
        return document
    # The stdlib's value, or its error for the 400, as before.
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return json_error(400, "invalid JSON", f"the body is not JSON: {exc}")
    except ValueError as exc:
        # An integer past Python's digit limit (thousands of digits).
        return json_error(400, "invalid JSON", f"the body is not usable JSON: {exc}")
    except RecursionError:
        return json_error(400, "invalid JSON", "the body nests too deeply")
    # Only bodies orjson refused come here: the rare one with NaN or Infinity is named.
    bad = non_finite_path(document)
    if bad is not None:
        return json_error(
            400,
            "invalid JSON",
            f"{bad}: NaN and Infinity are not JSON numbers; send a finite number or leave it out",
        )
    return document


def _too_large(limit: int) -> web.Response:
    return json_error(
        413, "body too large", f"send at most {limit} bytes per request (max_body_bytes)"
    )
