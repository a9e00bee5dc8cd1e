"""Configuration: one pydantic model and its validation.

`Settings` is put together from one base per area: gateway.edgesettings (where it listens,
the proxy, identity and consent, the browser side, injection) and gateway.deliverysettings
(Meta, the events API, the outbox, the sender); the rest (insights, operator endpoints,
logging, rules, audiences, catalog, sites) and every check across areas are here. Import
from this module: the names of those modules that callers use are re-exported.

Loading it from env, a TOML file and CLI flags (and their precedence) lives in
`gateway.config`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.audiencesettings import AudienceSettings, ad_account, check_audiences
from gateway.catalogsettings import CatalogSettings, catalog_sites
from gateway.deliverysettings import (
    PARTNER_AGENT,
    POSTGRES_SCHEMES,
    DeliverySettings,
    PixelSettings,
    buffer_arg,
    check_token,
    decode_key,
)
from gateway.durations import parse_duration
from gateway.edgesettings import EdgeSettings, ListenSettings, split_host_port
from gateway.insightsettings import InsightSettings
from gateway.sitesettings import Site, SiteTable, resolve_sites

__all__ = [
    "PARTNER_AGENT",
    "POSTGRES_SCHEMES",
    "ConfigError",
    "PixelSettings",
    "Settings",
    "buffer_arg",
    "check_token",
    "decode_key",
    "split_host_port",
]


class ConfigError(Exception):
    """A configuration problem a user can fix; the message names the key and the fix.

    `problems` holds every problem found, one line each (the message is the first).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


# pydantic orders the fields of bases last-listed first: listen, delivery, edge, then the
# fields below, which is the order of README's reference.
class Settings(EdgeSettings, DeliverySettings, ListenSettings):
    """Every setting of the gateway; README's reference lists each one."""

    # The docstring under each field is its line in README's settings reference
    # (gateway/reference.py reads them from this source and from the bases').
    model_config = ConfigDict(extra="forbid", validate_assignment=False)

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
        "send_linger",
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

    @field_validator("access_token", "admin_token", "audiences_access_token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        return check_token(value)

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
