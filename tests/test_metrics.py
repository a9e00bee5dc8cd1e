"""The counters the stages move: plain values in, series in the app's own registry out."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
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
    assert _samples(second)[("capi_gateway_pages_tagged_total", frozenset())] == 0
