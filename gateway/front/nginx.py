"""Routes in, nginx `http {}` text out.

Most requests a front proxy sees are assets, and they are what the config has to make
cheap: nginx evaluates a map only when something reads its variable, so the decision is a
chain of maps, each one's default naming the next, cheapest first. An asset costs two hash
lookups (its `Sec-Fetch-Dest`, its path among the rules' literal paths) and one regex (the
odd-path test; plus one for all patterned rules together, if there are any), where every
request used to run a regex per rule. The gateway's prefix is a `location`, which nginx
matches anyway. Measured in bench/README.md ("Issue 19: nginx's cost of the generated
config").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from gateway.front.render import Front, all_page_rules, header
from gateway.front.routes import (
    DOCUMENT_DESTS,
    PLAIN_TARGET,
    Route,
    describe,
    host_pattern,
    literal_paths,
    path_pattern,
    prefix_pattern,
)

_TAB = "    "
_PLACE = [
    "# Put this file in the http {} context (e.g. /etc/nginx/conf.d/). `pcre_jit on;` in the",
    "# main context (outside http {}) makes its one or two regexes per request cheaper.",
]
# Where a path ends in a raw request target: at its query or at the end. A rule's `$` may
# hold there only where it held at the end of the path alone (matching more is harmless).
TARGET_END = r"(?=\?|$)"
_VIA = re.compile(r'^"(/[^"]*)" (1|\$capi_via((?:_[A-Z]+)+)[a-z0-9_]*);$')


def ng_quote(pattern: str) -> str:
    """A regex as an nginx quoted string (nginx reads `\\\\` as one backslash)."""
    return '"~' + pattern.replace("\\", "\\\\") + '"'


def nginx(front: Front) -> str:
    """The nginx config: maps deciding the backend, two upstreams, one server block."""
    out = header(front, "nginx")
    out += _PLACE
    out += _shared(front, "")
    out += _site(front, "", "")
    return "\n".join(out)


def nginx_sites(fronts: Sequence[Front], *, standalone: bool) -> str:
    """One server block per `[[sites]]` site (`fronts`: one each, `name` set).

    `standalone` (`--site S`): every map and upstream is named after the site, so that the
    files of several sites can sit side by side in conf.d/. Otherwise one file for all
    sites shares the site-independent maps, and a last server block answers hosts no site
    claims (421, as the gateway does), unless a site is the default.
    """
    first = all_page_rules(fronts)
    shared = site_ident(first.name or "") if standalone else ""
    out = header(first, "nginx", sites=[f.name or "" for f in fronts])
    out += _PLACE
    out += _shared(first, shared)
    for front in fronts:
        out += _site(front, shared, site_ident(front.name or ""))
    if not standalone and not any(f.default for f in fronts):
        out += [
            "# Hosts no site claims: refused as the gateway would refuse them.",
            "server {",
            f"{_TAB}listen {_default_server(first.listen)};",
            f"{_TAB}server_name _;",
            f"{_TAB}return 421;",
            "}",
            "",
        ]
    return "\n".join(out)


def site_ident(name: str) -> str:
    """`_<name>` as an nginx variable suffix ("" for no site); unique per site name."""
    if not name:
        return ""
    ident = "_" + re.sub(r"[^a-z0-9_]", "_", name)
    if ident[1:] != name:
        # `a-b` and `a_b` are two sites: the name's digest keeps them apart.
        ident += "_" + hashlib.sha256(name.encode()).hexdigest()[:6]
    return ident


def _default_server(listen: str) -> str:
    return f"{listen} default_server"


def _shared(front: Front, sh: str) -> list[str]:
    """Maps that do not depend on a site's rules, and the gateway's upstream."""
    return [
        "",
        f"map $http_upgrade $capi_connection_upgrade{sh} {{",
        f"{_TAB}default upgrade;",
        f"{_TAB}'' '';",
        "}",
        "",
        "# Last in a chain without patterned rules: paths nginx would match decoded or",
        "# normalized while rules see them as sent go to the gateway (the test accepts the",
        "# plain ones in one pass).",
        f"map $request_uri $capi_odd_path{sh} {{",
        f"{_TAB}default 1;",
        f"{_TAB}{ng_quote(PLAIN_TARGET)} 0;",
        "}",
        "",
        f"upstream capi_gateway{sh} {{",
        f"{_TAB}server {front.gateway.authority};",
        f"{_TAB}keepalive 64;",
        "}",
        "",
    ]


def via_name(methods: Sequence[str], me: str) -> str:
    """The method map a literal path leads to: `$capi_via_GET_POST` (+ the site suffix)."""
    return "$capi_via" + "".join(f"_{m}" for m in sorted(methods)) + me


def _site(front: Front, sh: str, me: str) -> list[str]:
    """One site's decision chain, its upstream and its server block (`me`: its suffix)."""
    literal: dict[str, set[str] | None] = {}
    patterned: list[Route] = []
    for route in front.routes:
        paths = literal_paths(route)
        if paths is None:
            patterned.append(route)
            continue
        # nginx lowercases map keys and the value it looks up: `/Cart` and `/cart` are one.
        for path in (p.lower() for p in paths):
            if path in literal and literal[path] is None:
                continue
            methods = literal.setdefault(path, set())
            if route.methods is None or methods is None:
                literal[path] = None
            else:
                methods.update(route.methods)
    last = f"$capi_rule{me}" if patterned else f"$capi_odd_path{sh}"
    out = [f"# site: {front.name}"] if front.name else []
    out += [
        f"# Which requests{_of(front)} go to the gateway: each map is read only when the one",
        "# before it ends in its default. Document navigations first; `Accept: text/html`",
        "# only counts without Sec-Fetch-Dest.",
        f"map $http_sec_fetch_dest $capi_to_gateway{me} {{",
        f"{_TAB}default $capi_path{me};",
        f"{_TAB}'' $capi_accept{me};",
        *(f"{_TAB}{dest} 1;" for dest in DOCUMENT_DESTS),
        "}",
        "",
        f"map $http_accept $capi_accept{me} {{",
        f"{_TAB}default $capi_path{me};",
        f"{_TAB}{ng_quote('text/html')} 1;",
        "}",
        "",
        "# Rules with literal paths: a hash lookup of the path, then of the method.",
        f"map $uri $capi_path{me} {{",
        f"{_TAB}default {last};",
    ]
    for route in front.routes:
        if literal_paths(route) is not None:
            out.append(f"{_TAB}# {describe(route)}")
    sets: set[tuple[str, ...]] = set()
    for path, methods in literal.items():
        if methods is None:
            out.append(f'{_TAB}"{path}" 1;')
        else:
            sets.add(tuple(sorted(methods)))
            out.append(f'{_TAB}"{path}" {via_name(sorted(methods), me)};')
    out += ["}", ""]
    for names in sorted(sets):
        out += [f"map $request_method {via_name(names, me)} {{", f"{_TAB}default {last};"]
        out += [f"{_TAB}{method} 1;" for method in names]
        out += ["}", ""]
    if patterned:
        # On a plain target (the first alternative fails) the raw path is nginx's $uri, so the
        # rules can read it there: one PCRE call decides both.
        alternatives = [f"[^ ]+ [^ ]* (?!{PLAIN_TARGET[1:]})"]
        alternatives += [nginx_rule_regex(r, end=TARGET_END)[1:] for r in patterned]
        out += [
            "# Odd paths and every other rule: one regex for all (one PCRE call).",
            f'map "$request_method $host $request_uri" $capi_rule{me} {{',
            f"{_TAB}default 0;",
            *(f"{_TAB}# {describe(route)}" for route in patterned),
            f"{_TAB}{ng_quote('^(?:' + '|'.join(alternatives) + ')')} 1;",
            "}",
            "",
        ]
    out += [
        f"upstream capi_site{me} {{",
        f"{_TAB}server {front.site.authority};",
        f"{_TAB}keepalive 64;",
        "}",
        "",
        "server {",
        f"{_TAB}listen {_default_server(front.listen) if front.default else front.listen};",
        f"{_TAB}server_name {front.server_name};",
    ]
    if "ssl" in front.listen.split():
        out += [
            f"{_TAB}ssl_certificate     /etc/ssl/example/fullchain.pem;  # your certificate",
            f"{_TAB}ssl_certificate_key /etc/ssl/example/privkey.pem;",
        ]
    # preserve_host = false: the gateway sends the site its own host; so does nginx.
    site_host = "$host" if front.preserve_host else front.site.authority
    out += [
        f"{_TAB}# The gateway enforces its own limits (max_upload_mb, max_body_bytes).",
        f"{_TAB}client_max_body_size 0;",
        f"{_TAB}# What the gateway needs is handed to @capi_gateway (418 never reaches anyone).",
        f"{_TAB}error_page 418 = @capi_gateway;",
        "",
        f"{_TAB}# The gateway's own endpoints (px.js, /collect, /events, webhooks).",
        f"{_TAB}location = {front.prefix} {{",
        f"{_TAB * 2}return 418;",
        f"{_TAB}}}",
        f"{_TAB}location ^~ {front.prefix}/ {{",
        f"{_TAB * 2}return 418;",
        f"{_TAB}}}",
        "",
        f"{_TAB}location / {{",
        f"{_TAB * 2}if ($capi_to_gateway{me}) {{",
        f"{_TAB * 3}return 418;",
        f"{_TAB * 2}}}",
        f"{_TAB * 2}# Straight to the site, with nginx's usual buffering.",
        f"{_TAB * 2}proxy_pass {front.site.scheme}://capi_site{me};",
        *_proxy_headers(site_host, sh),
    ]
    if front.site.scheme == "https":
        out.append(f"{_TAB * 2}proxy_ssl_server_name on;")
    out += [
        f"{_TAB}}}",
        "",
        f"{_TAB}location @capi_gateway {{",
        f"{_TAB * 2}proxy_pass {front.gateway.scheme}://capi_gateway{sh};",
        *_proxy_headers("$host", sh),
        # Only the gateway logs by it; for the site it would be random bytes per asset.
        f"{_TAB * 2}proxy_set_header X-Request-ID $request_id;",
        f"{_TAB * 2}# Pages stream through the gateway; do not hold them back here.",
        f"{_TAB * 2}proxy_buffering off;",
        f"{_TAB * 2}proxy_request_buffering off;",
        f"{_TAB * 2}# Longer than the gateway's upstream_read_timeout (60 s): its 504 answers.",
        f"{_TAB * 2}proxy_read_timeout 65s;",
        f"{_TAB}}}",
        "}",
        "",
    ]
    if front.name:
        out += [f"# end of site: {front.name}", ""]
    return out


