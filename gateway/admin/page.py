"""The dashboard's HTML: one server-rendered page, an inline SVG chart, no inline script.

Everything a row or a rule file supplies is escaped. Styles and the small script come from
`{prefix}/admin/assets/` (gateway/admin/static), which the page's CSP allows and nothing
else; bars and meters are sized by attributes, never by inline styles.
"""

from __future__ import annotations

import time
from html import escape

from gateway.admin.chart import chart, series_groups
from gateway.admin.data import Coverage, Dashboard, DeadLetter, Dedup, RuleStat, Timeline
from gateway.admin.hints import MATCH_KEYS, WEAK, hinted_keys


def render_dashboard(
    d: Dashboard,
    *,
    prefix: str,
    csrf: str,
    notice: str,
    signed_in: bool,
    dry_run: bool,
    version: str,
) -> str:
    """The whole dashboard page."""
    admin = f"{prefix}/admin"
    logout = (
        f'<form method="post" action="{_e(admin)}/logout" class="inline">'
        f'{_csrf(csrf)}<button type="submit">Sign out</button></form>'
        if signed_in
        else ""
    )
    badge = '<span class="badge">dry run: nothing is sent to Meta</span>' if dry_run else ""
    notice_html = f'<p class="notice" role="status">{_e(notice)}</p>' if notice else ""
    body = "\n".join(
        [
            _traffic(d.timeline),
            _delivery(d, admin, csrf),
            _coverage(d),
            _dedup(d),
            _rules(d),
        ]
    )
    return _document(
        "capi-gateway dashboard",
        prefix,
        version,
        f"""<header data-csrf="{_e(csrf)}">
<h1>capi-gateway <span class="muted">dashboard</span></h1>
{badge}
<p class="muted">As of {_when(d.now)} · <a href="{_e(admin)}">refresh</a> · v{_e(version)}</p>
{logout}
</header>
{notice_html}
<main>
{body}
</main>""",
    )


def render_login(*, prefix: str, error: str, version: str) -> str:
    """The sign-in form."""
    message = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    return _document(
        "Sign in · capi-gateway",
        prefix,
        version,
        f"""<main class="login">
<h1>capi-gateway <span class="muted">dashboard</span></h1>
{message}
<form method="post" action="{_e(prefix)}/admin/login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>
<p class="muted">The token is the gateway's <code>admin_token</code> setting
(<code>CAPIGW_ADMIN_TOKEN</code> or <code>--admin-token</code>).</p>
</main>""",
    )


def _document(title: str, prefix: str, version: str, body: str) -> str:
    assets = f"{_e(prefix)}/admin/assets"
    v = _e(version)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{_e(title)}</title>
<link rel="stylesheet" href="{assets}/admin.css?v={v}">
<script src="{assets}/admin.js?v={v}" defer></script>
</head>
<body>
{body}
</body>
</html>
"""


# -- sections -------------------------------------------------------------------------------


def _traffic(t: Timeline) -> str:
    if not t.series:
        inner = '<p class="empty">No events in the last hour.</p>'
    else:
        legend = "".join(
            f'<li data-series="{i}"><span class="swatch s{i}"></span>{_e(name)} '
            f'<span class="muted">{total:,}</span></li>'
            for i, (name, total, _) in enumerate(series_groups(t))
        )
        inner = f'{chart(t)}\n<ul class="legend">{legend}</ul>'
    return f"""<section id="traffic">
