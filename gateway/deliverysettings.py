"""Settings of delivery: the Meta pixels and credentials, the events API, the outbox and the
sender.

A base of `gateway.settings.Settings` (fields, their docstrings for README's reference, the
validators of those fields alone and the views derived from them); import `Settings` from
there. `PixelSettings`, `check_token` and `decode_key` are re-exported by gateway.settings.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from gateway import __version__

PARTNER_AGENT = f"capi-gateway/{__version__}"
# `buffer` values naming a PostgreSQL database rather than a file.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def buffer_arg(value: str) -> Path | str:
    """`--buffer`: a file path, or a postgresql:// URL kept as written (a Path would collapse
    its `//`)."""
    return value if value.startswith(POSTGRES_SCHEMES) else Path(value)


_PIXEL_ID = re.compile(r"^[0-9]{5,20}$")
_DRY_RUN_PIXEL = "dry-run"


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


class DeliverySettings(BaseModel):
    """Meta, the events API, the outbox and the sender."""

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
    send_linger: float = Field(default=1.0, ge=0, le=60)
    """rows that became due on a timer (a hold ended, a retry's backoff) wait until this
    long after the sender's last claim, so that they go in one claim and one request
    instead of one per group commit; rows stored with no hold are claimed at once (0: no
    linger)"""
    blocked_probe_interval: float = Field(default=900.0, gt=0)
    """how often a blocked pixel's token is re-checked"""
    shutdown_grace: float = Field(default=10.0, ge=0)
    """time given to sends in flight at shutdown"""

    # `buffer` given as a postgresql:// URL: the store is that database; `buffer` keeps its
    # default path (the metrics directory is named after it). Set by Settings' validator.
    _store_url: str | None = PrivateAttr(default=None)

    @field_validator("pixel_id")
    @classmethod
    def _pixel_ids(cls, value: list[str]) -> list[str]:
        for item in value:
            PixelSettings(id=item)
        return value

    @field_validator("events_api_keys")
    @classmethod
    def _api_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            check_token(key)
        return value

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

    @field_validator("default_country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^[A-Za-z]{2}$", value.strip()):
            raise ValueError(f"{value!r} is not a 2-letter ISO 3166-1 country code such as us")
        return value.strip().lower()

    @field_validator("encryption_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None:
            decode_key(value)
        return value

    @field_validator("pixels")
    @classmethod
    def _pixels_unique(cls, value: list[PixelSettings]) -> list[PixelSettings]:
        ids = [p.id for p in value]
        if len(ids) != len(set(ids)):
            raise ValueError("a pixel id is listed twice; list each pixel once")
        return value

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