def _of(front: Front) -> str:
    return f" of site {front.name!r}" if front.name else ""


def _proxy_headers(host: str, sh: str = "") -> list[str]:
    return [
        f"{_TAB * 2}proxy_http_version 1.1;",
        f"{_TAB * 2}proxy_set_header Host {host};",
        f"{_TAB * 2}proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        f"{_TAB * 2}proxy_set_header X-Forwarded-Proto $scheme;",
        # As the visitor sent it, port included: /collect compares it with Origin.
        f"{_TAB * 2}proxy_set_header X-Forwarded-Host $http_host;",
        f"{_TAB * 2}proxy_set_header Upgrade $http_upgrade;",
        f"{_TAB * 2}proxy_set_header Connection $capi_connection_upgrade{sh};",
    ]


def nginx_rule_regex(route: Route, *, end: str = "$") -> str:
    """The route as one regex over "$request_method $host $uri" (`end` = TARGET_END: over
    "$request_method $host $request_uri")."""
    methods = "(?:" + "|".join(route.methods) + ")" if route.methods else "[^ ]+"
    host = host_pattern(route).text or "[^ ]*"
    # The path starts right after the second space; a rule's own `^` must hold there.
    path = path_pattern(route, start="(?<= )", end=end).text or ""
    return f"^{methods} {host} {path}"


