"""Prometheus exposition: `GET /metrics`, the buffer's numbers, and the workers' shared files.

The counters themselves live in gateway.metrics (the stages move them). With `--workers N`
every worker writes its counters to files in `<buffer>.metrics/` (prometheus_client's
multiprocess mode) and a scrape, whichever worker it lands on, adds up all of them. Queue
depth, oldest pending age and the other numbers of the outbox are read from the store at
scrape time: the buffer is the shared truth.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import mark_process_dead

from gateway import __version__
from gateway.catalogsettings import catalog_sites
from gateway.delivery.audiences import AudienceState
from gateway.delivery.audiences_sync import targets
from gateway.delivery.audiences_task import AudienceService
from gateway.delivery.reads import QueueSnapshot
from gateway.delivery.store import StoreReader
from gateway.edge.appkeys import AUDIENCES, BUFFER_READER, CATALOG, METRICS, RUNTIME
from gateway.metrics import MULTIPROC_ENV, SITE, Metrics
from gateway.ops.access import operator_scope
from gateway.settings import Settings

log = logging.getLogger("gateway.metrics")


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
    """The buffer's numbers as gauges, from one snapshot taken for one scrape."""

    def __init__(self, snapshot: QueueSnapshot | None) -> None:
        self.snapshot = snapshot

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


class _SiteCollector:
    """Each configured site's events by state: `site` values come from the config only."""

    def __init__(self, states: dict[str, dict[str, int]]) -> None:
        self.states = states

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "capi_gateway_site_queue_events",
            "Events in the outbox by site and state.",
            labels=["site", "state"],
        )
        for site, states in self.states.items():
            for state, count in states.items():
                depth.add_metric([site, state], float(count))
        yield depth


