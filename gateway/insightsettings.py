"""The `[insights]` table in, a validated `InsightSettings` out: how reports read the store.

Reports (summary, funnel, attribution) and the marketer's dashboard page use these; the
touchpoints they read are recorded under the top-level `visit_timeout` and kept for
`touchpoint_retention`. `channels` overrides the default channel grouping; its entries are
checked against the grouping's rule model (`gateway.pipeline.channels.ChannelRule`) when
the gateway starts, since that model lives above this layer.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def duration(value: Any) -> float:
    """Seconds from a number or a string such as `30m`, `7d` (settings' own rules)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m, 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration: use seconds or a string like 30m, 7d")


class InsightSettings(BaseModel):
    """`[insights]`: the attribution window and model inputs, the funnel's steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lookback: float = Field(default=30 * 86400.0, gt=0)
    """visits this long before a conversion can get credit for it"""
    half_life: float = Field(default=7 * 86400.0, gt=0)
    """`time_decay`: a visit this much older than the conversion gets half the weight"""
    conversion_events: list[str] = Field(default_factory=lambda: ["Purchase"], min_length=1)
    """event names that count as conversions (attribution, conversion rate)"""
    funnel: list[str] = Field(
        default_factory=lambda: ["ViewContent", "AddToCart", "InitiateCheckout", "Purchase"],
        min_length=1,
        max_length=12,
    )
    """the funnel's steps, in order"""
    channels: list[dict[str, Any]] = Field(default_factory=list)
    """channel grouping rules tried before the default ones (see "Channels")"""

    @field_validator("lookback", "half_life", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return duration(value)
