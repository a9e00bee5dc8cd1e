"""The gateway's counters: the stages call `Metrics`, Prometheus exposition reads its registry.

One `Metrics` object per app, never a module-level registry, so tests can build many apps
in one process. With `--workers N` every worker writes its counters to files in one
directory (prometheus_client's multiprocess mode); gateway.ops.prometheus prepares that
directory and renders the scrape. Stages pass plain values (names, counts, outcomes as
text) so that this module sits below all of them.
"""

from __future__ import annotations

import collections
import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.models import STANDARD_EVENTS, NewEvent
from gateway.tally import FoldFirst, ProxyTally

EventOutcome = Literal["accepted", "duplicate", "rejected"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The label every per-event series carries. Without [[sites]] its value is "" and the
# exposition leaves it out (gateway.ops.prometheus), so a one-site scrape reads as before.
SITE = "site"
# Custom event names become label values: past this many per worker they count as "other",
# so a client inventing names cannot grow the series without bound.
_MAX_CUSTOM_NAMES = 50
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SEND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
# A counter file starts with its used length (4 bytes) and 4 bytes of padding.
_HEADER_BYTES = 8


class _WorkerFiles(MultiProcessCollector):
    """Every worker's counter files, but none a starting worker has created and not sized.

    prometheus_client opens a worker's file (empty) and then grows it to its first page: a
    scrape reading it in between failed to parse its header and answered 500. An empty file
    holds no values yet, so leaving it out loses nothing.
    """

    def collect(self) -> Iterable[Any]:
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(path) >= _HEADER_BYTES:
                    files.append(path)
            except OSError:  # a dead worker's live gauge file, removed since the glob
                continue
        return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call,no-any-return]