<h2>Events per minute <span class="muted">last hour, by event name</span></h2>
{inner}
</section>"""


def _delivery(d: Dashboard, admin: str, csrf: str) -> str:
    s = d.delivery
    tiles = [
        ("sent", "Sent", s.sent, "delivered in the last 24 h"),
        ("pending", "Pending", s.pending, "waiting for their first attempt"),
        ("retrying", "Retrying", s.retrying, "waiting for another attempt"),
        ("dead", "Dead", s.dead, "refused for good or expired"),
    ]
    if s.blocked:
        tiles.append(("blocked", "Blocked", s.blocked, "held until a pixel's token is fixed"))
    tile_html = "".join(
        f'<div class="tile {cls}" data-state="{cls}"><span class="n">{n:,}</span>'
        f'<span class="label">{label}</span><span class="muted">{_e(help_)}</span></div>'
        for cls, label, n, help_ in tiles
    )
    dry = (
        f'<p class="muted">{s.sent_dry:,} of the sent events were recorded by --dry-run.</p>'
        if s.sent_dry
        else ""
    )
    blocked = "".join(
        f'<p class="error">Pixel {_e(b.pixel_id)} is blocked: {_e(b.reason)}'
        f"{_trace(b.fbtrace_id)}. Replace its access token to release its events.</p>"
        for b in s.blocked_pixels
    )
    if d.dead_letters:
        rows = "".join(_dead_row(x, admin, csrf) for x in d.dead_letters)
        shown = (
            f'<p class="muted">The {len(d.dead_letters):,} most recent of {s.dead:,}.</p>'
            if s.dead > len(d.dead_letters)
            else ""
        )
        retry_all = (
            f'<form method="post" action="{_e(admin)}/retry" class="inline">{_csrf(csrf)}'
            f'<input type="hidden" name="all" value="1">'
            f'<button type="submit" id="retry-all">Retry all {s.dead:,} dead</button></form>'
        )
        dead = f"""<h3>Dead letters</h3>
{shown}{retry_all}
<table class="dead">
<thead><tr><th>Died</th><th>Event</th><th>event_id</th><th>Pixel</th><th>Source</th>
<th>Error</th><th>fbtrace_id</th><th>Tries</th><th></th></tr></thead>
<tbody>{rows}</tbody>
</table>"""
    else:
        dead = '<p class="empty">No dead letters.</p>'
    return f"""<section id="delivery">
<h2>Delivery</h2>
<div class="tiles">{tile_html}</div>
{dry}{blocked}
{dead}
</section>"""


def _dead_row(x: DeadLetter, admin: str, csrf: str) -> str:
    hidden = f'{_csrf(csrf)}<input type="hidden" name="id" value="{x.id}">'
    return (
        f'<tr data-id="{x.id}"><td>{_when(x.died_at)}</td><td>{_e(x.event_name)}</td>'
        f"<td><code>{_e(x.event_id)}</code></td><td>{_e(x.pixel_id)}</td>"
        f'<td>{_e(x.source)}</td><td class="error-text">{_e(x.error or "")}</td>'
        f"<td><code>{_e(x.fbtrace_id or '')}</code></td><td>{x.attempts}</td>"
        f'<td class="actions"><form method="post" action="{_e(admin)}/retry">{hidden}'
        f'<button type="submit" class="retry">Retry</button></form>'
        f'<form method="post" action="{_e(admin)}/discard" '
        f'data-confirm="Discard this dead letter? It will never be sent.">{hidden}'
        f'<button type="submit" class="discard danger">Discard</button></form></td></tr>'
    )


def _coverage(d: Dashboard) -> str:
    hints = "".join(f'<li class="hint">{_e(h.text)}</li>' for h in d.hints)
    hint_html = f'<ul class="hints">{hints}</ul>' if hints else ""
    if not d.coverage:
        table = '<p class="empty">No events in the last 24 hours.</p>'
    else:
        head = "".join(f"<th>{_e(label)}</th>" for _, label in MATCH_KEYS)
        table = f"""<table class="coverage">
<thead><tr><th>Event</th><th>Events</th>{head}</tr></thead>
<tbody>{"".join(_coverage_row(c) for c in d.coverage)}</tbody>
</table>"""
    return f"""<section id="coverage">
<h2>Match keys <span class="muted">last 24 h: the local estimate of Event Match Quality</span></h2>
<p class="muted">The share of each event name's events that carry a key Meta matches people
by. The more keys, and the more often, the better Meta can attribute conversions. Shares in
red are worth improving. fbc exists only for visitors who came from an ad click, so a low
share is normal; browsing events (page views, product views, carts) come before a visitor says
who they are, so they are not expected to carry email, phone or external_id.</p>
{hint_html}
{table}
</section>"""


def _coverage_row(c: Coverage) -> str:
    cells = []
    expected = hinted_keys(c.event_name)
    for key, _ in MATCH_KEYS:
        share = c.shares.get(key, 0.0)
        weak = ' class="weak"' if share < WEAK and key in expected else ""
        cells.append(
            f'<td{weak} data-key="{_e(key)}"><meter min="0" max="1" low="0.5" high="0.9" '
            f'optimum="1" value="{share:.3f}"></meter> {_pct(share)}</td>'
        )
    return f"<tr><th>{_e(c.event_name)}</th><td>{c.events:,}</td>{''.join(cells)}</tr>"


def _dedup(d: Dashboard) -> str:
    if not d.dedup:
        table = '<p class="empty">No events in the last 24 hours.</p>'
    else:
        rows = "".join(_dedup_row(x) for x in d.dedup)
        table = f"""<table class="dedup">
