"""The dashboard's POST actions: sign out, retry or discard dead letters, forget a person.

Each carries the session's CSRF token and is refused from another origin; Bearer requests
need neither, as a browser never adds that header on its own. A tenant acts on its own
sites' rows only.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from aiohttp import web

from gateway.admin.auth import (
    ADMIN,
    auth_key,
    authenticate,
    cookie_path,
    same_origin,
    see_other,
    sign_in_first,
    signing_key,
    wants_html,
)
from gateway.admin.session import COOKIE, csrf_ok
from gateway.delivery.forget import Person, PersonError
from gateway.edge.appkeys import OUTBOX, RUNTIME
from gateway.edge.bodies import read_whole
from gateway.errors import json_error

log = logging.getLogger("gateway.admin")

_FORM_LIMIT = 64 * 1024
_MAX_IDS = 1000


async def post_logout(request: web.Request) -> web.StreamResponse:
    """End the browser's session."""
    checked = await _action(request)
    if isinstance(checked, web.Response):
        return checked
    response = see_other(request, "/admin/login")
    response.del_cookie(COOKIE, path=cookie_path(request))
    return response


async def post_retry(request: web.Request) -> web.StreamResponse:
    """Queue dead letters (`id` fields, or `all=1`) for sending again now."""
    checked = await _action(request)
    if isinstance(checked, web.Response):
        return checked
    form, sites = checked
    ids = _ids(form, allow_all=True)
    if isinstance(ids, web.Response):
        return ids
    count = await request.app[OUTBOX].requeue_dead(ids, sites=sites)
    log.info("Dashboard: %d dead letter(s) queued for sending again%s.", count, _by(sites))
    return _done(request, "retried", count)


async def post_discard(request: web.Request) -> web.StreamResponse:
    """Delete the dead letters of the `id` fields."""
    checked = await _action(request)
    if isinstance(checked, web.Response):
        return checked
    form, sites = checked
    ids = _ids(form, allow_all=False)
    if isinstance(ids, web.Response):
        return ids
    assert ids is not None
    count = await request.app[OUTBOX].discard_dead(ids, sites=sites)
    log.info("Dashboard: %d dead letter(s) discarded%s.", count, _by(sites))
    return _done(request, "discarded", count)


async def post_forget(request: web.Request) -> web.StreamResponse:
    """Erase a person (`email`, `phone`, `external_id`, `fbp` fields): their profile,
    stitched visits and the identifiers of unsent events. Answers the counts as JSON."""
    checked = await _action(request)
    if isinstance(checked, web.Response):
        return checked
    form, sites = checked
    settings = request.app[RUNTIME].settings
    try:
        person = Person.of(
            email=form.get("email", []),
            phone=form.get("phone", []),
            external_id=form.get("external_id", []),
            fbp=form.get("fbp", []),
            default_country=settings.default_country,
        )
    except PersonError as exc:
        return json_error(400, "invalid form", str(exc))
    signing_key(request)  # loads the outbox key into the admin state
    key = request.app[ADMIN].key
    assert key is not None
    counts = await request.app[OUTBOX].forget(person, key, sites=sites)
    log.info(
        "Dashboard: forgot a person (%d event(s), %d profile(s), %d stitched visit(s))%s.",
        counts["events"],
        counts["profiles"],
        counts["stitches"],
        _by(sites),
    )
    return web.json_response({"forgotten": counts}, headers={"Cache-Control": "no-store"})


async def _action(
    request: web.Request,
) -> tuple[dict[str, list[str]], frozenset[str] | None] | web.Response:
    """The form of an allowed, same-origin POST carrying its CSRF token, and the sites it
    may act on (None: the global operator, every row); else the refusal.

    A tenant (a site's own admin_token) acts on its own sites' rows only: the store
    leaves another site's rows alone even when their ids are sent.
    """
    auth = authenticate(request)
    if isinstance(auth, web.Response):
        return auth
    if auth is None:
        return sign_in_first(request)
    if auth.session is not None and not same_origin(request):
        return json_error(403, "forbidden", "dashboard actions come from the dashboard's page")
    form = await read_form(request)
    if isinstance(form, web.Response):
        return form
    if auth.session is not None:
        given = request.headers.get("X-CSRF-Token") or (form.get("csrf") or [""])[0]
        if not csrf_ok(auth_key(request, auth), auth.session, given):
            return json_error(
                403, "forbidden", "missing or stale CSRF token: reload the dashboard and retry"
            )
    return form, auth.sites


def _by(sites: frozenset[str] | None) -> str:
    return "" if sites is None else f" by the tenant of {', '.join(sorted(sites))}"


def _ids(form: dict[str, list[str]], *, allow_all: bool) -> list[int] | web.Response | None:
    if allow_all and (form.get("all") or [""])[0] == "1":
        return None
    raw = form.get("id") or []
    if not raw:
        return json_error(400, "invalid form", "name the dead letters with id=N fields")
    if len(raw) > _MAX_IDS:
        return json_error(400, "invalid form", f"at most {_MAX_IDS} ids per request")
    try:
        return [int(v) for v in raw]
    except ValueError:
        return json_error(400, "invalid form", "every id must be a row number")


def _done(request: web.Request, what: str, count: int) -> web.StreamResponse:
    if wants_html(request):
        return see_other(request, f"/admin?done={what}&n={count}#delivery")
    return web.json_response({what: count}, headers={"Cache-Control": "no-store"})


async def read_form(request: web.Request) -> dict[str, list[str]] | web.Response:
    """A small URL-encoded form, bounded; else the 4xx refusal."""
    if request.content_length is not None and request.content_length > _FORM_LIMIT:
        return json_error(413, "form too large", f"at most {_FORM_LIMIT} bytes")
    raw = await read_whole(request.content, _FORM_LIMIT)
    if raw is None:
        return json_error(413, "form too large", f"at most {_FORM_LIMIT} bytes")
    if raw and request.content_type != "application/x-www-form-urlencoded":
        return json_error(415, "unsupported form", "send application/x-www-form-urlencoded")
    try:
        return parse_qs(raw.decode("utf-8"), max_num_fields=_MAX_IDS + 10)
    except (UnicodeDecodeError, ValueError):
        return json_error(400, "invalid form", "the form is not valid URL-encoded UTF-8")


def notice_of(request: web.Request) -> str:
    """The line the dashboard shows after an action redirected back to it."""
    what, count = request.query.get("done"), request.query.get("n", "")
    if what not in ("retried", "discarded") or not count.isdigit():
        return ""
    if what == "retried":
        return f"{int(count)} dead letter(s) queued for sending again."
    return f"{int(count)} dead letter(s) discarded."