class Metrics:
    """The gateway's counters and histograms, owned by one app.

    `multiprocess_dir` None: an in-memory registry of this process. Otherwise values live
    in files in that directory and `render` adds up every worker's.
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        # `_created` series double every counter's lines and multiprocess mode has none:
        # leave them out in both modes so one dashboard fits either (process-wide switch).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        # First in the registry: every collection folds the per-request tallies first.
        self.registry.register(FoldFirst(lambda: self.tally.fold()))
        own: CollectorRegistry | None = self.registry
        if multiprocess_dir is not None:
            multiprocess_dir.mkdir(parents=True, exist_ok=True)
            os.environ[MULTIPROC_ENV] = str(multiprocess_dir)
            if not getattr(values.ValueClass, "_multiprocess", False):
                # prometheus_client picks file-backed values when it is imported, if the
                # variable is set by then; the parent imported it before setting it.
                values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
            _WorkerFiles(self.registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
            own = None  # read back from the files, not from this process's objects
        self._custom_names: set[str] = set()
        self._tagged_by_site: dict[str, Any] = {}

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labelnames=labels, registry=own)

        def histogram(
            name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
        ) -> Histogram:
            return Histogram(name, doc, labelnames=labels, buckets=buckets, registry=own)

        self._proxied = counter(
            "capi_gateway_proxy_requests",
            "Requests proxied to the site, by status class.",
            ["status_class"],
        )
        # With [[sites]]: `site` values are configured names only (the intake and the
        # router set them from the config), so the series stay bounded.
        self._site_proxied = counter(
            "capi_gateway_site_proxy_requests",
            "Requests proxied to each [[sites]] site, by status class.",
            ["site", "status_class"],
        )
        self._site_events = counter(
            "capi_gateway_site_events",
            "Events stored for each [[sites]] site, by source and outcome.",
            ["site", "source", "outcome"],
        )
        self._upstream = histogram(
            "capi_gateway_upstream_latency_seconds",
            "Time until the site's response headers arrived.",
            _LATENCY_BUCKETS,
            [SITE],
        )
        self.tally = ProxyTally(self._proxied, self._site_proxied, self._upstream, _LATENCY_BUCKETS)
        self._tagged = counter("capi_gateway_pages_tagged", "HTML pages tagged with px.js.", [SITE])
        self._skipped = counter(
            "capi_gateway_pages_skipped", "HTML pages left untagged, by reason.", [SITE, "reason"]
        )
        self._events = counter(
            "capi_gateway_events",
            "Events offered to the outbox (one per target pixel), by source, name and outcome.",
            [SITE, "source", "event_name", "outcome"],
        )
        self._dropped = counter(
            "capi_gateway_events_dropped",
            "Events not recorded on purpose (consent, bots, prefetch), by source and reason.",
            [SITE, "source", "reason"],
        )
        self._webhooks = counter(
            "capi_gateway_webhook_deliveries",
            "Webhook deliveries by hook and outcome (mapped, unmatched, rejected, unauthorized, "
            "invalid, too_large, unconfigured, busy).",
            [SITE, "hook", "outcome"],
        )
        self._requests = counter(
            "capi_gateway_send_requests",
            "Requests to the Graph API, by outcome.",
            [SITE, "outcome"],
        )
        self._errors = counter(
            "capi_gateway_send_errors",
            "Failed Graph API requests, by Meta error code (http_N or network without one).",
            [SITE, "code"],
        )
        self._delivered = counter(
            "capi_gateway_delivered_events",
            "Events Meta confirmed (mode live) or --dry-run recorded (mode dry_run).",
            [SITE, "mode"],
        )
        self._batch = histogram(
            "capi_gateway_send_batch_size", "Events per Graph API request.", _BATCH_BUCKETS, [SITE]
        )
        self._latency = histogram(
            "capi_gateway_send_latency_seconds",
            "Duration of Graph API requests.",
            _SEND_BUCKETS,
            [SITE],
        )
        self._copies = counter(
            "capi_gateway_assembly_copies",
            "Copies of a stored event: merged into it while unsent, or late (after its send).",
            [SITE, "outcome"],
        )
        self._profile_ids = counter(
            "capi_gateway_profile_identifiers_added",
            "Hashed identifiers visitor profiles added to events before their send.",
            [SITE],
        )
        self._waits = counter(
            "capi_gateway_rate_limit_waits", "Sends held back by the per-pixel rate limit.", [SITE]
        )
        self._waited = counter(
            "capi_gateway_rate_limit_wait_seconds",
            "Time sends spent held by the rate limit.",
            [SITE],
        )
        # Audience names come from the config only (bounded). Without [[sites]] the plain
        # series; with them the `site` ones, as two sites may share an audience's name.
        self._audience_syncs = counter(
            "capi_gateway_audience_syncs",
            "Audience syncs by audience and outcome (synced, failed, parked, dry_run).",
            ["audience", "outcome"],
        )
        self._site_audience_syncs = counter(
            "capi_gateway_site_audience_syncs",
            "Audience syncs of each [[sites]] site by audience and outcome.",
            ["site", "audience", "outcome"],
        )
        self._audience_rows = counter(
            "capi_gateway_audience_rows",
            "Rows Meta confirmed added to or removed from an audience, by change.",
            ["audience", "change"],
        )
        self._site_audience_rows = counter(
            "capi_gateway_site_audience_rows",
            "Rows Meta confirmed added to or removed from each [[sites]] site's audiences.",
            ["site", "audience", "change"],
        )
        self._catalog_batches = counter(
            "capi_gateway_catalog_batches",
            "Catalog Batch API calls, by outcome (sent, retry, throttled, blocked, dry_run, ...).",
            ["outcome"],
        )
        self._catalog_items = counter(
            "capi_gateway_catalog_items_sent",
            "Catalog items Meta answered for, by result (synced, deleted, error, dry_run).",
            ["result"],
        )
        self._catalog_pages = counter(
            "capi_gateway_catalog_pages",
            "Pages read for products, by outcome (read, dropped: the queue was full, failed).",
            ["outcome"],
        )
        workers = Gauge(
            "capi_gateway_workers",
            "Worker processes serving.",
            registry=own,
            multiprocess_mode="livesum",
        )
        workers.set(1)

    # what the stages report -------------------------------------------------------------
    # `site`: the [[sites]] name the work was for (None without sites, or when no site
    # applies). Values come from the config only, never from a request.

    def event(
        self,
        source: str,
        event_name: str,
        outcome: EventOutcome,
        count: int = 1,
        *,
        site: str | None = None,
    ) -> None:
        """Count events offered by `source` ("api", "collect", "proxy", "rules", ...)."""
        name = self._name_label(event_name, new=outcome != "rejected")
        self._events.labels(site or "", source, name, outcome).inc(count)

    def stored(self, rows: Sequence[NewEvent], outcomes: Sequence[str]) -> None:
        """Count what `Outbox.add(rows)` answered: "new" accepted, "merged"/"late" a
        duplicate copy (also counted by assembly outcome)."""
        # A batch is mostly one source, name and outcome: one labels() lookup per kind of
        # row, not per row (a lookup costs more than the increment).
        kinds = collections.Counter(
            (row.site, row.source, row.event_name, outcome)
            for row, outcome in zip(rows, outcomes, strict=False)
        )
        for (site, source, event_name, outcome), count in kinds.items():
            accepted: EventOutcome = "accepted" if outcome == "new" else "duplicate"
            self.event(source, event_name, accepted, count, site=site)
            if site is not None:
                self._site_events.labels(site, source, outcome).inc(count)
            if outcome in ("merged", "late"):
                self._copies.labels(site or "", outcome).inc(count)

    def profile_identifiers(self, count: int, *, site: str | None = None) -> None:
        """Count identifiers a visitor profile added to an event before its send."""
        if count:
            self._profile_ids.labels(site or "").inc(count)

    def refused(self, rows: Iterable[NewEvent]) -> None:
        """Count prepared rows the outbox could not take (full, closing, failing)."""
        for row in rows:
            self.event(row.source, row.event_name, "rejected", site=row.site)

    def rejected(self, source: str, events: Iterable[Any], *, site: str | None = None) -> None:
        """Count submitted events (raw JSON objects) that were refused."""
        for event in events:
            name = event.get("event_name") if isinstance(event, dict) else None
            self.event(source, name if isinstance(name, str) else "", "rejected", site=site)

    def dropped(
        self, reason: str, *, source: str = "proxy", count: int = 1, site: str | None = None
    ) -> None:
        """Count events deliberately not recorded ("consent", "bot", "prefetch", ...)."""
        self._dropped.labels(site or "", source, reason).inc(count)

    def webhook(self, hook: str, outcome: str, *, site: str | None = None) -> None:
        """Count one delivery to a configured hook (names come from rule files: bounded)."""
        self._webhooks.labels(site or "", hook, outcome).inc()

    def proxied(self, status: int, site: str | None = None) -> None:
        """Count one proxied request by the status class it was answered with (and site)."""
        # Every proxied request passes here: summed in plain numbers, folded into the series
        # before each collection (gateway.tally).
        self.tally.proxied(status, site)

    def upstream_latency(self, seconds: float, *, site: str | None = None) -> None:
        """Observe the time the site took to send its response headers."""
        self.tally.latency(seconds, site or "")

    def page_tagged(self, *, site: str | None = None) -> None:
        """Count one HTML page that got the tag."""
        # Once per tagged page: the child looked up once per site, as above.
        key = site or ""
        child = self._tagged_by_site.get(key)
        if child is None:
            child = self._tagged_by_site[key] = self._tagged.labels(key)
        child.inc()

    def page_skipped(self, reason: str, *, site: str | None = None) -> None:
        """Count one HTML page left untagged."""
        self._skipped.labels(site or "", reason).inc()

    def sent(
        self,
        outcome: str,
        events: int,
        seconds: float,
        *,
        error: str | None,
        site: str | None = None,
    ) -> None:
        """Count one Graph API request: outcome, batch size, latency, and `error` (a Meta
        error code, `http_N`, or `network`) when it failed, None when Meta took the batch."""
        label = site or ""
        self._requests.labels(label, outcome).inc()
        self._batch.labels(label).observe(events)
        self._latency.labels(label).observe(seconds)
        if error is None:
            self._delivered.labels(label, "live").inc(events)
        else:
            self._errors.labels(label, error).inc()

    def recorded_dry(self, events: int, *, site: str | None = None) -> None:
        """Count events --dry-run recorded instead of sending."""
        self._delivered.labels(site or "", "dry_run").inc(events)

    def rate_limited(self, seconds: float, *, site: str | None = None) -> None:
        """Count one send held back by the per-pixel rate limit, and for how long."""
        label = site or ""
        self._waits.labels(label).inc()
        self._waited.labels(label).inc(seconds)

    def audience_synced(
        self, site: str | None, audience: str, outcome: str, *, added: int, removed: int
    ) -> None:
        """Count one audience sync and the rows Meta confirmed added and removed."""
        if site is None:
            self._audience_syncs.labels(audience, outcome).inc()
            self._audience_rows.labels(audience, "added").inc(added)
            self._audience_rows.labels(audience, "removed").inc(removed)
        else:
            self._site_audience_syncs.labels(site, audience, outcome).inc()
            self._site_audience_rows.labels(site, audience, "added").inc(added)
            self._site_audience_rows.labels(site, audience, "removed").inc(removed)

    def catalog_batch(self, outcome: str) -> None:
        """Count one Catalog Batch API call (or a dry-run record of one)."""
        self._catalog_batches.labels(outcome).inc()

    def catalog_items(self, result: str, count: int) -> None:
        """Count items Meta answered for (synced, deleted, error) or a dry run recorded."""
        if count:
            self._catalog_items.labels(result).inc(count)

    def catalog_page(self, outcome: str) -> None:
        """Count one page handed to (or dropped by) the catalog's background reader."""
        self._catalog_pages.labels(outcome).inc()

    def _name_label(self, name: str, *, new: bool) -> str:
        if not name:
            return "unknown"
        if name in STANDARD_EVENTS or name in self._custom_names:
            return name
        if new and len(self._custom_names) < _MAX_CUSTOM_NAMES and len(name) <= 50:
            self._custom_names.add(name)
            return name
        return "other"