class _Unsited:
    """The process-wide series with an empty `site` label left out of the labels.

    Every per-event series carries `site`; without [[sites]] (and for work no site owns,
    such as an events API key of the top level) its value is "", which Prometheus reads
    as no label at all: dropping it keeps a one-site scrape exactly as it was.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            if any(s.labels.get(SITE) == "" for s in metric.samples):
                metric.samples = [
                    s._replace(labels={k: v for k, v in s.labels.items() if k != SITE})
                    if s.labels.get(SITE) == ""
                    else s
                    for s in metric.samples
                ]
            yield metric


class _AudienceCollector:
    """Each configured audience's state as of its last sync: rows Meta holds, parked, when.

    Configured audiences only (names and sites from the config): the state of an audience
    removed from the config is not shown. Without [[sites]] the plain series, with them the
    `site` ones (two sites may use the same audience name)."""

    def __init__(self, audiences: Sequence[tuple[str | None, str, AudienceState | None]]) -> None:
        self.audiences = audiences

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if not self.audiences:
            return
        with_sites = any(site is not None for site, _, _ in self.audiences)
        prefix, labels = (
            ("capi_gateway_site_audience", ["site", "audience"])
            if with_sites
            else ("capi_gateway_audience", ["audience"])
        )
        members = GaugeMetricFamily(
            f"{prefix}_members",
            "Rows (members) Meta holds for each audience, as of its last sync.",
            labels=labels,
        )
        parked = GaugeMetricFamily(
            f"{prefix}_parked",
            "1 while an audience waits for a new token (Meta refused the last), else 0.",
            labels=labels,
        )
        failing = GaugeMetricFamily(
            f"{prefix}_failing",
            "1 when an audience's last sync ended in an error, else 0.",
            labels=labels,
        )
        synced = GaugeMetricFamily(
            f"{prefix}_last_sync_timestamp_seconds",
            "When each audience last synced in full (Unix time; absent before the first).",
            labels=labels,
        )
        for site, name, state in self.audiences:
            values = [site or "", name] if with_sites else [name]
            members.add_metric(values, float(state.size if state else 0))
            parked.add_metric(values, 1.0 if state and state.blocked_token else 0.0)
            failing.add_metric(values, 1.0 if state and state.last_error else 0.0)
            if state is not None and state.synced_at is not None:
                synced.add_metric(values, state.synced_at)
        yield from (members, parked, failing, synced)


async def audience_states(
    service: AudienceService | None, settings: Settings, sites: Sequence[str] | None
) -> list[tuple[str | None, str, AudienceState | None]]:
    """The configured audiences (of `sites` only, when given) with their stored state; empty
    when none is configured or the store cannot be read (logged)."""
    if service is None or service.store is None:
        return []
    chosen = [t for t in targets(settings) if sites is None or t.site in sites]
    if not chosen:
        return []
    try:
        states = {(s.site, s.name): s for s in await service.store.states()}
    except Exception as exc:
        # The scrape still answers without the audience series.
        log.error("Reading the audiences for /metrics failed: %s", exc)
        return []
    return [(t.site, t.audience.name, states.get((t.site, t.audience.name))) for t in chosen]


class _CatalogCollector:
    """Catalog items per site ('' without sites) and state, read from the store per scrape."""

    def __init__(self, items: Mapping[str, Mapping[str, int]]) -> None:
        self.items = items

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "capi_gateway_catalog_items",
            "Catalog items by site and sync state (pending, synced, error, deleted).",
            labels=["site", "state"],
        )
        for site, states in self.items.items():
            for state, count in states.items():
                gauge.add_metric([site, state], float(count))
        yield gauge


class _TenantSeries:
    """The `site`-labelled series of `sites` only, out of the process-wide registry."""

    def __init__(self, registry: CollectorRegistry, sites: Sequence[str]) -> None:
        self.registry = registry
        self.sites = frozenset(sites)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            samples = [s for s in metric.samples if s.labels.get(SITE) in self.sites]
            if samples:
                copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                copy.samples = samples
                yield copy


def metrics_for_settings(settings: Settings) -> Metrics:
    """Shared across workers when `serve --workers N` prepared the directory, else own."""
    path = os.environ.get(MULTIPROC_ENV)
    # Only the directory the parent prepared for this buffer: a variable left over from
    # elsewhere must not make one process write files nobody reads.
    if settings.workers > 1 and path and Path(path) == multiprocess_dir(settings):
        return Metrics(Path(path))
    return Metrics()


# exposition -------------------------------------------------------------------------------


async def render(
    metrics: Metrics,
    reader: StoreReader | None,
    accept: str,
    *,
    sites: Sequence[str] = (),
    tenant: bool = False,
    audiences: Sequence[tuple[str | None, str, AudienceState | None]] = (),
    catalog: Mapping[str, Mapping[str, int]] | None = None,
) -> tuple[bytes, str]:
    """The exposition body and its content type (OpenMetrics when asked for).

    `sites`: the configured sites to give `site`-labelled series for; a `tenant` gets those
    only (the process-wide series mix every site's traffic).
    """
    snapshot = None
    per_site: dict[str, dict[str, int]] | None = None
    if reader is not None:
        try:
            snapshot = await reader.snapshot(sites if tenant else None)
            per_site = await reader.site_states(sites) if sites else None
        except (sqlite3.Error, ValueError, OSError) as exc:
            # The scrape still answers: capi_gateway_buffer_readable 0 is the alert.
            log.error("Reading the outbox for /metrics failed: %s", exc)
    # One registry per scrape: concurrent scrapes cannot mix their snapshots.
    scrape = CollectorRegistry(auto_describe=False)
    if not tenant:
        scrape.register(_QueueCollector(snapshot))
        scrape.register(_Unsited(metrics.registry))
    else:
        scrape.register(_TenantSeries(metrics.registry, sites))
    if per_site is not None:
        scrape.register(_SiteCollector(per_site))
    if audiences:
        scrape.register(_AudienceCollector(audiences))
    if catalog:
        scrape.register(_CatalogCollector(catalog))
    encoder, content_type = choose_encoder(accept)
    return encoder(scrape), content_type


async def get_metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus exposition of every worker's counters and the buffer's numbers."""
    scope = operator_scope(request)
    if isinstance(scope, web.Response):
        return scope
    settings = request.app[RUNTIME].settings
    configured = [site.name for site in settings.site_list()]
    catalog: dict[str, Mapping[str, int]] = {}
    for target in catalog_sites(settings):
        if scope is None or target.site in scope:
            try:
                catalog[target.site] = (await request.app[CATALOG].status(target.site))["items"]
            except Exception as exc:
                log.error("Reading the catalog state for /metrics failed: %s", exc)
    body, content_type = await render(
        request.app[METRICS],
        request.app.get(BUFFER_READER),
        request.headers.get("Accept", ""),
        sites=configured if scope is None else sorted(scope),
        tenant=scope is not None,
        catalog=catalog,
        audiences=await audience_states(
            request.app.get(AUDIENCES), settings, None if scope is None else sorted(scope)
        ),
    )
    return web.Response(
        body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"}
    )
