"""`capi-gateway front-config nginx|caddy` and the coverage check of `check --front-config`.

The config is generated from the loaded rules; the check reads a generated file back and
names every loaded rule whose route is not in it (the file predates the rule), so a new
rule is not silently starved of the requests it needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.config import Sources, load_settings
from gateway.front.nginx import nginx, nginx_sites, nginx_uncovered
from gateway.front.render import (
    Backend,
    Front,
    FrontError,
    caddy,
    caddy_rule_matchers,
    caddy_sites,
)
from gateway.front.routes import page_rules, prefix_pattern, rule_routes
from gateway.pipeline.rulefile import RuleError
from gateway.pipeline.ruleload import load_rules
from gateway.pipeline.rules import RuleSet
from gateway.settings import ConfigError, Settings, split_host_port

FLAVORS = {"nginx": nginx, "caddy": caddy}
_DEFAULT_LISTEN = {"nginx": "80", "caddy": ":80"}


def add_parser(sub: Any) -> None:
    """The `front-config` subcommand."""
    cmd = sub.add_parser(
        "front-config",
        help="print an nginx or Caddy config that sends only what the gateway needs through it",
    )
    cmd.add_argument("flavor", choices=sorted(FLAVORS), help="which front proxy")
    cmd.add_argument("--config", type=Path, help="TOML config file (overrides env)")
    cmd.add_argument("--rules", type=Path, help="directory of rule files")
    cmd.add_argument("--prefix", help="path prefix of the gateway's endpoints")
    cmd.add_argument(
        "--gateway", help="the gateway as the front reaches it (default: http://<listen setting>)"
    )
    cmd.add_argument("--upstream", help="the site (default: the upstream setting)")
    cmd.add_argument(
        "--listen",
        help="nginx: the `listen` parameters (default 80, e.g. '443 ssl'); "
        "Caddy: the site address (default :80, e.g. shop.example)",
    )
    cmd.add_argument("--server-name", default="_", help="nginx server_name (default _)")
    cmd.add_argument(
        "--site",
        help="with [[sites]]: a config for this site only (its hosts, upstream and rules); "
        "without it, one server block per site",
    )


def run_front_config(args: argparse.Namespace) -> int:
    """Print the config; 2 with a message when an address cannot be used."""
    flags = {"rules": args.rules, "prefix": args.prefix, "upstream": args.upstream}
    settings = load_settings(Sources(config_file=args.config, flags=flags))
    if settings.site_list() or args.site is not None:
        return _print_sites(settings, args)
    try:
        front = build_front(
            settings,
            gateway=args.gateway,
            listen=args.listen or _DEFAULT_LISTEN[args.flavor],
            server_name=args.server_name,
        )
    except FrontError as exc:
        raise ConfigError(str(exc)) from None
    print(FLAVORS[args.flavor](front), end="")
    return 0


def _print_sites(settings: Settings, args: argparse.Namespace) -> int:
    sites = settings.site_list()
    if args.site is not None:
        names = [site.name for site in sites]
        if args.site not in names:
            raise ConfigError(
                f"--site: no site named {args.site!r} in the configuration"
                + (f" (sites: {', '.join(names)})" if names else " (it has no [[sites]])")
            )
        sites = tuple(site for site in sites if site.name == args.site)
    listen = args.listen or _DEFAULT_LISTEN[args.flavor]
    try:
        fronts = [
            build_front(
                site.settings,
                gateway=args.gateway or _listen_url(settings.listen),
                listen=listen,
                server_name=" ".join(site.hosts) or "_",
                name=site.name,
                default=site.default,
            )
            for site in sites
        ]
        if args.flavor == "nginx":
            text = nginx_sites(fronts, standalone=args.site is not None)
        else:
            text = caddy_sites(fronts)
    except FrontError as exc:
        raise ConfigError(str(exc)) from None
    print(text, end="")
    return 0


def build_front(
    settings: Settings,
    *,
    gateway: str | None,
    listen: str,
    server_name: str = "_",
    name: str | None = None,
    default: bool = False,
) -> Front:
    """What a config is generated from: the settings' rules, prefix, upstream and listen."""
    if settings.upstream is None:
        where = f"sites.{name}.upstream" if name else "upstream"
        raise FrontError(f"{where}: no site to send assets to; pass --upstream URL or set upstream")
    rules = load_rules(settings.rules) if settings.rules is not None else RuleSet()
    origin = (
        f"{len(rules.rules)} rule(s) in {settings.rules}"
        if settings.rules is not None
        else "no rule files (the rules setting is empty)"
    )
    return Front(
        gateway=Backend.parse(gateway or _listen_url(settings.listen), "--gateway"),
        site=Backend.parse(settings.upstream, "upstream"),
        prefix=settings.prefix,
        routes=tuple(rule_routes(rules)),
        listen=listen,
        server_name=server_name,
        preserve_host=settings.preserve_host,
        origin=origin,
        page_rules=tuple(f"rule {r.name!r} ({r.file})" for r in page_rules(rules)),
        name=name,
        default=default,
    )


