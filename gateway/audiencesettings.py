"""`[[audiences]]` tables in, validated `AudienceSettings` out, and the account checks.

An audience is a rule over stored events (which events put a visitor in, which take them
out, over what window) that the gateway keeps in step with a customer-file Custom Audience
in Meta's ad account `ad_account_id` (see gateway/pipeline/audiences.py for the rule and
gateway/delivery/audiences_sync.py for the sync).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.durations import parse_duration

_ACCOUNT = re.compile(r"^(?:act_)?([0-9]{3,25})$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_ .-]{1,100}$")


def _duration(value: Any) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = 0.0
    if seconds > 0:
        return seconds
    raise ValueError(f"{value!r} is not a window: use a duration such as 14d, 36h or seconds")


class AudienceSettings(BaseModel):
    """One `[[audiences]]` table: who is in (events), who is out (exclude_events), when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    events: list[str] = Field(min_length=1)
    exclude_events: list[str] = Field(default_factory=list)
    window: float = 14 * 86400.0
    min_value: float | None = Field(default=None, ge=0)
    min_count: int = Field(default=1, ge=1)
    # Values are never summed across currencies; this names the one `min_value` counts in.
    currency: str | None = None
    description: str | None = Field(default=None, max_length=500)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or any(ord(ch) < 32 for ch in value):
            raise ValueError(f"{value!r} is not an audience name: use printable text")
        return value.strip()

    @field_validator("events", "exclude_events", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            for item in value:
                if not isinstance(item, str) or not _EVENT_NAME.match(item):
                    raise ValueError(f"{item!r} is not an event name such as AddToCart")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _CURRENCY.match(value.strip()):
            raise ValueError(f"{value!r} is not a currency: use an ISO 4217 code such as EUR")
        return value.strip().upper()

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> float:
        return _duration(value)

    @model_validator(mode="after")
    def _disjoint(self) -> AudienceSettings:
        both = sorted(set(self.events) & set(self.exclude_events))
        if both:
            raise ValueError(
                f"{', '.join(both)} is in both events and exclude_events; an event either "
                "puts a visitor in or takes them out"
            )
        if self.currency is not None and self.min_value is None:
            raise ValueError(
                "currency only says which values count towards min_value; set min_value "
                "too, or remove currency"
            )
        return self


def check_audiences(value: list[AudienceSettings], data: Mapping[str, Any]) -> None:
    """ValueError when audiences are configured that could never be synced.

    `data` holds the settings validated before `audiences` (pydantic's `info.data`).
    """
    names = [a.name for a in value]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"the audience {twice[0]!r} is defined twice; give each a unique name")
    if value and data.get("profile_ttl") == 0:
        raise ValueError(
            "audiences are configured but visitor profiles are off (profile_ttl = 0); "
            "members' identifiers come from their profiles: set profile_ttl to at least "
            "the longest window (default 30d)"
        )
    if value and not data.get("ad_account_id") and not data.get("dry_run"):
        raise ValueError(
            "audiences are configured but no ad account is set; set ad_account_id "
            "(CAPIGW_AD_ACCOUNT_ID) to the ad account that owns them (the number after "
            "act_ in Ads Manager), or run with --dry-run"
        )


def ad_account(value: Any) -> str | None:
    """The ad account id as digits (`act_123` and `123` are the same account)."""
    if value is None:
        return None
    match = _ACCOUNT.match(str(value).strip())
    if not match:
        raise ValueError(
            f"{value!r} is not an ad account id: use the digits after act_ in Ads Manager"
        )
    return match.group(1)
