"""Prometheus metrics: the app's `Metrics` (counters the stages move) and the buffer's numbers.

One `Metrics` object per app, never a module-level registry, so tests can build many apps
in one process. With `--workers N` every worker writes its counters to files in
`<buffer>.metrics/` (prometheus_client's multiprocess mode) and a scrape, whichever worker
it lands on, adds up all of them. Queue depth, oldest pending age and the other numbers of
the outbox are read from the SQLite file at scrape time: the buffer is the shared truth.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
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
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gateway import __version__
from gateway.delivery.graph import Outcome, SendResult
from gateway.models import NewEvent
from gateway.ops.buffer_reader import BufferReader, QueueSnapshot
from gateway.pipeline.events import STANDARD_EVENTS
from gateway.settings import Settings

log = logging.getLogger("gateway.metrics")

EventOutcome = Literal["accepted", "duplicate", "rejected"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Custom event names become label values: past this many per worker they count as "other",
# so a client inventing names cannot grow the series without bound.
_MAX_CUSTOM_NAMES = 50
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SEND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)


# the multiprocess directory ---------------------------------------------------------------


def multiprocess_dir(settings: Settings) -> Path:
    """Where the workers of `--workers N` keep their metric files: `<buffer>.metrics/`."""
    return settings.buffer.with_name(settings.buffer.name + ".metrics")


def prepare_multiprocess_dir(settings: Settings) -> Path:
    """Empty `<buffer>.metrics/` and point the workers about to be forked at it (parent only)."""
    path = multiprocess_dir(settings)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    # Inherited by every worker forked from now on; it also tells them to share counters.
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def discard_multiprocess_dir(settings: Settings) -> None:
    """Remove a `<buffer>.metrics/` left by an earlier multi-worker run (single process)."""
    shutil.rmtree(multiprocess_dir(settings), ignore_errors=True)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay: totals never go back)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and os.path.isdir(path):
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class _QueueCollector:
    """The buffer's numbers as gauges; the handler sets `snapshot` right before rendering."""

    def __init__(self) -> None:
        self.snapshot: QueueSnapshot | None = None

    def describe(self) -> list[Metric]:
        # Nothing to check for name clashes, and no scrape at registration time.
        return []

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("capi_gateway_info", "The gateway's version.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        snap = self.snapshot
        yield GaugeMetricFamily(
            "capi_gateway_buffer_readable",
            "1 when the outbox could be read for this scrape, else 0.",
            value=0.0 if snap is None else 1.0,
        )
        if snap is None:
            return
        depth = GaugeMetricFamily(
            "capi_gateway_queue_events", "Events in the outbox by state.", labels=["state"]
        )
        for state, count in snap.states.items():
            depth.add_metric([state], float(count))
        yield depth
        if snap.oldest_pending_age is not None:
            yield GaugeMetricFamily(
                "capi_gateway_queue_oldest_pending_age_seconds",
                "Age of the oldest event waiting to be sent.",
                value=snap.oldest_pending_age,
            )
        if snap.last_delivery is not None:
            yield GaugeMetricFamily(
                "capi_gateway_last_delivery_timestamp_seconds",
                "When Meta last confirmed a batch (Unix time).",
                value=snap.last_delivery,
            )
        yield GaugeMetricFamily(
            "capi_gateway_blocked_pixels",
            "Pixels parked because Meta refused their token.",
            value=float(len(snap.blocked)),
        )
        yield GaugeMetricFamily(
            "capi_gateway_buffer_used_bytes",
            "Bytes of the outbox in use.",
            value=float(snap.used_bytes),
        )
        yield GaugeMetricFamily(
            "capi_gateway_buffer_limit_bytes",
            "max_buffer_mb in bytes.",
            value=float(snap.limit_bytes),
        )


# the counters -----------------------------------------------------------------------------


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
        own: CollectorRegistry | None = self.registry
        if multiprocess_dir is not None:
            multiprocess_dir.mkdir(parents=True, exist_ok=True)
            os.environ[MULTIPROC_ENV] = str(multiprocess_dir)
            if not getattr(values.ValueClass, "_multiprocess", False):
                # prometheus_client picks file-backed values when it is imported, if the
                # variable is set by then; the parent imported it before setting it.
                values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
            own = None  # read back from the files, not from this process's objects
        self._queue = _QueueCollector()
        self.registry.register(self._queue)
        self._custom_names: set[str] = set()

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labelnames=labels, registry=own)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=own)

        self._proxied = counter(
            "capi_gateway_proxy_requests",
            "Requests proxied to the site, by status class.",
            ["status_class"],
        )
        self._upstream = histogram(
            "capi_gateway_upstream_latency_seconds",
            "Time until the site's response headers arrived.",
            _LATENCY_BUCKETS,
        )
        self._tagged = counter("capi_gateway_pages_tagged", "HTML pages tagged with px.js.")
        self._skipped = counter(
            "capi_gateway_pages_skipped", "HTML pages left untagged, by reason.", ["reason"]
        )
        self._events = counter(
            "capi_gateway_events",
            "Events offered to the outbox (one per target pixel), by source, name and outcome.",
            ["source", "event_name", "outcome"],
        )
        self._dropped = counter(
            "capi_gateway_events_dropped",
            "Events not recorded on purpose (consent, bots, prefetch), by source and reason.",
            ["source", "reason"],
        )
        self._webhooks = counter(
            "capi_gateway_webhook_deliveries",
            "Webhook deliveries by hook and outcome (mapped, unmatched, rejected, unauthorized, "
            "invalid, too_large, unconfigured, busy).",
            ["hook", "outcome"],
        )
        self._requests = counter(
            "capi_gateway_send_requests", "Requests to the Graph API, by outcome.", ["outcome"]
        )
        self._errors = counter(
            "capi_gateway_send_errors",
            "Failed Graph API requests, by Meta error code (http_N or network without one).",
            ["code"],
        )
        self._delivered = counter(
            "capi_gateway_delivered_events",
            "Events Meta confirmed (mode live) or --dry-run recorded (mode dry_run).",
            ["mode"],
        )
        self._batch = histogram(
            "capi_gateway_send_batch_size", "Events per Graph API request.", _BATCH_BUCKETS
        )
        self._latency = histogram(
            "capi_gateway_send_latency_seconds",
            "Duration of Graph API requests.",
            _SEND_BUCKETS,
        )
        self._copies = counter(
            "capi_gateway_assembly_copies",
            "Copies of a stored event: merged into it while unsent, or late (after its send).",
            ["outcome"],
        )
        self._profile_ids = counter(
            "capi_gateway_profile_identifiers_added",
            "Hashed identifiers visitor profiles added to events before their send.",
        )
        self._waits = counter(
            "capi_gateway_rate_limit_waits", "Sends held back by the per-pixel rate limit."
        )
        self._waited = counter(
            "capi_gateway_rate_limit_wait_seconds", "Time sends spent held by the rate limit."
        )
        workers = Gauge(
            "capi_gateway_workers",
            "Worker processes serving.",
            registry=own,
            multiprocess_mode="livesum",
        )
        workers.set(1)

    @classmethod
    def for_settings(cls, settings: Settings) -> Metrics:
        """Shared across workers when `serve --workers N` prepared the directory, else own."""
        path = os.environ.get(MULTIPROC_ENV)
        # Only the directory the parent prepared for this buffer: a variable left over from
        # elsewhere must not make one process write files nobody reads.
        if settings.workers > 1 and path and Path(path) == multiprocess_dir(settings):
            return cls(Path(path))
        return cls()

    # what the stages report -------------------------------------------------------------

    def event(self, source: str, event_name: str, outcome: EventOutcome, count: int = 1) -> None:
        """Count events offered by `source` ("api", "collect", "proxy", "rules", ...)."""
        name = self._name_label(event_name, new=outcome != "rejected")
        self._events.labels(source, name, outcome).inc(count)

    def stored(self, rows: Sequence[NewEvent], outcomes: Sequence[str]) -> None:
        """Count what `Outbox.add(rows)` answered: "new" accepted, "merged"/"late" a
        duplicate copy (also counted by assembly outcome)."""
        for row, outcome in zip(rows, outcomes, strict=False):
            self.event(row.source, row.event_name, "accepted" if outcome == "new" else "duplicate")
            if outcome in ("merged", "late"):
                self._copies.labels(outcome).inc()

    def profile_identifiers(self, count: int) -> None:
        """Count identifiers a visitor profile added to an event before its send."""
        if count:
            self._profile_ids.inc(count)

    def refused(self, rows: Iterable[NewEvent]) -> None:
        """Count prepared rows the outbox could not take (full, closing, failing)."""
        for row in rows:
            self.event(row.source, row.event_name, "rejected")

    def rejected(self, source: str, events: Iterable[Any]) -> None:
        """Count submitted events (raw JSON objects) that were refused."""
        for event in events:
            name = event.get("event_name") if isinstance(event, dict) else None
            self.event(source, name if isinstance(name, str) else "", "rejected")

    def dropped(self, reason: str, *, source: str = "proxy", count: int = 1) -> None:
        """Count events deliberately not recorded ("consent", "bot", "prefetch", ...)."""
        self._dropped.labels(source, reason).inc(count)

    def webhook(self, hook: str, outcome: str) -> None:
        """Count one delivery to a configured hook (names come from rule files: bounded)."""
        self._webhooks.labels(hook, outcome).inc()

    def proxied(self, status: int) -> None:
        """Count one proxied request by the status class it was answered with."""
        self._proxied.labels(f"{status // 100}xx").inc()

    def upstream_latency(self, seconds: float) -> None:
        """Observe the time the site took to send its response headers."""
        self._upstream.observe(seconds)

    def page_tagged(self) -> None:
        """Count one HTML page that got the tag."""
        self._tagged.inc()

    def page_skipped(self, reason: str) -> None:
        """Count one HTML page left untagged."""
        self._skipped.labels(reason).inc()

    def sent(self, result: SendResult, events: int, seconds: float) -> None:
        """Count one Graph API request: outcome, batch size, latency, error code."""
        self._requests.labels(result.outcome.value).inc()
        self._batch.observe(events)
        self._latency.observe(seconds)
        if result.outcome is Outcome.SENT:
            self._delivered.labels("live").inc(events)
            return
        if result.code is not None:
            code = str(result.code)
        elif result.status is not None:
            code = f"http_{result.status}"
        else:
            code = "network"
        self._errors.labels(code).inc()

    def recorded_dry(self, events: int) -> None:
        """Count events --dry-run recorded instead of sending."""
        self._delivered.labels("dry_run").inc(events)

    def rate_limited(self, seconds: float) -> None:
        """Count one send held back by the per-pixel rate limit, and for how long."""
        self._waits.inc()
        self._waited.inc(seconds)

    # exposition -------------------------------------------------------------------------

    async def render(self, reader: BufferReader | None, accept: str) -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics when asked for)."""
        snapshot = None
        if reader is not None:
            try:
                snapshot = await reader.snapshot()
            except (sqlite3.Error, ValueError, OSError) as exc:
                # The scrape still answers: capi_gateway_buffer_readable 0 is the alert.
                log.error("Reading the outbox for /metrics failed: %s", exc)
        # No await from here on: concurrent scrapes cannot mix their snapshots.
        self._queue.snapshot = snapshot
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def _name_label(self, name: str, *, new: bool) -> str:
        if not name:
            return "unknown"
        if name in STANDARD_EVENTS or name in self._custom_names:
            return name
        if new and len(self._custom_names) < _MAX_CUSTOM_NAMES and len(name) <= 50:
            self._custom_names.add(name)
            return name
        return "other"
