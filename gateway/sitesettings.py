"""`[[sites]]` tables in, one validated `Site` per table out (name, hosts, its own settings).

A site's table holds its identity (`name`, `hosts`, `default`), what belongs to it alone
(`events_api_keys`, `admin_token`), and its own value for any per-site setting; every other
per-site setting is inherited from the top level. Each site's settings are validated as a
whole `Settings` (so a site gets exactly the checks the top level gets), and a problem is
named `sites.<name>.<key>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Settings a site may set for itself; the rest (listen, buffer, sender, limits) is the
# process's, shared by every site.
PER_SITE_KEYS = frozenset(
    {
        "upstream",
        "pixel_id",
        "access_token",
        "test_event_code",
        "app_secret",
        "pixels",
        "rules",
        "default_country",
        "preserve_host",
        "cookie_domain",
        "cookie_lifetime",
        "consent",
        "consent_values",
        "opt_out_cookie",
        "gpc",
        "bot_user_agents",
        "scrub_query_params",
        "browser_pixel",
        "fbevents_url",
        "inject",
        "debug_headers",
        "pageview_hold",
        "assembly_hold",
        "page_token_ttl",
        "collect_max_events",
        "upstream_connect_timeout",
        "upstream_read_timeout",
        "upstream_total_timeout",
        "ad_account_id",
        "audiences_access_token",
        "audiences",
        "insights",
        "catalog",
    }
)
# Keys a site owns outright: never inherited from the top level, never shared.
_OWN_KEYS = ("events_api_keys", "admin_token")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*$")


class SiteTable(BaseModel):
    """One `[[sites]]` table as written; per-site settings are kept as extra keys."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    hosts: list[str] = Field(default_factory=list)
    default: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not a site name: use lower-case letters, digits, - and _ "
                "(it labels metrics and stored events)"
            )
        return value

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            host = str(item).strip().lower().rstrip(".")
            if not _HOST.match(host):
                raise ValueError(
                    f"{item!r} is not a host name such as shop.example.com or *.example.com"
                )
            out.append(host)
        return out


class _Settings(Protocol):
    # What of `gateway.settings.Settings` is read here (that module imports this one).
    upstream: str | None
    events_api_keys: list[str]
    admin_token: str | None
    sites: list[SiteTable]

    @classmethod
    def model_validate(cls, obj: Any) -> Self: ...

    def model_dump(self, *, exclude: set[str]) -> dict[str, Any]: ...

    def effective_pixels(self) -> list[Any]: ...


S = TypeVar("S", bound=_Settings)


@dataclass(frozen=True, slots=True)
class Site(Generic[S]):
    """A configured site: who it answers for and its settings (top level filled in)."""

    name: str
    hosts: tuple[str, ...]
    default: bool
    settings: S
    # The tenant's own operator token (None: only the global admin sees this site).
    admin_token: str | None


def resolve_sites(top: S) -> tuple[Site[S], ...]:
    """Every `[[sites]]` table as a `Site`; ValueError `sites.<name>.<key>: ...` on a problem."""
    model = type(top)
    base = top.model_dump(exclude={"sites", *_OWN_KEYS})
    sites: list[Site[S]] = []
    names: set[str] = set()
    claimed: dict[str, str] = {}
    keys: dict[str, str] = {}
    default: str | None = None
    for table in top.sites:
        where = f"sites.{table.name}"
        if table.name in names:
            raise ValueError(f"{where}.name: two sites are named {table.name!r}; rename one")
        names.add(table.name)
        if not table.hosts and not table.default:
            raise ValueError(
                f"{where}.hosts: the site answers for no host; list its host names "
                "(or make it the `default = true` site)"
            )
        for host in table.hosts:
            if host in claimed:
                raise ValueError(
                    f"{where}.hosts: {host!r} is already claimed by site {claimed[host]!r}; "
                    "list each host under one site"
                )
            claimed[host] = table.name
        if table.default:
            if default is not None:
                raise ValueError(
                    f"{where}.default: site {default!r} is already the default; "
                    "mark one site `default = true`"
                )
            default = table.name
        own = dict(table.model_extra or {})
        for key in own:
            if key not in PER_SITE_KEYS and key not in _OWN_KEYS:
                known = " (a process-wide setting)" if key in base else ""
                raise ValueError(
                    f"{where}.{key}: not a per-site setting{known}; set it at the top level "
                    "or see the [[sites]] section of README.md"
                )
        merged = dict(base)
        if "pixels" in own or "pixel_id" in own:
            # A site's own pixels replace the top level's (never add to them).
            merged["pixels"], merged["pixel_id"] = [], []
        merged.update(own)
        try:
            settings = model.model_validate(merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(part) for part in err["loc"]) or "config"
            raise ValueError(f"{where}.{loc}: {err['msg'].removeprefix('Value error, ')}") from None
        if settings.upstream is None:
            raise ValueError(
                f"{where}.upstream: the site has no upstream; set `upstream` in its table "
                "or at the top level"
            )
        if not settings.effective_pixels():
            raise ValueError(
                f"{where}.pixels: the site has no pixel; set `pixels` or `pixel_id` in its "
                "table or at the top level (or run with --dry-run)"
            )
        for key in settings.events_api_keys:
            if key in keys:
                raise ValueError(
                    f"{where}.events_api_keys: a key is also listed by site {keys[key]!r}; "
                    "an events API key belongs to one site"
                )
            keys[key] = table.name
        sites.append(
            Site(
                name=table.name,
                hosts=tuple(table.hosts),
                default=table.default,
                settings=settings,
                admin_token=settings.admin_token,
            )
        )
    return tuple(sites)
