"""The page path's decisions counted: pages tagged, left alone (and why), PageViews stored.

Kept per site in plain numbers for `status`, and as Prometheus series, which add up every
worker's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.metrics import Metrics


@dataclass(slots=True)
class PageCounters:
    """How often each decision was taken (shown by status and metrics)."""

    injected: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    stored: int = 0
    store_failed: int = 0
    # The same decisions as Prometheus metrics, which add up every worker's.
    metrics: Metrics = field(default_factory=Metrics)
    # The [[sites]] site these pages belong to: the `site` label of their series.
    site: str | None = None

    def skip(self, reason: str) -> None:
        """Count a page left as the upstream sent it."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.metrics.page_skipped(reason, site=self.site)
        if reason == "bot":
            self.metrics.dropped("bot", site=self.site)

    def tagged(self) -> None:
        """Count a page that got the tag."""
        self.injected += 1
        self.metrics.page_tagged(site=self.site)

    def saved(self) -> None:
        """Count a PageView the store took (the intake counts its rows)."""
        self.stored += 1

    def failed(self) -> None:
        """Count a PageView the store refused (the intake counts and logs its rows)."""
        self.store_failed += 1
