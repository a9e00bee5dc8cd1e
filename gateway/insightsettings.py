"""The `[insights]` table in, a validated `InsightSettings` out: how reports read the store.

Reports (summary, funnel, attribution) and the marketer's dashboard page use these; the
touchpoints they read are recorded under the top-level `visit_timeout` and kept for
`touchpoint_retention`. `channels` overrides the default channel grouping; its entries are
checked against the grouping's rule model (`gateway.pipeline.channels.ChannelRule`) when
the gateway starts, since that model lives above this layer.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.durations import parse_duration


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
        return parse_duration(value)
