"""Configuration: one pydantic model and its validation.

Loading it from env, a TOML file and CLI flags (and their precedence) lives in
`gateway.config`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway import __version__
from gateway.audiencesettings import AudienceSettings, ad_account, check_audiences
from gateway.catalogsettings import CatalogSettings, catalog_sites
from gateway.durations import parse_duration
from gateway.insightsettings import InsightSettings
from gateway.sitesettings import Site, SiteTable, resolve_sites

PARTNER_AGENT = f"capi-gateway/{__version__}"
# `buffer` values naming a PostgreSQL database rather than a file.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def buffer_arg(value: str) -> Path | str:
    """`--buffer`: a file path, or a postgresql:// URL kept as written (a Path would collapse
    its `//`)."""
    return value if value.startswith(POSTGRES_SCHEMES) else Path(value)


_PIXEL_ID = re.compile(r"^[0-9]{5,20}$")
_DRY_RUN_PIXEL = "dry-run"


class ConfigError(Exception):
    """A configuration problem a user can fix; the message names the key and the fix.

    `problems` holds every problem found, one line each (the message is the first).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def check_token(value: str | None) -> str | None:
    """A token as pasted, refused when it carries an HTTP scheme word (`Bearer EAAB...`)."""
    if value is not None and re.match(r"^\s*(bearer|oauth)\s+", value, re.IGNORECASE):
        raise ValueError(
            "starts with 'Bearer ': give the token alone (the gateway adds the scheme)"
        )
    return value