def nginx_uncovered(text: str, routes: Sequence[Route], prefix: str) -> tuple[bool, list[Route]]:
    """(whether `text` sends `prefix` to the gateway, the routes it does not send there).

    Reads both this generator's maps and the older one-regex-per-rule form.
    """
    lines = {line.strip() for line in text.splitlines()}
    old_prefix = ng_quote("^[^ ]+ [^ ]* " + prefix_pattern(prefix)[1:]) + " 1;"
    has_prefix = old_prefix in lines or (
        f"location = {prefix} {{" in lines and f"location ^~ {prefix}/ {{" in lines
    )
    via: dict[str, set[str] | None] = {}
    combined = ""
    for line in lines:
        found = _VIA.match(line)
        if found is not None:
            methods = found.group(3)
            via[found.group(1)] = set(methods[1:].split("_")) if methods else None
        elif line.startswith('"~^(?:') and line.endswith(')" 1;'):
            combined += "|" + line[len('"~^(?:') : -len(')" 1;')] + "|"
    missing = []
    for route in routes:
        if ng_quote(nginx_rule_regex(route)) + " 1;" in lines:
            continue
        alternative = ng_quote(nginx_rule_regex(route, end=TARGET_END)[1:])[2:-1]
        if f"|{alternative}|" in combined:
            continue
        paths = literal_paths(route)
        if paths is not None and all(_via_covers(via, path, route) for path in paths):
            continue
        missing.append(route)
    return has_prefix, missing


def _via_covers(via: dict[str, set[str] | None], path: str, route: Route) -> bool:
    path = path.lower()
    if path not in via:
        return False
    methods = via[path]
    return methods is None or (route.methods is not None and set(route.methods) <= methods)
