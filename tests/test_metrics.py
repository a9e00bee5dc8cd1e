"""The counters the stages move: plain values in, series in the app's own registry out."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    # An empty label is no label to Prometheus (the exposition drops the empty `site`).
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if v)): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_failed_send_counts_its_error_and_no_delivery() -> None:
    metrics = Metrics()
    metrics.sent("retry", 3, 0.2, error="http_503")
    metrics.sent("sent", 5, 0.1, error=None)
    got = _samples(metrics)
    assert got[("capi_gateway_send_errors_total", frozenset({("code", "http_503")}))] == 1
    assert got[("capi_gateway_delivered_events_total", frozenset({("mode", "live")}))] == 5
    assert got[("capi_gateway_send_requests_total", frozenset({("outcome", "retry")}))] == 1
    assert got[("capi_gateway_send_batch_size_count", frozenset())] == 2


def test_two_apps_in_one_process_count_apart() -> None:
    first, second = Metrics(), Metrics()
    first.page_tagged()
    assert _samples(first)[("capi_gateway_pages_tagged_total", frozenset())] == 1
    assert _samples(second).get(("capi_gateway_pages_tagged_total", frozenset()), 0) == 0


async def test_the_site_label_is_left_out_without_sites_and_kept_with_them() -> None:
    from gateway.ops.prometheus import render

    metrics = Metrics()
    metrics.page_tagged()
    metrics.sent("sent", 2, 0.1, error=None)
    metrics.sent("sent", 1, 0.1, error=None, site="shop")
    body, _ = await render(metrics, None, "")
    text = body.decode()
    assert "capi_gateway_pages_tagged_total 1.0" in text
    assert 'capi_gateway_delivered_events_total{mode="live"} 2.0' in text
    assert 'capi_gateway_delivered_events_total{mode="live",site="shop"} 1.0' in text
    assert 'site=""' not in text
    tenant, _ = await render(metrics, None, "", sites=["shop"], tenant=True)
    assert 'capi_gateway_delivered_events_total{mode="live",site="shop"} 1.0' in tenant.decode()
    assert 'mode="live"} 2.0' not in tenant.decode()


def test_a_scrape_skips_a_worker_file_created_but_not_yet_sized(tmp_path: Path) -> None:
    """A worker starting (a replacement after a crash) creates its counter file empty and
    then grows it: a scrape by another worker in between must still answer."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from gateway.metrics import _WorkerFiles

    written = MmapedDict(str(tmp_path / "counter_100.db"))
    key = mmap_key("capi_gateway_pages_tagged", "capi_gateway_pages_tagged_total", [], [], "x")
    written.write_value(key, 3.0, 0.0)
    written.close()
    (tmp_path / "counter_200.db").touch()  # the starting worker's, still empty

    collector = _WorkerFiles(None, path=str(tmp_path))  # type: ignore[no-untyped-call]
    values = {s.name: s.value for m in collector.collect() for s in m.samples}
    assert values == {"capi_gateway_pages_tagged_total": 3.0}