def _listen_url(listen: str) -> str:
    host, port = split_host_port(listen)
    if host in ("0.0.0.0", ""):  # noqa: S104 - listening on all: reach it on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def coverage_warnings(
    text: str, rules: RuleSet | None, prefix: str, site: str | None = None
) -> list[str]:
    """What a generated config (nginx or Caddy) misses of the loaded rules and the prefix.

    `site`: only that site's part of a `[[sites]]` config counts (another site's server
    block sending a path through the gateway does nothing for this site's requests).
    """
    flavor = "caddy" if "reverse_proxy" in text else "nginx"
    if site is not None:
        text = _site_section(text, site)
    out: list[str] = []
    of = f" of site {site!r}" if site is not None else ""
    routes = rule_routes(rules) if rules is not None else []
    if flavor == "nginx":
        has_prefix, missing = nginx_uncovered(text, routes, prefix)
    else:
        lines = {line.strip() for line in text.splitlines()}
        has_prefix = f'not path_regexp "{prefix_pattern(prefix)}"' in lines
        blocks = _caddy_blocks(text)
        missing = [route for route in routes if caddy_rule_matchers(route) not in blocks]
    if not has_prefix:
        out.append(f"the front config{of} does not send {prefix} to the gateway (px.js, /collect)")
    for route in missing:
        out.append(
            f"{route.label} is not covered by the front config{of}: its requests would "
            f"bypass the gateway; regenerate it with `capi-gateway front-config {flavor}`"
        )
    return out


def _site_section(text: str, site: str) -> str:
    """The lines between `# site: S` and `# end of site: S` (empty when there are none)."""
    lines = text.splitlines()
    try:
        start = lines.index(f"# site: {site}")
        end = lines.index(f"# end of site: {site}", start)
    except ValueError:
        return ""
    return "\n".join(lines[start:end])


def _caddy_blocks(text: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line == "not {":
            current = []
        elif current is not None and line == "}":
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def check_front_config(path: Path, rules: RuleSet | None, settings: Settings) -> list[str]:
    """`check --front-config FILE`: the coverage warnings, or a ConfigError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--front-config: cannot read {path} ({exc})") from None
    sites = settings.site_list()
    if not sites:
        return coverage_warnings(text, rules, settings.prefix)
    out: list[str] = []
    for site in sites:
        if f"# site: {site.name}" not in text.splitlines():
            out.append(
                f"site {site.name!r} has no server block in {path}; generate one with "
                "`capi-gateway front-config nginx|caddy` (all sites) or `--site "
                f"{site.name}`"
            )
            continue
        try:
            own = load_rules(site.settings.rules) if site.settings.rules is not None else None
        except RuleError:
            continue  # `check` reports the broken rule file itself
        out += coverage_warnings(text, own, site.settings.prefix, site=site.name)
    return out