<thead><tr><th>Event</th><th>Browser</th><th>Server</th><th>Both</th>
<th>Browser events with a server twin</th><th>Server events with a browser twin</th></tr></thead>
<tbody>{rows}</tbody>
<tfoot>{_dedup_row(d.dedup_total)}</tfoot>
</table>"""
    return f"""<section id="dedup">
<h2>Deduplication <span class="muted">last 24 h</span></h2>
<p class="muted"><b>Browser</b>: events the browser pixel reported (mirrored by px.js to
/collect). <b>Server</b>: events the server side produced on its own: proxy PageViews, rules,
the events API, webhooks. <b>Both</b>: events both sides reported with the same pixel, event
name and event_id, which Meta counts once. <b>Browser events with a server twin</b> = both ÷
browser: of what the pixel reported, the share the server saw too, so it still counts where
the pixel is blocked. <b>Server events with a browser twin</b> = both ÷ server: of what the
server sent, the share the pixel reported too; low for conversions only a backend or a webhook
knows, or where the pixel does not run.</p>
{table}
</section>"""


def _dedup_row(x: Dedup) -> str:
    return (
        f"<tr><th>{_e(x.event_name)}</th><td>{x.browser:,}</td><td>{x.server:,}</td>"
        f"<td>{x.both:,}</td><td>{_share(x.browser_share)}</td>"
        f"<td>{_share(x.server_share)}</td></tr>"
    )


def _rules(d: Dashboard) -> str:
    if not d.rules:
        body = (
            '<p class="empty">No rules loaded: set <code>rules</code> to a folder of rule '
            "files to turn page views, form posts and clicks into conversions.</p>"
        )
    else:
        never = [r.name for r in d.rules if not r.fired]
        summary = (
            f'<p class="error">Never fired in the last 24 h: {_e(", ".join(never))}.</p>'
            if never
            else '<p class="muted">Every rule fired in the last 24 h.</p>'
        )
        rows = "".join(_rule_row(r) for r in d.rules)
        body = f"""{summary}
<table class="rules">
<thead><tr><th>Rule</th><th>Event</th><th>Trigger</th><th>File</th><th>Fired</th></tr></thead>
<tbody>{rows}</tbody>
</table>"""
    other = ""
    if d.other_rules:
        items = "".join(f"<li>{_e(n)}: {c:,}</li>" for n, c in d.other_rules)
        other = f"<p>Fired but not among the loaded rules (since removed):</p><ul>{items}</ul>"
    return f"""<section id="rules">
<h2>Rules <span class="muted">events produced in the last 24 h</span></h2>
{body}
{other}
</section>"""


def _rule_row(r: RuleStat) -> str:
    cls = ' class="never"' if not r.fired else ""
    fired = f"{r.fired:,}" if r.fired else '0 <span class="badge">never fired</span>'
    return (
        f'<tr{cls} data-rule="{_e(r.name)}"><th>{_e(r.name)}</th><td>{_e(r.event_name)}</td>'
        f"<td>{_e(r.trigger)}</td><td><code>{_e(r.file)}</code></td><td>{fired}</td></tr>"
    )


# -- small pieces ---------------------------------------------------------------------------


def _e(text: str) -> str:
    return escape(text, quote=True)


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(token)}">'


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    shown = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    return f'<time datetime="{iso}">{shown}</time>'


def _trace(fbtrace_id: str | None) -> str:
    return f" (fbtrace_id <code>{_e(fbtrace_id)}</code>)" if fbtrace_id else ""


def _pct(share: float) -> str:
    if 0 < share < 0.01:
        return "&lt;1%"
    return f"{share:.0%}"


def _share(share: float | None) -> str:
    return "—" if share is None else _pct(share)