class PixelSettings(BaseModel):
    """One Meta pixel (dataset) and the credentials to send to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    access_token: str | None = None
    test_event_code: str | None = None
    app_secret: str | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: Any) -> str:
        text = str(value).strip()
        if not _PIXEL_ID.match(text):
            raise ValueError(
                f"{text!r} is not a pixel id: use the numeric dataset id from Events Manager"
            )
        return text

    @field_validator("access_token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        return check_token(value)


class Settings(BaseModel):
    """Every setting of the gateway; README's reference lists each one."""

    # The docstring under each field is its line in README's settings reference
    # (gateway/reference.py reads them from this source).
    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    # where it listens and what it fronts
    listen: str = "127.0.0.1:8080"
    """address and port to serve on (`HOST:PORT`, `[::1]:PORT`, or `:PORT` for all)"""
    upstream: str | None = None
    """the site to proxy; without it only the gateway's own endpoints are served"""
    prefix: str = "/_capi"
    """path prefix of the gateway's own endpoints"""
    workers: int = Field(default=1, ge=1, le=64)
    """worker processes sharing port and buffer"""

    # Meta
    pixel_id: list[str] = Field(default_factory=list)
    """pixel (dataset) ids sharing the top-level credentials"""
    access_token: str | None = None
    """Conversions API access token"""
    test_event_code: str | None = None
    """send as test events (never leave on in production)"""
    app_secret: str | None = None
    """adds `appsecret_proof` to every request"""
    pixels: list[PixelSettings] = Field(default_factory=list)
    """`[[pixels]]` tables: `id`, `access_token`, `test_event_code`, `app_secret` per pixel"""
    graph_url: str = "https://graph.facebook.com"
    """Graph API base URL"""
    graph_version: str = "v26.0"
    """Graph API version"""
    dry_run: bool = False
    """queue and record, never call Meta; no credentials needed"""

    # events API
    events_api_keys: list[str] = Field(default_factory=list)
    """Bearer keys of `POST /events`; none = the API answers 401"""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """largest request body (413 above)"""
    max_future_skew: float = 300.0
    """how far ahead of now an `event_time` may be"""
    default_country: str | None = None
    """country for national phone numbers and zips without one"""

    # outbox
    buffer: Path = Path("capi-gateway.db")
    """the store: a SQLite file, or a `postgresql://` URL of a database replicas share"""
    encryption_key: str | None = None
    """AES-256 key (base64 or hex) for clear fields at rest"""
    key_file: Path | None = None
    """where the generated key lives"""
    retention: float = 7 * 86400.0
    """how long sent rows are kept"""
    dead_retention: float = 30 * 86400.0
    """how long dead rows are kept"""
    max_buffer_mb: float = Field(default=1024.0, gt=0)
    """disk bound of the outbox (503 above it)"""
    group_commit_ms: float = Field(default=5.0, ge=0, le=1000)
    """longest wait to gather events into one transaction"""
    store_connect_timeout: float = Field(default=10.0, gt=0, le=600)
    """PostgreSQL store: how long to keep reconnecting (at start, after a restart or
    failover) before a write answers 503 and `serve` gives up at start-up"""

    # sender
    send_timeout: float = Field(default=1.5, gt=0)
    """per-request timeout to the Graph API"""
    send_concurrency: int = Field(default=4, ge=1, le=64)
    """requests in flight per worker"""
    batch_size: int = Field(default=1000, ge=1, le=1000)
    """events per request (Meta's maximum is 1,000)"""
    lease: float = Field(default=60.0, gt=0)
    """how long a claimed batch stays with its worker"""
    retry_base: float = Field(default=1.0, gt=0)
    """first backoff step"""
    retry_cap: float = Field(default=900.0, gt=0)
    """longest backoff"""
    max_attempts: int = Field(default=50, ge=1)
    """attempts before an event is dead-lettered"""
    pixel_rate: float = Field(default=20.0, gt=0)
    """requests per second per pixel"""
    pixel_burst: int = Field(default=40, ge=1)
    """requests a pixel may burst"""
    poll_interval: float = Field(default=1.0, gt=0)
    """how often an idle sender looks for due rows"""
    blocked_probe_interval: float = Field(default=900.0, gt=0)
    """how often a blocked pixel's token is re-checked"""
    shutdown_grace: float = Field(default=10.0, ge=0)
    """time given to sends in flight at shutdown"""

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

    # insights (reports and the marketer's dashboard page)
    visit_timeout: float = Field(default=30 * 60.0, gt=0)
    """a page view after this much inactivity starts a new visit (a touchpoint)"""
    touchpoint_retention: float = Field(default=90 * 86400.0, gt=0)
    """how long touchpoints and the per-event facts reports read are kept (the longest
    range a report can cover)"""
    insights: InsightSettings = Field(default_factory=InsightSettings)
    """`[insights]`: `lookback`, `half_life`, `conversion_events`, `funnel`, `channels`"""

    # operator endpoints (status, metrics, admin)
    admin_token: str | None = Field(default=None, repr=False)
    """Bearer token of `/status`, `/metrics` and `/admin`; without one they answer only
    peers in `admin_networks`"""
    admin_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """CIDRs of clients that may use those endpoints while no `admin_token` is set (`[]`:
    nobody); a forwarded request counts as the client its trusted proxy names, and from an
    untrusted peer it is refused — still, set `admin_token` behind a proxy"""

    # logging
    log_level: str = "info"
    """`debug`, `info`, `warning`, `error`"""
    log_format: str = "auto"
    """`json` (default off a TTY), `text`"""

    rules: Path | None = None
    """directory of rule files (`*.toml`), validated at start-up and reloaded on SIGHUP"""
    rules_body_bytes: int = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)
    """bytes of a request body kept for rules that read form or JSON fields (the body
    itself always reaches the site whole)"""
    webhook_max_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """largest webhook payload accepted at {prefix}/hooks/<hook> (413 above)"""
    rules_scan_bytes: int = Field(default=1024 * 1024, ge=0, le=64 * 1024 * 1024)
    """decoded bytes of a page scanned for rules that read meta tags, JSON-LD or selectors"""

    # audiences (gateway/audiencesettings.py)
    ad_account_id: str | None = None
    """ad account (`act_<id>` or the digits) whose Custom Audiences `[[audiences]]` fill"""
    audiences_access_token: str | None = Field(default=None, repr=False)
    """token for the Custom Audience API (needs `ads_management`); default: the first pixel's"""
    audiences_sync_interval: float = Field(default=3600.0, gt=0)
    """how often `serve` syncs the audiences to Meta (only changes are sent)"""
    audiences: list[AudienceSettings] = Field(default_factory=list)
    """`[[audiences]]` tables: `name`, `events`, `exclude_events`, `window`, `min_value`,
    `currency`, `min_count`, `description` (see "Audiences")"""

    @field_validator("ad_account_id", mode="before")
    @classmethod
    def _ad_account(cls, value: Any) -> str | None:
        return ad_account(value)

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, value: list[AudienceSettings], info: ValidationInfo) -> Any:
        check_audiences(value, info.data)
        return value

    catalog: CatalogSettings | None = None
    """`[catalog]` table: `catalog_id`, `access_token`, `pages`, `min_interval`,
    `delete_after`, `id_source`, `feed_token` — products seen on pages synced to a Meta
    catalog (see "Catalog sync"); per site in `[[sites]]`"""

    sites: list[SiteTable] = Field(default_factory=list)
    """`[[sites]]` tables: `name`, `hosts`, `default`, and the site's own per-site settings
    (see "Several sites"); without them one implicit site uses the top-level settings"""
    _sites: tuple[Site[Settings], ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _resolve_sites(self) -> Settings:
        self._sites = resolve_sites(self)
        return self

    def site_list(self) -> tuple[Site[Settings], ...]:
        """The configured `[[sites]]`, each with its settings filled in (empty: one site)."""
        return self._sites

    def all_pixels(self) -> list[PixelSettings]:
        """Every pixel the gateway sends to: the top level's, or each site's."""
        if not self._sites:
            return self.effective_pixels()
        out: dict[str, PixelSettings] = {}
        for site in self._sites:
            for pixel in site.settings.effective_pixels():
                out.setdefault(pixel.id, pixel)
        return list(out.values())

    @field_validator(
        "retention",
        "dead_retention",
        "max_future_skew",
        "send_timeout",
        "lease",
        "retry_base",
        "retry_cap",
        "poll_interval",
        "blocked_probe_interval",
        "shutdown_grace",
        "upstream_connect_timeout",
        "upstream_read_timeout",
        "upstream_total_timeout",
        "upstream_keepalive",
        "keepalive_timeout",
        "client_body_timeout",
        "cookie_lifetime",
        "page_token_ttl",
        "pageview_hold",
        "assembly_hold",
        "profile_ttl",
        "audiences_sync_interval",
        "store_connect_timeout",
        "visit_timeout",
        "touchpoint_retention",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator(
        "pixel_id",
        "events_api_keys",
        "trusted_proxies",
        "admin_networks",
        "consent_values",
        "bot_user_agents",
        "scrub_query_params",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, int):
            return [str(value)]
        if isinstance(value, list):
            # TOML users write pixel ids as numbers (pixel_id = [1234567890]); flags may
            # repeat or comma-separate (--pixel-id 111,222).
            out: list[Any] = []
            for v in value:
                if isinstance(v, int) and not isinstance(v, bool):
                    out.append(str(v))
                elif isinstance(v, str):
                    out += [part.strip() for part in v.split(",") if part.strip()]
                else:
                    out.append(v)
            return out
        return value

    @field_validator("pixel_id")
    @classmethod
    def _pixel_ids(cls, value: list[str]) -> list[str]:
        for item in value:
            PixelSettings(id=item)
        return value

    @field_validator("access_token", "admin_token", "audiences_access_token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        return check_token(value)

    @field_validator("events_api_keys")
    @classmethod
    def _api_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            check_token(key)
        return value

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

    @field_validator("graph_url")
    @classmethod
    def _graph_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL such as https://graph.facebook.com")
        return value.rstrip("/")

    @field_validator("graph_version")
    @classmethod
    def _graph_version(cls, value: str) -> str:
        if not re.match(r"^v\d+\.\d+$", value):
            raise ValueError(f"{value!r} is not a Graph API version such as v26.0")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        if value == "/" or not re.match(r"^/[A-Za-z0-9._~/-]+$", value):
            raise ValueError(f"{value!r} is not a path prefix such as /_capi")
        return value

    @field_validator("default_country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^[A-Za-z]{2}$", value.strip()):
            raise ValueError(f"{value!r} is not a 2-letter ISO 3166-1 country code such as us")
        return value.strip().lower()

    # `buffer` given as a postgresql:// URL: the store is that database; `buffer` keeps its
    # default path (the metrics directory is named after it).
    _store_url: str | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _postgres_buffer(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        url = None
        buffer = data.get("buffer") if isinstance(data, dict) else None
        if isinstance(buffer, str) and buffer.startswith(POSTGRES_SCHEMES):
            url = buffer
            data = {k: v for k, v in data.items() if k != "buffer"}
        settings = handler(data)
        if url is not None:
            settings._store_url = url
            # The sites share the process's store (`doctor --site` reads it from theirs).
            for site in settings.site_list():
                site.settings._store_url = url
        return settings

    @property
    def store_url(self) -> str | None:
        """The PostgreSQL URL when `buffer` names one, else None (the store is the file)."""
        return self._store_url

    @property
    def store_name(self) -> str:
        """The store for messages: the file path, or the URL without its password."""
        if self._store_url is None:
            return str(self.buffer)
        parts = urlsplit(self._store_url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
        return f"{parts.scheme}://{user}{host}{port}{parts.path}"

    @field_validator("encryption_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None:
            decode_key(value)
        return value

    @field_validator("trusted_proxies", "admin_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not a CIDR network such as 10.0.0.0/8 or ::1/128"
                ) from None
        return value

    @field_validator("cookie_domain")
    @classmethod
    def _cookie_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lstrip(".").lower()
        if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", value):
            raise ValueError(f"{value!r} is not a domain such as example.com")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("use one of debug, info, warning, error")
        return value.lower()

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value.lower() not in {"auto", "json", "text"}:
            raise ValueError("use one of auto, json, text")
        return value.lower()

    @field_validator("pixels")
    @classmethod
    def _pixels_unique(cls, value: list[PixelSettings]) -> list[PixelSettings]:
        ids = [p.id for p in value]
        if len(ids) != len(set(ids)):
            raise ValueError("a pixel id is listed twice; list each pixel once")
        return value

    # derived views -------------------------------------------------------

    def effective_pixels(self) -> list[PixelSettings]:
        """Pixels with credentials filled in from the top-level keys."""
        out: dict[str, PixelSettings] = {}
        for pixel_id in self.pixel_id:
            out[pixel_id] = PixelSettings(
                id=pixel_id,
                access_token=self.access_token,
                test_event_code=self.test_event_code,
                app_secret=self.app_secret,
            )
        for pixel in self.pixels:
            out[pixel.id] = PixelSettings(
                id=pixel.id,
                access_token=pixel.access_token or self.access_token,
                test_event_code=pixel.test_event_code or self.test_event_code,
                app_secret=pixel.app_secret or self.app_secret,
            )
        if not out and self.dry_run:
            # Dry run needs no credentials: events are queued for a placeholder pixel.
            out[_DRY_RUN_PIXEL] = PixelSettings.model_construct(id=_DRY_RUN_PIXEL)
        return list(out.values())

    def test_mode_warning(self) -> str | None:
        """The warning to give when events go to Meta's Test events only, else None."""
        testing = [p.id[:4] + "****" for p in self.effective_pixels() if p.test_event_code]
        if not testing or self.dry_run:
            return None
        return (
            f"test_event_code is set for pixel(s) {', '.join(testing)}: their events go to "
            "Events Manager's Test events only and do not count for ads; remove "
            "test_event_code (META_TEST_EVENT_CODE) once testing is done"
        )

    def key_path(self) -> Path:
        """Where the generated encryption key lives when none is configured."""
        return self.key_file or self.buffer.with_name(self.buffer.name + ".key")

    def check_ready_to_send(self) -> None:
        """Raise ConfigError when the gateway could not deliver what it accepts."""
        pixels = self.all_pixels()
        if not pixels:
            raise ConfigError(
                "pixel_id: no pixel configured; set META_PIXEL_ID, --pixel-id or [[pixels]] "
                "in the config file, or run with --dry-run"
            )
        if self.dry_run:
            return
        for target in catalog_sites(self):
            if not target.access_token:
                where = f"sites.{target.site}.catalog" if target.site else "catalog"
                raise ConfigError(
                    f"{where}.access_token: catalog {target.catalog.catalog_id} has no token; "
                    "set access_token in [catalog] (or a pixel token), or run with --dry-run"
                )
        for pixel in pixels:
            if not pixel.access_token:
                raise ConfigError(
                    f"access_token: pixel {pixel.id} has no access token; set "
                    "META_ACCESS_TOKEN, --access-token or access_token in [[pixels]], "
                    "or run with --dry-run"
                )


def split_host_port(listen: str) -> tuple[str, int]:
    """(host, port) from `HOST:PORT`, `[::1]:PORT` or `:PORT`."""
    match = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):(\d{1,5})$", listen.strip())
    if not match or int(match.group(3)) > 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT such as 127.0.0.1:8080")
    host = match.group(1) or match.group(2) or "0.0.0.0"  # noqa: S104 - ":8080" means all
    return host, int(match.group(3))


def decode_key(value: str) -> bytes:
    """32 raw bytes from a base64 (standard or URL-safe) or 64-hex AES-256 key."""
    text = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        raw = base64.urlsafe_b64decode(
            text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
        )
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError("encryption_key must be 32 bytes, base64 or hex encoded")
    return raw
