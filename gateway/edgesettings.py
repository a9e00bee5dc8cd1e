"""Settings of the side visitors meet: where the gateway listens, the proxy, identity and
consent, the browser side and page injection.

Two bases of `gateway.settings.Settings` (fields, their docstrings for README's reference,
and the validators of those fields alone); import `Settings` from there.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class ListenSettings(BaseModel):
    """Where the gateway listens and what it fronts."""

    # where it listens and what it fronts
    listen: str = "127.0.0.1:8080"
    """address and port to serve on (`HOST:PORT`, `[::1]:PORT`, or `:PORT` for all)"""
    upstream: str | None = None
    """the site to proxy; without it only the gateway's own endpoints are served"""
    prefix: str = "/_capi"
    """path prefix of the gateway's own endpoints"""
    workers: int = Field(default=1, ge=1, le=64)
    """worker processes sharing port and buffer"""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL such as http://127.0.0.1:3000")
        return value.rstrip("/") if value else value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        if value == "/" or not re.match(r"^/[A-Za-z0-9._~/-]+$", value):
            raise ValueError(f"{value!r} is not a path prefix such as /_capi")
        return value


class EdgeSettings(BaseModel):
    """The proxy, identity and consent, the browser side and injection."""

    # proxy
    preserve_host: bool = True
    """forward the visitor's `Host` (else the upstream's own)"""
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """CIDRs whose `X-Forwarded-For`/`Forwarded` and `X-Request-ID` are believed"""
    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    """connecting to the upstream (504 after)"""
    upstream_read_timeout: float = Field(default=60.0, gt=0)
    """longest silence from the upstream, headers or body"""
    upstream_total_timeout: float = Field(default=0.0, ge=0)
    """cap on a whole upstream exchange; 0 lets downloads run"""
    upstream_keepalive: float = Field(default=4.0, gt=0)
    """idle upstream connections are closed after this (keep it below the site's own)"""
    upstream_connections: int = Field(default=256, ge=1)
    """pooled connections to the upstream per worker, for body-less GET/HEAD and, apart,
    for requests with a body and WebSockets (up to twice this in all)"""
    max_header_bytes: int = Field(default=32768, ge=1024)
    """longest request line / header field, both ways"""
    max_request_headers_kb: int = Field(default=64, ge=1)
    """all of a request's header lines together (431 above, before the site is contacted)"""
    max_upload_mb: float = Field(default=2048.0, gt=0)
    """largest request body passed to the site (413 above)"""
    keepalive_timeout: float = Field(default=15.0, gt=0)
    """idle visitor connections are closed after this"""
    client_body_timeout: float = Field(default=60.0, gt=0)
    """longest pause in a visitor's upload (408 and close after)"""
    client_body_min_rate: int = Field(default=1024, ge=0)
    """slowest upload allowed, bytes/s on average once `client_body_timeout` has passed (408
    below; 0: none) — a body trickling in byte by byte cannot hold a connection for long"""
    request_buffer_kb: int = Field(default=64, ge=0)
    """request bodies up to this size are read whole before the site is contacted, so a slow
    upload holds no upstream connection (0: always stream)"""
    upstream_connections_per_client: int = Field(default=32, ge=1)
    """upstream exchanges one client address may hold at once (503 above): no single
    address can take the pool"""
    max_connections: int = Field(default=4096, ge=1)
    """open visitor connections per worker; more are refused with a 503"""
    max_connections_per_client: int = Field(default=256, ge=1)
    """open connections per socket peer (`trusted_proxies` exempt); more are refused"""

    # identity and consent
    cookie_domain: str | None = None
    """domain of `_fbp`/`_fbc` (e.g. `example.co.uk` for `www.example.co.uk`)"""
    cookie_lifetime: float = Field(default=90 * 86400.0, gt=0)
    """lifetime of `_fbp`/`_fbc`, refreshed on every page view"""
    consent: str = "none"
    """`none` (always track) or the name of a consent cookie"""
    consent_values: list[str] = Field(
        default_factory=lambda: ["1", "true", "yes", "granted", "accepted", "all"]
    )
    """values of that cookie that mean yes"""
    opt_out_cookie: str | None = None
    """a cookie whose presence marks events `opt_out`"""
    gpc: Literal["opt_out", "ldu", "ignore"] = "opt_out"
    """what `Sec-GPC: 1` does: `opt_out`, `ldu` (Limited Data Use) or `ignore`"""
    bot_user_agents: list[str] | None = None
    """user-agent patterns that get no cookies and no events"""
    scrub_query_params: list[str] | None = None
    """query parameters removed from URLs before they are stored"""

    # browser side
    browser_pixel: Literal["hook", "load", "off"] = "hook"
    """`hook` (the site loads the Meta pixel; px.js adds event ids and mirrors its
    events), `load` (px.js loads the pixel for the configured ids), `off` (beacons only)"""
    fbevents_url: str = "https://connect.facebook.net/en_US/fbevents.js"
    """where `load` mode gets the pixel library"""
    collect_max_bytes: int = Field(default=65536, ge=1024)
    """largest beacon body (413 above)"""
    collect_max_events: int = Field(default=20, ge=1, le=1000)
    """events per beacon"""
    collect_rate: float = Field(default=10.0, gt=0)
    """beacons per second per client IP (429 with Retry-After above)"""
    collect_burst: int = Field(default=40, ge=1)
    """beacons a client IP may burst"""

    # injection
    inject: bool = True
    """tag HTML pages, issue cookies and mirror PageViews"""
    inject_max_scan: int = Field(default=65536, ge=1024)
    """bytes of a page searched for `<head>` before giving up"""
    secret: str | None = None
    """HMAC secret of page tokens; replicas must share it"""
    page_token_ttl: float = Field(default=4 * 3600.0, gt=0)
    """how long a page's token is accepted by `/collect`"""
    debug_headers: bool = False
    """adds `X-Capi-Skipped: <reason>` to HTML pages left untagged (`bot`, `consent`, ...),
    to see with curl why a page has no tag; off in production"""
    pageview_hold: float = Field(default=3.0, ge=0, le=300)
    """a tagged page's PageView waits this long before its first send, so the
    browser's beacon can complete it (e.g. an `_fbc` the pixel set)"""
    assembly_hold: float = Field(default=60.0, ge=0, le=3600)
    """every other event waits this long before its first send, so that its copies
    (thank-you page, payment webhook, backend call) merge into it first. Payment webhooks
    mostly arrive within seconds of the thank-you page, slow providers and busy days in
    tens of seconds; 60 s covers that with margin, and Meta asks only for events within
    the hour. Rules and webhooks can set their own `hold`; 0 sends at once"""
    profile_ttl: float = Field(default=30 * 86400.0, ge=0)
    """how long a visitor profile (hashed identifiers under the `_fbp` id) is kept; 0 off"""
    profile_max: int = Field(default=200_000, ge=1)
    """visitor profiles kept at most (least recently updated dropped first)"""

    @field_validator("cookie_domain")
    @classmethod
    def _cookie_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lstrip(".").lower()
        if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", value):
            raise ValueError(f"{value!r} is not a domain such as example.com")
        return value


def split_host_port(listen: str) -> tuple[str, int]:
    """(host, port) from `HOST:PORT`, `[::1]:PORT` or `:PORT`."""
    match = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):(\d{1,5})$", listen.strip())
    if not match or int(match.group(3)) > 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT such as 127.0.0.1:8080")
    host = match.group(1) or match.group(2) or "0.0.0.0"  # noqa: S104 - ":8080" means all
    return host, int(match.group(3))
