"""The `[catalog]` table in, one validated `CatalogSettings` out (top level or per site).

A catalog belongs to a site: with `[[sites]]` each site may have its own `[catalog]`
(`[sites.catalog]`), else the top-level one is inherited like any per-site setting.
`catalog_sites` lists the configured ones as (site name, the site's settings, catalog).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.durations import parse_duration

# Where a product's id comes from on its page (catx's `products_from_page(id_source=...)`).
ID_SOURCES = ("sku", "productID", "gtin", "mpn", "url")
_CATALOG_ID = re.compile(r"^[0-9]{5,25}$")


class CatalogSettings(BaseModel):
    """`[catalog]`: which Meta catalog the products seen on the site's pages go to, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    catalog_id: str
    """the numeric product catalog id from Commerce Manager (env `CAPIGW_CATALOG_ID`)"""
    access_token: str | None = Field(default=None, repr=False)
    """token with `catalog_management`; default: the site's first pixel's token"""
    pages: list[str] = Field(default_factory=list)
    """path globs of product pages (`/products/*`); default: any HTML page with a Product"""
    min_interval: float = 900.0
    """an item is sent at most once per this (a duration: `15m`, `1h`)"""
    delete_after: int = Field(default=3, ge=1, le=100)
    """a product URL answering 404/410 this many times in a row is deleted from the catalog"""
    id_source: str = "sku"
    """where an item's id comes from: `sku`, `productID`, `gtin`, `mpn` or `url`"""
    feed_token: str | None = Field(default=None, repr=False)
    """token that opens `{prefix}/catalog.csv` and `.xml` (`?token=`) besides admin auth"""

    @field_validator("catalog_id", mode="before")
    @classmethod
    def _catalog_id(cls, value: Any) -> str:
        text = str(value).strip()
        if not _CATALOG_ID.match(text):
            raise ValueError(
                f"{text!r} is not a catalog id: use the numeric id shown in Commerce Manager "
                "(Catalog > Settings)"
            )
        return text

    @field_validator("min_interval", mode="before")
    @classmethod
    def _interval(cls, value: Any) -> float:
        try:
            return parse_duration(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a duration: use seconds or a string like 15m, 1h"
            ) from None

    @field_validator("pages", mode="before")
    @classmethod
    def _pages(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for glob in value:
                if not isinstance(glob, str) or not glob.startswith("/"):
                    raise ValueError(f"{glob!r} is not a path glob such as /products/*")
        return value

    @field_validator("id_source")
    @classmethod
    def _id_source(cls, value: str) -> str:
        if value not in ID_SOURCES:
            raise ValueError(f"{value!r} is not an id source; use one of {', '.join(ID_SOURCES)}")
        return value

    @field_validator("access_token", "feed_token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and re.match(r"^\s*(bearer|oauth)\s+", value, re.IGNORECASE):
            raise ValueError(
                "starts with 'Bearer ': give the token alone (the gateway adds the scheme)"
            )
        return value

    def wants(self, path: str) -> bool:
        """Whether a page at `path` is read for products (no globs: every page is)."""
        return not self.pages or any(fnmatch.fnmatchcase(path, glob) for glob in self.pages)


class _Pixel(Protocol):
    access_token: str | None
    app_secret: str | None


class _SiteSettings(Protocol):
    # What of `gateway.settings.Settings` is read here (that module imports this one).
    catalog: CatalogSettings | None
    dry_run: bool

    def effective_pixels(self) -> Sequence[_Pixel]: ...


class _Site(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> Any: ...


class _Settings(_SiteSettings, Protocol):
    def site_list(self) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class CatalogTarget:
    """One configured catalog: the site it belongs to ('' without sites) and its credentials."""

    site: str
    catalog: CatalogSettings
    access_token: str | None
    app_secret: str | None


def catalog_target(site: str, settings: _SiteSettings) -> CatalogTarget | None:
    """The catalog of one site's settings, its token defaulting to the first pixel's."""
    catalog = settings.catalog
    if catalog is None:
        return None
    pixels = [p for p in settings.effective_pixels() if p.access_token]
    first = pixels[0] if pixels else None
    return CatalogTarget(
        site=site,
        catalog=catalog,
        access_token=catalog.access_token or (first.access_token if first else None),
        app_secret=first.app_secret if first else None,
    )


def catalog_sites(settings: _Settings) -> list[CatalogTarget]:
    """Every configured catalog: each site's (with `[[sites]]`), else the top level's."""
    sites = settings.site_list()
    if not sites:
        top = catalog_target("", settings)
        return [top] if top is not None else []
    out: list[CatalogTarget] = []
    for site in sites:
        found = catalog_target(site.name, site.settings)
        if found is not None:
            out.append(found)
    return out
